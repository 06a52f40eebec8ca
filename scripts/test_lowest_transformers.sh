#!/usr/bin/env bash
# tests/test_generation.py (our decoding loops give transformers' own tokens) on the lowest transformers release they
# are recorded as tested on (generation_vaswani.TESTED_TRANSFORMERS_VERSIONS; pyproject's lower bound), when pip
# installed another one in .venv: in a second virtualenv, .venv-lowest, that holds only that transformers and reads
# every other package from .venv, so the run costs one download. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. "${VENV:-.venv}/bin/activate"
lowest=$(python -c "
from packaging.version import Version
from vaswani_hf.generation_vaswani import TESTED_TRANSFORMERS_VERSIONS
print(min(TESTED_TRANSFORMERS_VERSIONS, key=Version))")
installed=$(python -c "import transformers; print(transformers.__version__)")
if [ "$lowest" = "$installed" ]; then
  echo "transformers $installed, the lowest tested release, is the one installed: tests/test_generation.py ran on it"
  exit 0
fi
packages=$(python -c "import sysconfig; print(sysconfig.get_path('purelib'))")
lowest_venv="${LOWEST_VENV:-.venv-lowest}"
[ -x "$lowest_venv/bin/python" ] || python -m venv "$lowest_venv"
lowest_packages=$("$lowest_venv/bin/python" -c "import sysconfig; print(sysconfig.get_path('purelib'))")
# A .pth line that starts with `import` runs at start-up: .venv's packages come after this venv's own, and its .pth
# files are read too (the editable install of vaswani_hf).
echo "import site; site.addsitedir('$packages')" > "$lowest_packages/dot_venv_packages.pth"
"$lowest_venv/bin/python" -m pip install --quiet --no-deps "transformers==$lowest"
echo "tests/test_generation.py on transformers $lowest (installed in .venv: $installed)"
"$lowest_venv/bin/python" -c "import sys, transformers; assert transformers.__version__ == sys.argv[1]" "$lowest"
"$lowest_venv/bin/python" -m pytest tests/test_generation.py "$@"
