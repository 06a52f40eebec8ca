"""Run a benchmark and write its figures to files: `python scripts/benchmark.py data`."""

import argparse
import json
from pathlib import Path

from vaswani_hf.benchmark import data_benchmark, write_results

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("benchmark", choices=["data"])
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="folder of Moses-style Multi30k files")
    parser.add_argument("--max_tokens", type=int, default=4096)
    parser.add_argument("--output_dir", default="docs/benchmarks")
    args = parser.parse_args()
    results = data_benchmark(args.corpus, max_tokens=args.max_tokens)
    path = write_results(args.benchmark, results, args.output_dir)
    print(json.dumps(results, indent=2))
    print(f"written to {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
