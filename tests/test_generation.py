"""generation_vaswani.py: the paper's decoding settings and the source-length limit; greedy and beam search give
transformers' own results while doing less work."""

import copy
import math
import sys
from unittest import mock

import pytest
import torch
import transformers
from helpers import ROOT, copy_task_batch, generate_with_each_loop, padded_batch, reversed_source, tiny_model, until_eos
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packaging.requirements import Requirement
from packaging.version import Version
from transformers import GenerationMixin, LogitsProcessor
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.generation.logits_process import MinLengthLogitsProcessor, MinNewTokensLengthLogitsProcessor

import vaswani_hf.generation_vaswani as generation
from vaswani_hf.generation_vaswani import (
    TESTED_TRANSFORMERS_VERSIONS,
    BeamAncestry,
    BeamSelfAttentionLayer,
    PreallocatedSelfAttentionLayer,
    SuppressEndOfSentenceLogitsProcessor,
    _next_token_scores,
    _score_buffers,
)

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


decoding_settings = st.fixed_dictionaries(
    {
        "num_beams": st.integers(1, 5),
        "max_new_tokens": st.sampled_from([1, 4, 12]),
        "min_new_tokens": st.sampled_from([0, 3]),
        "length_penalty": st.sampled_from([0.6, 1.0, 0.0, -0.5]),
        "early_stopping": st.sampled_from([True, False, "never"]),
        "no_repeat_ngram_size": st.sampled_from([0, 2]),
        "return_fraction": st.floats(0.0, 1.0),
    }
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(decoding_settings, st.integers(0, 3))
def test_greedy_and_beam_search_give_the_tokens_of_transformers_loops(reversal_model, options, batch_seed):
    options = dict(options)
    num_return = 1 + int(options.pop("return_fraction") * (options["num_beams"] - 1))
    if options["num_beams"] == 1:
        for beam_only in ("length_penalty", "early_stopping"):
            options.pop(beam_only)
    ours, theirs = generate_with_each_loop(
        reversal_model, padded_batch(batch_seed), num_return_sequences=num_return, **options
    )
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("num_beams", [1, 4])
def test_the_default_decoding_with_its_source_length_limit_matches_transformers(reversal_model, num_beams):
    # Sec. 6.1 defaults: beam 4, length penalty 0.6, source length + 50 (our own logits processor), ends with </s>.
    ours, theirs = generate_with_each_loop(reversal_model, padded_batch(5), num_beams=num_beams)
    assert torch.equal(ours, theirs)
    assert (ours == reversal_model.config.eos_token_id).any(dim=1).all()


def test_a_random_model_with_a_tiny_vocabulary_matches_transformers_even_when_beams_tie():
    # Twelve tokens: beams collide on equal hypotheses and end-of-sentence often wins early.
    model = tiny_model(seed=4, vocab_size=12)
    batch = padded_batch(1, vocab_size=12)
    for num_beams in (1, 2, 5):
        ours, theirs = generate_with_each_loop(model, batch, num_beams=num_beams, max_new_tokens=15)
        assert torch.equal(ours, theirs)


def mixed_length_batch(seed: int, batch_size: int = 24) -> dict[str, torch.Tensor]:
    """Sources of 2-9 tokens in random order, right-padded: the reversal model's outputs end at different steps."""
    batch = copy_task_batch(torch.Generator().manual_seed(seed), batch_size=batch_size)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def decoder_rows_per_step(model, **generate_kwargs) -> tuple[torch.Tensor, list[int]]:
    """generate's tokens, and the number of rows the decoder ran at each step."""
    rows = []
    layer = model.model.decoder.layers[0].ffn
    hook = layer.register_forward_hook(lambda module, args, output: rows.append(len(args[0])))
    try:
        tokens = model.generate(**generate_kwargs)
    finally:
        hook.remove()
    return tokens, rows


@pytest.mark.parametrize("num_beams", [1, 4])
@pytest.mark.parametrize("early_stopping", [True, False, "never"])
def test_finished_sentences_leave_the_batch_and_the_others_get_transformers_tokens(
    reversal_model, num_beams, early_stopping
):
    # 24 sources of mixed lengths finish at different steps: ours drops each as it is done, transformers' keeps all.
    if num_beams == 1 and early_stopping is not True:
        pytest.skip("early stopping is a beam-search setting")
    options = {"num_beams": num_beams, "max_new_tokens": 14}
    if num_beams > 1:
        options |= {"early_stopping": early_stopping, "length_penalty": 0.6, "num_return_sequences": 2}
    for seed in range(3):
        batch = mixed_length_batch(seed)
        ours, theirs = generate_with_each_loop(reversal_model, batch, **options)
        assert torch.equal(ours, theirs)
        _, rows = decoder_rows_per_step(reversal_model, **batch, **options)
        rows_per_sentence = rows[1:] if num_beams > 1 else rows  # beam search: the first step once per sentence
        assert rows_per_sentence == sorted(rows_per_sentence, reverse=True)
        if early_stopping is not False or num_beams == 1:  # "never" and True: every sentence ends on its own
            assert rows_per_sentence[-1] < rows_per_sentence[0], "no finished sentence left the batch"
        with mock.patch.object(generation, "DROP_FINISHED_SENTENCES", False):
            kept, rows_kept = decoder_rows_per_step(reversal_model, **batch, **options)
        assert torch.equal(kept, ours) and set(rows_kept[1:]) == {len(batch["input_ids"]) * num_beams}


@pytest.mark.parametrize("num_beams", [1, 3])
def test_the_default_decoding_drops_finished_sentences_with_their_length_limits(reversal_model, num_beams):
    # The paper's per-sentence length limit (source + 50, here + 2 to make it bite) is pruned with the rows.
    batch = mixed_length_batch(7)
    reversal_model.generation_config.max_new_tokens_offset = 2
    try:
        ours, theirs = generate_with_each_loop(reversal_model, batch, num_beams=num_beams)
        _, rows = decoder_rows_per_step(reversal_model, **batch, num_beams=num_beams)
    finally:
        reversal_model.generation_config.max_new_tokens_offset = 50
    assert torch.equal(ours, theirs)
    assert rows[-1] < rows[1]


class RowCountingProcessor(LogitsProcessor):
    """A processor that is not known to treat rows independently: finished sentences must stay in the batch."""

    def __call__(self, input_ids, scores):
        scores[:, 5] -= 0.01 * torch.arange(len(scores), dtype=scores.dtype)
        return scores


@pytest.mark.parametrize("num_beams", [1, 4])
def test_an_unknown_logits_processor_keeps_every_sentence_in_the_batch(reversal_model, num_beams):
    batch = mixed_length_batch(1)
    options = {"num_beams": num_beams, "max_new_tokens": 12, "logits_processor": [RowCountingProcessor()]}
    ours, theirs = generate_with_each_loop(reversal_model, batch, **options)
    assert torch.equal(ours, theirs)
    _, rows = decoder_rows_per_step(reversal_model, **batch, **options)
    assert set(rows[1:]) == {len(batch["input_ids"]) * num_beams}


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("prompt_length", [1, 3])
def test_beam_search_without_history_copies_gives_transformers_tokens(
    reversal_model, attn_implementation, prompt_length
):
    # Beam reorders only move small integers (BeamAncestry); the attention masks what each beam may see. Mixed
    # lengths drop finished sentences on the way; a longer decoder prompt fills several positions at the first step.
    model = copy.deepcopy(reversal_model)
    model.set_attn_implementation(attn_implementation)
    batch = mixed_length_batch(0, batch_size=12)
    prompt = torch.full((12, prompt_length), model.config.decoder_start_token_id)
    prompt[:, 1:] = torch.randint(4, 97, (12, prompt_length - 1), generator=torch.Generator().manual_seed(0))
    options = {"num_beams": 4, "max_new_tokens": 12, "length_penalty": 0.6, "num_return_sequences": 2}
    with mock.patch.object(
        PreallocatedSelfAttentionLayer, "reorder_cache", side_effect=AssertionError("histories copied")
    ):
        ours, theirs = generate_with_each_loop(model, batch | {"decoder_input_ids": prompt}, **options)
    assert torch.equal(ours, theirs)


def test_under_an_attention_without_4d_masks_beam_search_reorders_the_histories_and_gives_transformers_tokens(
    reversal_model,
):
    batch = mixed_length_batch(1, batch_size=12)
    reorder = PreallocatedSelfAttentionLayer.reorder_cache
    with (
        mock.patch.object(generation, "_BEAM_MASK_ATTENTION", {}),
        mock.patch.object(PreallocatedSelfAttentionLayer, "reorder_cache", autospec=True, side_effect=reorder) as spy,
    ):
        ours, theirs = generate_with_each_loop(reversal_model, batch, num_beams=4, max_new_tokens=12)
    assert torch.equal(ours, theirs) and spy.called


@pytest.mark.parametrize("precision", ["bfloat16_weights", "bfloat16_autocast"])
def test_in_bf16_beam_search_reorders_the_histories_and_gives_transformers_tokens(reversal_model, precision):
    # sdpa over the beams' interleaved entries rounds unlike sdpa over each beam's own history; in bf16 that changed
    # tokens (with the ancestry mask, batches 123, 124, 131, 132 and 136 here, by thread count), so bf16 reorders
    model = copy.deepcopy(reversal_model)
    if precision == "bfloat16_weights":
        model = model.to(torch.bfloat16)
    with (
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16_autocast"),
        mock.patch.object(BeamAncestry, "follow", side_effect=AssertionError("the ancestry mask in bf16")),
    ):
        for seed in range(120, 140):
            batch = copy_task_batch(torch.Generator().manual_seed(seed), batch_size=12)
            del batch["labels"]
            ours, theirs = generate_with_each_loop(model, batch)  # the paper's beam 4, length penalty 0.6
            assert torch.equal(ours, theirs), f"batch {seed}"


@pytest.mark.parametrize("num_beams", [1, 4])
@pytest.mark.parametrize("repetition_penalty", [1.5, 0.7])
def test_a_processor_returning_a_strided_view_of_the_scores_gives_transformers_tokens(
    reversal_model, num_beams, repetition_penalty
):
    # RepetitionPenaltyLogitsProcessor returns a slice of a wider tensor: not contiguous
    ours, theirs = generate_with_each_loop(
        reversal_model, padded_batch(2), num_beams=num_beams, max_new_tokens=10, repetition_penalty=repetition_penalty
    )
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("num_beams", [1, 4])
def test_a_model_under_accelerate_hooks_or_over_several_devices_decodes_through_transformers_loops(
    reversal_model, num_beams
):
    # accelerate's hooks bring offloaded weights in the modules' forward, which our loops' direct reads would skip
    from accelerate import cpu_offload

    batch = padded_batch(4)
    expected = reversal_model.generate(**batch, num_beams=num_beams, max_new_tokens=8)
    offloaded = cpu_offload(copy.deepcopy(reversal_model), execution_device=torch.device("cpu"))
    mapped = copy.deepcopy(reversal_model)
    mapped.hf_device_map = {"model": "cpu", "lm_head": 0}  # only read for its devices here
    generic = {1: "_sample", 4: "_beam_search"}[num_beams]
    original = getattr(GenerationMixin, generic)
    for model in (offloaded, mapped):
        with mock.patch.object(GenerationMixin, generic, autospec=True, side_effect=original) as spy:
            tokens = model.generate(**batch, num_beams=num_beams, max_new_tokens=8)
        assert spy.call_count == 1 and torch.equal(tokens, expected)


def test_beam_attention_through_the_ancestry_mask_equals_attention_over_reordered_histories():
    sentences, beams, heads, head_dim, steps = 2, 3, 2, 4, 5
    generator = torch.Generator().manual_seed(0)
    layer = BeamSelfAttentionLayer(capacity=steps + 1, num_beams=beams)
    ancestry = BeamAncestry(sentences, beams, steps + 1, torch.device("cpu"))
    prompt = torch.randn(sentences, heads, 1, head_dim, generator=generator)
    layer.update(prompt, 2 * prompt)
    histories = prompt.repeat_interleave(beams, 0)  # every beam starts from its sentence's prompt
    for step in range(1, steps):
        parents = torch.randint(0, beams, (sentences, beams), generator=generator)
        ancestry.follow(parents)
        rows = (torch.arange(sentences)[:, None] * beams + parents).reshape(-1)
        histories = histories[rows]  # what transformers' cache does: copy each beam's history from its parent
        new = torch.randn(sentences * beams, heads, 1, head_dim, generator=generator)
        histories = torch.cat([histories, new], dim=2)
        mask = ancestry.next_position_mask(step)
        keys, values = layer.update(new, 2 * new)
        query = torch.randn(sentences, heads, beams, head_dim, generator=generator)  # the beams folded, as attention
        ours = torch.nn.functional.scaled_dot_product_attention(query, keys, values, attn_mask=mask)
        expected = torch.nn.functional.scaled_dot_product_attention(
            query.transpose(1, 2).reshape(sentences * beams, heads, 1, head_dim), histories, 2 * histories
        )
        assert torch.allclose(ours.transpose(1, 2).reshape_as(expected), expected, atol=1e-6)
    assert layer.get_seq_length() == steps
    layer.batch_select_indices(torch.tensor([1]))  # the first sentence finished
    ancestry.follow(torch.tensor([[0, 0, 1]]), torch.tensor([1]))
    assert layer.keys.shape == (1, heads, steps * beams, head_dim)
    assert torch.equal(layer.values, 2 * layer.keys)


def test_beam_search_projects_each_source_once_for_all_its_beams(reversal_model):
    rows_projected = []
    hook = reversal_model.model.decoder.layers[0].cross_attn.kv_proj.register_forward_hook(
        lambda module, args, output: rows_projected.append(args[0].shape[0])
    )
    try:
        reversal_model.generate(**padded_batch(0), num_beams=4, max_new_tokens=5)
    finally:
        hook.remove()
    assert rows_projected == [3], "cross-attention keys/values: once, one row per sentence"


def test_the_first_beam_step_runs_once_per_sentence(reversal_model):
    rows_decoded = []
    hook = reversal_model.model.decoder.layers[0].ffn.register_forward_hook(
        lambda module, args, output: rows_decoded.append(len(args[0]))
    )
    try:
        reversal_model.generate(**padded_batch(0), num_beams=4, min_new_tokens=3, max_new_tokens=3)
    finally:
        hook.remove()
    assert rows_decoded == [3, 12, 12]


@pytest.mark.parametrize(
    ("options", "num_beams"),
    [
        ({"do_sample": True, "top_k": 5}, 1),
        ({"return_dict_in_generate": True, "output_scores": True}, 1),
        ({"return_dict_in_generate": True, "output_scores": True}, 3),
        ({"cache_implementation": "static"}, 1),
        ({"cache_implementation": "static"}, 3),
        ({"use_cache": False}, 3),
    ],
    ids=["sampling", "scores-greedy", "scores-beam", "static-greedy", "static-beam", "no-cache-beam"],
)
def test_other_requests_run_through_transformers_loops(reversal_model, options, num_beams):
    generic = {1: "_sample", 3: "_beam_search"}[num_beams]
    original = getattr(GenerationMixin, generic)
    with mock.patch.object(GenerationMixin, generic, autospec=True, side_effect=original) as spy:
        reversal_model.generate(**padded_batch(0), num_beams=num_beams, max_new_tokens=4, **options)
    assert spy.call_count == 1


@pytest.mark.parametrize("num_beams", [1, 4])
def test_on_an_untested_transformers_release_generate_steps_aside_for_its_loops_with_one_warning(
    reversal_model, num_beams, monkeypatch, caplog
):
    batch = padded_batch(3)
    generic = {1: "_sample", 4: "_beam_search"}[num_beams]
    original = getattr(GenerationMixin, generic)
    with mock.patch.object(GenerationMixin, generic, autospec=True, side_effect=original) as spy:
        ours = reversal_model.generate(**batch, num_beams=num_beams, max_new_tokens=8)
        assert spy.call_count == 0, "on the tested release our loop runs"
        generation._warn_untested_version.cache_clear()
        monkeypatch.setattr(transformers, "__version__", "5.99.0")
        with caplog.at_level("WARNING"):
            theirs = [reversal_model.generate(**batch, num_beams=num_beams, max_new_tokens=8) for _ in range(2)]
    assert spy.call_count == 2, "on another release transformers' own loop runs"
    assert all(torch.equal(tokens, ours) for tokens in theirs)
    warnings = [record.getMessage() for record in caplog.records if "5.99.0" in record.getMessage()]
    assert len(warnings) == 1 and "transformers' own loops" in warnings[0]


def test_the_lowest_tested_transformers_release_is_pyprojects_lower_bound():
    # CI runs this file on the lowest recorded release (scripts/test_lowest_transformers.sh): the one pyproject allows
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    (transformers_requirement,) = (Requirement(d) for d in dependencies if Requirement(d).name == "transformers")
    lower_bounds = [Version(s.version) for s in transformers_requirement.specifier if s.operator == ">="]
    assert lower_bounds == [min(map(Version, TESTED_TRANSFORMERS_VERSIONS))]
    assert all(transformers_requirement.specifier.contains(version) for version in TESTED_TRANSFORMERS_VERSIONS)


def test_in_place_end_of_sentence_suppression_equals_transformers_processors():
    eos = torch.tensor([2, 5])
    scores = torch.randn(6, 11)
    for prompt_length in (3, 4, 6):
        input_ids = torch.ones(6, prompt_length, dtype=torch.long)
        for theirs, min_length in (
            (MinLengthLogitsProcessor(5, eos), 5),
            (MinNewTokensLengthLogitsProcessor(1, 4, eos), 1 + 4),
        ):
            expected = theirs(input_ids, scores)
            ours = SuppressEndOfSentenceLogitsProcessor(min_length, eos)(input_ids, scores.clone())
            assert torch.equal(ours, expected)


def test_the_preallocated_cache_appends_and_reorders_without_new_buffers():
    layer = PreallocatedSelfAttentionLayer(capacity=6)
    steps = [torch.randn(2, 3, 1, 4) for _ in range(3)]  # two sentences at first, one row each
    layer.update(steps[0], -steps[0])
    layer.reorder_cache(torch.tensor([0, 0, 1, 1]))  # two beams per sentence after the first step
    keys, values = layer.update(steps[1].repeat_interleave(2, 0), -steps[1].repeat_interleave(2, 0))
    assert keys.shape == (4, 3, 2, 4) and torch.equal(values, -keys)
    assert torch.equal(keys[:, :, 0], steps[0].repeat_interleave(2, 0)[:, :, 0])
    expected = keys.clone()
    buffers = {buffer.data_ptr() for buffer in layer.buffers}
    for step in range(4):
        layer.reorder_cache(torch.tensor([1, 0, 3, 2]))  # swap the two beams of each sentence
        assert torch.equal(layer.keys, expected[[1, 0, 3, 2]] if step % 2 == 0 else expected)
        if step == 0:
            buffers |= {buffer.data_ptr() for buffer in layer.buffers}
        assert {buffer.data_ptr() for buffer in layer.buffers} <= buffers, "a reorder allocated new buffers"
    assert layer.get_seq_length() == 2


@pytest.mark.parametrize(("rows", "transposed"), [(3, False), (32, True), (128, False)])
def test_the_reused_score_buffers_give_the_output_projections_logits(rows, transposed):
    # The decoding loops compute the scores into reused buffers, for 5-63 rows on a CPU as weight x hidden^T and a
    # transposing copy; the plain path is lm_head(hidden).
    model = tiny_model(seed=2, vocab_size=3000)
    generator = torch.Generator().manual_seed(rows)
    encoder_hidden_states = torch.randn(rows, 5, model.config.d_model, generator=generator)
    buffers = _score_buffers(model, rows, torch.device("cpu"))
    if buffers[1] is not None:
        buffers[1].fill_(math.nan)  # stays NaN unless the transposed product is written into it
    with torch.no_grad():  # as in generate
        for step_ids in torch.randint(4, 3000, (2, rows, 1), generator=generator):  # two steps through one buffer pair
            expected, scores = (
                _next_token_scores(
                    model,
                    step_ids,
                    encoder_hidden_states,
                    None,
                    EncoderDecoderCache(DynamicCache(), DynamicCache()),
                    out=out,
                )
                for out in (None, buffers)
            )
            assert scores.data_ptr() == buffers[0].data_ptr()
            torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-5)
    assert (buffers[1] is not None and not buffers[1].isnan().any()) == transposed


