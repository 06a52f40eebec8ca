"""pipeline("translation") on transformers 5: the package's TranslationPipeline and its registration."""

import json
import logging
from unittest import mock

import pytest
from transformers import pipeline, pipelines

from vaswani_hf import TranslationPipeline
from vaswani_hf.evaluation import translate

SOURCES = ["A man in a red shirt is riding a bike.", "Two dogs are playing in the snow.", "A woman."]


def generate_texts(model, tokenizer, sources: list[str], **generate_kwargs) -> list[str]:
    batch = tokenizer(sources, return_tensors="pt", padding=True)
    return tokenizer.batch_decode(model.generate(**batch, **generate_kwargs), skip_special_tokens=True)


def test_translation_task_gives_the_package_pipeline_with_the_papers_decoding(tiny_translator):
    model, tokenizer = tiny_translator
    translator = pipeline("translation", model=model, tokenizer=tokenizer)
    assert isinstance(translator, TranslationPipeline)
    expected = generate_texts(model, tokenizer, SOURCES)  # the model's generation_config: beam 4, penalty 0.6
    assert len(set(expected)) == 3
    assert translator(SOURCES) == [{"translation_text": text} for text in expected]
    assert translator(SOURCES, batch_size=2) == [{"translation_text": text} for text in expected]
    assert translator(SOURCES[0]) == [{"translation_text": expected[0]}]


MIXED = [
    SOURCES[0],
    "Three people are walking down a busy street at night while it rains.",
    "",
    SOURCES[2],
    "A dog.",
    SOURCES[1],
    "Children.",
]


