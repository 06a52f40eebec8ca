"""Run a benchmark and write its figures to docs/benchmarks/{name}.json and .md.

python scripts/benchmark.py data      # preprocessing time and padding of token batches (Multi30k)
python scripts/benchmark.py speed --trained_model runs/multi30k_en_de_small   # ours vs MarianMTModel, CTranslate2
python scripts/benchmark.py quality --trained_model runs/multi30k_en_de_small # BLEU of int8 and CTranslate2
python scripts/benchmark.py tokenizer_scale   # BPE learning time and memory on WMT14-sized corpora (37k vocabulary)
"""

import argparse
import json
import shlex
import sys
from pathlib import Path

from vaswani_hf.benchmark import (
    data_benchmark,
    quality_benchmark,
    speed_benchmark,
    tokenizer_scale_benchmark,
    write_tables,
)

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", choices=["data", "speed", "quality", "tokenizer_scale"])
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="folder of Moses-style Multi30k files")
    parser.add_argument("--max_tokens", type=int, default=4096)
    parser.add_argument("--trained_model", help="a trained small En-De model folder (speed: CTranslate2 rows)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="500000,1500000,4500000", help="tokenizer_scale: sentence pairs per run")
    parser.add_argument("--vocab_size", type=int, default=37000, help="tokenizer_scale: the WMT14 En-De BPE")
    parser.add_argument("--max_minutes", type=float, default=15.0, help="tokenizer_scale: larger sizes extrapolated")
    parser.add_argument("--output_dir", default="docs/benchmarks")
    args = parser.parse_args()
    if args.benchmark == "data":
        results = {"data": data_benchmark(args.corpus, max_tokens=args.max_tokens)}
    elif args.benchmark == "tokenizer_scale":
        sizes = tuple(int(size) for size in args.sizes.split(","))
        results = tokenizer_scale_benchmark(args.corpus, sizes, args.vocab_size, args.max_minutes)
    elif args.benchmark == "speed":
        results = speed_benchmark(args.trained_model, repeats=args.repeats)
    else:
        if args.trained_model is None:
            parser.error("quality needs --trained_model")
        results = {"quality": quality_benchmark(args.trained_model, args.corpus)}
    command = "python scripts/benchmark.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    path = write_tables(args.benchmark, results, args.output_dir, command)
    print(json.dumps(results, indent=2))
    print(f"written to {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
