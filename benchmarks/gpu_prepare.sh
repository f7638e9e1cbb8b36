#!/usr/bin/env bash
# First lines of a lent-GPU call: make `bloodmnist` runnable from the source tree with the
# machine's own torch (its image has torch, numpy, scipy, scikit-learn, matplotlib; no pip
# index there). Run from the repository root:
#
#   bash benchmarks/gpu_prepare.sh && PATH=$PWD/.gpudata/bin:$PATH ... bash benchmarks/gpu_frontier.sh
#
# Prepared here, carried with `carry: [".gpudata"]` (the folder is git-ignored; 64 MiB at most):
#   .gpudata/bloodmnist_pbc_28.npz   cp ../shared/data/bloodmnist_pbc_28.npz .gpudata/
#   .gpudata/wheels/*.whl            pip download --no-deps -d .gpudata/wheels pooch platformdirs \
#                                        openpyxl et_xmlfile captum   (pure Python, missing there)
# Writes .gpudata/bin/bloodmnist, a wrapper that runs `python -m bloodmnist` from ./src (the
# subprocesses of `study` inherit its PYTHONPATH), and prints the versions it will run with.
set -euo pipefail
PY=${PY:-python3}
ROOT=$(pwd)
[ -f "$ROOT/src/bloodmnist/__main__.py" ] || {
  echo "gpu_prepare.sh: run it from the repository root" >&2
  exit 2
}
shopt -s nullglob
wheels=("$ROOT"/.gpudata/wheels/*.whl)
if [ "${#wheels[@]}" -gt 0 ]; then
  # --no-deps --no-index: nothing is fetched, and the image's own torch is never replaced
  "$PY" -m pip install --no-deps --no-index --quiet "${wheels[@]}"
fi
py=$(command -v "$PY")  # absolute, not resolved: a venv's python must stay the venv's
[[ $py == /* ]] || py="$(cd "$(dirname "$py")" && pwd)/$(basename "$py")"
mkdir -p "$ROOT/.gpudata/bin"
cat >"$ROOT/.gpudata/bin/bloodmnist" <<EOF
#!/usr/bin/env bash
export PYTHONPATH="$ROOT/src\${PYTHONPATH:+:\$PYTHONPATH}"
exec "$py" -m bloodmnist "\$@"
EOF
chmod +x "$ROOT/.gpudata/bin/bloodmnist"
"$ROOT/.gpudata/bin/bloodmnist" --version
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
