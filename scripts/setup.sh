#!/usr/bin/env bash
# Set up a virtual environment in .venv with the `star` package installed (editable) and its test tools.
# torch: an already-installed build (e.g. CUDA) is kept; otherwise the pinned CPU-friendly release is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test]"
echo "star installed in $(pwd)/.venv (torch $(python -c 'import torch; print(torch.__version__)'))"
