"""Run the paper's experiments at small scale and write their figures, JSON files and report.md.

OMP_NUM_THREADS=1 python scripts/experiments/run_all.py --budget quick --output_dir docs/experiments
"""

import argparse

from experiments import BUDGETS, DEFAULT_DATA_DIR, EXPERIMENTS, run_all


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="quick", help="quick: budgeted for 20 minutes")
    parser.add_argument("--output_dir", default="docs/experiments")
    parser.add_argument("--data_dir", default=DEFAULT_DATA_DIR, help="Multi30k: {train,val,test_2016_flickr}.{en,de}")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(EXPERIMENTS)}")
    args = parser.parse_args(argv)
    only = args.only.split(",") if args.only else None
    print(run_all(args.budget, args.output_dir, args.data_dir, only))
