"""The model's behaviour: masks, padding, attention implementations, outputs, caching, ablations, dropout, gradient
checkpointing and saving. Its loss is tested in tests/test_loss.py, its decoding in tests/test_generation.py."""

from unittest import mock

import pytest
import torch
from helpers import copy_task_batch, decoder_inputs, padded_batch, reversed_source, tiny_config, tiny_model, until_eos
from torch import nn
from transformers import AutoModelForSeq2SeqLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from vaswani_hf import VaswaniForConditionalGeneration
from vaswani_hf.modeling_vaswani import (
    VaswaniDropout,
    VaswaniSinusoidalPositionalEncoding,
    fused_attention_is_slow,
    sdpa_masks_in_eager_attention,
)

ATTENTION_IMPLEMENTATIONS = ["eager", "sdpa"]


def test_sinusoids_follow_section_3_5():
    table = VaswaniSinusoidalPositionalEncoding.table(50, 16)
    pos, i = 37, 3
    angle = torch.tensor(pos / 10000 ** (2 * i / 16), dtype=torch.float64)
    assert table[pos, 2 * i] == pytest.approx(torch.sin(angle).item(), abs=1e-6)
    assert table[pos, 2 * i + 1] == pytest.approx(torch.cos(angle).item(), abs=1e-6)


def test_sinusoids_have_no_length_cap():
    model = tiny_model(max_position_embeddings=16)
    batch = {"input_ids": torch.randint(4, 97, (1, 40)), "decoder_input_ids": decoder_inputs(1, 40)}
    assert model(**batch).logits.shape == (1, 40, 97)


@pytest.mark.parametrize("attn_implementation", ATTENTION_IMPLEMENTATIONS)
def test_decoder_is_causal(attn_implementation):
    model = tiny_model(attn_implementation=attn_implementation)
    batch = padded_batch()
    decoder_ids = decoder_inputs(3, 8)
    reference = model(**batch, decoder_input_ids=decoder_ids).logits
    for t in (1, 4, 7):
        changed = decoder_ids.clone()
        changed[:, t] = (changed[:, t] + 11) % 97
        logits = model(**batch, decoder_input_ids=changed).logits
        torch.testing.assert_close(logits[:, :t], reference[:, :t], rtol=0, atol=1e-6)
        assert (logits[:, t:] - reference[:, t:]).abs().max() > 1e-3


@pytest.mark.parametrize("attn_implementation", ATTENTION_IMPLEMENTATIONS)
def test_sentence_logits_do_not_depend_on_padding_in_its_batch(attn_implementation):
    model = tiny_model(attn_implementation=attn_implementation)
    batch = padded_batch()
    target_lengths = [5, 8, 3]
    decoder_ids = decoder_inputs(3, max(target_lengths))
    decoder_mask = torch.zeros_like(decoder_ids)
    for row, length in enumerate(target_lengths):
        decoder_mask[row, :length] = 1
        decoder_ids[row, length:] = 0
    together = model(**batch, decoder_input_ids=decoder_ids, decoder_attention_mask=decoder_mask).logits
    for row, length in enumerate(target_lengths):
        source_length = int(batch["attention_mask"][row].sum())
        alone = model(
            input_ids=batch["input_ids"][row : row + 1, :source_length],
            decoder_input_ids=decoder_ids[row : row + 1, :length],
        ).logits
        assert (alone[0] - together[row, :length]).abs().max() <= 1e-5


def test_eager_and_sdpa_give_the_same_outputs():
    batch = padded_batch()
    decoder_ids = decoder_inputs(3, 6)
    eager = tiny_model(attn_implementation="eager")(**batch, decoder_input_ids=decoder_ids).logits
    sdpa = tiny_model(attn_implementation="sdpa")(**batch, decoder_input_ids=decoder_ids).logits
    torch.testing.assert_close(eager, sdpa, rtol=0, atol=1e-5)


