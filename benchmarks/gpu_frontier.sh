#!/usr/bin/env bash
# The prepared script for a lent GPU (issue #13): what a 2-core CPU cannot finish in a session,
# in one call within DEADLINE seconds, every result file written under $OUT.
#
#   bash benchmarks/gpu_prepare.sh && PATH=$PWD/.gpudata/bin:$PATH \
#       DATA28=.gpudata/bloodmnist_pbc_28.npz OUT=$OUT DEADLINE=480 bash benchmarks/gpu_frontier.sh
#                      # the device call (`run`, carry [".gpudata"], timeout_s 560; gpu_prepare.sh)
#   SMOKE=1 OUT=/tmp/smoke BM=.venv/bin/bloodmnist PY=.venv/bin/python \
#       DATA28=../shared/data/bloodmnist_pbc_28.npz bash benchmarks/gpu_frontier.sh
#                      # tiny dry run on a CPU (DATA28: the .gpudata copy is not made here)
#
# STEPS picks and orders the steps (default: the two a 15-minute lease has room for):
#   fastspeed    the default recipe's wall time, alone on the GPU  -> $OUT/fastspeed/speed.tsv
#                (SPEED_RUNS: other runs in gpu_speed.sh's RUNS form, e.g. a second
#                "fast:$DATA28:runtime.compile=true"; each at most 150 s)
#   bestwide     `best` at full width (model.width=1.0), 3 seeds side by side, to be judged
#                against best v6 on validation                   -> $OUT/bestwide/study.json
#   bestr18      `best`'s training on the adapted ResNet-18 (model.arch=resnet18: 0.56 GFLOP,
#                stride-1 stem, no max-pool, so its last stage sees 4x4 maps where resnet9's
#                sees 3x3), judged the same way; 6 h per seed on a 2-core CPU, GPU time
#                unknown: start with SEEDS=42 alone
#                                                                -> $OUT/bestr18/study.json
#   fast28 best28 ensemble28 student28 reference64 fast64 frontier
#                the 3-seed studies of every recipe, the ensemble of best's seeds, students
#                distilled from it, the 64-px studies and the frontier table over all of them
#                (a longer lease; DATA64 for the 64-px ones)
# Each step is bounded by `timeout` (STEP_SECONDS, and never past DEADLINE seconds after the
# start), so the call returns with everything written so far: a study cut short keeps its
# history.csv files and can go on with `bloodmnist study --resume DIR`. Run folders come back
# as $OUT/runs.tar.gz without checkpoints. Choices are made on validation (each study.json).
set -uo pipefail
OUT=${OUT:-gpu-results}
DATA28=${DATA28:-.gpudata/bloodmnist_pbc_28.npz}
DATA64=${DATA64:-.gpudata/bloodmnist_pbc_64.npz}
SEEDS=${SEEDS:-42,43,44}
JOBS=${JOBS:-3}
BM=${BM:-bloodmnist}
PY=${PY:-python3}  # the Python with bloodmnist's dependencies (frontier.py, gpu_speed.sh)
STEPS=${STEPS:-fastspeed bestwide}
HERE=$(cd "$(dirname "$0")" && pwd)
KNOWN=" fastspeed bestwide bestr18 fast28 best28 ensemble28 student28 reference64 fast64 frontier "
for s in $STEPS; do  # a typo found now, not after the lease's first minutes
  [[ $KNOWN == *" $s "* ]] || { echo "gpu_frontier.sh: unknown step '$s'; steps:$KNOWN" >&2; exit 2; }
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)  # absolute: gpu_speed.sh and the tar run elsewhere
if [ "${SMOKE:-0}" = 1 ]; then
  TINY=(--subset 64 --epochs 1 --set runtime.reports=false --set runtime.threads=1)
  DEADLINE=${DEADLINE:-900}
  T=${STEP_SECONDS:-600}
  DEV=(--device cpu --precision fp32)
