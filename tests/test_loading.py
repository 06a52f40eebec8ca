"""from_pretrained never loads silently wrong: weights that do not match the config, and a generation config that
cannot be read or is missing (transformers would initialise weights randomly, or decode greedily for 20 tokens)."""

import logging

import pytest
import torch
from helpers import padded_batch, tiny_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSeq2SeqLM, GenerationConfig

from vaswani_hf import VaswaniConfig, VaswaniForConditionalGeneration, VaswaniModel

LOADERS = {
    "VaswaniForConditionalGeneration": VaswaniForConditionalGeneration.from_pretrained,
    "AutoModelForSeq2SeqLM": AutoModelForSeq2SeqLM.from_pretrained,
}
REMOVED = "model.encoder.layers.1.ffn.fc2.weight"


@pytest.fixture
def saved(tmp_path):
    folder = tmp_path / "model"
    tiny_model(seed=5).save_pretrained(folder)
    return folder


def rewrite_weights(folder, edit) -> None:
    weights = load_file(folder / "model.safetensors")
    edit(weights)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def set_config(folder, **changes) -> None:
    config = VaswaniConfig.from_pretrained(folder)
    config.update(changes)
    config.save_pretrained(folder)


@pytest.mark.parametrize("loader", LOADERS)
def test_a_missing_tensor_is_an_error_naming_it(saved, loader):
    rewrite_weights(saved, lambda weights: weights.pop(REMOVED))
    with pytest.raises(ValueError, match=r"1 weight\(s\) the model needs but the checkpoint lacks") as error:
        LOADERS[loader](saved)
    assert REMOVED in str(error.value) and str(saved) in str(error.value)


@pytest.mark.parametrize("loader", LOADERS)
def test_a_config_with_more_layers_than_the_weights_is_an_error_naming_them(saved, loader):
    set_config(saved, encoder_layers=3)
    with pytest.raises(ValueError, match=r"weight\(s\) the model needs but the checkpoint lacks") as error:
        LOADERS[loader](saved)
    assert "model.encoder.layers.2.self_attn.qkv_proj.weight" in str(error.value)
    assert "model.encoder.layers.1." not in str(error.value)


@pytest.mark.parametrize("loader", LOADERS)
def test_unexpected_weights_are_an_error_naming_them(saved, loader):
    set_config(saved, decoder_layers=1)  # the weights hold a second decoder layer
    with pytest.raises(ValueError, match=r"weight\(s\) the checkpoint holds but the model has no place for") as error:
        LOADERS[loader](saved)
    assert "model.decoder.layers.1.cross_attn.kv_proj.weight" in str(error.value)


def test_strict_false_loads_as_transformers_does(saved):
    stored = load_file(saved / "model.safetensors")
    rewrite_weights(saved, lambda weights: weights.pop(REMOVED))
    model, info = AutoModelForSeq2SeqLM.from_pretrained(saved, strict=False, output_loading_info=True)
    assert info["missing_keys"] == {REMOVED}
    state = model.state_dict()
    assert not torch.equal(state[REMOVED], stored[REMOVED])  # randomly initialised, as asked
    assert all(torch.equal(state[name], tensor) for name, tensor in stored.items() if name != REMOVED)


@pytest.mark.parametrize("tie_word_embeddings", [True, False])
def test_tied_and_untied_models_load_strictly_into_both_classes(tmp_path, tie_word_embeddings):
    model = tiny_model(seed=6, tie_word_embeddings=tie_word_embeddings)
    model.save_pretrained(tmp_path)
    loaded, info = VaswaniForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == info["unexpected_keys"] == set()
    assert all(torch.equal(loaded.state_dict()[name], tensor) for name, tensor in model.state_dict().items())
    base = VaswaniModel.from_pretrained(tmp_path)  # the encoder-decoder without its output projection
    assert all(torch.equal(base.state_dict()[name], tensor) for name, tensor in model.model.state_dict().items())


@pytest.mark.parametrize("loader", LOADERS)
def test_a_missing_generation_config_decodes_as_the_paper_with_a_warning(saved, loader, caplog):
    original = VaswaniForConditionalGeneration.from_pretrained(saved)
    (saved / "generation_config.json").unlink()
    with caplog.at_level(logging.WARNING):
        model = LOADERS[loader](saved)
    assert f"{saved} has no generation_config.json: decoding as the paper" in caplog.text
    config = model.generation_config
    assert (config.num_beams, config.length_penalty, config.early_stopping, config.max_new_tokens_offset) == (
        4,
        0.6,
        True,
        50,
    )
    assert config.to_diff_dict() == VaswaniForConditionalGeneration(model.config).generation_config.to_diff_dict()
    batch = padded_batch(seed=2)
    assert torch.equal(model.generate(**batch), original.generate(**batch))


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[4, 0.6]", b'{"max_new_tokens": 0}', b'{"early_stopping": "sometimes"}', b"\xff\xfe{}"],
    ids=["not-json", "not-an-object", "zero-tokens", "bad-value", "not-utf8"],
)
@pytest.mark.parametrize("loader", LOADERS)
def test_an_unreadable_generation_config_is_an_error_naming_it(saved, loader, content):
    (saved / "generation_config.json").write_bytes(content)
    with pytest.raises(ValueError, match="cannot be read as a generation config") as error:
        LOADERS[loader](saved)
    assert str(saved / "generation_config.json") in str(error.value)


def test_a_generation_config_argument_replaces_the_file(saved):
    (saved / "generation_config.json").write_text("{not json")
    model = AutoModelForSeq2SeqLM.from_pretrained(saved, generation_config=GenerationConfig(num_beams=2))
    assert model.generation_config.num_beams == 2


@pytest.mark.parametrize("loader", LOADERS)
def test_pickled_weights_alone_are_refused_not_unpickled(saved, loader):
    weights = load_file(saved / "model.safetensors")
    (saved / "model.safetensors").unlink()
    torch.save(weights, saved / "pytorch_model.bin")
    with pytest.raises(OSError, match="model.safetensors"):
        LOADERS[loader](saved)
