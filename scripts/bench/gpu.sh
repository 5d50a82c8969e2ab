#!/usr/bin/env bash
# The benchmarks on the lent GPU: one device call per kind of measurement (each ends inside the
# 10-minute limit of a call and leaves its tables, device.txt and <kind>-logs.tgz in $OUT;
# docs/benchmarks.md says which figure comes from which).
#
# Prepare here:  bash ../shared/device/make-wheels.sh             DeepSpeed, liger-kernel -> .whl/
#                bash scripts/bench/prepare_anchor.sh <llm-jepa> <nlrx_synth_train.jsonl>   (anchor)
# Run there:     bash scripts/bench/gpu.sh pretrain                carry=[".whl"]
#                bash scripts/bench/gpu.sh speed                   carry=[".whl"]
#                bash scripts/bench/gpu.sh anchor three            carry=[".whl", "third_party"]
#                bash scripts/bench/gpu.sh anchor additive,ours    carry=[".whl", "third_party"]
#                bash scripts/bench/gpu.sh tests                   carry=[".whl"]
#                bash scripts/bench/gpu.sh stp                     carry=[".whl"]  (STP / next-token at 125m)
#                bash scripts/bench/gpu.sh checks                  carry=[".whl"]  (GPU tests, kernel and
#                    throughput benchmarks, a bf16 pretrain.py run at ZeRO-1 and one at ZeRO-3)
# Then here:     python scripts/bench/report.py <files_at of each call> ...   (the headline rows)
# Extra arguments go to the kind's script (e.g. `pretrain --rows llama-3.2-3b=1x4`; checks takes
# none); on a CPU the pretrain and speed kinds run at a tiny size with the arguments in their
# scripts' docstrings.
set -u
kind=${1:-}
case $kind in pretrain|speed|anchor|tests|stp|checks) shift ;; *) kind= ;; esac
if [ -z "$kind" ] || { [ "$kind" = checks ] && [ $# -gt 0 ]; }; then
  echo "usage: bash scripts/bench/gpu.sh pretrain|speed|anchor [three,additive,ours]|tests|stp|checks [args]" >&2
  exit 2
fi
OUT=${OUT:-/tmp/bench_out}
BUDGET=${BUDGET:-570}  # seconds of this script, inside one device call's 600
work=/tmp/bench/$kind
mkdir -p "$OUT" "$work"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site || exit 1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; date -u;
  python3 -c "import torch, triton, transformers, deepspeed; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__)"; } \
  > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"
logs() {  # the runs' logs and metrics in one small archive (no stores, no checkpoints)
  (cd "$work" && find . \( -name '*.log' -o -name 'metrics.jsonl' -o -name '*.md' -o -name '*.json' \) \
     -not -path '*/store/*' -not -path '*/hf/*' -not -path '*/checkpoints/*' -not -path '*/export/*' -print0 \
   | tar czf "$OUT/$kind-logs.tgz" --null -T -)
}
step() {  # name, timeout, command...: one step of checks, its output in $OUT/<name>.log; the
  # timeout is cut to what is left of BUDGET s (the call's 600 s less the logs), so that a slow
  # step leaves the later ones less time instead of the call running past its limit
  local name=$1 t=$2 code; shift 2
  local left=$((BUDGET - SECONDS))
  if [ "$left" -lt 20 ]; then echo "== $name: skipped, $left s left of $BUDGET"; rc=1; return; fi
  [ "$t" -gt "$left" ] && t=$left
  local t0=$SECONDS
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1
  code=$?
  echo "== $name: exit $code in $((SECONDS - t0)) s"; tail -n 6 "$OUT/$name.log"
  [ "$code" -eq 0 ] || rc=1
}
case $kind in
  pretrain)
    timeout 560 python3 scripts/bench/pretrain.py --out "$work" "$@"; rc=$?
    cp "$work"/pretrain.md "$work"/pretrain.json "$OUT"/ 2>/dev/null ;;
  speed)
    timeout 560 python3 scripts/bench/throughput.py --presets llama-3.2-1b --variants lm,single \
      --options off,liger,layers,model --out "$work/speed.md" "$@"; rc=$?
    cp "$work"/speed.md "$work"/speed.json "$OUT"/ 2>/dev/null ;;
  anchor)
    variants=${1:-three,additive,ours}
    [ $# -gt 0 ] && shift
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site_anchor third_party/wheels/*.whl || exit 1
    timeout 570 python3 scripts/bench/anchor.py --out "$work" --variants "$variants" \
      --anchor-site /tmp/site_anchor "$@"; rc=$?
    cp "$work"/anchor*.json "$OUT"/ 2>/dev/null ;;
  stp)
    timeout 560 python3 scripts/bench/stp.py --presets 125m --device cuda --reps 20 --out "$work/stp.md" "$@"; rc=$?
    cp "$work"/stp.md "$OUT"/ 2>/dev/null ;;
  tests)
    timeout 500 python3 -m pytest -q -p no:cacheprovider -m gpu tests/ "$@" 2>&1 | tee "$work/pytest.log"
    rc=${PIPESTATUS[0]} ;;
  checks)  # FlexAttention, the fused kernels, DeepSpeed ZeRO-1 and ZeRO-3 in one call
    rc=0
    step pytest_gpu 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py \
      tests/test_ops_cosine.py tests/test_ops_linear_ce.py
    step throughput 170 python3 scripts/bench/throughput.py --presets 125m,llama-3.2-1b --out "$OUT/throughput.md"
    step kernels 150 python3 scripts/bench/loss_kernels.py --out "$OUT/kernels.md"
    step pretrain_zero1 110 python3 pretrain.py --run-dir "$work/run_z1" --preset small --steps 150 \
      --data.seq_len 512 --data.micro_batch_rows 16 --train.log_every 25 --train.eval_limit 100
    step pretrain_zero3 60 python3 pretrain.py --run-dir "$work/run_z3" --preset 125m --steps 20 \
      --ds-config ds_configs/zero3.json --data.seq_len 1024 --data.micro_batch_rows 8 \
      --train.log_every 5 --train.final_eval false
    cp "$work"/run_z1/metrics.jsonl "$OUT/pretrain_zero1_metrics.jsonl" 2>/dev/null
    cp "$work"/run_z3/metrics.jsonl "$OUT/pretrain_zero3_metrics.jsonl" 2>/dev/null ;;
esac
logs
echo "== $kind: exit $rc"
exit "$rc"
