"""Parse a treebank split with a trained model (beam 21, length penalty 0.3, source length + 300: Sec. 6.3) and
score it with labeled-bracket F1 in the EVALB convention, beside a right-branching baseline. Decoding is constrained
to well-formed trees over each sentence's words (with the training trees' labels) unless --unconstrained, hypotheses
ranked by their structure only (the next word piece scored as a word slot) unless --no_word_slots.

vaswani-evaluate-parsing runs/ptb_parsing ../shared/data/ptb-sample/treebank.zip --metrics_file f1.json \
    --output runs/ptb_parsing/test_trees.txt
"""

import argparse
import json

from vaswani_hf.cli import input_errors_as_messages
from vaswani_hf.parsing import PARSING_LENGTH_PENALTY, PARSING_NUM_BEAMS, evaluate_parsing_run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a saved model folder (with its tokenizer)")
    parser.add_argument("treebank", help="a zip or folder of wsj_NNNN.mrg files")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"])
    parser.add_argument("--metrics_file", help="write the scores as JSON here")
    parser.add_argument("--limit", type=int, help="score only the first N sentences of the split")
    parser.add_argument("--batch_size", type=int, default=16, help="sentences decoded together (times the beams)")
    parser.add_argument("--num_beams", type=int, default=PARSING_NUM_BEAMS, help="Sec. 6.3: 21")
    parser.add_argument("--length_penalty", type=float, default=PARSING_LENGTH_PENALTY, help="Sec. 6.3: 0.3")
    parser.add_argument(
        "--unconstrained",
        action="store_true",
        help="decode freely (malformed outputs are repaired before scoring) instead of only well-formed trees",
    )
    parser.add_argument(
        "--no_word_slots",
        action="store_true",
        help="rank constrained hypotheses by the model's score of the sentence's exact next piece, not as a word slot "
        "(the model's mass on any word piece there, the default: the words are given, as with XX placeholders)",
    )
    parser.add_argument(
        "--output",
        help="write the predicted trees here, one per line with the gold tags, for EVALB (treebank text: keep it out "
        "of the repository)",
    )
    args = parser.parse_args(argv)
    for name in ("batch_size", "num_beams", "limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    with input_errors_as_messages():
        metrics = evaluate_parsing_run(
            args.model,
            args.treebank,
            args.split,
            args.metrics_file,
            limit=args.limit,
            batch_size=args.batch_size,
            num_beams=args.num_beams,
            length_penalty=args.length_penalty,
            constrained=not args.unconstrained,
            output_file=args.output,
            word_slots=not args.no_word_slots,
        )
    print(json.dumps({name: metrics[name] for name in ("parser", "right_branching")}, indent=2))


if __name__ == "__main__":
    main()
