"""Learn the shared BPE vocabulary from a parallel corpus and save it as a transformers tokenizer folder, with the
record of its languages and vocab_size that vaswani-train checks when given it as --tokenizer_name_or_path.

Example: vaswani-train-tokenizer ../shared/data/multi30k en de out/tokenizer --vocab_size 8000
"""

import argparse

from vaswani_hf.cli import input_errors_as_messages
from vaswani_hf.corpus import DATASET_FORMATS, load_corpus
from vaswani_hf.tokenization import save_learned_tokenizer, train_tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "corpus",
        help="folder of {split}.{lang}[.gz] files, a TSV/JSONL file, a Hub dataset name, or (--dataset_format"
        " treebank) a zip or folder of Penn Treebank .mrg files",
    )
    parser.add_argument("source_lang")
    parser.add_argument("target_lang")
    parser.add_argument("output_dir")
    parser.add_argument("--dataset_format", choices=DATASET_FORMATS, default="translation")
    parser.add_argument("--config_name", default=None, help="Hub dataset config, e.g. de-en for wmt14")
    parser.add_argument("--split", default="train")
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--min_frequency", type=int, default=2)
    args = parser.parse_args(argv)
    with input_errors_as_messages():
        corpus = load_corpus(args.corpus, args.source_lang, args.target_lang, args.dataset_format, args.config_name)
        if args.split not in corpus:
            raise ValueError(f"no split {args.split!r} in {args.corpus}; splits: {sorted(corpus)}")
        texts = (text for pair in corpus[args.split]["translation"] for text in pair.values())
        tokenizer = train_tokenizer(texts, vocab_size=args.vocab_size, min_frequency=args.min_frequency)
        save_learned_tokenizer(tokenizer, args.output_dir, [args.source_lang, args.target_lang], args.vocab_size)
    print(f"saved a {len(tokenizer)}-token vocabulary to {args.output_dir}")


if __name__ == "__main__":
    main()
