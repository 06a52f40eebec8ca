#!/usr/bin/env bash
# The main job on a fresh machine: make .venv, install PyTorch (CPU build) and the package, train the small preset
# on Multi30k En-De from ../shared/data/multi30k for 10 minutes, report test BLEU (sacreBLEU), translate examples.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
. "$venv/bin/activate"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e .
accelerate launch --num_processes 1 --num_machines 1 --cpu --mixed_precision no --dynamo_backend no \
  scripts/train.py recipes/multi30k_en_de_quickstart.yaml
python scripts/translate.py runs/quickstart_en_de \
  "A man in a red shirt is riding a bike." "Two dogs are playing in the snow." "A woman sings on a stage."
