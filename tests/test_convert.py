"""Conversion to and from MarianMTModel computes the same function, exactly; the CTranslate2 export and its command."""

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import ctranslate2
import pytest
import torch
from helpers import (
    ROOT,
    copy_task_batch,
    decoder_inputs,
    offline_hub_cache,
    padded_batch,
    tiny_config,
    tiny_model,
    user_folder,
)
from transformers import AutoModelForSeq2SeqLM, MarianConfig, MarianMTModel

from vaswani_hf import convert_from_marian, convert_to_marian, export_ctranslate2, quantize_dynamic_int8
from vaswani_hf.hub import render_model_card
from vaswani_hf.modeling_vaswani import VaswaniForConditionalGeneration


def padded_decoder_batch() -> dict[str, torch.Tensor]:
    decoder_input_ids = decoder_inputs(3, 6)
    decoder_attention_mask = torch.ones_like(decoder_input_ids)
    decoder_attention_mask[2, 3:] = 0
    decoder_input_ids[2, 3:] = 0
    return {"decoder_input_ids": decoder_input_ids, "decoder_attention_mask": decoder_attention_mask}


def test_to_marian_gives_the_same_logits():
    model = tiny_model(seed=11)
    marian = convert_to_marian(model).eval()
    assert type(marian) is MarianMTModel
    batch = {**padded_batch(), **padded_decoder_batch()}
    assert (marian(**batch).logits - model(**batch).logits).abs().max() <= 1e-4


def random_marian(seed: int) -> MarianMTModel:
    torch.manual_seed(seed)
    config = MarianConfig(
        vocab_size=97,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        activation_function="relu",
        scale_embedding=True,
        pad_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=0,
        forced_eos_token_id=None,
        max_position_embeddings=64,
    )
    return MarianMTModel(config).eval()


def test_from_marian_gives_the_same_logits_and_keeps_marians_start_token():
    marian = random_marian(seed=12)
    model = convert_from_marian(marian).eval()
    assert model.config.decoder_start_token_id == 0  # Marian starts decoding with <pad>
    batch = {**padded_batch(), **padded_decoder_batch()}
    assert (model(**batch).logits - marian(**batch).logits).abs().max() <= 1e-4
    labels = copy_task_batch(torch.Generator().manual_seed(2), batch_size=3)
    torch.testing.assert_close(model(**labels).loss, marian(**labels).loss, rtol=0, atol=1e-5)


def test_greedy_outputs_are_identical_both_ways(reversal_model):
    batch = copy_task_batch(torch.Generator().manual_seed(9), batch_size=8)
    del batch["labels"]
    marian = convert_to_marian(reversal_model).eval()
    ours = reversal_model.generate(**batch, num_beams=1, max_new_tokens=12)
    assert torch.equal(marian.generate(**batch, num_beams=1, max_new_tokens=12), ours)
    back = convert_from_marian(marian).eval()
    assert torch.equal(back.generate(**batch, num_beams=1, max_new_tokens=12), ours)
    for name, weight in reversal_model.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], weight, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"position_encoding": "learned"}, "position_encoding='learned'"),
        ({"position_encoding": "none"}, "position_encoding='none'"),
        ({"scale_attention": False}, "scale_attention=False"),
        ({"tie_word_embeddings": False}, "tie_word_embeddings=False"),
    ],
)
def test_configs_without_marian_equivalent_are_refused(overrides, problem):
    with pytest.raises(ValueError, match=problem):
        convert_to_marian(tiny_model(**overrides))


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"decoder_attention_heads": 2}, "encoder_attention_heads=4 != decoder_attention_heads=2"),
        ({"activation_function": "tanh"}, "activation_function='tanh'"),
    ],
)
def test_configs_ctranslate2_would_get_wrong_are_refused_before_any_folder_is_written(
    overrides, problem, tiny_translator, tmp_path
):
    # Marian computes these exactly; CTranslate2's loader gives the decoder the encoder's head count (other tokens,
    # silently) and fails on an activation it lacks with a bare KeyError
    _, tokenizer = tiny_translator
    model = tiny_model(vocab_size=len(tokenizer), **overrides)
    with pytest.raises(ValueError, match=re.escape(problem)):
        export_ctranslate2(model, tokenizer, tmp_path / "ct2")
    assert not (tmp_path / "ct2").exists()


