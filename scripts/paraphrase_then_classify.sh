#!/usr/bin/env bash
# Paraphrase-group pretraining, then rotten_tomatoes fine-tuning: LLM-JEPA Table 4.
#
# Paper setting: a Llama-3.2-1B-shaped model pretrained from random init on paraphrase groups
# (cestwc/paraphrase), once with next-token loss only (lambda 0) and once with LLM-JEPA
# between paraphrases of one sentence; each is then fine-tuned on rotten_tomatoes
# (review -> "Good"/"Bad", next-token loss) and scored by first-token classification accuracy.
#
#   DATA_DIR=path/to/datasets scripts/paraphrase_then_classify.sh --size tiny    # embedded paraphrase groups, CPU
#   DATA_DIR=path/to/datasets NGPUS=8 scripts/paraphrase_then_classify.sh --size paper
#   DATA_DIR=path/to/datasets PARAPHRASE=/data/paraphrase PARAPHRASE_SPLIT=tapaco NGPUS=8 scripts/paraphrase_then_classify.sh --size paper
#   DATA_DIR=path/to/datasets scripts/paraphrase_then_classify.sh --size tiny -- --k 2   # extra flags: pretraining runs
#
# Steps: groups (tiny: data_tools.generate --formats groups; paper: $PARAPHRASE through
# datasets) -> tokenizer (data_tools.train_tokenizer) -> group store (data_tools.preprocess)
# -> pretrain both arms (pretrain.py; `deepspeed --num_gpus $NGPUS` when NGPUS > 0, else plain
# python) -> export -> rotten_tomatoes store tokenized with the *export's* tokenizer
# (preprocess --tokenizer <export>) -> fine-tune (--init-from <export>) -> export -> eval
# (megajepa.eval --task classify).
#
# Environment (all optional except the rotten_tomatoes files):
#   SIZE              tiny | paper (or --size; default tiny)
#   NGPUS             GPUs per node (default: all that nvidia-smi lists, 0 without a GPU)
#   HOSTFILE          multi-node: a DeepSpeed hostfile ("node1 slots=8" per line); NNODES nodes
#   OUT               output root (default runs/paraphrase_then_classify-$SIZE)
#   PARAPHRASE        paper scale: datasets name or local path of cestwc/paraphrase
#                     (default cestwc/paraphrase); PARAPHRASE_SPLIT (default quora)
#   DATA_DIR          folder with rotten_tomatoes_{train,test}.jsonl: rotten_tomatoes as
#                     chat-messages JSONL (review -> "Good"/"Bad"), e.g. the LLM-JEPA authors'
#                     github galilai-group/llm-jepa, datasets/; required (or RT_TRAIN and RT_TEST)
#   RT_TRAIN, RT_TEST the two files by name (default $DATA_DIR/rotten_tomatoes_{train,test}.jsonl)
#   ARMS              which pretraining runs (default "next_token jepa")
#   EVAL_LIMIT        test reviews to evaluate (default 200 tiny, all at paper scale)
# Rerunning continues: data steps are skipped when their output exists, training resumes
# from the latest checkpoint (--resume auto).
set -euo pipefail

source "$(dirname "$0")/recipe_common.sh" "$@"
OUT=${OUT:-runs/paraphrase_then_classify-$SIZE}
if [ -z "${DATA_DIR:-}" ] && { [ -z "${RT_TRAIN:-}" ] || [ -z "${RT_TEST:-}" ]; }; then
  echo "error: set DATA_DIR to a folder with rotten_tomatoes_{train,test}.jsonl (chat messages; github galilai-group/llm-jepa, datasets/), or RT_TRAIN and RT_TEST" >&2
  exit 2
fi
RT_TRAIN=${RT_TRAIN:-$DATA_DIR/rotten_tomatoes_train.jsonl}
RT_TEST=${RT_TEST:-$DATA_DIR/rotten_tomatoes_test.jsonl}
PARAPHRASE=${PARAPHRASE:-cestwc/paraphrase}
PARAPHRASE_SPLIT=${PARAPHRASE_SPLIT:-quora}
ARMS=${ARMS:-next_token jepa}
PRETRAIN_CONFIG=configs/paraphrase_pretrain_$SIZE.yaml
FINETUNE_CONFIG=configs/classify_finetune_$SIZE.yaml
if [ "$SIZE" = tiny ]; then EVAL_LIMIT=${EVAL_LIMIT:-200}; else EVAL_LIMIT=${EVAL_LIMIT:-0}; fi
for f in "$RT_TRAIN" "$RT_TEST"; do
  [ -f "$f" ] || { echo "error: no $f: set DATA_DIR (or RT_TRAIN/RT_TEST) to rotten_tomatoes chat-messages JSONL" >&2; exit 2; }
