#!/usr/bin/env bash
# Fine-tune a Hugging Face model on NL-RX: LLM-JEPA Table 9 (next-token vs LLM-JEPA fine-tuning).
#
# Paper setting: a pretrained checkpoint (e.g. Llama-3.2-1B-Instruct) fine-tuned on NL-RX-SYNTH
# with its own tokenizer and chat template, lr 2e-5, about 4 epochs, once with next-token
# loss only (lambda 0) and once with LLM-JEPA (lambda 1, k 1), then greedy generation on the
# test set (exact match, starts-with, regex equivalence).
#
#   scripts/finetune_hf.sh --size tiny                          # makes a tiny random HF Llama first
#   MODEL_DIR=/models/Llama-3.2-1B-Instruct NGPUS=8 scripts/finetune_hf.sh --size paper
#   MODEL_DIR=meta-llama/Llama-3.2-1B-Instruct scripts/finetune_hf.sh --size paper   # a hub name
#   scripts/finetune_hf.sh --size tiny -- --k 2 --lambda 0.5    # extra flags go to pretrain.py
#
# Steps: (tiny only) scripts/make_tiny_hf.py -> store with the model's tokenizer and chat
# template (data_tools.preprocess --tokenizer $MODEL_DIR --template chat; <pred_i> tokens are
# added there, the trainer resizes the embeddings) -> train both arms (pretrain.py
# --init-from $MODEL_DIR; `deepspeed --num_gpus $NGPUS` when NGPUS > 0, else plain python) ->
# export (megajepa.export) -> eval (megajepa.eval --task nlrx --template chat).
#
# Environment (all optional except MODEL_DIR at paper scale):
#   SIZE       tiny | paper (or --size; default tiny)
#   MODEL_DIR  the model: a local Hugging Face folder (config.json, weights, tokenizer with a
#              chat template), a hub name org/name (the local cache, downloaded once), or a
#              .gguf file (de-quantized once into $OUT/model by python -m megajepa.pretrained);
#              tiny default: $OUT/tiny_hf, made by scripts/make_tiny_hf.py
#   NGPUS      GPUs per node (default: all that nvidia-smi lists, 0 without a GPU)
#   HOSTFILE   multi-node: a DeepSpeed hostfile ("node1 slots=8" per line); NNODES nodes
#   OUT        output root (default runs/finetune_hf-$SIZE)
#   DATA_DIR   folder with nlrx_synth_{train,test}.jsonl (chat messages: python -m
#              data_tools.get_nlrx --out <dir>); unset: the embedded NL-RX-style generator
#              (data_tools.generate) writes a stand-in
#   ARMS       which runs (default "next_token jepa")
#   EVAL_LIMIT test records to evaluate (default 200 tiny, all at paper scale)
# Rerunning continues: data steps are skipped when their output exists, training resumes
# from the latest checkpoint (--resume auto).
set -euo pipefail

HUB_NAME=  # a MODEL_DIR that is no path here is a hub name: recipe_common must not make it one
if [ -n "${MODEL_DIR:-}" ] && [ ! -e "$MODEL_DIR" ] && [[ "$MODEL_DIR" != *.gguf ]]; then
  HUB_NAME=$MODEL_DIR
fi
source "$(dirname "$0")/recipe_common.sh" "$@"
[ -z "$HUB_NAME" ] || MODEL_DIR=$HUB_NAME
OUT=${OUT:-runs/finetune_hf-$SIZE}
ARMS=${ARMS:-next_token jepa}
CONFIG=configs/nlrx_finetune_hf_$SIZE.yaml
if [ "$SIZE" = tiny ]; then EVAL_LIMIT=${EVAL_LIMIT:-200}; else EVAL_LIMIT=${EVAL_LIMIT:-0}; fi
if [ "$SIZE" = paper ] && [ -z "${MODEL_DIR:-}" ]; then
  echo "paper scale needs MODEL_DIR=<Hugging Face folder, hub name or .gguf file> (e.g. Llama-3.2-1B-Instruct)" >&2
  exit 2
fi
nlrx_paths  # sets TRAIN_JSONL, TEST_JSONL; checks DATA_DIR before anything is written
mkdir -p "$OUT"

SECONDS=0

# 1. data: NL-RX-SYNTH pairs (or the embedded generator's stand-in)
nlrx_data

# 2. the model: a local HF folder or a hub name as given; a .gguf file converted once (reused
#    while the file is unchanged); at tiny scale a random tiny Llama with its own tokenizer
if [ -z "${MODEL_DIR:-}" ]; then
  MODEL_DIR=$OUT/tiny_hf
  [ -f "$MODEL_DIR/config.json" ] ||
    python scripts/make_tiny_hf.py --data "$TRAIN_JSONL" --out "$MODEL_DIR"
elif [[ "$MODEL_DIR" == *.gguf ]]; then
  python -m megajepa.pretrained "$MODEL_DIR" --out "$OUT/model"
  MODEL_DIR=$OUT/model
fi
echo "== finetune_hf: size=$SIZE ngpus=$NGPUS model=$MODEL_DIR config=$CONFIG out=$OUT"

# 3. store: the model's tokenizer (predictor tokens added) and its chat template
[ -f "$OUT/store/manifest.json" ] ||
  python -m data_tools.preprocess "$TRAIN_JSONL" --tokenizer "$MODEL_DIR" --template chat \
    --out "$OUT/store" --overwrite

# 4-6. train, export and evaluate each arm (the trainer's own export/final eval are off)
LIMIT=(); [ "$EVAL_LIMIT" -gt 0 ] && LIMIT=(--limit "$EVAL_LIMIT")
for ARM in $ARMS; do
  case "$ARM" in next_token) ARM_FLAGS=(--lambda 0) ;; jepa) ARM_FLAGS=() ;;
    *) echo "unknown arm $ARM (next_token|jepa)" >&2; exit 2 ;; esac
  RUN=$OUT/$ARM
  echo "== [$ARM] fine-tune $MODEL_DIR -> $RUN"
  train --config "$CONFIG" --init-from "$MODEL_DIR" --data.train "$OUT/store" \
    --run-dir "$RUN" --resume auto --train.export false --train.final_eval false \
    "${ARM_FLAGS[@]}" "${EXTRA[@]}"
  echo "== [$ARM] export -> $RUN/export"
  python -m megajepa.export "$RUN" "$RUN/export" --overwrite
  echo "== [$ARM] eval -> $RUN/eval"
  python -m megajepa.eval --model "$RUN/export" --data "$TEST_JSONL" --task nlrx --template chat \
    --out "$RUN/eval" --max-new-tokens 64 "${LIMIT[@]}"
done

echo "== NL-RX test after fine-tuning $MODEL_DIR (size=$SIZE, ${SECONDS}s)"
nlrx_summary "$OUT" $ARMS
