#!/usr/bin/env bash
# Run every benchmark in benchmarks/ on the current JAX backend (meant for a GPU machine),
# within a total budget of 7 minutes, writing each one's output under $OUT.
#
#   bash benchmarks/device.sh            # full sizes where they fit the budget (GPU)
#   bash benchmarks/device.sh --quick    # smoke run, every script small (CPU: ~4 min shared 2-core)
#
# Environment:
#   OUT     output folder (default: benchmarks/out/<date>); gets <script>.txt per benchmark,
#           closed_forms.json, env.txt and summary.txt (exit status and seconds per script).
#   BUDGET  total seconds for all benchmarks (default 420, so that with start-up and kill grace
#           everything ends within 8 minutes; each script also has its own cap).
#   PYTHON  interpreter (default: python).
#
# Known scripts get sizes chosen to fit the budget; any other benchmarks/*.py is run with
# its defaults (or --quick) in whatever time is left. Missing scripts are skipped. A script
# that runs out of time is stopped (exit 124 in summary.txt) and the next one starts.
set -u
cd "$(dirname "$0")/.."

QUICK=0
if [[ "${1:-}" == "--quick" ]]; then QUICK=1; fi
OUT="${OUT:-benchmarks/out/$(date +%Y%m%d-%H%M%S)}"
BUDGET="${BUDGET:-420}"
PYTHON="${PYTHON:-python}"
mkdir -p "$OUT"
export PYTHONPATH="${PWD}${PYTHONPATH:+:$PYTHONPATH}"

{
  date -u
  "$PYTHON" -c "import jax, optax; print('jax', jax.__version__, 'optax', optax.__version__, \
'backend', jax.default_backend(), jax.devices())"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv
  lscpu 2>/dev/null | grep -E 'Model name|^CPU\(s\)'
  uptime
} >"$OUT/env.txt" 2>&1

START=$SECONDS
: >"$OUT/summary.txt"

# run NAME CAP_SECONDS ARGS...: one benchmark, capped by CAP and by the remaining budget.
run() {
  local name="$1" cap="$2"
  shift 2
  local script="benchmarks/$name.py"
  if [[ ! -f "$script" ]]; then
    echo "$name: missing, skipped" | tee -a "$OUT/summary.txt"
    return
  fi
  local left=$((BUDGET - (SECONDS - START)))
  if ((left < 20)); then
    echo "$name: skipped, budget spent" | tee -a "$OUT/summary.txt"
    return
  fi
  ((cap > left)) && cap=$left
  echo "== $name (cap ${cap}s): $PYTHON $script $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$cap" "$PYTHON" "$script" "$@" >"$OUT/$name.txt" 2>&1
  local rc=$?
  echo "$name: exit $rc, $((SECONDS - t0)) s, args: $*" | tee -a "$OUT/summary.txt"
  tail -n 25 "$OUT/$name.txt"
}

if ((QUICK)); then
  run closed_forms 120 --quick --json "$OUT/closed_forms.json"
  run sinkhorn 180 --quick
  run decisions 90 --quick
  run sinkhorn_training 120 --epochs 2 --repeats 1 --seeds 2
  run structured 90 --quick
  run linear 90 --quick
else
  run closed_forms 100 --json "$OUT/closed_forms.json"
  # POT is NumPy on the host: one example per case keeps it inside the budget.
  run sinkhorn 150 --pot-max-batch 1
  run decisions 80
  run sinkhorn_training 100 --epochs 20 --repeats 2 --seeds 10
  run structured 80
  # Losses from features: memory at K = 131,072 and 2,097,152 (compile only), time at
  # B = 1024, D = 256, K = 32,768 and at the full B = 2048, D = 512, K = 131,072.
  run linear 150 --time-size 1024 256 32768 --full-time --full-rounds 3
fi

# Anything else in benchmarks/ (added later), in the time that is left.
for script in benchmarks/*.py; do
  name="$(basename "$script" .py)"
  case "$name" in
    closed_forms | sinkhorn | decisions | sinkhorn_training | structured | linear | __init__)
      continue ;;
  esac
  if ((QUICK)); then run "$name" 90 --quick; else run "$name" 90; fi
done

echo "total: $((SECONDS - START)) s (budget $BUDGET s); outputs in $OUT" | tee -a "$OUT/summary.txt"
