#!/usr/bin/env bash
# The test suite on a fresh machine: makes a virtualenv (.venv, or $VENV), installs the CPU build of PyTorch first
# (a bare `torch` requirement would pull a multi-GB CUDA build), then the package with its dev extras, then runs
# ruff and pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
. "$venv/bin/activate"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[dev]"
ruff check vaswani_hf scripts tests
python -m pytest "$@"
