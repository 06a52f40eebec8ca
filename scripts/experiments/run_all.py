"""Run the paper's experiments at small scale and write their figures, JSON files and report.md.

OMP_NUM_THREADS=1 python scripts/experiments/run_all.py --budget quick --output_dir docs/experiments
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # experiments/ is a folder of the clone, not installed

from experiments.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
