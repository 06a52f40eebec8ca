"""Average the weights of the last N checkpoints of a run (Sec. 6.1), or of named checkpoint folders.

vaswani-average --run_dir runs/multi30k_en_de_small --last 5 --output_dir averaged
vaswani-average --checkpoints ckpt-a ckpt-b --output_dir averaged
"""

import argparse

from vaswani_hf.training import average_checkpoint_folders, complete_checkpoints


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run_dir", help="a training output folder with checkpoint-* folders")
    source.add_argument("--checkpoints", nargs="+", help="checkpoint folders, oldest first")
    parser.add_argument("--last", type=int, default=5, help="with --run_dir: how many of the newest to average")
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)
    folders = args.checkpoints or complete_checkpoints(args.run_dir)[-args.last :]
    if not folders:
        raise SystemExit(f"no complete checkpoints in {args.run_dir}")
    average_checkpoint_folders(folders, args.output_dir)
    print(f"averaged {len(folders)} checkpoints into {args.output_dir}: " + ", ".join(map(str, folders)))


if __name__ == "__main__":
    main()
