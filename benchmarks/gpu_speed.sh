#!/usr/bin/env bash
# Issue #13 on a lent GPU: the wall time of whole training runs, each alone on the GPU, one
# after another (process start, training, validation, final test with TTA, no reports).
#
#   RUNS="fast:.gpudata/c/bloodmnist_pbc_28.npz fast:.gpudata/p64.npz" OUT=$OUT \
#       bash benchmarks/gpu_speed.sh
#   SMOKE=1 OUT=/tmp/smoke RUNS="fast:../shared/data/bloodmnist_pbc_28.npz" \
#       bash benchmarks/gpu_speed.sh                              # tiny dry run on a CPU
#
# RUNS is a list of RECIPE:NPZ[:KEY=VALUE;...] (the optional third field: `--set` overrides
# separated by `;`, e.g. fast:p28.npz:runtime.compile=true to time torch.compile; no `:` in
# the NPZ path); each is trained with seed SEED (42), at most RUN_SECONDS (500)
# each. Writes $OUT/speed.tsv (recipe, data, exit status, the run's status, wall seconds of the
# command, train_seconds and train_pflop from summary.json, test accuracy with TTA; a row per
# run, also for one that failed or was cut) and $OUT/speed-runs.tar.gz (the run folders without
# checkpoints).
set -uo pipefail
OUT=${OUT:-gpu-results}
RUNS=${RUNS:?RUNS=RECIPE:NPZ[:KEY=VALUE;...] ...}
set -f  # RUNS is split on spaces only: a value like [2/3,3/2] is not a glob
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
printf 'recipe\tdata\trc\tstatus\twall_s\ttrain_seconds\ttrain_pflop\ttest_acc_tta\n' \
  >"$OUT/speed.tsv"
i=0
failed=0
for item in $RUNS; do
  i=$((i + 1))
  IFS=: read -r recipe data sets <<<"$item"
  name=$recipe-$(basename "$data" .npz)${sets:+-$(printf %s "$sets" | tr -c 'A-Za-z0-9.=\n-' _)}
  setargs=()
  IFS=';' read -ra kvs <<<"${sets:-}"
  for kv in "${kvs[@]}"; do [ -n "$kv" ] && setargs+=(--set "$kv"); done
  out="$WORK/$i-$name"  # its own folder: a failed run never reports an older run's summary
  t0=$EPOCHREALTIME
  timeout --kill-after=30 "${RUN_SECONDS:-500}" "$BM" train --recipe "$recipe" --data "$data" \
    --seed "$SEED" --out "$out" --set runtime.reports=false --set runtime.tensorboard=false \
    "${setargs[@]}" "${EXTRA[@]}" >"$OUT/$i-$name.log" 2>&1
  rc=$?
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
  t1=$EPOCHREALTIME
  "$PY" - "$out/summary.json" "$recipe${sets:+:$sets}" "$data" "$t0" "$t1" "$rc" \
    >>"$OUT/speed.tsv" <<'PYEOF'
import json, sys
path, recipe, data, t0, t1, rc = sys.argv[1:]
try:
    s = json.load(open(path))
except (OSError, ValueError):
    s = {}
row = [recipe, data, rc, s.get("status", "no summary"), f"{float(t1) - float(t0):.1f}",
       s.get("train_seconds", ""), s.get("train_pflop", ""), s.get("test_acc_tta", "")]
print("\t".join(str(v) for v in row))
PYEOF
done
nvidia-smi >"$OUT/gpu-speed.txt" 2>&1 || true
tar --exclude='*.pt' -czf "$OUT/speed-runs.tar.gz" -C "$WORK" .
cat "$OUT/speed.tsv"
exit $((failed > 0))  # a failed training is not a successful step (its row says why)
