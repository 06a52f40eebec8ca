"""Translate sentences through `pipeline("translation")`, one translation per line, as onmt_translate and
fairseq-interactive do (the model's decoding unless flags say otherwise: beam 4, length penalty 0.6, Sec. 6.1).

    vaswani-translate runs/quickstart_en_de "A man rides a bike." "Two dogs play in the snow."
    vaswani-translate runs/quickstart_en_de --input test.en --output test.hyp.de --device auto
    cat test.en | vaswani-translate runs/quickstart_en_de --num_beams 1 > test.hyp.de

Sources come from the arguments, from --input, or from standard input, one a line (UTF-8). Line N of the output is
the translation of source N: an empty source gives an empty line, and line breaks inside a translation become spaces.
Standard output holds the translations and nothing else (progress and logs go to standard error); --output is
written atomically, once everything is translated.
"""

import argparse
import sys

from tqdm.auto import tqdm
from transformers import Pipeline, pipeline

import vaswani_hf  # noqa: F401  (registers the model and the translation pipeline)
from vaswani_hf.cli import input_errors_as_messages
from vaswani_hf.cli.decoding import add_decoding_arguments, decoding_options
from vaswani_hf.files import as_text_lines, read_text_lines, split_text_lines, write_text_lines
from vaswani_hf.tokenization import load_tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a saved model folder (with its tokenizer) or Hub id")
    parser.add_argument("sentences", nargs="*", help="sentences to translate (default: --input or standard input)")
    parser.add_argument("--input", help="a file of sources, one a line; '-' for standard input")
    parser.add_argument("--output", help="write the translations to this file instead of standard output")
    parser.add_argument(
        "--truncation",
        action="store_true",
        help="cut a source longer than the model accepts to its first tokens (with a warning) instead of stopping",
    )
    add_decoding_arguments(parser, batch_size=32)
    args = parser.parse_intermixed_args(argv)  # sentences before or after the options
    if args.sentences and args.input:
        parser.error("give the sentences as arguments or as --input, not both")
    device, dtype, generate_kwargs = decoding_options(parser, args)
    with input_errors_as_messages():  # bad input, a model folder that cannot be read, an output it cannot write
        if args.sentences:
            sources = args.sentences
        elif args.input in (None, "-"):
            sources = split_text_lines(sys.stdin.buffer.read(), "standard input")
        else:
            sources = read_text_lines(args.input)
        # load_tokenizer names a model folder without a tokenizer (the pipeline's loader would ask for sentencepiece)
        translator = pipeline(
            "translation", model=args.model, tokenizer=load_tokenizer(args.model), device=device, dtype=dtype
        )
        translations = translate_in_length_order(
            translator, sources, args.batch_size, truncation=args.truncation, **generate_kwargs
        )
        if args.output:
            write_text_lines(args.output, translations)
        else:
            sys.stdout.buffer.write(as_text_lines(translations).encode("utf-8"))
            sys.stdout.flush()


def translate_in_length_order(
    translator: Pipeline, sources: list[str], batch_size: int, truncation: bool = False, **generate_kwargs
) -> list[str]:
    """Translations of `sources`, in their order, decoded `batch_size` at a time in order of their number of tokens
    (less padding, as `evaluation.translate` does), with a progress bar on standard error. With `truncation`, a
    source longer than the model accepts is cut (the pipeline warns) instead of stopping the run."""
    order = translator.length_order(sources)
    translations = [""] * len(sources)
    with tqdm(total=len(sources), unit="sentence", desc="translating", file=sys.stderr) as progress:
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            try:
                outputs = translator(
                    [sources[i] for i in indices], batch_size=batch_size, truncation=truncation, **generate_kwargs
                )
            except ValueError as error:  # a source the model cannot take (too long): say which line it is
                refused = [i + 1 for i in sorted(indices) if not accepts(translator, sources[i])]
                hint = " (vaswani-translate: --truncation)" if refused else ""
                raise ValueError(f"source line {refused[0] if refused else '?'}: {error}{hint}") from error
            for index, output in zip(indices, outputs, strict=True):
                translations[index] = output["translation_text"]
            progress.update(len(indices))
    return translations


def accepts(translator: Pipeline, source: str) -> bool:
    """Whether the pipeline's own checks (`preprocess`) let `source` through."""
    try:
        translator.preprocess(source)
    except ValueError:
        return False
    return True


if __name__ == "__main__":
    main()
