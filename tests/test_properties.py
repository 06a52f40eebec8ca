"""Property-based tests (hypothesis): random text and random shapes through tokenizer, model and pipeline."""

import unicodedata

import pytest
import torch
from helpers import tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import pipeline

from vaswani_hf.tokenization import SPECIAL_TOKENS

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Any Unicode text: control characters, emoji, scripts the vocabulary never saw (surrogates cannot be UTF-8), with
# the special tokens' strings ("<pad>", "<s>", "</s>", "<unk>") anywhere in it.
ANY_TEXT = st.lists(
    st.one_of(st.text(st.characters(exclude_categories=["Cs"]), max_size=60), st.sampled_from(SPECIAL_TOKENS)),
    max_size=6,
).map("".join)


@SETTINGS
@given(text=ANY_TEXT)
def test_tokenizer_round_trips_any_text_after_nfkc(tiny_translator, text):
    _, tokenizer = tiny_translator
    ids = tokenizer(text)["input_ids"]
    assert all(0 <= i < len(tokenizer) for i in ids)
    # text gives no control token: the only one is the final </s>
    assert [i for i in ids if i in tokenizer.all_special_ids] == [tokenizer.eos_token_id] == ids[-1:]
    assert tokenizer.decode(ids, skip_special_tokens=True) == unicodedata.normalize("NFKC", text)


@st.composite
def padded_batches(draw):
    batch, length = draw(st.integers(1, 4)), draw(st.integers(1, 24))
    input_ids = torch.tensor(
        draw(st.lists(st.lists(st.integers(0, 96), min_size=length, max_size=length), min_size=batch, max_size=batch))
    )
    lengths = draw(st.lists(st.integers(0, length), min_size=batch, max_size=batch))  # 0: an all-padding row
    attention_mask = (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]).long()
    decoder_length = draw(st.integers(1, 12))
    decoder_input_ids = torch.tensor(
        draw(
            st.lists(
                st.lists(st.integers(0, 96), min_size=decoder_length, max_size=decoder_length),
                min_size=batch,
                max_size=batch,
            )
        )
    )
    return input_ids, attention_mask, decoder_input_ids


MODEL = tiny_model(seed=11)


@SETTINGS
@given(batch=padded_batches())
def test_model_gives_finite_logits_of_the_right_shape_for_any_padded_batch(batch):
    input_ids, attention_mask, decoder_input_ids = batch
    with torch.no_grad():
        logits = MODEL(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
    assert logits.shape == (*decoder_input_ids.shape, 97)
    assert torch.isfinite(logits).all()


@SETTINGS
@given(texts=st.lists(ANY_TEXT, min_size=1, max_size=3))
def test_pipeline_answers_any_text_with_a_string(tiny_translator, texts):
    model, tokenizer = tiny_translator
    translator = pipeline("translation", model=model, tokenizer=tokenizer, num_beams=1, max_new_tokens=4)
    outputs = translator(texts)
    assert len(outputs) == len(texts)
    for text, output in zip(texts, outputs, strict=True):
        assert isinstance(output["translation_text"], str)
        if not text.strip():
            assert output["translation_text"] == ""


@SETTINGS
@given(batch=padded_batches(), num_beams=st.sampled_from([1, 2]), new_tokens=st.integers(1, 6))
def test_generate_gives_in_vocabulary_ids_within_the_length_for_any_padded_batch(batch, num_beams, new_tokens):
    input_ids, attention_mask, _ = batch
    generated = MODEL.generate(
        input_ids=input_ids, attention_mask=attention_mask, num_beams=num_beams, max_new_tokens=new_tokens
    )
    assert generated.shape[0] == input_ids.shape[0] and generated.shape[1] <= new_tokens + 1
    assert generated.min() >= 0 and generated.max() < 97


@pytest.mark.parametrize("bad", [None, 3, ["fine", None], b"bytes"])
def test_tokenizer_refuses_non_text_with_a_value_or_type_error(tiny_translator, bad):
    _, tokenizer = tiny_translator
    with pytest.raises((ValueError, TypeError)):
        tokenizer(bad)
