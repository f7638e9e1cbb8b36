#!/usr/bin/env bash
# The prepared search for a lent GPU (issue #13, "How to search"): the sweep of the fast
# recipe's space and the 3-seed study of its finalist beside the shipped recipe, in one call,
# within a fixed time budget, every result file under $OUT.
#
#   DATA28=.gpudata/bloodmnist_pbc_28.npz OUT=$OUT bash benchmarks/gpu_sweep.sh
#   SMOKE=1 OUT=/tmp/sweep BM=.venv/bin/bloodmnist bash benchmarks/gpu_sweep.sh   # CPU dry run
# SLIM=1 deletes the search trials' checkpoints under $OUT/tune at the end (for a device call
# whose $OUT must come back small); the studies' run folders keep theirs.
#
# 1. `bloodmnist tune` over SPACE (default configs/search/fast.yaml: two seeds per trial, pruning
#    by progress), JOBS trials side by side on the GPU; no trial starts after SWEEP_S seconds,
#    and the step is cut at SWEEP_S + TRIAL_S (a cut trial is FAIL, never counted).
#    -> $OUT/tune/{trials.csv,best.yaml,report.html}
# 2. The finalist (tune/best.yaml: the best mean validation accuracy) and the shipped fast
#    recipe as the control, 3 seeds each, all six runs at once, cut at FINAL_S seconds.
#    -> $OUT/finalist/study.json, $OUT/control/study.json
# Choose on validation (best_val_acc, val_acc_tta in the study files); the test numbers beside
# them are each run's one evaluation of the test split, not a criterion.
set -uo pipefail
OUT=${OUT:-gpu-sweep}
DATA28=${DATA28:-.gpudata/bloodmnist_pbc_28.npz}
SPACE=${SPACE:-configs/search/fast.yaml}
BM=${BM:-bloodmnist}
JOBS=${JOBS:-8}
TRIALS=${TRIALS:-200}  # an upper bound: the time budget ends the sweep
mkdir -p "$OUT"
if [ "${SMOKE:-0}" = 1 ]; then  # every trial on 64 images, whatever epochs the space draws
  SWEEP_S=${SWEEP_S:-20} TRIAL_S=${TRIAL_S:-120} FINAL_S=${FINAL_S:-300} JOBS=2
  FIXED=(--device cpu --precision fp32 --subset 64 --set runtime.threads=1)
  FINAL=(--epochs 1 --set runtime.reports=false)
else
  SWEEP_S=${SWEEP_S:-240} TRIAL_S=${TRIAL_S:-180} FINAL_S=${FINAL_S:-240}
  FIXED=(--device cuda)
  FINAL=()
fi

step() {  # step NAME SECONDS COMMAND...: time-limited, logged to $OUT/NAME.log, never aborts
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit} s): $*" | tee -a "$OUT/commands.txt"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "   $name: exit $? after $((SECONDS - t0)) s" | tee -a "$OUT/commands.txt"
}

nvidia-smi >"$OUT/gpu.txt" 2>&1 || true
step tune $((SWEEP_S + TRIAL_S)) "$BM" tune --space "$SPACE" --trials "$TRIALS" --jobs "$JOBS" \
  --timeout "$SWEEP_S" --out "$OUT/tune" --recipe fast --data "$DATA28" "${FIXED[@]}"
# A tune cut by `timeout` has not written its outputs: rebuild them from its database.
[ -f "$OUT/tune/best.yaml" ] || step tune-report 120 "$BM" tune --report "$OUT/tune"
if [ -f "$OUT/tune/best.yaml" ]; then
  step finalist "$FINAL_S" "$BM" study --seeds 42,43,44 --jobs 3 --out "$OUT/finalist" \
    --config "$OUT/tune/best.yaml" --data "$DATA28" "${FIXED[@]}" "${FINAL[@]}" &
fi
step control "$FINAL_S" "$BM" study --seeds 42,43,44 --jobs 3 --out "$OUT/control" \
  --recipe fast --data "$DATA28" "${FIXED[@]}" "${FINAL[@]}"
wait
if [ "${SLIM:-0}" = 1 ]; then  # asked for: drop the trials' weights so $OUT travels back small
  rm -rf "$OUT"/tune/trials/*/checkpoints "$OUT"/tune/trials/*/seed-*/checkpoints
fi
echo "done: $(date -u +%FT%TZ)" | tee -a "$OUT/commands.txt"
