"""VaswaniConfig: presets from the paper's Table 3, validation, and Auto registration."""

import pytest
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from vaswani_hf import VaswaniConfig, VaswaniForConditionalGeneration, VaswaniModel


def closed_form_parameter_count(vocab: int, d: int, ffn: int, encoder_layers: int, decoder_layers: int) -> int:
    """Tied embedding + layers. Attention: 4 d x d maps with biases; LayerNorm: 2d each; FFN: 2 d x ffn maps."""
    attention = 4 * d * d + 4 * d
    feed_forward = 2 * d * ffn + ffn + d
    layer_norm = 2 * d
    encoder_layer = attention + feed_forward + 2 * layer_norm
    decoder_layer = 2 * attention + feed_forward + 3 * layer_norm
    return vocab * d + encoder_layers * encoder_layer + decoder_layers * decoder_layer


@pytest.mark.parametrize(
    ("preset", "paper_millions", "d", "ffn"),
    [("base", 65, 512, 2048), ("big", 213, 1024, 4096)],
)
def test_preset_parameter_count_matches_paper_and_closed_form(preset, paper_millions, d, ffn):
    config = VaswaniConfig.from_preset(preset, vocab_size=37000)
    model = VaswaniForConditionalGeneration(config)
    count = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    assert count == closed_form_parameter_count(37000, d, ffn, 6, 6)
    assert abs(count / (paper_millions * 1e6) - 1) < 0.05


def test_presets_follow_table_3():
    base, big = VaswaniConfig.from_preset("base"), VaswaniConfig.from_preset("big")
    assert (base.d_model, base.encoder_layers, base.decoder_attention_heads, base.encoder_ffn_dim, base.dropout) == (
        512,
        6,
        8,
        2048,
        0.1,
    )
    assert (big.d_model, big.decoder_layers, big.encoder_attention_heads, big.decoder_ffn_dim, big.dropout) == (
        1024,
        6,
        16,
        4096,
        0.3,
    )
    assert VaswaniConfig.from_preset("big", dropout=0.1).dropout == 0.1


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"d_model": 500, "encoder_attention_heads": 8}, "encoder_attention_heads"),
        ({"d_model": 512, "decoder_attention_heads": 7}, "decoder_attention_heads"),
        ({"encoder_layers": 0}, "encoder_layers"),
        ({"decoder_ffn_dim": -1}, "decoder_ffn_dim"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"dropout": 1.0}, "dropout"),
        ({"attention_dropout": -0.1}, "attention_dropout"),
        ({"activation_function": "swishy"}, "activation_function"),
        ({"position_encoding": "rotary"}, "position_encoding"),
        ({"pad_token_id": 37000}, "pad_token_id"),
        ({"init_std": 0.0}, "init_std"),
        ({"d_model": 33, "encoder_attention_heads": 1, "decoder_attention_heads": 1}, "d_model"),
    ],
)
def test_invalid_values_raise_value_error_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        VaswaniConfig(**overrides)


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        VaswaniConfig.from_preset("huge")


def test_auto_classes_resolve_vaswani():
    config = AutoConfig.for_model("vaswani", vocab_size=50, d_model=16, encoder_ffn_dim=32, decoder_ffn_dim=32)
    assert type(config) is VaswaniConfig
    assert type(AutoModel.from_config(config)) is VaswaniModel
    assert type(AutoModelForSeq2SeqLM.from_config(config)) is VaswaniForConditionalGeneration


def test_config_round_trips_through_json(tmp_path):
    config = VaswaniConfig.from_preset("small", position_encoding="learned", scale_attention=False)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert {**loaded.to_dict(), "_name_or_path": ""} == config.to_dict()
    assert loaded.num_hidden_layers == loaded.decoder_layers and loaded.hidden_size == loaded.d_model
