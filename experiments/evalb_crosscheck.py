"""Cross-check of the parsing scorer (`vaswani_hf.parsing.bracket_scores`) against PYEVALB, an independent EVALB in
Python, on predicted trees as `vaswani-evaluate-parsing --output` writes them (one a line, with the gold tags).

    python experiments/evalb_crosscheck.py runs/ptb_parsing/test_trees.txt ../shared/data/ptb-sample/treebank.zip

PYEVALB 0.1.3 is installed into a temporary folder without its dependencies (they would downgrade the
environment's); `pytablewriter`, which it uses only to print tables, stands in as an empty module. Prints both F1
and the one known difference: PYEVALB matches a bracket repeated in both trees (a unary chain X -> X) once, EVALB
as often as it occurs in both.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import types
from collections import Counter

from vaswani_hf.parsing import bracket_scores, evalb_view, labeled_brackets
from vaswani_hf.treebank import read_treebank, read_trees


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predicted", help="trees, one a line, as vaswani-evaluate-parsing --output writes them")
    parser.add_argument("treebank", help="the zip or folder of wsj_NNNN.mrg files")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"])
    args = parser.parse_args()
    gold = read_treebank(args.treebank)[args.split]
    with open(args.predicted, encoding="utf-8") as file:
        predicted = [read_trees(line)[0] for line in file if line.strip()]
    if len(predicted) != len(gold):
        raise SystemExit(f"{args.predicted}: {len(predicted)} trees for the {len(gold)} of the {args.split} split")
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", folder, "PYEVALB==0.1.3"]
        subprocess.run(command, check=True)
        sys.path.insert(0, folder)
        sys.modules.setdefault("pytablewriter", types.ModuleType("pytablewriter"))
        from PYEVALB import parser as evalb_parser
        from PYEVALB import scorer

        counts, evalb = Counter(), scorer.Scorer()
        for tree, reference in zip(predicted, gold, strict=True):
            result = evalb.score_trees(
                evalb_parser.create_from_bracket_string(evalb_view(reference, reference)),
                evalb_parser.create_from_bracket_string(evalb_view(tree, reference)),
            )
            counts.update(matched=result.matched_brackets, gold=result.gold_brackets, test=result.test_brackets)
            repeated = labeled_brackets(tree, reference) & labeled_brackets(reference, reference)
            counts.update(repeated=sum(count - 1 for count in repeated.values()))
    ours = bracket_scores(predicted, gold)
    report = {
        "sentences": len(gold),
        "ours": {name: ours[name] for name in ("f1", "matched_brackets", "predicted_brackets", "gold_brackets")},
        "pyevalb": {
            "f1": 200 * counts["matched"] / (counts["gold"] + counts["test"]),
            "matched_brackets": counts["matched"],
            "predicted_brackets": counts["test"],
            "gold_brackets": counts["gold"],
        },
        "repeated_matches": counts["repeated"],
        "pyevalb_matches_ours_but_repeated": ours["matched_brackets"] - counts["repeated"] == counts["matched"],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
