"""Translate sentences with a trained model (the paper's decoding: beam 4, length penalty 0.6).

python scripts/translate.py runs/quickstart_en_de "A man rides a bike." "Two dogs play in the snow."
python scripts/translate.py runs/quickstart_en_de < sentences.txt
"""

import argparse
import sys

from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

import vaswani_hf  # noqa: F401  (registers the model with the Auto classes)
from vaswani_hf.evaluation import translate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a saved model folder (with its tokenizer) or Hub id")
    parser.add_argument("sentences", nargs="*", help="sentences to translate; standard input if none")
    args = parser.parse_args()
    sentences = args.sentences or [line.rstrip("\n") for line in sys.stdin]
    model = AutoModelForSeq2SeqLM.from_pretrained(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    for source, target in zip(sentences, translate(model, tokenizer, sentences), strict=True):
        print(f"{source}\n  -> {target}")


if __name__ == "__main__":
    main()
