"""Export a trained model to CTranslate2 for fast inference (C++, CPU and GPU, int8 and float16), with the
tokenizer's files beside it: the export folder is all a user needs, with `pip install ctranslate2 tokenizers`.

    vaswani-export runs/multi30k_en_de_small runs/multi30k_en_de_small-ct2
    vaswani-export org/vaswani-small-en-de vaswani-small-en-de-ct2 --quantization int8

See the model card or README ("CTranslate2") for translating with the export. An existing non-empty output folder is
refused unless --overwrite is given (the model's folder, a folder holding it and the current directory always are);
the folder is written atomically.
"""

import argparse
from pathlib import Path

from transformers import AutoModelForSeq2SeqLM

import vaswani_hf  # noqa: F401  (registers the model with the Auto classes)
from vaswani_hf.convert import export_ctranslate2
from vaswani_hf.files import check_output_folder
from vaswani_hf.tokenization import load_tokenizer

INSTALL_HINT = "pip install 'vaswani-hf[ctranslate2]' (or pip install ctranslate2)"


def main(argv: list[str] | None = None) -> None:
    try:
        from ctranslate2.specs.model_spec import ACCEPTED_MODEL_TYPES
    except ImportError:
        raise SystemExit(f"vaswani-export needs the ctranslate2 package: {INSTALL_HINT}") from None
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a saved model folder (with its tokenizer) or Hub id")
    parser.add_argument("output_dir", help="the CTranslate2 folder to write")
    parser.add_argument(
        "--quantization", choices=ACCEPTED_MODEL_TYPES, help="weight type (default: the model's, float32)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace output_dir if it exists and is not empty")
    args = parser.parse_args(argv)
    output_dir = Path(args.output_dir)
    try:  # before loading the model, which may come from the Hub; export_ctranslate2 checks again
        check_output_folder(output_dir, args.overwrite, keep=[("the model", args.model)])
    except FileExistsError as error:
        parser.error(str(error))
    model = AutoModelForSeq2SeqLM.from_pretrained(args.model, use_safetensors=True)
    tokenizer = load_tokenizer(args.model)
    export_ctranslate2(model, tokenizer, output_dir, quantization=args.quantization, overwrite=args.overwrite)
    print(f"CTranslate2 model ({args.quantization or 'float32'}) and tokenizer written to {output_dir}")


if __name__ == "__main__":
    main()
