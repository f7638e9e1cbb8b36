#!/usr/bin/env bash
# Issue #15 on a lent GPU: the reference recipe at 64 px with each stem (s2 = auto, imagenet, s1),
# seeds 42/43/44: nine runs at once on one GPU (a ResNet-18 on 16-32 px maps leaves most of an
# H200 idle, so running them side by side costs far less than one after another), bounded by
# DEADLINE seconds so that the script ends inside a 10-minute device call.
#
#   DATA64=.gpudata/p64.npz OUT=$OUT bash benchmarks/gpu_reference64.sh
#   SMOKE=1 OUT=/tmp/smoke DATA64=../shared/data/bloodmnist_pbc_64.npz \
#       bash benchmarks/gpu_reference64.sh                       # tiny dry run on a CPU
#
# Writes $OUT/reference64-<stem>.log per study and $OUT/reference64-runs.tar.gz: every run folder
# without its checkpoints (summary.json, history.csv, predictions, resolved config), from which
# `benchmarks/aggregate_runs.py` and `bloodmnist report` rebuild the studies and reports. A study
# cut by the deadline leaves its runs' history up to the last finished epoch.
set -uo pipefail
OUT=${OUT:-gpu-results}
DATA64=${DATA64:-.gpudata/p64.npz}
SEEDS=${SEEDS:-42,43,44}
STEMS=${STEMS:-s2 imagenet s1}
DEADLINE=${DEADLINE:-420}
WORK=${WORK:-/tmp/gpu-runs}   # run folders; checkpoints (45 MB each) stay here
BM=${BM:-bloodmnist}
mkdir -p "$OUT" "$WORK"
if [ "${SMOKE:-0}" = 1 ]; then
  EXTRA=(--subset 64 --epochs 1 --device cpu --precision fp32 --set runtime.threads=1)
else
  EXTRA=(--device cuda)
fi
nvidia-smi >"$OUT/gpu.txt" 2>&1 || true
t0=$SECONDS
pids=()
for stem in $STEMS; do
  echo "== reference64-$stem: $BM study --seeds $SEEDS --jobs 3 --recipe reference --data $DATA64" \
    "--set model.stem=$stem ${EXTRA[*]}" | tee -a "$OUT/commands.txt"
  timeout --kill-after=30 "$DEADLINE" "$BM" study --seeds "$SEEDS" --jobs 3 \
    --out "$WORK/reference64-$stem" --recipe reference --data "$DATA64" \
    --set "model.stem=$stem" --set runtime.reports=false --set runtime.tensorboard=false \
    "${EXTRA[@]}" >"$OUT/reference64-$stem.log" 2>&1 &
  pids+=("$stem:$!")
done
failed=0
for entry in "${pids[@]}"; do  # each study's exit status (124: cut by the deadline)
  wait "${entry#*:}"
  rc=$?
  echo "   reference64-${entry%%:*}: exit $rc" | tee -a "$OUT/commands.txt"
  [ "$rc" = 0 ] || failed=1
done
echo "all studies ended after $((SECONDS - t0)) s" | tee -a "$OUT/commands.txt"
nvidia-smi >>"$OUT/gpu.txt" 2>&1 || true
tar --exclude='*.pt' -czf "$OUT/reference64-runs.tar.gz" -C "$WORK" .
exit "$failed"
