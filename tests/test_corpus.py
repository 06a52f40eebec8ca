"""corpus.py: the loader of the format a recipe names; a treebank is read only when asked for."""

import pytest

from vaswani_hf.corpus import load_corpus
from vaswani_hf.data import load_parallel_corpus, preprocess
from vaswani_hf.tokenization import train_tokenizer
from vaswani_hf.treebank import (
    delinearize,
)


def test_the_treebank_format_gives_translation_pairs(treebank_zip):
    corpus = load_corpus(treebank_zip, "en", "tree", dataset_format="treebank")
    assert {split: len(data) for split, data in corpus.items()} == {"train": 3396, "validation": 273, "test": 245}
    pair = corpus["test"][0]["translation"]
    words = pair["en"].split()
    assert delinearize(pair["tree"], words).words() == words
    tokenizer = train_tokenizer((text for p in corpus["validation"]["translation"] for text in p.values()), 500)
    data = preprocess(corpus, tokenizer, "en", "tree", max_target_tokens=400, max_length_ratio=5.0)
    assert len(data["train"]) >= 3380 and data["train"][0]["labels"][-1] == tokenizer.eos_token_id
    with pytest.raises(ValueError, match="fixed by file number"):
        load_corpus(treebank_zip, "en", "tree", dataset_format="treebank", splits={"train": "train"})


def test_a_treebank_is_read_only_when_its_format_is_named(treebank_zip):
    # the translation loader knows no treebank: a zip given to it is refused, naming the file and the format to ask for
    for load in (load_parallel_corpus, load_corpus):
        with pytest.raises(ValueError, match=r"treebank.zip is no file of sentence pairs .*dataset_format: treebank"):
            load(treebank_zip, "en", "tree")
    with pytest.raises(ValueError, match=r"dataset_format 'trees' is not one of \('translation', 'treebank'\)"):
        load_corpus(treebank_zip, "en", "tree", dataset_format="trees")
