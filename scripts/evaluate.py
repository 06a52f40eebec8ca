"""Translate a source file with a trained model and score it against a reference file with sacreBLEU.

Thin front of the `vaswani-evaluate` command (vaswani_hf/cli/evaluate.py); see --help."""

from vaswani_hf.cli.evaluate import main

if __name__ == "__main__":
    main()
