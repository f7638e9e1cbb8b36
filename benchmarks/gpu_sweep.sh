#!/usr/bin/env bash
# The prepared search for a lent GPU (issue #13, "How to search"): a sweep of the fast recipe's
# space, then the 3-seed study of its finalist beside the shipped recipe, in one device call
# bounded by DEADLINE seconds (default 540: inside a 10-minute call).
#
#   DATA28=.gpudata/bloodmnist_pbc_28.npz OUT=$OUT bash benchmarks/gpu_sweep.sh
#   SMOKE=1 OUT=/tmp/sweep BM=.venv/bin/bloodmnist DATA28=../shared/data/bloodmnist_pbc_28.npz \
#       bash benchmarks/gpu_sweep.sh                                            # CPU dry run
#
# 1. `bloodmnist tune` over SPACE (default configs/search/fast.yaml: two seeds per trial, pruning
#    by progress), JOBS trials side by side on the GPU; no trial starts after SWEEP_S seconds and
#    the step is cut at SWEEP_CUT_S (a cut trial is FAIL, never counted; the outputs are then
#    rebuilt from the study's database).
# 2. The finalist (best.yaml: the best mean validation accuracy) and the shipped fast recipe as
#    the control, 3 seeds each, all six runs at once, cut at the DEADLINE.
# What comes back (a device call returns few files): $OUT/commands.txt, $OUT/trials.csv,
# $OUT/best.yaml, $OUT/finalist.json and $OUT/control.json (study results), and
# $OUT/sweep-runs.tar.gz (every folder without checkpoints: logs, report.html, study.db, run
# folders). Run folders and weights stay in WORK. At today's lease this is a small sweep (a
# two-seed 34-epoch trial takes minutes on a GPU shared by JOBS trials); raise DEADLINE where a
# longer call is allowed. Choose on validation (best_val_acc, val_acc_tta in the study files);
# the test numbers beside them are each run's one evaluation of the test split.
set -uo pipefail
OUT=${OUT:-gpu-sweep}
WORK=${WORK:-/tmp/gpu-sweep}
DATA28=${DATA28:-.gpudata/bloodmnist_pbc_28.npz}
SPACE=${SPACE:-configs/search/fast.yaml}
BM=${BM:-bloodmnist}
DEADLINE=${DEADLINE:-540}
for d in "$OUT" "$WORK"; do  # a second run would mix its results with the first one's
  if [ -d "$d" ] && [ -n "$(ls -A "$d")" ]; then
    echo "gpu_sweep.sh: $d is not empty; pick a new OUT/WORK" >&2
    exit 2
  fi
done
# tune needs Optuna, which the GPU image lacks (gpu_prepare.sh lists what it has): say so at
# once rather than after a lease is spent. PY must be the Python that runs $BM (python3 for
# gpu_prepare.sh's wrapper, its default)
PYBM=${PY:-python3}
if [ "${SMOKE:-0}" != 1 ] && ! "$PYBM" -c 'import optuna' 2>/dev/null; then
  echo "gpu_sweep.sh: $PYBM has no optuna (bloodmnist tune needs it); carry its wheels and" \
    "those of alembic, colorlog, sqlalchemy, Mako and greenlet in .gpudata/wheels, built for" \
    "the machine's Python (pip download --only-binary=:all: --python-version X.Y)" >&2
  exit 2
fi
mkdir -p "$OUT" "$WORK"
LEAN=(--set runtime.reports=false --set runtime.tensorboard=false)
if [ "${SMOKE:-0}" = 1 ]; then  # every trial on 64 images, whatever epochs the space draws
  JOBS=2 SWEEP_S=20 SWEEP_CUT_S=150 DEADLINE=400
  FIXED=(--device cpu --precision fp32 --subset 64 --set runtime.threads=1)
  FINAL=(--epochs 1 "${LEAN[@]}")
else
  JOBS=${JOBS:-8} SWEEP_S=${SWEEP_S:-$((DEADLINE * 4 / 10))}
  SWEEP_CUT_S=${SWEEP_CUT_S:-$((DEADLINE * 6 / 10))}
  FIXED=(--device cuda)
  FINAL=(--set runtime.threads=2 "${LEAN[@]}")  # 6 runs on 16 cores, no reports
fi
t0=$SECONDS

step() {  # step NAME SECONDS COMMAND...: time-limited, logged to $WORK/NAME.log, never aborts
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit} s): $*" | tee -a "$OUT/commands.txt"
  local t=$SECONDS
  timeout --kill-after=20 "$limit" "$@" >"$WORK/$name.log" 2>&1
  echo "   $name: exit $? after $((SECONDS - t)) s" | tee -a "$OUT/commands.txt"
}

nvidia-smi >"$WORK/gpu.txt" 2>&1 || true
step tune "$SWEEP_CUT_S" "$BM" tune --space "$SPACE" --trials 1000 --jobs "$JOBS" \
  --timeout "$SWEEP_S" --out "$WORK/tune" --recipe fast --data "$DATA28" "${FIXED[@]}" "${LEAN[@]}"
[ -f "$WORK/tune/trials.csv" ] || step tune-report 60 "$BM" tune --report "$WORK/tune"
left=$((DEADLINE - (SECONDS - t0) - 30))  # 30 s for the copies and the tar
if [ -f "$WORK/tune/best.yaml" ]; then
  step finalist "$left" "$BM" study --seeds 42,43,44 --jobs 3 --out "$WORK/finalist" \
    --config "$WORK/tune/best.yaml" --data "$DATA28" "${FIXED[@]}" "${FINAL[@]}" &
fi
step control "$left" "$BM" study --seeds 42,43,44 --jobs 3 --out "$WORK/control" \
  --recipe fast --data "$DATA28" "${FIXED[@]}" "${FINAL[@]}"
wait
cp "$WORK/tune/trials.csv" "$WORK/tune/best.yaml" "$OUT/" 2>/dev/null
for s in finalist control; do cp "$WORK/$s/study.json" "$OUT/$s.json" 2>/dev/null; done
tar --exclude='*.pt' -czf "$OUT/sweep-runs.tar.gz" -C "$WORK" .
echo "done after $((SECONDS - t0)) s: $(date -u +%FT%TZ)" | tee -a "$OUT/commands.txt"
