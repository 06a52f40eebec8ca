"""Run the paper's experiments at small scale and write their figures, JSON files and report.md.

OMP_NUM_THREADS=1 python scripts/experiments/run_all.py --budget quick --output_dir docs/experiments
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # experiments/ is a folder of the clone, not installed

from experiments import BUDGETS, DEFAULT_DATA_DIR, EXPERIMENTS, run_all  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="quick", help="quick: about 20 minutes")
    parser.add_argument("--output_dir", default="docs/experiments")
    parser.add_argument("--data_dir", default=DEFAULT_DATA_DIR, help="Multi30k: {train,val,test_2016_flickr}.{en,de}")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(EXPERIMENTS)}")
    args = parser.parse_args()
    only = args.only.split(",") if args.only else None
    print(run_all(args.budget, args.output_dir, args.data_dir, only))


if __name__ == "__main__":
    main()