def test_marian_with_logits_bias_or_separate_vocabularies_is_refused():
    marian = random_marian(seed=13)
    marian.final_logits_bias.fill_(0.5)
    with pytest.raises(ValueError, match="final_logits_bias"):
        convert_from_marian(marian)
    separate = MarianMTModel(
        MarianConfig(
            vocab_size=97,
            decoder_vocab_size=50,
            d_model=32,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            share_encoder_decoder_embeddings=False,
            pad_token_id=0,
            decoder_start_token_id=0,
        )
    )
    with pytest.raises(ValueError, match="separate source and target vocabularies"):
        convert_from_marian(separate)


def test_ctranslate2_export_gives_our_greedy_tokens_on_multi30k(tiny_translator, multi30k_dir, tmp_path):
    model, tokenizer = tiny_translator
    sources = gzip.open(multi30k_dir / "test_2016_flickr.en.gz", "rt", encoding="utf-8").read().splitlines()[:100]
    batch = tokenizer(sources, return_tensors="pt", padding=True)
    ours = model.generate(**batch, num_beams=1, max_new_tokens=40)
    expected = [
        [t for t in tokenizer.convert_ids_to_tokens(ids) if t not in tokenizer.all_special_tokens]
        for ids in ours.tolist()
    ]
    assert len({tuple(tokens) for tokens in expected}) > 50  # varied outputs, not one repeated answer

    source_tokens = [tokenizer.convert_ids_to_tokens(ids) for ids in tokenizer(sources)["input_ids"]]
    translator = ctranslate2.Translator(str(export_ctranslate2(model, tokenizer, tmp_path / "ct2")))
    results = translator.translate_batch(source_tokens, beam_size=1, max_decoding_length=40)
    assert [result.hypotheses[0] for result in results] == expected

    quantized = ctranslate2.Translator(str(export_ctranslate2(model, tokenizer, tmp_path / "int8", "int8")))
    results = quantized.translate_batch(source_tokens[:10], beam_size=1, max_decoding_length=40)
    assert all(result.hypotheses[0] for result in results)


def test_export_command_writes_a_self_contained_folder_and_never_replaces_one_unasked(
    tiny_translator, tiny_translator_folder, multi30k_dir, tmp_path, capsys
):
    from tokenizers import Tokenizer

    from vaswani_hf.cli.export import main

    model, tokenizer = tiny_translator
    output = tmp_path / "ct2"
    main([str(tiny_translator_folder), str(output)])
    assert {"model.bin", "config.json", "shared_vocabulary.json", "tokenizer.json", "tokenizer_config.json"} <= {
        path.name for path in output.iterdir()
    }
    # The folder alone translates: the tokenizer beside the model gives our greedy tokens, decoded to our text.
    sources = gzip.open(multi30k_dir / "test_2016_flickr.en.gz", "rt", encoding="utf-8").read().splitlines()[:20]
    batch = tokenizer(sources, return_tensors="pt", padding=True)
    expected = tokenizer.batch_decode(model.generate(**batch, num_beams=1, max_new_tokens=40), skip_special_tokens=True)
    shipped = Tokenizer.from_file(str(output / "tokenizer.json"))
    results = ctranslate2.Translator(str(output)).translate_batch(
        [shipped.encode(source).tokens for source in sources], beam_size=1, max_decoding_length=40
    )
    decoded = [shipped.decode([shipped.token_to_id(t) for t in result.hypotheses[0]]) for result in results]
    assert decoded == expected

    # An existing non-empty folder is refused and left as it was, whether an export or anything else.
    weights = (output / "model.bin").read_bytes()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("keep me")
    for target in (output, notes):
        with pytest.raises(SystemExit) as refused:
            main([str(tiny_translator_folder), str(target), "--quantization", "int8"])
        assert refused.value.code == 2
        assert f"{target} exists and is not empty" in capsys.readouterr().err
    assert (output / "model.bin").read_bytes() == weights and (notes / "mine.txt").read_text() == "keep me"
    # --overwrite replaces it; an empty folder needs no flag; the model's own folder is never a target.
    main([str(tiny_translator_folder), str(output), "--quantization", "int8", "--overwrite"])
    assert (output / "model.bin").read_bytes() != weights and (output / "tokenizer.json").is_file()
    (tmp_path / "empty").mkdir()
    main([str(tiny_translator_folder), str(tmp_path / "empty")])
    assert (tmp_path / "empty" / "model.bin").is_file()
    with pytest.raises(SystemExit):
        main([str(tiny_translator_folder), str(tiny_translator_folder.parent), "--overwrite"])
    assert "replacing it would delete the model" in capsys.readouterr().err
    assert (tiny_translator_folder / "model.safetensors").is_file()


