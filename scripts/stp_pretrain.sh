#!/usr/bin/env bash
# Plain-text pretraining with Semantic Tube Prediction (STP): a JEPA term on any text, with no
# second view and no extra tokens (docs/training.md, "STP: JEPA on plain text").
#
#   scripts/stp_pretrain.sh --size tiny                        # generated text, CPU, minutes
#   CORPUS=corpus.txt HELDOUT=heldout.txt scripts/stp_pretrain.sh --size tiny
#   CORPUS=corpus.jsonl TEXT_FIELD=body NGPUS=8 scripts/stp_pretrain.sh --size paper
#   scripts/stp_pretrain.sh --size tiny -- --jepa.stp_spans 4  # extra flags go to pretrain.py
#
# Steps: tokenizer (data_tools.train_tokenizer) -> lm store (data_tools.preprocess, documents
# longer than a row split into row-sized pieces) -> train each arm (pretrain.py with
# configs/stp_text_$SIZE.yaml; `deepspeed --num_gpus $NGPUS` when NGPUS > 0, else plain python)
# -> held-out next-token loss and STP cosine (scripts/heldout_loss.py) -> one line per arm.
#
# Environment (all optional):
#   SIZE        tiny | paper (or --size; default tiny)
#   CORPUS      training text: a .txt file (one document per line) or JSONL with a text field;
#               default: the embedded NL-RX-style generator's text (data_tools.generate)
#   HELDOUT     held-out text, same format (default: the generator's test text with the
#               generated corpus, else none: no held-out step)
#   TEXT_FIELD  the JSONL field holding the text (default text)
#   VOCAB       SentencePiece vocabulary (default 1000 tiny, 32000 paper)
#   NGPUS       GPUs per node (default: all that nvidia-smi lists, 0 without a GPU)
#   HOSTFILE    multi-node: a DeepSpeed hostfile ("node1 slots=8" per line); NNODES nodes
#   OUT         output root (default runs/stp_pretrain-$SIZE)
#   ARMS        which runs (default "stp next_token"; next_token = the same config, --lambda 0)
# Rerunning continues: data steps are skipped when their output exists, training resumes
# from the latest checkpoint (--resume auto).
set -euo pipefail

source "$(dirname "$0")/recipe_common.sh" "$@"
OUT=${OUT:-runs/stp_pretrain-$SIZE}
ARMS=${ARMS:-stp next_token}
CONFIG=configs/stp_text_$SIZE.yaml
if [ "$SIZE" = tiny ]; then SEQ_LEN=256; VOCAB=${VOCAB:-1000}; else SEQ_LEN=2048; VOCAB=${VOCAB:-32000}; fi
FIELD=(); [ -n "${TEXT_FIELD:-}" ] && FIELD=(--field "$TEXT_FIELD")
mkdir -p "$OUT"

SECONDS=0
echo "== stp_pretrain: size=$SIZE ngpus=$NGPUS config=$CONFIG out=$OUT"

# 1. data: the corpus (or generated text), a tokenizer trained on it, an lm store
if [ -z "${CORPUS:-}" ]; then
  echo "no CORPUS: generating the embedded NL-RX-style text corpus"
  [ -f "$OUT/data/text_train.txt" ] ||
    python -m data_tools.generate --out "$OUT/data" --train 8000 --test 500 --formats text --seed 0
  CORPUS=$OUT/data/text_train.txt
  HELDOUT=${HELDOUT:-$OUT/data/text_test.txt}
fi
for f in "$CORPUS" ${HELDOUT:+"$HELDOUT"}; do
  [ -f "$f" ] || { echo "error: $f: no such file" >&2; exit 2; }
done
[ -f "$OUT/tokenizer/tokenizer.json" ] ||
  python -m data_tools.train_tokenizer "$CORPUS" "${FIELD[@]}" --format text --out "$OUT/tokenizer" \
    --vocab-size "$VOCAB" --overwrite
[ -f "$OUT/store/manifest.json" ] ||
  python -m data_tools.preprocess "$CORPUS" "${FIELD[@]}" --format text --tokenizer "$OUT/tokenizer" \
    --out "$OUT/store" --max-doc-tokens "$SEQ_LEN" --overwrite

# 2-3. train each arm, then its held-out loss
for ARM in $ARMS; do
  case "$ARM" in stp) ARM_FLAGS=() ;; next_token) ARM_FLAGS=(--lambda 0) ;;
    *) echo "unknown arm $ARM (stp|next_token)" >&2; exit 2 ;; esac
  RUN=$OUT/$ARM
  echo "== [$ARM] train -> $RUN"
  train --config "$CONFIG" --data.train "$OUT/store" --run-dir "$RUN" --resume auto \
    "${ARM_FLAGS[@]}" "${EXTRA[@]}"
  if [ -n "${HELDOUT:-}" ]; then
    echo "== [$ARM] held-out loss -> $RUN/heldout.json"
    python scripts/heldout_loss.py --model "$RUN" --data "$HELDOUT" "${FIELD[@]}" \
      --seq-len "$SEQ_LEN" --out "$RUN/heldout.json"
  fi
done

echo "== STP vs next-token on held-out text (size=$SIZE, ${SECONDS}s)"
[ -z "${HELDOUT:-}" ] || python - "$OUT" $ARMS <<'EOF'
import json, sys
for arm in sys.argv[2:]:
    m = json.load(open(f"{sys.argv[1]}/{arm}/heldout.json"))
    print(f"{arm:>10}: documents={m['documents']} val_loss={m['val_loss']:.4f} "
          f"val_stp_cosine={m['val_stp_cosine']:.4f}")
EOF
