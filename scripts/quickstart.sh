#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, train the small preset on Multi30k En-De from
# ../shared/data/multi30k (or, when that folder is missing, bentrevett/multi30k from the Hub) for 10 minutes,
# report test BLEU (sacreBLEU), translate examples. Run again, it resumes the same run (a finished one is only
# evaluated again) instead of mixing a new run into runs/quickstart_en_de.
. "$(dirname "$0")/setup_env.sh"
accelerate launch --num_processes 1 --num_machines 1 --cpu --mixed_precision no --dynamo_backend no \
  scripts/train.py recipes/multi30k_en_de_quickstart.yaml --resume_from_checkpoint last
python scripts/translate.py runs/quickstart_en_de \
  "A man in a red shirt is riding a bike." "Two dogs are playing in the snow." "A woman sings on a stage."