def run_ctranslate2_passage(document: str, model, tokenizer, cwd: Path, env: dict) -> None:
    """Run a document's CTranslate2 passage as a user would: its `vaswani-export` command in a shell, then its Python
    block (the one using ctranslate2) in a fresh interpreter, which must print the model's own beam search output
    for the passage's one example source, and also for a source holding the literal text `</s>` (text, not a token)."""
    (command,) = re.findall(r"```bash\n(vaswani-export .*?)\n```", document, re.S)
    (snippet,) = [block for block in re.findall(r"```python\n(.*?)```", document, re.S) if "ctranslate2" in block]
    env = {**os.environ, **env, "PYTHONPATH": ""}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the venv's console commands
    exported = subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True)
    assert exported.returncode == 0, exported.stderr[-3000:]
    (source,) = re.findall(r'sources = \["(.*?)"\]', snippet)
    for text in (source, "The tag </s> ends it."):
        code = snippet.replace(f'sources = ["{source}"]', f"sources = [{text!r}]")
        printed = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)
        assert printed.returncode == 0, printed.stderr[-3000:]
        generated = model.generate(**tokenizer([text], return_tensors="pt"))  # its generation config: beam 4, 0.6
        expected = tokenizer.batch_decode(generated, skip_special_tokens=True)
        assert expected[0].strip() and printed.stdout.strip() == repr(expected), text


@pytest.mark.slow
def test_model_card_ctranslate2_passage_runs_as_written_and_translates_like_the_model(
    trained_run, tiny_translator, tiny_translator_folder, tmp_path
):
    """The card's passage exports the Hub id (here from a Hub cache, offline)."""
    model, tokenizer = tiny_translator
    metrics = json.loads((trained_run / "metrics.json").read_text())
    card = render_model_card(metrics, model, "org/vaswani-test").text
    hub = offline_hub_cache(tiny_translator_folder, "org/vaswani-test", tmp_path)
    run_ctranslate2_passage(card, model, tokenizer, tmp_path, hub)


@pytest.mark.slow
def test_readme_ctranslate2_passage_runs_as_written_and_translates_like_the_model(
    tiny_translator, tiny_translator_folder, tmp_path
):
    """The README's passage, on a model folder at the path it names."""
    model, tokenizer = tiny_translator
    shutil.copytree(tiny_translator_folder, tmp_path / "runs" / "multi30k_en_de_small")
    run_ctranslate2_passage((ROOT / "README.md").read_text(encoding="utf-8"), model, tokenizer, tmp_path, {})


def test_dynamic_int8_stays_close_to_float32():
    torch.manual_seed(0)
    model = VaswaniForConditionalGeneration(tiny_config(vocab_size=300)).eval()
    batch = {"input_ids": torch.randint(4, 300, (2, 7)), "decoder_input_ids": torch.randint(4, 300, (2, 5))}
    with torch.inference_mode():
        reference = model(**batch).logits
        quantized = quantize_dynamic_int8(model)(**batch).logits
    assert (quantized - reference).abs().max() < 0.1 * reference.abs().max()
    assert any(type(m).__module__.startswith("torch.ao") for m in quantize_dynamic_int8(model).modules())


def test_export_ctranslate2_never_replaces_a_folder_unasked_nor_the_model_it_came_from(
    tiny_translator, tiny_translator_folder, tmp_path
):
    model, tokenizer = tiny_translator
    mine = user_folder(tmp_path / "mine")
    with pytest.raises(FileExistsError, match="mine exists and is not empty"):
        export_ctranslate2(model, tokenizer, mine)
    assert [p.name for p in mine.iterdir()] == ["mine.txt"]
    export_ctranslate2(model, tokenizer, mine, overwrite=True)
    assert (mine / "model.bin").is_file() and not (mine / "mine.txt").exists()
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tiny_translator_folder)
    for target in (tiny_translator_folder, tiny_translator_folder.parent):
        with pytest.raises(FileExistsError, match="the model .*replacing it would delete the model"):
            export_ctranslate2(loaded, tokenizer, target, overwrite=True)
    assert (tiny_translator_folder / "model.safetensors").is_file()
