"""Average the weights of the last N checkpoints of a run (Sec. 6.1), or of named checkpoint folders.

vaswani-average --run_dir runs/multi30k_en_de_small --last 5 --output_dir averaged
vaswani-average --checkpoints ckpt-a ckpt-b --output_dir averaged

The checkpoints must be of one model (their configs are compared); the output is a new model folder (not one of the
checkpoints, nor inside or holding one), and an existing non-empty one is refused unless --overwrite is given.
"""

import argparse
import sys

from vaswani_hf.averaging import average_checkpoint_folders
from vaswani_hf.checkpoints import complete_checkpoints
from vaswani_hf.cli import input_errors_as_messages


def at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of checkpoints, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (how many of the newest checkpoints), got {value}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run_dir", help="a training output folder with checkpoint-* folders")
    source.add_argument("--checkpoints", nargs="+", help="checkpoint folders, oldest first")
    parser.add_argument(
        "--last", type=at_least_one, help="with --run_dir: how many of the newest complete checkpoints (default 5)"
    )
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--overwrite", action="store_true", help="replace output_dir if it exists and is not empty")
    args = parser.parse_args(argv)
    if args.checkpoints and args.last is not None:
        parser.error("--last applies to --run_dir; with --checkpoints, name the folders to average")
    if args.checkpoints:
        folders = args.checkpoints
    else:
        last = 5 if args.last is None else args.last
        complete = complete_checkpoints(args.run_dir)
        if not complete:
            raise SystemExit(f"error: no complete checkpoints in {args.run_dir}")
        if len(complete) < last:
            print(
                f"{args.run_dir} has {len(complete)} complete checkpoints, not {last}: averaging those",
                file=sys.stderr,
            )
        folders = complete[-last:]
    if len(folders) == 1:
        print(f"one checkpoint only: {args.output_dir} gets its weights unchanged", file=sys.stderr)
    with input_errors_as_messages():
        average_checkpoint_folders(folders, args.output_dir, overwrite=args.overwrite)
    print(f"averaged {len(folders)} checkpoints into {args.output_dir}: " + ", ".join(map(str, folders)))


if __name__ == "__main__":
    main()