@pytest.mark.parametrize("mask", ["none, causal module", "none, non-causal module", "boolean padding"])
def test_eager_products_given_sdpa_masks_attend_as_sdpa(mask):
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(3, 4, 6, 8, generator=generator) for _ in range(3))
    module = nn.Module().eval()
    module.is_causal = mask == "none, causal module"
    attention_mask = None
    if mask == "boolean padding":
        attention_mask = torch.ones(3, 1, 6, 6, dtype=torch.bool)
        attention_mask[1, :, :, 4:] = False
        attention_mask[2, :, :, 2:] = False
    expected, _ = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=0.3)
    got, _ = sdpa_masks_in_eager_attention(module, query, key, value, attention_mask, scaling=0.3)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_fused_attention_is_slow_only_in_bfloat16_training_on_a_cpu():
    trained = torch.zeros(2, 4, 3, 8, dtype=torch.bfloat16, requires_grad=True)
    assert fused_attention_is_slow(trained)
    assert not fused_attention_is_slow(trained.detach())  # inference
    assert not fused_attention_is_slow(trained.float())  # float32 training: sdpa as fast (docstring)


def test_bfloat16_training_on_a_cpu_runs_sdpa_models_through_the_eager_products():
    batch = padded_batch()
    labels = decoder_inputs(3, 6)[:, 1:]
    sdpa_calls = []

    def counted_sdpa(*args, **kwargs):
        sdpa_calls.append(args[1].dtype)
        return sdpa_attention_forward(*args, **kwargs)

    losses = {}
    with mock.patch.dict(ALL_ATTENTION_FUNCTIONS._global_mapping, {"sdpa": counted_sdpa}):
        for implementation in ATTENTION_IMPLEMENTATIONS:
            model = tiny_model(attn_implementation=implementation).train()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                losses[implementation] = model(**batch, labels=labels).loss
        assert sdpa_calls == []
        tiny_model(attn_implementation="sdpa").train()(**batch, labels=labels).loss.backward()
    assert set(sdpa_calls) == {torch.float32}
    torch.testing.assert_close(losses["sdpa"], losses["eager"], rtol=0, atol=2e-2)


def test_output_attentions_and_hidden_states():
    model = tiny_model(attn_implementation="eager")
    batch = padded_batch()
    out = model(**batch, decoder_input_ids=decoder_inputs(3, 5), output_attentions=True, output_hidden_states=True)
    assert [a.shape for a in out.encoder_attentions] == [(3, 4, 9, 9)] * 2
    assert [a.shape for a in out.decoder_attentions] == [(3, 4, 5, 5)] * 2
    assert [a.shape for a in out.cross_attentions] == [(3, 4, 5, 9)] * 2
    assert len(out.encoder_hidden_states) == len(out.decoder_hidden_states) == 3
    torch.testing.assert_close(out.encoder_hidden_states[-1], out.encoder_last_hidden_state)
    # attention rows are distributions; padding keys get no weight; the decoder never looks ahead
    torch.testing.assert_close(out.cross_attentions[0].sum(-1), torch.ones(3, 4, 5))
    assert out.encoder_attentions[0][2, :, :, 3:].abs().max() == 0
    assert torch.triu(out.decoder_attentions[1], diagonal=1).abs().max() == 0


def test_cached_and_uncached_greedy_decoding_agree(reversal_model):
    batch = copy_task_batch(torch.Generator().manual_seed(7), batch_size=8)
    del batch["labels"]
    cached = reversal_model.generate(**batch, num_beams=1, use_cache=True)
    uncached = reversal_model.generate(**batch, num_beams=1, use_cache=False)
    assert torch.equal(cached, uncached)
    # varied outputs, mostly right: the model learned to reverse, so the comparison means something
    assert len({tuple(row.tolist()) for row in cached}) == 8
    assert sum(until_eos(row) == reversed_source(batch, i) for i, row in enumerate(cached)) >= 4


