"""The shared BPE tokenizer: exact round trips, seq2seq encoding, and loading with plain AutoTokenizer."""

import os
import subprocess
import sys
import unicodedata

import pytest
from transformers import AutoTokenizer

from vaswani_hf.data import load_parallel_corpus
from vaswani_hf.tokenization import train_tokenizer


@pytest.fixture(scope="module")
def multi30k_de_en(multi30k_dir):
    return load_parallel_corpus(multi30k_dir, "en", "de", splits={"train": "train", "validation": "val"})


@pytest.fixture(scope="module")
def tokenizer(multi30k_de_en):
    texts = (text for pair in multi30k_de_en["train"]["translation"] for text in pair.values())
    return train_tokenizer(texts, vocab_size=8000)


def test_special_tokens_have_the_configs_ids(tokenizer):
    assert len(tokenizer) == 8000
    assert [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id] == [
        0,
        1,
        2,
        3,
    ]


@pytest.mark.parametrize("lang", ["en", "de"])
def test_every_validation_sentence_round_trips(tokenizer, multi30k_de_en, lang):
    sentences = [pair[lang] for pair in multi30k_de_en["validation"]["translation"]]
    assert len(sentences) == 1014
    decoded = tokenizer.batch_decode(tokenizer(sentences)["input_ids"], skip_special_tokens=True)
    mismatches = [(s, d) for s, d in zip(sentences, decoded, strict=True) if d != unicodedata.normalize("NFKC", s)]
    assert mismatches == []


@pytest.mark.parametrize(
    "text",
    [
        "Größe, Straße: 1.234,56 €",
        "L'été à Noël — «très» cœur",
        "emoji 🙂🚲 ok",
        "ᚠᛇᚻ 漢字 عربى",
        "  spaced  out  ",
        "x",
    ],
)
def test_unseen_characters_never_vanish(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == unicodedata.normalize("NFKC", text)


def test_seq2seq_encoding_ends_in_eos(tokenizer):
    batch = tokenizer(["A man rides a bike."], text_target=["Ein Mann fährt Fahrrad."])
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"][0][-1] == batch["labels"][0][-1] == tokenizer.eos_token_id


def test_saved_tokenizer_reloads_with_auto_tokenizer_in_a_fresh_process(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    sentence = "Zwei junge Männer spielen Fußball 🙂."
    code = (
        "import sys; sys.modules['vaswani_hf'] = None\n"
        "from transformers import AutoTokenizer\n"
        f"print(AutoTokenizer.from_pretrained({str(tmp_path)!r})({sentence!r})['input_ids'])"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == str(tokenizer(sentence)["input_ids"])
    assert AutoTokenizer.from_pretrained(tmp_path)(sentence)["input_ids"] == tokenizer(sentence)["input_ids"]


def test_training_on_no_text_is_a_clear_error():
    with pytest.raises(ValueError, match="no text"):
        train_tokenizer(["", ""], vocab_size=300)
