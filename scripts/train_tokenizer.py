"""Learn the shared BPE vocabulary from a parallel corpus and save it as a transformers tokenizer folder.

Thin front of the `vaswani-train-tokenizer` command (vaswani_hf/cli/train_tokenizer.py); see --help."""

from vaswani_hf.cli.train_tokenizer import main

if __name__ == "__main__":
    main()