@pytest.mark.parametrize("num_beams", [1, 4])
@pytest.mark.parametrize("precision", ["bfloat16_weights", "bfloat16_autocast"])
def test_bf16_decoding_is_finite_and_gives_the_tokens_of_transformers_loops_in_bf16(
    reversal_model, num_beams, precision
):
    """The two ways to decode in bfloat16 (benchmarks/bf16.py measures both): the weights cast with
    model.to(torch.bfloat16), or float32 weights under bf16 autocast. Padded sources (masks at bf16's minimum)."""
    model = copy.deepcopy(reversal_model)
    if precision == "bfloat16_weights":
        model = model.to(torch.bfloat16)
    batch = copy_task_batch(torch.Generator().manual_seed(9), batch_size=12)
    labels = batch.pop("labels")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16_autocast"):
        ours, theirs = generate_with_each_loop(model, batch, num_beams=num_beams, max_new_tokens=12)
        assert torch.equal(ours, theirs)
        assert len({tuple(row.tolist()) for row in ours}) == len(ours)  # varied outputs: the comparison means something
        logits = model(**batch, labels=labels).logits
        ours, theirs = generate_with_each_loop(model, padded_batch(5), num_beams=num_beams)  # Sec. 6.1 length limit
        assert torch.equal(ours, theirs)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_default_generation_follows_section_6_1(reversal_model):
    config = reversal_model.generation_config
    assert (config.num_beams, config.length_penalty, config.max_new_tokens_offset) == (4, 0.6, 50)
    batch = copy_task_batch(torch.Generator().manual_seed(8), batch_size=5)
    del batch["labels"]
    beams = reversal_model.generate(**batch)  # beam 4 on a padded batch
    assert beams.shape[0] == 5 and (beams[:, 0] == 1).all() and ((beams == 2).sum(-1) >= 1).all()
    assert sum(until_eos(row) == reversed_source(batch, i) for i, row in enumerate(beams)) >= 3
    four_best = reversal_model.generate(**batch, num_return_sequences=4)
    assert four_best.shape[0] == 20 and len({tuple(until_eos(row)) for row in four_best[:4]}) == 4


def test_output_length_is_capped_at_source_length_plus_offset():
    model = tiny_model()  # random weights never emit </s> on purpose: only the limit stops them
    model.generation_config.max_new_tokens_offset = 4
    batch = padded_batch()
    out = model.generate(**batch, num_beams=1)
    source_lengths = batch["attention_mask"].sum(-1)
    for row, source_length in enumerate(source_lengths.tolist()):
        tokens = out[row, 1:].tolist()
        assert tokens.index(2) <= source_length + 4  # </s> at the latest right after source length + 4 tokens
    assert out.shape[1] == 1 + int(source_lengths.max()) + 4 + 1
