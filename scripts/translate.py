"""Translate sentences through `pipeline("translation")` (the model's decoding: beam 4, length penalty 0.6).

Thin front of the `vaswani-translate` command (vaswani_hf/cli/translate.py); see --help."""

from vaswani_hf.cli.translate import main

if __name__ == "__main__":
    main()
