#!/usr/bin/env bash
# NL-RX pretraining from scratch: LLM-JEPA Table 1 (next-token vs LLM-JEPA).
#
# Paper setting: a Llama-3.2-1B-shaped model from random init trained on NL-RX-SYNTH pairs
# (description -> regex) twice: next-token only (lambda 0) and LLM-JEPA (lr 8e-5, lambda 2,
# k 3), then greedy generation on the test set (exact match, starts-with, regex equivalence).
#
#   scripts/nlrx_pretrain.sh --size tiny                 # 2-layer model, CPU, a few minutes
#   NGPUS=8 scripts/nlrx_pretrain.sh --size paper        # configs/nlrx_pretrain_paper.yaml
#   scripts/nlrx_pretrain.sh --size tiny -- --steps 100  # extra flags go to pretrain.py
#
# Steps: tokenizer (data_tools.train_tokenizer) -> store (data_tools.preprocess) -> train both
# arms (pretrain.py; `deepspeed --num_gpus $NGPUS` when NGPUS > 0, else plain python) ->
# export (megajepa.export) -> eval (megajepa.eval --task nlrx) -> a two-line comparison.
#
# Environment (all optional):
#   SIZE      tiny | paper (or --size; default tiny)
#   NGPUS     GPUs per node (default: all that nvidia-smi lists, 0 without a GPU)
#   HOSTFILE  multi-node: a DeepSpeed hostfile ("node1 slots=8" per line); NNODES nodes
#   OUT       output root (default runs/nlrx_pretrain-$SIZE)
#   DATA_DIR  folder with nlrx_synth_{train,test}.jsonl (chat messages: python -m
#             data_tools.get_nlrx --out <dir>); unset: the embedded NL-RX-style generator
#             (data_tools.generate) writes a stand-in
#   ARMS      which runs (default "next_token jepa")
#   EVAL_LIMIT  test records to evaluate (default 200 tiny, all at paper scale)
# Rerunning continues: data steps are skipped when their output exists, training resumes
# from the latest checkpoint (--resume auto).
set -euo pipefail

source "$(dirname "$0")/recipe_common.sh" "$@"
OUT=${OUT:-runs/nlrx_pretrain-$SIZE}
ARMS=${ARMS:-next_token jepa}
CONFIG=configs/nlrx_pretrain_$SIZE.yaml
if [ "$SIZE" = tiny ]; then VOCAB=512; EVAL_LIMIT=${EVAL_LIMIT:-200}; else VOCAB=1000; EVAL_LIMIT=${EVAL_LIMIT:-0}; fi
nlrx_paths  # sets TRAIN_JSONL, TEST_JSONL; checks DATA_DIR before anything is written
mkdir -p "$OUT"

SECONDS=0
echo "== nlrx_pretrain: size=$SIZE ngpus=$NGPUS config=$CONFIG out=$OUT"

# 1. data: NL-RX-SYNTH pairs (or the embedded generator's stand-in)
nlrx_data
[ -f "$OUT/tokenizer/tokenizer.json" ] ||
  python -m data_tools.train_tokenizer "$TRAIN_JSONL" --out "$OUT/tokenizer" --vocab-size "$VOCAB" \
    --model bpe --k-pred 8 --overwrite
[ -f "$OUT/store/manifest.json" ] ||
  python -m data_tools.preprocess "$TRAIN_JSONL" --tokenizer "$OUT/tokenizer" --out "$OUT/store" \
    --overwrite

# 2-4. train, export and evaluate each arm (the trainer's own export/final eval are off:
# the explicit steps below are the ones a user reruns on any checkpoint)
LIMIT=(); [ "$EVAL_LIMIT" -gt 0 ] && LIMIT=(--limit "$EVAL_LIMIT")
for ARM in $ARMS; do
  case "$ARM" in next_token) ARM_FLAGS=(--lambda 0) ;; jepa) ARM_FLAGS=() ;;
    *) echo "unknown arm $ARM (next_token|jepa)" >&2; exit 2 ;; esac
  RUN=$OUT/$ARM
  echo "== [$ARM] train -> $RUN"
  train --config "$CONFIG" --data.train "$OUT/store" --data.eval "$TEST_JSONL" \
    --run-dir "$RUN" --resume auto --train.export false --train.final_eval false \
    "${ARM_FLAGS[@]}" "${EXTRA[@]}"
  echo "== [$ARM] export -> $RUN/export"
  python -m megajepa.export "$RUN" "$RUN/export" --overwrite
  echo "== [$ARM] eval -> $RUN/eval"
  python -m megajepa.eval --model "$RUN/export" --data "$TEST_JSONL" --task nlrx \
    --out "$RUN/eval" --max-new-tokens 64 "${LIMIT[@]}"
done

echo "== NL-RX test, next-token vs LLM-JEPA (size=$SIZE, ${SECONDS}s)"
nlrx_summary "$OUT" $ARMS