@pytest.mark.parametrize("num_beams", [1, 4])
def test_a_static_cache_decodes_like_the_dynamic_one(reversal_model, num_beams):
    """generate() with cache_implementation="static" (preallocated, what torch.compile needs) passes prepared 4D
    masks; the model takes them and gives the same tokens."""
    batch = copy_task_batch(torch.Generator().manual_seed(7), batch_size=8)
    del batch["labels"]
    dynamic = reversal_model.generate(**batch, num_beams=num_beams, max_new_tokens=12)
    static = reversal_model.generate(**batch, num_beams=num_beams, max_new_tokens=12, cache_implementation="static")
    assert torch.equal(dynamic, static)


def test_unscaled_attention_differs_from_scaled():
    batch = padded_batch()
    decoder_ids = decoder_inputs(3, 5)
    scaled = tiny_model(seed=3)(**batch, decoder_input_ids=decoder_ids).logits
    unscaled = tiny_model(seed=3, scale_attention=False)(**batch, decoder_input_ids=decoder_ids).logits
    assert (scaled - unscaled).abs().max() > 1e-3


def test_without_positions_the_encoder_is_permutation_equivariant():
    model = tiny_model(position_encoding="none")
    input_ids = torch.randint(4, 97, (2, 7))
    permutation = torch.randperm(7)
    states = model.get_encoder()(input_ids=input_ids).last_hidden_state
    permuted = model.get_encoder()(input_ids=input_ids[:, permutation]).last_hidden_state
    torch.testing.assert_close(permuted, states[:, permutation], rtol=0, atol=1e-5)
    with_positions = tiny_model().get_encoder()
    assert (
        with_positions(input_ids=input_ids[:, permutation]).last_hidden_state
        - with_positions(input_ids=input_ids).last_hidden_state[:, permutation]
    ).abs().max() > 1e-3


def test_learned_positions_add_a_parameter_with_a_length_limit():
    learned = tiny_model(position_encoding="learned", max_position_embeddings=12)
    sinusoidal = tiny_model()
    names = {name for name, _ in learned.named_parameters()} - {name for name, _ in sinusoidal.named_parameters()}
    assert names == {"model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight"}
    assert learned.model.encoder.embed_positions.weight.shape == (12, 32)
    with pytest.raises(ValueError, match="max_position_embeddings=12"):
        learned(input_ids=torch.randint(4, 97, (1, 13)), decoder_input_ids=decoder_inputs(1, 3))


def test_embeddings_are_tied_and_scaled():
    model = tiny_model()
    shared = model.model.shared.weight
    assert model.lm_head.weight is shared
    assert model.model.encoder.embed_tokens.weight is shared and model.model.decoder.embed_tokens.weight is shared
    assert model.model.encoder.embed_scale == pytest.approx(32**0.5)


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_dropout_zeroes_a_fraction_p_and_scales_the_rest_by_1_over_1_minus_p(p):
    dropout = VaswaniDropout(p).train()
    inputs = torch.ones(1000, 1000, requires_grad=True)
    outputs = dropout(inputs)
    dropped = outputs == 0
    assert abs(dropped.float().mean().item() - p) < 0.005  # 10^6 draws: the standard error is under 0.0005
    torch.testing.assert_close(outputs[~dropped], torch.full_like(outputs[~dropped], 1 / (1 - p)))
    # neighbours (which share a random word) are dropped independently: P(both) = p^2
    assert abs((dropped[:, 0::2] & dropped[:, 1::2]).float().mean().item() - p * p) < 0.005
    outputs.sum().backward()
    assert torch.equal(inputs.grad, outputs.detach())  # d(x * keep / (1 - p)) / dx = keep / (1 - p)


