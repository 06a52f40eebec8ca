"""Translate sentences through `pipeline("translation")` (the model's decoding: beam 4, length penalty 0.6).

vaswani-translate runs/quickstart_en_de "A man rides a bike." "Two dogs play in the snow."
vaswani-translate runs/quickstart_en_de < sentences.txt
"""

import argparse
import sys

from transformers import pipeline

import vaswani_hf  # noqa: F401  (registers the model and the translation pipeline)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a saved model folder (with its tokenizer) or Hub id")
    parser.add_argument("sentences", nargs="*", help="sentences to translate; standard input if none")
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args(argv)
    sentences = args.sentences or [line.rstrip("\n") for line in sys.stdin]
    translator = pipeline("translation", model=args.model)
    for source, output in zip(sentences, translator(sentences, batch_size=args.batch_size), strict=True):
        print(f"{source}\n  -> {output['translation_text']}")


if __name__ == "__main__":
    main()
