# Sourced by the fresh-machine commands: make and enter a virtualenv (.venv, or $VENV), install PyTorch 2.13.0 first
# (a bare `torch` requirement would pull the newest, multi-GB CUDA build), then the package with $EXTRAS.
# PyPI's Linux wheel of torch is the CUDA build; TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu takes the CPU one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv="${VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
. "$venv/bin/activate"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
python -m pip install --quiet -e ".${EXTRAS:-}"
