#!/usr/bin/env bash
# Here, before the device call of the anchor benchmark (the GPU machine has no internet):
# puts under the git-ignored third_party/ what scripts/bench/anchor.py needs there
#   third_party/llm-jepa/finetune.py, LICENSE   the authors' code (github galilai-group/llm-jepa)
#   third_party/data/nlrx_synth_train.jsonl     NL-RX-SYNTH, the training split
#   third_party/wheels/                         their pinned stack: transformers 4.55.2 (their
#                                               setup.sh; 5.x removed arguments they use), peft
#                                               0.17.0, and what those need beside the GPU image
# Use: bash scripts/bench/prepare_anchor.sh <llm-jepa: git dir, checkout or URL> <nlrx_synth_train.jsonl>
# then carry=[".whl", "third_party"] in the device call (about 18 MB).
set -euo pipefail
src=${1:?usage: $0 <llm-jepa git dir, checkout or URL> <nlrx_synth_train.jsonl>}
data=${2:?usage: $0 <llm-jepa git dir, checkout or URL> <nlrx_synth_train.jsonl>}
[ -f "$data" ] || { echo "error: $data: no such file" >&2; exit 2; }
data=$(realpath "$data")
[ -e "$src" ] && src=$(realpath "$src")
case "$src" in
  http*://*|git@*) tmp=$(mktemp -d); git clone -q --depth 1 "$src" "$tmp/repo"; src=$tmp/repo ;;
esac
if [ ! -f "$src/finetune.py" ] && ! git -C "$src" cat-file -e HEAD:finetune.py 2>/dev/null; then
  echo "error: $src: neither a checkout nor a git dir with finetune.py" >&2; exit 2
fi
cd "$(dirname "$0")/.."
dest=third_party
mkdir -p "$dest/llm-jepa" "$dest/data" "$dest/wheels"
take() {  # file from the authors' repo -> $dest/llm-jepa
  if [ -f "$src/$1" ]; then cp "$src/$1" "$dest/llm-jepa/$1"
  elif git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then git -C "$src" show "HEAD:$1" > "$dest/llm-jepa/$1"
  else echo "error: $src: no $1" >&2; exit 2
  fi
}
take finetune.py
take LICENSE
cp "$data" "$dest/data/nlrx_synth_train.jsonl"
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
for p in transformers==4.55.2 tokenizers==0.21.4 huggingface_hub==0.36.2 peft==0.17.0 \
         accelerate==1.10.1 datasets==4.8.5 dill==0.4.1 multiprocess==0.70.19; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${plat[@]}" -d "$dest/wheels" "$p"
done
du -sh "$dest"