def source_lengths_of_each_generate_call(model, run) -> tuple[object, list[list[int]]]:
    """run()'s result, and the source lengths (tokens) of each batch that reached model.generate."""
    batches, generate = [], model.generate

    def recording(**kwargs):
        batches.append(kwargs["attention_mask"].sum(-1).tolist())
        return generate(**kwargs)

    with mock.patch.object(model, "generate", side_effect=recording):
        return run(), batches


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_many_sentences_are_decoded_in_order_of_length_and_returned_in_input_order(tiny_translator, batch_size):
    model, tokenizer = tiny_translator
    expected = [generate_texts(model, tokenizer, [text])[0] if text else "" for text in MIXED]
    assert len(set(expected)) == len(MIXED)
    translator = pipeline("translation", model=model, tokenizer=tokenizer)
    texts = [text for text in MIXED if text]  # translate() has no shortcut for empty sources
    for run, wanted in (
        (lambda: [output["translation_text"] for output in translator(MIXED, batch_size=batch_size)], expected),
        (
            lambda: translate(model, tokenizer, texts, batch_size=batch_size, progress_bar=False),
            list(filter(None, expected)),
        ),
    ):
        translations, batches = source_lengths_of_each_generate_call(model, run)
        assert translations == wanted
        lengths = [length for batch in batches for length in batch]
        assert lengths == sorted(lengths) and len(batches) == -(-len(lengths) // batch_size)


def test_language_pair_task_loads_a_saved_folder(tiny_translator, tmp_path):
    model, tokenizer = tiny_translator
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    translator = pipeline("translation_en_to_de", model=str(tmp_path))
    assert isinstance(translator, TranslationPipeline)
    assert translator.task == "translation_en_to_de"
    assert translator(SOURCES[1]) == [{"translation_text": generate_texts(model, tokenizer, SOURCES[1:2])[0]}]


def test_generation_arguments_pass_through(tiny_translator):
    model, tokenizer = tiny_translator
    translator = pipeline("translation", model=model, tokenizer=tokenizer, num_beams=1)
    greedy_three = generate_texts(model, tokenizer, SOURCES, num_beams=1, max_new_tokens=3)
    assert translator(SOURCES, max_new_tokens=3) == [{"translation_text": text} for text in greedy_three]
    assert all(len(tokenizer(t["translation_text"])["input_ids"]) <= 4 for t in translator(SOURCES, max_new_tokens=3))

    two_each = translator(SOURCES[:2], num_beams=2, num_return_sequences=2)
    assert [len(outputs) for outputs in two_each] == [2, 2]
    assert two_each[0][0]["translation_text"] == generate_texts(model, tokenizer, SOURCES[:1], num_beams=2)[0]


def test_empty_and_whitespace_inputs_translate_to_empty_text_in_place(tiny_translator):
    model, tokenizer = tiny_translator
    translator = pipeline("translation", model=model, tokenizer=tokenizer)
    result = translator(["", SOURCES[2], "  \t\n", SOURCES[1]])
    expected = generate_texts(model, tokenizer, [SOURCES[2], SOURCES[1]])
    assert [r["translation_text"] for r in result] == ["", expected[0], "", expected[1]]
    assert translator("") == [{"translation_text": ""}]
    assert translator([]) == []


def test_over_long_input_is_refused_with_its_length_or_truncated_with_a_warning(tiny_translator, caplog):
    model, tokenizer = tiny_translator
    translator = pipeline("translation", model=model, tokenizer=tokenizer, num_beams=1, max_new_tokens=2)
    too_long = "A dog runs. " * 400
    length = len(tokenizer(too_long)["input_ids"])
    assert length > 1024
    with pytest.raises(ValueError, match=f"{length} tokens, more than the 1024 this model accepts"):
        translator(too_long)
    with caplog.at_level(logging.WARNING):
        result = translator(too_long, truncation=True)
    assert isinstance(result[0]["translation_text"], str)
    assert f"Input of {length} tokens truncated" in caplog.text


@pytest.mark.parametrize("bad", [None, 3, ["fine", None], [b"bytes"]])
def test_non_string_inputs_raise_a_type_error_naming_them(tiny_translator, bad):
    model, tokenizer = tiny_translator
    translator = pipeline("translation", model=model, tokenizer=tokenizer)
    with pytest.raises(TypeError, match="expects (strings|a string)"):
        translator(bad)


def test_folder_declaring_the_remote_pipeline_needs_no_trust_remote_code_here(tiny_translator, tmp_path):
    model, tokenizer = tiny_translator
    pipeline("translation", model=model, tokenizer=tokenizer).save_pretrained(tmp_path)
    declared = json.loads((tmp_path / "config.json").read_text())["custom_pipelines"]
    assert declared["translation"]["impl"] == "pipeline_vaswani.TranslationPipeline"
    assert (tmp_path / "pipeline_vaswani.py").is_file()

    translator = pipeline("translation", model=str(tmp_path))  # would demand trust_remote_code without the package
    assert isinstance(translator, TranslationPipeline)
    assert translator(SOURCES[2]) == [{"translation_text": generate_texts(model, tokenizer, SOURCES[2:])[0]}]
    translator.model.save_pretrained(tmp_path / "again")  # the declaration survives a round trip
    assert json.loads((tmp_path / "again" / "config.json").read_text())["custom_pipelines"] == declared


def test_registration_changes_only_the_translation_task():
    """Guards the mechanism: if a transformers release changes REMOVED_TASKS or the registry, this fails."""
    assert "translation" not in pipelines.REMOVED_TASKS
    assert {"summarization", "text2text-generation", "question-answering"} <= set(pipelines.REMOVED_TASKS)
    with pytest.raises(KeyError, match="has been removed"):
        pipelines.check_task("summarization")
    task, implementation, options = pipelines.check_task("translation_en_to_de")
    assert (task, implementation["impl"], options) == ("translation", TranslationPipeline, ("en", "de"))
    assert pipelines.check_task("translation")[1]["impl"] is TranslationPipeline
    task, implementation, options = pipelines.check_task("text-generation")
    assert str(implementation["impl"]).endswith("TextGenerationPipeline") and options is None
    with pytest.raises(KeyError, match="Unknown task"):
        pipelines.check_task("no-such-task")
