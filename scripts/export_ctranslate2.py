"""Export a trained model to CTranslate2, with its tokenizer files beside it.

Thin front of the `vaswani-export` command (vaswani_hf/cli/export.py); see --help."""

from vaswani_hf.cli.export import main

if __name__ == "__main__":
    main()
