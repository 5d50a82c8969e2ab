#!/usr/bin/env bash
# One call on the lent GPU machine (device tool): GPU tests, kernel and throughput benchmarks,
# and a bf16 pretrain.py smoke run (FlexAttention, fused kernels, DeepSpeed ZeRO-1 and ZeRO-3).
# Prepare here:  bash ../shared/device/make-wheels.sh   (DeepSpeed, liger-kernel wheels in .whl/)
# Run there:     bash scripts/gpu_checks.sh              (with carry=[".whl"]; writes to $OUT)
# The headline measurements of docs/benchmarks.md have their own calls: scripts/bench/gpu.sh.
set -u
OUT=${OUT:-/tmp/gpu_checks}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site || exit 1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; date -u;
  python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)"; } \
  > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"
step() {  # name, timeout, command...
  local name=$1 t=$2; shift 2
  local t0=$SECONDS
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1
  echo "== $name: exit $? in $((SECONDS - t0)) s"; tail -n 6 "$OUT/$name.log"
}
step pytest_gpu 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_ops_cosine.py tests/test_ops_linear_ce.py
step throughput 170 python3 scripts/bench/throughput.py --presets 125m,llama-3.2-1b --out "$OUT/throughput.md"
step kernels 150 python3 scripts/bench/loss_kernels.py --out "$OUT/kernels.md"
step pretrain_zero1 110 python3 pretrain.py --run-dir /tmp/run_z1 --preset small --steps 150 \
  --data.seq_len 512 --data.micro_batch_rows 16 --train.log_every 25 --train.eval_limit 100
step pretrain_zero3 60 python3 pretrain.py --run-dir /tmp/run_z3 --preset 125m --steps 20 \
  --ds-config ds_configs/zero3.json --data.seq_len 1024 --data.micro_batch_rows 8 \
  --train.log_every 5 --train.final_eval false
cp /tmp/run_z1/metrics.jsonl "$OUT/pretrain_zero1_metrics.jsonl" 2>/dev/null
cp /tmp/run_z3/metrics.jsonl "$OUT/pretrain_zero3_metrics.jsonl" 2>/dev/null
echo "== done"
