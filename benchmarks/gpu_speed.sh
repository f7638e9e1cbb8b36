#!/usr/bin/env bash
# Issue #13 on a lent GPU: the wall time of whole training runs, each alone on the GPU, one
# after another (process start, training, validation, final test with TTA, no reports).
#
#   RUNS="fast:.gpudata/c/bloodmnist_pbc_28.npz fast:.gpudata/p64.npz" OUT=$OUT \
#       bash benchmarks/gpu_speed.sh
#   SMOKE=1 OUT=/tmp/smoke RUNS="fast:../shared/data/bloodmnist_pbc_28.npz" \
#       bash benchmarks/gpu_speed.sh                              # tiny dry run on a CPU
#
# RUNS is a list of RECIPE:NPZ; each is trained with seed SEED (42). Writes $OUT/speed.tsv
# (recipe, data, wall seconds of the command, train_seconds and train_pflop from summary.json,
# test accuracy with TTA) and $OUT/speed-runs.tar.gz (the run folders without checkpoints).
set -uo pipefail
OUT=${OUT:-gpu-results}
RUNS=${RUNS:?RUNS=RECIPE:NPZ ...}
SEED=${SEED:-42}
WORK=${WORK:-/tmp/gpu-speed}
BM=${BM:-bloodmnist}
PY=${PY:-python3}
mkdir -p "$OUT" "$WORK"
if [ "${SMOKE:-0}" = 1 ]; then
  EXTRA=(--subset 64 --epochs 1 --device cpu --precision fp32)
else
  EXTRA=(--device cuda)
fi
printf 'recipe\tdata\twall_s\ttrain_seconds\ttrain_pflop\ttest_acc_tta\n' >"$OUT/speed.tsv"
for item in $RUNS; do
  recipe=${item%%:*}
  data=${item#*:}
  name=$recipe-$(basename "$data" .npz)
  t0=$EPOCHREALTIME
  "$BM" train --recipe "$recipe" --data "$data" --seed "$SEED" --set runtime.reports=false \
    --set runtime.tensorboard=false --set "runtime.out=$WORK" --set "runtime.name=$name" \
    "${EXTRA[@]}" >"$OUT/$name.log" 2>&1
  rc=$?
  t1=$EPOCHREALTIME
  run=$(ls -td "$WORK"/*"$name" | head -1)
  "$PY" - "$run/summary.json" "$recipe" "$data" "$t0" "$t1" "$rc" >>"$OUT/speed.tsv" <<'PYEOF'
import json, sys
path, recipe, data, t0, t1, rc = sys.argv[1:]
wall = float(t1) - float(t0)
try:
    s = json.load(open(path))
except OSError:
    s = {}
row = [recipe, data, f"{wall:.1f}", s.get("train_seconds", f"exit {rc}"),
       s.get("train_pflop", ""), s.get("test_acc_tta", "")]
print("\t".join(str(v) for v in row))
PYEOF
done
nvidia-smi >"$OUT/gpu-speed.txt" 2>&1 || true
tar --exclude='*.pt' -czf "$OUT/speed-runs.tar.gz" -C "$WORK" .
cat "$OUT/speed.tsv"
