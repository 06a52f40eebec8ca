"""Run a benchmark and write its figures to docs/benchmarks/{name}.json and .md.

python scripts/benchmark.py data      # preprocessing time and padding of token batches (Multi30k)
python scripts/benchmark.py speed --trained_model runs/multi30k_en_de_small   # ours vs MarianMTModel, CTranslate2
python scripts/benchmark.py quality --trained_model runs/multi30k_en_de_small # BLEU of int8 and CTranslate2
python scripts/benchmark.py bf16 --trained_model runs/multi30k_en_de_small \
    --curves float32=runs/curve_fp32,bfloat16=runs/curve_bf16  # bfloat16 training, decoding, curves (bf16 CPUs)
python scripts/benchmark.py translate --trained_model runs/quickstart_en_de   # Multi30k test end to end: ours
                                       # (pipeline, evaluate), Marian, CTranslate2 float32 / int8; beam 4
python scripts/benchmark.py projection --trained_model runs/quickstart_en_de  # the decoding loops' projection
                                       # layout by rows, and the test set translated with each layout rule
python scripts/benchmark.py profile    # where the base training step and beam 4 spend their time
python scripts/benchmark.py training_ab  # the training step with and without each change to it (dropout masks,
                                         # the fused loss at --before, bf16 attention), side by side
nice python scripts/benchmark.py scale --sizes 450000,1500000,4500000  # the data pipeline and first updates at
                                                                       # WMT14 size (a corpus made from Multi30k)
"""

import argparse
import json
import shlex
import sys
from pathlib import Path

from .bf16 import bf16_benchmark
from .harness import data_benchmark, quality_benchmark, scale_benchmark, speed_benchmark, write_tables
from .operator_profile import profile_benchmark
from .projection import ROWS, projection_benchmark
from .training_ab import training_ab_benchmark
from .translate import ENGINES, translate_benchmark

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "benchmark",
        choices=["data", "speed", "quality", "scale", "bf16", "translate", "projection", "profile", "training_ab"],
    )
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="folder of Moses-style Multi30k files")
    parser.add_argument("--max_tokens", type=int, help="tokens per batch (default: data 4096, scale 6250)")
    parser.add_argument("--trained_model", help="a trained small En-De model folder (speed: CTranslate2 rows)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output_dir", default="docs/benchmarks")
    scale = parser.add_argument_group("scale")
    scale.add_argument("--sizes", default="450000,1500000,4500000", help="comma-separated numbers of pairs")
    scale.add_argument("--num_proc", type=int, default=2, help="datasets.map processes for preprocessing")
    scale.add_argument("--training_steps", type=int, default=20, help="updates at the largest size (0: none)")
    scale.add_argument("--processes", type=int, default=1, help="training processes (2: torchrun, gloo)")
    scale.add_argument("--preset", default="base", help="also profile's")
    scale.add_argument("--config_overrides", help="VaswaniConfig field=value pairs for the training run")
    scale.add_argument("--vocab_size", type=int, default=37000, help="also profile's")
    scale.add_argument("--work_dir", help="where the temporary corpus goes (default: the system's temporary folder)")
    bf16 = parser.add_argument_group("bf16")
    bf16.add_argument("--presets", default="base,small", help="presets of the training step under autocast")
    bf16.add_argument("--speed_sentences", type=int, default=128, help="test sources timed per decoding variant")
    bf16.add_argument("--bleu_sentences", type=int, help="test sentences scored per variant (default: all)")
    bf16.add_argument("--curves", help="LABEL=RUN_DIR,LABEL=RUN_DIR: training runs whose loss curves to plot")
    translate = parser.add_argument_group("translate, projection")
    translate.add_argument("--batch_size", type=int, default=64, help="sentences per batch, every engine")
    translate.add_argument("--sentences", type=int, help="translate only the first N test sentences (quick runs)")
    translate.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, among {', '.join(ENGINES)}")
    translate.add_argument(
        "--no_before", action="store_true", help="leave out ours as it decoded before issue 22 (ours_*_before)"
    )
    translate.add_argument(
        "--one_process",
        action="store_true",
        help="translate: every engine in one process (by default each CTranslate2 engine runs in its own)",
    )
    projection = parser.add_argument_group("projection")
    projection.add_argument("--rows", default=",".join(map(str, ROWS)), help="row counts, comma-separated")
    training_ab = parser.add_argument_group("training_ab")
    training_ab.add_argument("--before", default="9af73e4", help="the git commit whose fused loss to compare with")
    args = parser.parse_args(argv)
    if args.benchmark == "data":
        results = {"data": data_benchmark(args.corpus, max_tokens=args.max_tokens or 4096)}
    elif args.benchmark == "speed":
        results = speed_benchmark(args.trained_model, repeats=args.repeats)
    elif args.benchmark == "bf16":
        results = bf16_benchmark(
            args.trained_model,
            args.corpus,
            repeats=args.repeats,
            presets=tuple(preset for preset in args.presets.split(",") if preset),
            speed_sentences=args.speed_sentences,
            bleu_sentences=args.bleu_sentences,
            curves=dict(item.split("=", 1) for item in args.curves.split(",")) if args.curves else None,
            figure=Path(args.output_dir) / "bf16_curves.png",
        )
    elif args.benchmark == "translate":
        if args.trained_model is None:
            parser.error("translate needs --trained_model")
        engines = tuple(args.engines.split(","))
        if unknown := set(engines) - set(ENGINES):
            parser.error(f"unknown engines {sorted(unknown)}: choose among {', '.join(ENGINES)}")
        results = translate_benchmark(
            args.trained_model,
            args.corpus,
            batch_size=args.batch_size,
            repeats=args.repeats,
            sentences=args.sentences,
            before=not args.no_before,
            engines=engines,
            one_process=args.one_process,
        )
    elif args.benchmark == "projection":
        rows = args.rows.split(",")
        if not all(count.isdigit() and int(count) > 0 for count in rows):
            parser.error(f"--rows takes positive whole numbers separated by commas, got {args.rows!r}")
        results = projection_benchmark(
            args.trained_model,
            args.corpus,
            rows=tuple(int(count) for count in rows),
            repeats=args.repeats,
            batch_size=args.batch_size,
            sentences=args.sentences,
        )
    elif args.benchmark == "profile":
        results = profile_benchmark(args.preset, args.vocab_size, repeats=args.repeats)
    elif args.benchmark == "training_ab":
        results = training_ab_benchmark(args.preset, args.vocab_size, repeats=args.repeats, before=args.before)
    elif args.benchmark == "scale":
        results = scale_benchmark(
            args.corpus,
            [int(size) for size in args.sizes.split(",")],
            work_dir=args.work_dir,
            vocab_size=args.vocab_size,
            num_proc=args.num_proc,
            max_tokens=args.max_tokens or 6250,
            training_steps=args.training_steps,
            processes=args.processes,
            preset=args.preset,
            config_overrides=args.config_overrides,
        )
    else:
        if args.trained_model is None:
            parser.error("quality needs --trained_model")
        results = {"quality": quality_benchmark(args.trained_model, args.corpus)}
    arguments = sys.argv[1:] if argv is None else argv
    command = "python scripts/benchmark.py " + " ".join(shlex.quote(a) for a in arguments)
    path = write_tables(args.benchmark, results, args.output_dir, command)
    print(json.dumps(results, indent=2))
    print(f"written to {path} and {path.with_suffix('.md')}")
