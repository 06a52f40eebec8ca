#!/usr/bin/env bash
# The GPU check on a CUDA machine without network, from a repository copy carrying .gpu_carry/ (made here by
# scripts/prepare_gpu_carry.sh): the carried wheels go into /tmp/gpu_check_site, before the image's own packages on
# PYTHONPATH (nothing of the image is changed), then benchmarks/gpu_check.py runs with the arguments given
# (--dry: toy sizes on the CPU, with the packages at hand; tests/test_gpu_check.py runs it so).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
python=python3
if [[ " $* " != *" --dry "* ]]; then
  site=/tmp/gpu_check_site
  python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    .gpu_carry/wheels/*.whl
  export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
else
  python=${PYTHON:-python}
fi
exec "$python" benchmarks/gpu_check.py "$@"
