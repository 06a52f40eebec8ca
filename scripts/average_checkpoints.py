"""Average the weights of the last N checkpoints of a run (Sec. 6.1), or of named checkpoint folders.

Thin front of the `vaswani-average` command (vaswani_hf/cli/average.py); see --help."""

from vaswani_hf.cli.average import main

if __name__ == "__main__":
    main()
