#!/usr/bin/env bash
# The test suite on a fresh machine: sets up .venv with the dev extras, then runs ruff and pytest.
# Extra arguments go to pytest.
EXTRAS="[dev]" . "$(dirname "$0")/setup_env.sh"
ruff check vaswani_hf benchmarks experiments scripts tests
python -m pytest "$@"