else
  TINY=(--set runtime.reports=false --set runtime.tensorboard=false)
  DEADLINE=${DEADLINE:-540}
  T=${STEP_SECONDS:-1500}
  DEV=(--device cuda)
fi
START=$SECONDS

step() {  # step NAME COMMAND...: run within its time limit, log to $OUT/NAME.log, never abort
  local name=$1 left=$((DEADLINE - (SECONDS - START)))
  shift
  local limit=$((left < T ? left : T))
  if [ "$limit" -lt 10 ]; then
    echo "   $name: skipped, ${left} s left of DEADLINE=$DEADLINE" | tee -a "$OUT/commands.txt"
    return
  fi
  echo "== $name (at most $limit s): $*" | tee -a "$OUT/commands.txt"
  local t0=$SECONDS
  timeout --kill-after=20 "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "   $name: exit $? after $((SECONDS - t0)) s" | tee -a "$OUT/commands.txt"
}

study() {  # study NAME DATA RECIPE [train args...]: 3 seeds side by side
  local name=$1 data=$2 recipe=$3
  shift 3
  step "$name" "$BM" study --seeds "$SEEDS" --jobs "$JOBS" --out "$OUT/$name" --recipe "$recipe" \
    --data "$data" "${DEV[@]}" "${TINY[@]}" "$@"
}

nvidia-smi >"$OUT/gpu.txt" 2>&1 || true
for s in $STEPS; do
  case $s in
    fastspeed)  # gpu_speed.sh times the whole command of one run (its own 150-s limit)
      step fastspeed env RUNS="${SPEED_RUNS:-fast:$DATA28}" OUT="$OUT/fastspeed" BM="$BM" PY="$PY" \
        WORK="$OUT/fastspeed-run" RUN_SECONDS=150 bash "$HERE/gpu_speed.sh" ;;
    bestwide) study bestwide "$DATA28" best --set model.width=1.0 ;;
    bestr18) study bestr18 "$DATA28" best --set model.arch=resnet18 --set model.width=1.0 ;;
    fast28) study fast28 "$DATA28" fast ;;
    best28) study best28 "$DATA28" best ;;
    ensemble28)
      step ensemble28 "$BM" ensemble "$OUT"/best28/seed-* --out "$OUT/ensemble28" \
        --data "$DATA28" "${DEV[@]}" ;;
    student28) study student28 "$DATA28" best --set "train.teacher=$OUT/ensemble28" ;;
    reference64) study reference64 "$DATA64" reference ;;
    fast64) study fast64 "$DATA64" fast ;;
    frontier)
      rows=()
      for r in fast28 best28 bestwide bestr18 student28 reference64 fast64; do
        [ -f "$OUT/$r/study.json" ] && rows+=("$r=$OUT/$r/study.json")
      done
      [ -f "$OUT/ensemble28/summary.json" ] && rows+=("ensemble28=$OUT/ensemble28/summary.json")
      # src on the path: on a lent GPU the package runs from the source tree (gpu_prepare.sh)
      [ "${#rows[@]}" -gt 0 ] && step frontier env PYTHONPATH="$(dirname "$HERE")/src" \
        "$PY" "$HERE/frontier.py" "${rows[@]}" \
        --out-json "$OUT/frontier.json" --out-png "$OUT/frontier.png" ;;
  esac
done
# The run folders (histories, summaries, logs) without their checkpoints, in one file
# (written outside $OUT first: a tar may not grow inside the folder it reads)
part=$(mktemp "${TMPDIR:-/tmp}/runs.XXXXXX.tar.gz")
tar --exclude='*.pt' --exclude='./runs.tar.gz' -czf "$part" -C "$OUT" . &&
  mv "$part" "$OUT/runs.tar.gz"
echo "done after $((SECONDS - START)) s: $(date -u +%FT%TZ)" | tee -a "$OUT/commands.txt"
