# Shared by the recipes (sourced, not run): --size tiny|paper and "-- pretrain.py flags"
# parsing, user paths made absolute, GPU detection, CPU thread policy, and train() which
# launches pretrain.py on NGPUS GPUs per node (DeepSpeed launcher) or as one plain process.
# Sets: SIZE, EXTRA (array), NGPUS; changes to the repository root.
SIZE=${SIZE:-tiny}
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --size) SIZE=$2; shift 2 ;;
    --size=*) SIZE=${1#--size=}; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $1 (use --size tiny|paper [-- pretrain.py flags])" >&2; exit 2 ;;
  esac
done
case "$SIZE" in tiny|paper) ;; *) echo "SIZE must be tiny or paper, got $SIZE" >&2; exit 2 ;; esac

for v in OUT DATA_DIR MODEL_DIR HOSTFILE RT_TRAIN RT_TEST CORPUS HELDOUT; do  # user paths: relative to the caller
  [ -z "${!v:-}" ] || printf -v "$v" '%s' "$(realpath -m "${!v}")"
done
cd "$(dirname "$0")/.."
detect_gpus() {
  if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
  else echo 0; fi
}
NGPUS=${NGPUS:-$(detect_gpus)}
# CPU runs: one intra-op thread per process. PyTorch's default (a thread per core) spins
# against other processes on a shared or small CPU: measured 100x slower steps on 2 busy cores.
[ "$NGPUS" -gt 0 ] || export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

train() {  # pretrain.py on NGPUS GPUs per node (DeepSpeed launcher) or one plain process
  if [ -n "${HOSTFILE:-}" ]; then
    deepspeed --hostfile "$HOSTFILE" --num_nodes "${NNODES:-2}" --num_gpus "$NGPUS" pretrain.py "$@"
  elif [ "$NGPUS" -gt 0 ]; then
    deepspeed --num_gpus "$NGPUS" pretrain.py "$@"
  else
    python pretrain.py "$@"
  fi
}

nlrx_summary() {  # OUT ARM...: one line of NL-RX metrics per arm from <OUT>/<arm>/eval/metrics.json
  python - "$@" <<'EOF'
import json, sys
for arm in sys.argv[2:]:
    m = json.load(open(f"{sys.argv[1]}/{arm}/eval/metrics.json"))
    print(f"{arm:>10}: n={m['n']} exact={m['exact']:.3f} startswith={m['startswith']:.3f} "
          f"semantic={m['semantic']:.3f}")
EOF
}

nlrx_paths() {  # TRAIN_JSONL/TEST_JSONL: NL-RX-SYNTH in $DATA_DIR when it is set (a missing file: exit 2
                # before anything is written), else the embedded generator's stand-in in $OUT/data
  if [ -n "${DATA_DIR:-}" ]; then
    TRAIN_JSONL=$DATA_DIR/nlrx_synth_train.jsonl
    TEST_JSONL=$DATA_DIR/nlrx_synth_test.jsonl
    for f in "$TRAIN_JSONL" "$TEST_JSONL"; do
      [ -f "$f" ] || { echo "error: DATA_DIR=$DATA_DIR has no $(basename "$f") (python -m data_tools.get_nlrx --out <dir> writes NL-RX-SYNTH there; leave DATA_DIR unset to use the embedded generator)" >&2; exit 2; }
    done
  else
    TRAIN_JSONL=$OUT/data/pairs_train.jsonl
    TEST_JSONL=$OUT/data/pairs_test.jsonl
  fi
}

nlrx_data() {  # writes the generator's stand-in when DATA_DIR is not set (after nlrx_paths)
  if [ -z "${DATA_DIR:-}" ] && [ ! -f "$TRAIN_JSONL" ]; then
    echo "DATA_DIR not set: generating the embedded NL-RX-style dataset in $OUT/data"
    python -m data_tools.generate --out "$OUT/data" --train 8000 --test 2000 --formats pairs --seed 0
  fi
}
