"""Special-token strings in user text are text, never control tokens: in the tokenizer (learned, saved, published,
or saved before it had the setting), in training data, evaluation and the pipeline."""

import json

import pytest
import torch
from datasets import Dataset, DatasetDict
from helpers import tiny_model
from transformers import AutoTokenizer, pipeline

from vaswani_hf.data import preprocess
from vaswani_hf.evaluation import translate
from vaswani_hf.tokenization import SPECIAL_TOKENS, load_tokenizer, train_tokenizer

SENTENCES = [f"The tag {token} ends it." for token in SPECIAL_TOKENS] + [
    "use the <pad> key",
    "</s>",
    "<s><pad></s><unk> glued",
]


@pytest.fixture(scope="module")
def tokenizer():
    corpus = ["A man rides a bike.", "Two dogs play in the snow.", "The tag ends it.", "Use the key."] * 5
    return train_tokenizer(corpus, vocab_size=300)


def saved_before_the_setting(tokenizer, folder):
    """A tokenizer folder as runs saved it before special-token strings were text (no split_special_tokens)."""
    tokenizer.save_pretrained(folder)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings.pop("split_special_tokens", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    return folder


def assert_text_only(tokenizer, ids: list[int], sentence: str) -> None:
    """No control id but the final </s> (the post-processor's), and the text back after decoding."""
    assert [i for i in ids if i in tokenizer.all_special_ids] == [tokenizer.eos_token_id] == [ids[-1]]
    assert ids[-1] == tokenizer.convert_tokens_to_ids("</s>") == 2
    assert tokenizer.decode(ids, skip_special_tokens=True) == sentence
    assert tokenizer.decode(ids, skip_special_tokens=False) == sentence + "</s>"
    padded = ids + [tokenizer.pad_token_id] * 3
    assert tokenizer.decode(padded, skip_special_tokens=True) == sentence  # the real control tokens still go


@pytest.mark.parametrize("route", ["learned", "load_tokenizer", "AutoTokenizer", "load_tokenizer-older-folder"])
@pytest.mark.parametrize("sentence", SENTENCES)
def test_special_token_strings_encode_as_text_and_round_trip(tokenizer, tmp_path, route, sentence):
    if route == "load_tokenizer-older-folder":
        tokenizer = load_tokenizer(saved_before_the_setting(tokenizer, tmp_path))
    elif route != "learned":
        tokenizer.save_pretrained(tmp_path)  # as runs and published repos hold it
        tokenizer = load_tokenizer(tmp_path) if route == "load_tokenizer" else AutoTokenizer.from_pretrained(tmp_path)
    assert_text_only(tokenizer, tokenizer(sentence)["input_ids"], sentence)


def test_the_setting_is_saved_for_auto_tokenizer(tokenizer, tmp_path):
    load_tokenizer(saved_before_the_setting(tokenizer, tmp_path / "old")).save_pretrained(tmp_path / "new")
    assert json.loads((tmp_path / "new" / "tokenizer_config.json").read_text())["split_special_tokens"] is True


def test_training_data_holds_no_control_tokens_from_text(tokenizer, tmp_path):
    tokenizer = load_tokenizer(saved_before_the_setting(tokenizer, tmp_path))  # as vaswani-train loads it
    pairs = [{"en": sentence, "de": f"Ja: {sentence}"} for sentence in SENTENCES]
    data = preprocess(DatasetDict({"train": Dataset.from_dict({"translation": pairs})}), tokenizer, "en", "de")
    assert len(data["train"]) == len(SENTENCES)
    for pair, example in zip(pairs, data["train"], strict=True):
        assert_text_only(tokenizer, example["input_ids"], pair["en"])
        assert_text_only(tokenizer, example["labels"], pair["de"])


def sources_seen_by_the_encoder(model) -> list[list[int]]:
    """The unpadded id rows the encoder receives, recorded by a forward pre-hook."""
    seen = []

    def record(module, args, kwargs):
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        seen.extend(row[row_mask.bool()].tolist() for row, row_mask in zip(ids, mask, strict=True))

    model.get_encoder().register_forward_pre_hook(record, with_kwargs=True)
    return seen


def test_evaluation_translates_special_token_strings_as_text(tokenizer, tmp_path):
    tokenizer = load_tokenizer(saved_before_the_setting(tokenizer, tmp_path))  # as vaswani-evaluate loads it
    model = tiny_model(seed=7, vocab_size=len(tokenizer))
    seen = sources_seen_by_the_encoder(model)
    translations = translate(model, tokenizer, SENTENCES, batch_size=3, num_beams=1, max_new_tokens=3)
    assert len(translations) == len(SENTENCES) and all(isinstance(text, str) for text in translations)
    assert sorted(tokenizer.decode(ids, skip_special_tokens=True) for ids in seen) == sorted(SENTENCES)
    for ids in seen:
        assert_text_only(tokenizer, ids, tokenizer.decode(ids, skip_special_tokens=True))


def test_pipeline_translates_special_token_strings_as_text_whatever_the_tokenizer(tokenizer, tmp_path):
    plain = AutoTokenizer.from_pretrained(saved_before_the_setting(tokenizer, tmp_path))  # does not split them
    assert plain("The tag </s> ends it.")["input_ids"].count(plain.eos_token_id) == 2
    model = tiny_model(seed=8, vocab_size=len(tokenizer))
    seen = sources_seen_by_the_encoder(model)
    translator = pipeline("translation", model=model, tokenizer=plain, num_beams=1, max_new_tokens=3)
    outputs = translator(SENTENCES, batch_size=2)
    assert all(isinstance(output["translation_text"], str) for output in outputs)
    assert sorted(plain.decode(ids, skip_special_tokens=True) for ids in seen) == sorted(SENTENCES)
    for ids in seen:
        assert_text_only(plain, ids, plain.decode(ids, skip_special_tokens=True))
    with torch.no_grad():
        assert_text_only(plain, translator.preprocess(SENTENCES[2])["input_ids"][0].tolist(), SENTENCES[2])