done
mkdir -p "$OUT"

SECONDS=0
echo "== paraphrase_then_classify: size=$SIZE ngpus=$NGPUS out=$OUT"

# 1. paraphrase groups -> tokenizer -> group store
if [ "$SIZE" = tiny ]; then
  # the embedded generator: {"texts": [4 paraphrases of one NL-RX description]} per line
  [ -f "$OUT/data/groups_train.jsonl" ] ||
    python -m data_tools.generate --out "$OUT/data" --train 4000 --test 200 --formats groups \
      --views 4 --seed 0
  # a from-scratch tokenizer must also cover the reviews the model is fine-tuned on
  [ -f "$OUT/tokenizer/tokenizer.json" ] ||
    python -m data_tools.train_tokenizer "$OUT/data/groups_train.jsonl" "$RT_TRAIN" \
      --out "$OUT/tokenizer" --vocab-size 2000 --k-pred 8 --overwrite
  [ -f "$OUT/groups_store/manifest.json" ] ||
    python -m data_tools.preprocess "$OUT/data/groups_train.jsonl" --tokenizer "$OUT/tokenizer" \
      --out "$OUT/groups_store" --overwrite
else
  # cestwc/paraphrase rows ({"paraphrase_set_id", "text"}) are grouped by set id
  [ -f "$OUT/tokenizer/tokenizer.json" ] ||
    python -m data_tools.train_tokenizer "$PARAPHRASE" --hf --hf-split "$PARAPHRASE_SPLIT" \
      --out "$OUT/tokenizer" --vocab-size 32000 --k-pred 8 --max-sentences 2000000 --overwrite
  [ -f "$OUT/groups_store/manifest.json" ] ||
    python -m data_tools.preprocess "$PARAPHRASE" --hf --hf-split "$PARAPHRASE_SPLIT" \
      --tokenizer "$OUT/tokenizer" --out "$OUT/groups_store" --workers 8 --overwrite
fi

LIMIT=(); [ "$EVAL_LIMIT" -gt 0 ] && LIMIT=(--limit "$EVAL_LIMIT")
for ARM in $ARMS; do
  case "$ARM" in next_token) ARM_FLAGS=(--lambda 0) ;; jepa) ARM_FLAGS=() ;;
    *) echo "unknown arm $ARM (next_token|jepa)" >&2; exit 2 ;; esac
  PRE=$OUT/$ARM/pretrain
  FT=$OUT/$ARM/finetune
  # 2. pretrain on the groups, export
  echo "== [$ARM] pretrain on paraphrase groups -> $PRE"
  train --config "$PRETRAIN_CONFIG" --data.train "$OUT/groups_store" --run-dir "$PRE" \
    --resume auto --train.export false --train.final_eval false "${ARM_FLAGS[@]}" "${EXTRA[@]}"
  python -m megajepa.export "$PRE" "$PRE/export" --overwrite
  # 3. rotten_tomatoes with the pretrained model's tokenizer (the export carries it)
  [ -f "$OUT/$ARM/rt_store/manifest.json" ] ||
    python -m data_tools.preprocess "$RT_TRAIN" --tokenizer "$PRE/export" --out "$OUT/$ARM/rt_store" \
      --overwrite
  # 4. fine-tune from the export, export, classify
  echo "== [$ARM] fine-tune on rotten_tomatoes -> $FT"
  train --config "$FINETUNE_CONFIG" --init-from "$PRE/export" --data.train "$OUT/$ARM/rt_store" \
    --run-dir "$FT" --resume auto --train.export false --train.final_eval false
  python -m megajepa.export "$FT" "$FT/export" --overwrite
  python -m megajepa.eval --model "$FT/export" --data "$RT_TEST" --task classify --out "$FT/eval" \
    --max-new-tokens 4 "${LIMIT[@]}"
done

echo "== rotten_tomatoes test after paraphrase pretraining (size=$SIZE, ${SECONDS}s)"
python - "$OUT" $ARMS <<'EOF'
import json, sys
for arm in sys.argv[2:]:
    m = json.load(open(f"{sys.argv[1]}/{arm}/finetune/eval/metrics.json"))
    print(f"{arm:>10} pretraining: n={m['n']} label accuracy={m['label']:.3f}")
EOF
