"""The corpus a recipe names, read by the loader of its format, which is said and never guessed from a file name:
"translation" (sentence pairs: `data.load_parallel_corpus`) or "treebank" (a Penn Treebank's sentences and their
linearized trees, for parsing as translation, Sec. 6.3: `treebank.load_treebank_corpus`)."""

import os
from collections.abc import Mapping

from datasets import DatasetDict

from .data import load_parallel_corpus
from .treebank import SPLIT_FILES, load_treebank_corpus

DATASET_FORMATS = ("translation", "treebank")


def load_corpus(
    source: str | os.PathLike | Mapping[str, str | os.PathLike],
    source_lang: str,
    target_lang: str,
    dataset_format: str = "translation",
    config_name: str | None = None,
    splits: Mapping[str, str] | None = None,
) -> DatasetDict:
    """`source` as a `DatasetDict` with a `translation` column, read as `dataset_format` (one of `DATASET_FORMATS`).
    A treebank's splits are fixed by file number (`treebank.SPLIT_FILES`): `config_name` and `splits` must be None."""
    if dataset_format == "translation":
        return load_parallel_corpus(source, source_lang, target_lang, config_name, splits)
    if dataset_format != "treebank":
        raise ValueError(f"dataset_format {dataset_format!r} is not one of {DATASET_FORMATS}")
    if splits is not None or config_name is not None:
        raise ValueError(
            f"{source}: a treebank's splits are fixed by file number ({SPLIT_FILES}); give no file splits or config"
        )
    return load_treebank_corpus(source, source_lang, target_lang)
