"""Train a Vaswani Transformer with the paper's recipe through Seq2SeqTrainer.

Thin front of the `vaswani-train` command (vaswani_hf/cli/train.py); see --help."""

from vaswani_hf.cli.train import main

if __name__ == "__main__":
    main()
