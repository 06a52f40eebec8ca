# Sourced by the fresh-machine commands: make and enter a virtualenv (.venv, or $VENV), install the CPU build of
# PyTorch first (a bare `torch` requirement would pull a multi-GB CUDA build), then the package with $EXTRAS.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv="${VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
. "$venv/bin/activate"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".${EXTRAS:-}"
