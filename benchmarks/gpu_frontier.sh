#!/usr/bin/env bash
# The prepared script for a lent GPU (issues #13 and #15): the 3-seed studies that a 2-core CPU
# cannot run in a session, in one go, every result file written under $OUT.
#
#   DATA28=.gpudata/bloodmnist_pbc_28.npz DATA64=.gpudata/bloodmnist_pbc_64.npz OUT=$OUT \
#       bash benchmarks/gpu_frontier.sh
#   SMOKE=1 OUT=/tmp/smoke BM=.venv/bin/bloodmnist PY=.venv/bin/python \
#       bash benchmarks/gpu_frontier.sh                          # tiny dry run on a CPU
#
# Steps (each bounded by `timeout`, so the script ends within its budget; a step that runs out
# leaves its study resumable with `bloodmnist study --resume DIR`):
#   1. fast recipe, 3 seeds                          -> $OUT/fast28/study.json
#   2. best recipe, 3 seeds (also the teachers)      -> $OUT/best28/study.json
#   3. their ensemble (val and test)                   -> $OUT/ensemble28/summary.json
#   4. best recipe distilled from it, 3 seeds          -> $OUT/student28/study.json
#   5. 64 px: reference and fast recipes, 3 seeds      -> $OUT/reference64, $OUT/fast64
#   6. the frontier table and plot over all of them    -> $OUT/frontier.json, $OUT/frontier.png
# Choices between candidates are made on validation (best_val_acc in each study.json).
set -uo pipefail
OUT=${OUT:-gpu-results}
DATA28=${DATA28:-.gpudata/bloodmnist_pbc_28.npz}
DATA64=${DATA64:-.gpudata/bloodmnist_pbc_64.npz}
SEEDS=${SEEDS:-42,43,44}
JOBS=${JOBS:-3}
BM=${BM:-bloodmnist}
PY=${PY:-python}  # the Python that has bloodmnist installed (for frontier.py)
mkdir -p "$OUT"
if [ "${SMOKE:-0}" = 1 ]; then
  TINY=(--subset 64 --epochs 1 --set runtime.reports=false --set runtime.threads=1)
  T=600
  DEV=(--device cpu --precision fp32)
else
  TINY=()
  T=${STEP_SECONDS:-1500}
  DEV=(--device cuda)
fi

step() {  # step NAME COMMAND...: run with a time limit, log to $OUT/NAME.log, never abort the rest
  local name=$1
  shift
  echo "== $name: $*" | tee -a "$OUT/commands.txt"
  local t0=$SECONDS
  timeout "$T" "$@" >"$OUT/$name.log" 2>&1
  echo "   $name: exit $? after $((SECONDS - t0)) s" | tee -a "$OUT/commands.txt"
}

nvidia-smi >"$OUT/gpu.txt" 2>&1 || true
step fast28 "$BM" study --seeds "$SEEDS" --jobs "$JOBS" --out "$OUT/fast28" --recipe fast \
  --data "$DATA28" "${DEV[@]}" "${TINY[@]}"
step best28 "$BM" study --seeds "$SEEDS" --jobs "$JOBS" --out "$OUT/best28" --recipe best \
  --data "$DATA28" "${DEV[@]}" "${TINY[@]}"
step ensemble28 "$BM" ensemble "$OUT"/best28/seed-* --out "$OUT/ensemble28" --data "$DATA28" \
  "${DEV[@]}"
step student28 "$BM" study --seeds "$SEEDS" --jobs "$JOBS" --out "$OUT/student28" --recipe best \
  --data "$DATA28" --set "train.teacher=$OUT/ensemble28" "${DEV[@]}" "${TINY[@]}"
step reference64 "$BM" study --seeds "$SEEDS" --jobs "$JOBS" --out "$OUT/reference64" \
  --recipe reference --data "$DATA64" "${DEV[@]}" "${TINY[@]}"
step fast64 "$BM" study --seeds "$SEEDS" --jobs "$JOBS" --out "$OUT/fast64" --recipe fast \
  --data "$DATA64" "${DEV[@]}" "${TINY[@]}"
rows=()
for s in fast28 best28 student28 reference64 fast64; do
  [ -f "$OUT/$s/study.json" ] && rows+=("$s=$OUT/$s/study.json")
done
[ -f "$OUT/ensemble28/summary.json" ] && rows+=("ensemble28=$OUT/ensemble28/summary.json")
if [ "${#rows[@]}" -gt 0 ]; then
  step frontier "$PY" "$(dirname "$0")/frontier.py" "${rows[@]}" \
    --out-json "$OUT/frontier.json" --out-png "$OUT/frontier.png"
fi
echo "done: $(date -u +%FT%TZ)" | tee -a "$OUT/commands.txt"
