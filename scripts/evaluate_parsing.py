"""Parse a treebank split with a trained model (beam 21, length penalty 0.3, source length + 300: Sec. 6.3) and
score it with labeled-bracket F1.

Thin front of the `vaswani-evaluate-parsing` command (vaswani_hf/cli/evaluate_parsing.py); see --help."""

from vaswani_hf.cli.evaluate_parsing import main

if __name__ == "__main__":
    main()