def test_dropout_masks_follow_the_seed_and_differ_between_calls():
    dropout = VaswaniDropout(0.5).train()
    inputs = torch.ones(4, 7, 3, dtype=torch.bfloat16)  # any shape, any floating dtype, odd sizes
    torch.manual_seed(0)
    first, second = dropout(inputs), dropout(inputs)
    torch.manual_seed(0)
    assert torch.equal(dropout(inputs), first) and not torch.equal(first, second)
    assert first.dtype == torch.bfloat16 and first.shape == inputs.shape


def test_dropout_is_the_identity_in_evaluation_and_at_p_0():
    inputs = torch.randn(5, 6)
    assert torch.equal(VaswaniDropout(0.3).eval()(inputs), inputs)
    assert torch.equal(VaswaniDropout(0.0).train()(inputs), inputs)


@pytest.mark.parametrize("p", [1 - 2**-18, 1.0])
def test_dropout_near_or_at_1_drops_almost_everything(p):
    # 16 random bits cannot draw a P_drop within 2^-17 of 1 (it rounds to 1 and the mask would keep everything)
    outputs = VaswaniDropout(p).train()(torch.ones(1000, 1000))
    assert (outputs != 0).float().mean().item() < 1e-4  # expected 1 - p: 4e-6 or 0


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_gradient_checkpointing_gives_the_same_gradients(dropout):
    """With dropout too: the recomputed forward pass draws the same masks."""
    batch = copy_task_batch(torch.Generator().manual_seed(4), batch_size=4)
    gradients = []
    for checkpointing in (False, True):
        model = tiny_model(seed=5, dropout=dropout, activation_dropout=dropout).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        torch.manual_seed(6)
        model(**batch).loss.backward()
        gradients.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, msg=name)


def test_save_and_load_round_trip_keeps_logits_and_ties(tmp_path):
    model = tiny_model(seed=6)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is VaswaniForConditionalGeneration
    assert loaded.lm_head.weight is loaded.model.shared.weight
    batch = padded_batch()
    decoder_ids = decoder_inputs(3, 4)
    assert torch.equal(
        loaded(**batch, decoder_input_ids=decoder_ids).logits, model(**batch, decoder_input_ids=decoder_ids).logits
    )
    assert loaded.generation_config.max_new_tokens_offset == 50
    assert tiny_config().to_dict()["model_type"] == "vaswani"


@pytest.mark.parametrize("with_labels", [False, True])
def test_return_dict_false_gives_the_outputs_as_tuples_as_marian_does(with_labels):
    model = tiny_model(seed=31).eval()
    batch = padded_batch(0)
    inputs = {**batch, "decoder_input_ids": batch["input_ids"][:, :4]}
    if with_labels:
        inputs = {**batch, "labels": batch["input_ids"][:, 1:5]}
    for module in (model, model.model):
        if with_labels and module is model.model:
            continue
        expected = module(**inputs)
        outputs = module(**inputs, return_dict=False)
        assert isinstance(outputs, tuple) and len(outputs) == len(expected.to_tuple())
        for output, reference in zip(outputs, expected.to_tuple(), strict=True):
            if isinstance(reference, torch.Tensor):
                assert torch.equal(output, reference)


def test_forward_keyword_arguments_are_typed_as_transformers_kwargs():
    import typing

    from transformers.utils import TransformersKwargs

    from vaswani_hf import VaswaniModel
    from vaswani_hf.modeling_vaswani import VaswaniDecoder, VaswaniEncoder

    for cls in (VaswaniForConditionalGeneration, VaswaniModel, VaswaniEncoder, VaswaniDecoder):
        (kwargs,) = typing.get_args(typing.get_type_hints(cls.forward)["kwargs"])
        assert kwargs is TransformersKwargs, cls
    assert "output_attentions" in TransformersKwargs.__annotations__
    model = tiny_model(seed=32, attn_implementation="eager").eval()
    batch = padded_batch(0)
    outputs = model(**batch, decoder_input_ids=batch["input_ids"][:, :4], output_attentions=True)
    assert len(outputs.cross_attentions) == model.config.decoder_layers
