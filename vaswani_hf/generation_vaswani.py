"""Greedy and beam search for the Transformer as `generate()` runs them (Sec. 6.1: beam 4, length penalty 0.6).

`GenerationMixin`'s loops serve every model; for an encoder-decoder they do work whose result is known in advance.
These loops skip it and change no result (tests compare them token for token with transformers' own loops):
- the beams of a sentence share its source, so the cross-attention keys and values are computed and stored once per
  sentence, not once per beam, and never reordered (beam search reorders only the decoder's self-attention cache);
- before the first step every beam of a sentence is the same hypothesis, so the first step runs once per sentence;
- suppressing end-of-sentence below a minimum length writes one column, instead of copying all scores twice;
- the decoder's self-attention keys and values are written into buffers sized for the whole generation: on a CPU,
  allocating fresh multi-megabyte tensors every step (concatenation, then the reorder) costs more than the copies;
- beam search never copies the beams' histories when it reorders them: each position is written once, in one row
  per sentence, and a mask says which entries each beam's hypothesis is made of (`BeamSelfAttentionLayer`,
  `BeamAncestry`; with the sdpa and eager attention in float32, else a reorder between two buffers);
- the decoder runs on the new token only and the output projection on its position, into reused score buffers,
  with no per-step bookkeeping of model arguments; on a CPU, for 5-63 rows, the projection is computed as weight x
  hidden^T (vocabulary x rows), which MKL runs faster than hidden x weight^T there (`TRANSPOSED_PROJECTION_ROWS`).
Which beams survive, the length penalty, early stopping and the finished hypotheses are decided by transformers' own
beam-search helpers, so the search itself is theirs. Anything else (sampling, returned scores or attentions, static
caches, several devices or accelerate's offloading, streamers) runs through `GenerationMixin` unchanged.

The seam: `VaswaniGenerationMixin` overrides `GenerationMixin`'s private `_sample` / `_beam_search`, and our beam
search calls five of its private helpers, which any transformers release may change. `fast_decoding_applies` is the one
place that decides between our loops and transformers' own; on a transformers version outside
`TESTED_TRANSFORMERS_VERSIONS` it always picks transformers' own (with one warning): slower decoding, never wrong.

Also here: the paper's decoding settings (`paper_generation_config`) and its source-length limit
(`SourceLengthLimitLogitsProcessor`, applied by `VaswaniGenerationMixin.generate`).

This file is uploaded with published models for `trust_remote_code=True`, beside `modeling_vaswani.py`: it imports only
`transformers`, `torch` and its sibling `configuration_vaswani`.
"""

import functools
import math

import torch
import transformers
from torch import nn
from transformers import GenerationConfig, GenerationMixin, LogitsProcessor, LogitsProcessorList, StoppingCriteriaList
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, EncoderDecoderCache
from transformers.generation.logits_process import (
    ForcedBOSTokenLogitsProcessor,
    ForcedEOSTokenLogitsProcessor,
    MinLengthLogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SuppressTokensAtBeginLogitsProcessor,
    SuppressTokensLogitsProcessor,
)
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria
from transformers.generation.streamers import BaseStreamer
from transformers.utils import ModelOutput, logging

from .configuration_vaswani import VaswaniConfig

logger = logging.get_logger(__name__)

# The transformers releases tests/test_generation.py has passed on (our loops give the tokens of transformers' own);
# add a release here only after those tests pass on it. The lowest is pyproject's lower bound, which CI also tests
# (scripts/test_lowest_transformers.sh).
TESTED_TRANSFORMERS_VERSIONS = ("5.24.0", "5.25.0")


def paper_generation_config(config: VaswaniConfig) -> GenerationConfig:
    """The decoding of Sec. 6.1 with the model's special tokens: beam size 4, length penalty 0.6, output length at
    most the input length + 50 (`max_new_tokens_offset`, read by `generate`), stopping early when possible."""
    return GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        num_beams=4,
        length_penalty=0.6,
        early_stopping=True,
        max_new_tokens_offset=50,
    )


def target_length_limits(config: VaswaniConfig, attention_mask: torch.Tensor, offset: int) -> torch.Tensor:
    """Each sentence's limit on its output tokens: its source length + `offset` (Sec. 6.1, 6.3), within the position
    table of a decoder with learned positions."""
    limits = attention_mask.sum(-1) + offset
    if config.position_encoding == "learned":  # the decoder has no position beyond its table
        limits = limits.clamp(max=config.max_position_embeddings - 1)
    return limits


class SourceLengthLimitLogitsProcessor(LogitsProcessor):
    """Forces end-of-sentence once a hypothesis reaches its own source length + offset (Sec. 6.1).

    Per sentence, so a translation does not depend on the lengths of the other sentences in its batch.
    """

    def __init__(self, max_target_lengths: torch.Tensor, eos_token_id: int):
        self.max_target_lengths = max_target_lengths  # (batch * num_beams,), decoder start token excluded
        self.eos_token_id = eos_token_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        at_limit = (input_ids.shape[1] - 1) >= self.max_target_lengths
        if not at_limit.any():
            return scores
        forced = torch.full_like(scores, torch.finfo(scores.dtype).min)
        forced[:, self.eos_token_id] = 0.0
        return torch.where(at_limit.unsqueeze(1), forced, scores)

    def select_rows(self, rows: torch.Tensor) -> "SourceLengthLimitLogitsProcessor":
        """The processor of the given rows only (the decoding loops drop finished sentences from the batch)."""
        return SourceLengthLimitLogitsProcessor(self.max_target_lengths[rows], self.eos_token_id)


def check_generate_inputs(input_ids: torch.Tensor | None, *num_beams: int | None) -> None:
    """Refuse what `generate` would fail on deep inside with an unnamed error: a beam count below 1 (a division by
    zero, or a negative size) and a batch of no sources or of sources with no tokens (a reshape error)."""
    for value in num_beams:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"num_beams must be a whole number of at least 1 (1: greedy search), got {value!r}")
    if isinstance(input_ids, torch.Tensor) and 0 in input_ids.shape:
        raise ValueError(
            f"input_ids has shape {tuple(input_ids.shape)}: generate needs at least one source of at least one token"
        )


class SuppressEndOfSentenceLogitsProcessor(LogitsProcessor):
    """End-of-sentence impossible while hypotheses are shorter than `min_length` (prompt included), written in place:
    the same scores as transformers' `MinLengthLogitsProcessor` / `MinNewTokensLengthLogitsProcessor`."""

    def __init__(self, min_length: int, eos_token_id: torch.Tensor):
        self.min_length = min_length
        self.eos_token_id = eos_token_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[-1] < self.min_length:
            scores[:, self.eos_token_id] = -math.inf
        return scores


class PreallocatedSelfAttentionLayer(DynamicLayer):
    """A decoder self-attention cache layer whose keys and values live in buffers of `capacity` positions (and
    `max_rows` rows, or as many as it first holds): each new position is written in place, and a reorder (beam
    search's, or one that drops finished rows) copies into a second pair of buffers, which then swap."""

    def __init__(self, capacity: int, max_rows: int = 0):
        super().__init__()
        self.capacity = capacity
        self.max_rows = max_rows
        self.rows = 0
        self.spares: tuple[torch.Tensor, torch.Tensor] | None = None

    def _buffers_like(self, states: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (max(rows, self.max_rows), states.shape[1], self.capacity, states.shape[3])
        return tuple(torch.empty(shape, dtype=states.dtype, device=states.device) for _ in range(2))

    def _views(self, buffers: tuple[torch.Tensor, torch.Tensor], length: int) -> None:
        self.keys, self.values = (buffer[: self.rows, :, :length] for buffer in buffers)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.rows = key_states.shape[0]
        self.buffers = self._buffers_like(key_states, self.rows)
        self._views(self.buffers, 0)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self.keys.shape[-2]
        end = start + key_states.shape[-2]
        self.buffers[0][: self.rows, :, start:end] = key_states
        self.buffers[1][: self.rows, :, start:end] = value_states
        self._views(self.buffers, end)
        return self.keys, self.values

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Keep rows `beam_idx` (in that order): beam search's reorder, which may also leave rows out."""
        length = self.get_seq_length()
        if length == 0:
            return
        rows = beam_idx.shape[0]
        if self.spares is None or self.spares[0].shape[0] < rows:  # first use, or more rows than ever before
            self.spares = self._buffers_like(self.keys, rows)
        targets = self.spares
        torch.index_select(self.keys, 0, beam_idx, out=targets[0][:rows, :, :length])
        torch.index_select(self.values, 0, beam_idx, out=targets[1][:rows, :, :length])
        self.spares, self.buffers = self.buffers, targets
        self.rows = rows
        self._views(targets, length)


class BeamSelfAttentionLayer(DynamicLayer):
    """A decoder self-attention cache layer for beam search that beam reorders never copy: one row per sentence,
    holding position t of its beam b at index t * num_beams + b, written once. `BeamAncestry` records which beam's
    entry holds each position of each hypothesis and turns that into the attention mask; the attention folds a
    sentence's beams into its queries (`VaswaniAttention`). Reordering the beams' histories instead copies all of
    them every step, a cost that grows with the output length (20% of the operator time of beam 4 on Multi30k test
    sentences, one thread; docs/benchmarks/beam_and_training_targets.md has what it gained end to end).
    """

    def __init__(self, capacity: int, num_beams: int):
        super().__init__()
        self.capacity = capacity
        self.num_beams = num_beams
        self.length = 0  # positions held
        self.spares: tuple[torch.Tensor, torch.Tensor] | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        sentences, heads, _, head_dim = key_states.shape
        shape = (sentences, heads, self.capacity * self.num_beams, head_dim)
        self.buffers = tuple(torch.empty(shape, dtype=key_states.dtype, device=key_states.device) for _ in range(2))
        self.device = key_states.device
        self.is_initialized = True

    def _views(self) -> None:
        self.keys, self.values = (buffer[:, :, : self.length * self.num_beams] for buffer in self.buffers)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """The first update holds the prompt, one row per sentence: beam 0's entries (the other beams' are zeroed,
        so that masked entries stay finite). Each later one holds the next position of every beam, rows sentence
        by sentence."""
        beams = self.num_beams
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            new = key_states.shape[-2]
            for buffer, states in zip(self.buffers, (key_states, value_states), strict=True):
                entries = buffer[:, :, : new * beams].unflatten(2, (new, beams))
                entries.zero_()
                entries[:, :, :, 0] = states
            self.length = new
            self._views()
            return tuple(buffer[:, :, : new * beams : beams] for buffer in self.buffers)
        start = self.length * beams
        for buffer, states in zip(self.buffers, (key_states, value_states), strict=True):
            sentences, heads, head_dim = buffer.shape[0], states.shape[1], states.shape[3]
            buffer[:, :, start : start + beams] = states.view(sentences, beams, heads, head_dim).transpose(1, 2)
        self.length += 1
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the sentences `indices` (those still being translated), copying into a second pair of buffers."""
        rows = indices.shape[0]
        if self.spares is None:
            self.spares = tuple(torch.empty_like(buffer) for buffer in self.buffers)
        held = self.length * self.num_beams
        targets = tuple(spare[:rows] for spare in self.spares)
        for source, target in zip(self.buffers, targets, strict=True):
            torch.index_select(source[:, :, :held], 0, indices, out=target[:, :, :held])
        self.spares, self.buffers = self.buffers, targets
        self._views()


class BeamAncestry:
    """For `BeamSelfAttentionLayer`: which beam's entry holds each position of each running hypothesis.

    After beam search picks each beam's parent, a beam's history is its parent's (`follow`, a gather of small
    integers instead of a copy of every layer's keys and values); the position a beam is about to write is its own.
    """

    def __init__(
        self,
        sentences: int,
        num_beams: int,
        capacity: int,
        device: torch.device,
        additive_dtype: torch.dtype | None = None,
    ):
        self.entries = torch.zeros((sentences, num_beams, capacity), dtype=torch.long, device=device)
        self.beams = torch.arange(num_beams, device=device)
        self.additive_dtype = additive_dtype  # masks as 0 / this dtype's minimum (eager attention), else booleans

    def follow(self, parents: torch.Tensor, sentences: torch.Tensor | None = None) -> None:
        """Beam b of each sentence continues beam `parents[s, b]`; `sentences`, when given, are those kept."""
        if sentences is not None:
            self.entries = self.entries[sentences]
        self.entries = self.entries.gather(1, parents.unsqueeze(2).expand_as(self.entries))

    def next_position_mask(self, length: int) -> torch.Tensor:
        """(sentences, 1, beams, (length + 1) * beams): what beam b's next position, `length` (which it writes into
        its own entry, and records so), may attend to."""
        self.entries[:, :, length] = self.beams
        mask = (self.entries[:, :, : length + 1, None] == self.beams).flatten(2).unsqueeze(1)
        if self.additive_dtype is None:
            return mask
        return torch.zeros(mask.shape, dtype=self.additive_dtype, device=mask.device).masked_fill_(
            ~mask, torch.finfo(self.additive_dtype).min
        )


def _in_place_processors(processors: LogitsProcessorList) -> LogitsProcessorList:
    """The same processors, with the minimum-length ones replaced by their in-place equivalent."""
    replaced = LogitsProcessorList()
    for processor in processors:
        if type(processor) is MinLengthLogitsProcessor:
            processor = SuppressEndOfSentenceLogitsProcessor(processor.min_length, processor.eos_token_id)
        elif type(processor) is MinNewTokensLengthLogitsProcessor:
            processor = SuppressEndOfSentenceLogitsProcessor(
                processor.prompt_length_to_skip + processor.min_new_tokens, processor.eos_token_id
            )
        replaced.append(processor)
    return replaced


# Sentences whose outputs are final leave the running batch (their rows of the caches, of the encoder output, of the
# source mask and of the scores), as in CTranslate2 and fairseq; transformers' loops keep computing them to the end.
# False keeps them (benchmarks/translate.py measures both in one run).
DROP_FINISHED_SENTENCES = True

# Logits processors whose result for a row depends only on that row (its tokens, its scores, the step): a batch
# without some rows gives the other rows the same scores. Others (a custom processor that keeps per-row state) keep
# every sentence in the batch to the end, unless they offer `select_rows(rows)`, as our length limit does.
_ROW_WISE_PROCESSORS = (
    SuppressEndOfSentenceLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    NoBadWordsLogitsProcessor,
    SuppressTokensLogitsProcessor,
    SuppressTokensAtBeginLogitsProcessor,
    ForcedBOSTokenLogitsProcessor,
    ForcedEOSTokenLogitsProcessor,
)
# Stopping criteria that stop a row for its own tokens, or every row at once (the length limit): the loop over the
# remaining rows stops when transformers' loop over all rows would.
_ROW_WISE_STOPPING_CRITERIA = (MaxLengthCriteria, EosTokenCriteria)


def _finished_rows_can_leave(processors: LogitsProcessorList, stopping_criteria: StoppingCriteriaList) -> bool:
    """Whether dropping finished sentences from the running batch leaves every other sentence's result unchanged."""
    return (
        DROP_FINISHED_SENTENCES
        and all(type(p) in _ROW_WISE_PROCESSORS or hasattr(p, "select_rows") for p in processors)
        and all(type(criteria) in _ROW_WISE_STOPPING_CRITERIA for criteria in stopping_criteria)
    )


def _processors_of_rows(processors: LogitsProcessorList, rows: torch.Tensor) -> LogitsProcessorList:
    """The processors for the given rows of the running batch (`_finished_rows_can_leave` allowed them)."""
    return LogitsProcessorList(p.select_rows(rows) if hasattr(p, "select_rows") else p for p in processors)


@functools.cache
def _warn_untested_version(version: str) -> None:
    logger.warning(
        f"transformers {version} is not among the versions the fast decoding loops of generation_vaswani.py were "
        f"tested on {TESTED_TRANSFORMERS_VERSIONS}: generate() uses transformers' own loops (same results, slower)"
    )


def fast_decoding_applies(
    model: nn.Module,
    generation_config: GenerationConfig,
    model_kwargs: dict,
    synced_gpus: bool,
    streamer: BaseStreamer | None,
) -> bool:
    """Whether these loops run this `generate` call: deterministic search over a fresh dynamic cache, returning only
    the token ids, on one device, with a transformers release the equality tests have passed on."""
    if not (_call_is_supported(generation_config, model_kwargs, synced_gpus, streamer) and _on_one_device(model)):
        return False
    if transformers.__version__ not in TESTED_TRANSFORMERS_VERSIONS:
        _warn_untested_version(transformers.__version__)
        return False
    return True


def _call_is_supported(generation_config: GenerationConfig, model_kwargs: dict, synced_gpus: bool, streamer) -> bool:
    cache = model_kwargs.get("cache")
    return (
        not generation_config.do_sample
        and not generation_config.return_dict_in_generate
        and not generation_config.is_assistant
        and not synced_gpus
        and streamer is None
        and bool(model_kwargs.get("use_cache"))
        and "encoder_outputs" in model_kwargs
        and model_kwargs.get("decoder_attention_mask") is None
        and isinstance(cache, EncoderDecoderCache)
        and type(cache.self_attention_cache) is DynamicCache
        and type(cache.cross_attention_cache) is DynamicCache
        and cache.get_seq_length() == 0
    )


def _on_one_device(model: nn.Module) -> bool:
    """Whether the model sits whole on one device, without accelerate's hooks (offloading, a device map over several
    devices), which move weights and activations in the modules' forward: these loops read `lm_head.weight` directly
    and keep their state on the inputs' device."""
    device_map = getattr(model, "hf_device_map", None) or {}
    return len(set(device_map.values())) <= 1 and not any(hasattr(module, "_hf_hook") for module in model.modules())


# On a CPU, MKL runs the output projection of 5-63 rows faster as weight x hidden^T plus a transposing copy than as
# hidden x weight^T (up to 1.8x at 16 rows of the base preset), and slower for fewer or more rows (up to 3x at 2 rows,
# 1.6x at 128 rows of the small preset): docs/benchmarks/projection.md. Both give the same sums up to rounding.
TRANSPOSED_PROJECTION_ROWS = range(5, 64)


def _next_token_scores(
    model: nn.Module,
    decoder_input_ids: torch.LongTensor,
    encoder_hidden_states: torch.Tensor,
    source_mask: torch.Tensor | None,
    cache: EncoderDecoderCache,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
    self_attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Float32 logits of the next token per row: the decoder on the tokens not yet in the cache, the output projection
    (Sec. 3.4) on the last position only, written into the buffers `out` when given (see `_score_buffers`).
    `self_attention_mask`: a 4-D mask, used as given (`BeamAncestry.next_position_mask`)."""
    hidden_states = model.get_decoder()(
        input_ids=decoder_input_ids,
        attention_mask=self_attention_mask,
        encoder_hidden_states=encoder_hidden_states,
        encoder_attention_mask=source_mask,
        cache=cache,
        use_cache=True,
    ).last_hidden_state[:, -1]
    if out is None:
        return model.lm_head(hidden_states).float()
    scores, transposed_scores = out
    if transposed_scores is None or hidden_states.shape[0] not in TRANSPOSED_PROJECTION_ROWS:
        return torch.mm(hidden_states, model.lm_head.weight.t(), out=scores)
    torch.mm(model.lm_head.weight, hidden_states.t(), out=transposed_scores)
    return scores.copy_(transposed_scores.t())


def _score_buffers(
    model: nn.Module, rows: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """A score matrix (rows x vocabulary) and, on a CPU, its transposed twin for the projection's product, reused
    every step, when the output projection is a plain float32 one (not quantized, say): on a CPU a fresh score matrix
    every step costs as much as the softmax over it, and for `TRANSPOSED_PROJECTION_ROWS` copying the transposed
    product costs less than it saves. Elsewhere the product goes straight into the score matrix: the layout was
    chosen for MKL, and on a GPU the copy is one more pass over the scores (benchmarks/gpu_check.py times both)."""
    projection = model.lm_head
    if type(projection) is not nn.Linear or projection.bias is not None or projection.weight.dtype != torch.float32:
        return None
    if torch.is_autocast_enabled(device.type):  # lm_head runs in autocast's dtype there; an out= product would not
        return None
    vocabulary = projection.out_features
    transposed_rows = TRANSPOSED_PROJECTION_ROWS
    if device.type != "cpu" or not transposed_rows or rows < transposed_rows.start:  # batches only lose rows
        return torch.empty(rows, vocabulary, device=device), None
    transposed = torch.empty(vocabulary, min(rows, transposed_rows.stop - 1), device=device)
    return torch.empty(rows, vocabulary, device=device), transposed


def _score_buffers_of_rows(
    buffers: tuple[torch.Tensor, torch.Tensor | None] | None, rows: int
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The first `rows` rows of `_score_buffers`' matrices, as contiguous views (for a batch that has lost rows)."""
    if buffers is None or buffers[0].shape[0] == rows:
        return buffers
    scores, transposed = buffers
    if transposed is not None and rows <= transposed.shape[1]:  # otherwise unused (`TRANSPOSED_PROJECTION_ROWS`)
        transposed = transposed.view(-1)[: transposed.shape[0] * rows].view(transposed.shape[0], rows)
    return scores[:rows], transposed


def _preallocated_cache(model: nn.Module, model_kwargs: dict, max_length: int, max_rows: int) -> EncoderDecoderCache:
    """`generate`'s cache with the decoder self-attention layers replaced by preallocated ones."""
    layers = [PreallocatedSelfAttentionLayer(max_length, max_rows) for _ in range(model.config.decoder_layers)]
    return EncoderDecoderCache(Cache(layers=layers), model_kwargs["cache"].cross_attention_cache)


# Attention implementations that take a 4-D mask as given (`BeamSelfAttentionLayer`), and whether theirs is additive;
# under others (flash attention on a GPU, say) beam search reorders a `PreallocatedSelfAttentionLayer` instead.
_BEAM_MASK_ATTENTION = {"sdpa": False, "eager": True}


def _attention_runs_in_float32(model: nn.Module, device: torch.device) -> bool:
    """Whether the decoder's attention computes in float32: neither its weights nor autocast lower it. Over the beams'
    interleaved entries sdpa sums in another order than over each beam's own history: in float32 that moves the
    attention output by ~1e-7, in bfloat16 by one unit of its last place, enough to change tokens (up to 5 of 20
    batches of 12 sentences of a toy model like the tests', in bf16 weights)."""
    autocast_lowers = torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type) != torch.float32
    return model.dtype == torch.float32 and not autocast_lowers


def _beam_cache(
    model: nn.Module, model_kwargs: dict, max_length: int, sentences: int, num_beams: int
) -> tuple[EncoderDecoderCache, BeamAncestry | None]:
    """Beam search's cache: `BeamSelfAttentionLayer`s and their `BeamAncestry` where the attention takes its mask and
    computes in float32, else `_preallocated_cache` (and no ancestry)."""
    encoder_output = model_kwargs["encoder_outputs"][0]
    additive = _BEAM_MASK_ATTENTION.get(model.config._attn_implementation)
    if additive is None or not _attention_runs_in_float32(model, encoder_output.device):
        return _preallocated_cache(model, model_kwargs, max_length, sentences * num_beams), None
    layers = [BeamSelfAttentionLayer(max_length, num_beams) for _ in range(model.config.decoder_layers)]
    cache = EncoderDecoderCache(Cache(layers=layers), model_kwargs["cache"].cross_attention_cache)
    ancestry = BeamAncestry(
        sentences, num_beams, max_length, encoder_output.device, encoder_output.dtype if additive else None
    )
    return cache, ancestry


def _sources(model_kwargs: dict, rows: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The encoder output and source padding mask of the given rows of `generate`'s (expanded) batch."""
    source_mask = model_kwargs.get("attention_mask")
    return model_kwargs["encoder_outputs"].last_hidden_state[rows], None if source_mask is None else source_mask[rows]


def greedy_search(
    model: nn.Module,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    model_kwargs: dict,
) -> torch.LongTensor:
    """Greedy decoding with `GenerationMixin._sample`'s results: the highest-scoring token each step, padding after
    a row has finished. Finished rows leave the running batch (`DROP_FINISHED_SENTENCES`); their tokens wait in
    `outputs`."""
    processors = _in_place_processors(logits_processor)
    drop_finished = _finished_rows_can_leave(processors, stopping_criteria)
    encoder_hidden_states, source_mask = _sources(model_kwargs, slice(None))
    batch_size = input_ids.shape[0]
    cache = _preallocated_cache(model, model_kwargs, generation_config.max_length, batch_size)
    pad_token_id = generation_config._pad_token_tensor
    has_eos_stopping_criteria = any(hasattr(criteria, "eos_token_id") for criteria in stopping_criteria)
    unfinished = torch.ones(batch_size, dtype=torch.long, device=input_ids.device)
    new_ids = input_ids
    all_score_buffers = _score_buffers(model, batch_size, input_ids.device)
    scores_buffers = all_score_buffers
    outputs = None  # every row's tokens, once some rows have left the running batch
    rows = torch.arange(batch_size, device=input_ids.device)  # the running rows' places in `outputs`
    while True:
        scores = _next_token_scores(model, new_ids, encoder_hidden_states, source_mask, cache, out=scores_buffers)
        next_tokens = processors(input_ids, scores).argmax(dim=-1)
        if has_eos_stopping_criteria:
            next_tokens = next_tokens * unfinished + pad_token_id * (1 - unfinished)
        input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
        unfinished = unfinished & ~stopping_criteria(input_ids, None)
        if unfinished.max() == 0:
            break
        new_ids = next_tokens[:, None]
        if drop_finished and not unfinished.all():
            if outputs is None:
                shape = (batch_size, generation_config.max_length)
                outputs = torch.full(shape, int(pad_token_id), dtype=input_ids.dtype, device=rows.device)
            finished = unfinished.logical_not().nonzero().squeeze(1)
            outputs[rows[finished], : input_ids.shape[1]] = input_ids[finished]
            keep = unfinished.nonzero().squeeze(1)
            rows, input_ids, new_ids, unfinished = rows[keep], input_ids[keep], new_ids[keep], unfinished[keep]
            encoder_hidden_states = encoder_hidden_states[keep]
            source_mask = None if source_mask is None else source_mask[keep]
            cache.self_attention_cache.reorder_cache(keep)
            cache.cross_attention_cache.batch_select_indices(keep)
            processors = _processors_of_rows(processors, keep)
            scores_buffers = _score_buffers_of_rows(all_score_buffers, keep.shape[0])
    if outputs is None:
        return input_ids
    outputs[rows, : input_ids.shape[1]] = input_ids
    return outputs[:, : input_ids.shape[1]]


def beam_search(
    model: nn.Module,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    model_kwargs: dict,
) -> torch.LongTensor:
    """Beam search with `GenerationMixin._beam_search`'s results. `input_ids` holds each sentence's prompt repeated
    once per beam, as `generate` passes it; the selection steps are transformers' own helpers.

    A sentence is done once transformers' helpers can no longer change its finished hypotheses: all its beams
    finished under `early_stopping=True`, or the early-stopping heuristic satisfied (from then on its candidates get
    -1e9 and never enter). With `DROP_FINISHED_SENTENCES` a done sentence leaves the running batch: its hypotheses
    go to the outputs, and its rows of the search state, the caches, the encoder output and the scores are dropped
    (folded into the beam reorder of the self-attention cache, which copies every step anyway)."""
    num_beams = generation_config.num_beams
    length_penalty = generation_config.length_penalty
    early_stopping = generation_config.early_stopping
    max_length = generation_config.max_length
    num_return_sequences = generation_config.num_return_sequences
    eos_token_id = generation_config._eos_token_tensor
    pad_token_id = generation_config._pad_token_tensor
    batch_size = input_ids.shape[0] // num_beams
    cur_len = prompt_len = input_ids.shape[1]
    device = input_ids.device
    # As transformers: keep (EOS count + 1) x num_beams candidates, so num_beams unfinished ones remain.
    beams_to_keep = max(2, 1 + (eos_token_id.shape[0] if eos_token_id is not None else 0)) * num_beams
    top_num_beam_mask = torch.arange(beams_to_keep, device=device) < num_beams
    fill_value = pad_token_id or eos_token_id[0] if eos_token_id is not None else -1
    running_sequences = torch.full((batch_size, num_beams, max_length), fill_value, dtype=torch.int64, device=device)
    running_sequences[:, :, :cur_len] = input_ids.view(batch_size, num_beams, -1)
    sequences = running_sequences.clone()
    running_beam_scores = torch.zeros((batch_size, num_beams), device=device)
    running_beam_scores[:, 1:] = -1e9  # only the first copy of each prompt is extended at the first step
    beam_scores = torch.full((batch_size, num_beams), -1e9, device=device)
    is_sent_finished = torch.zeros((batch_size, num_beams), dtype=torch.bool, device=device)
    is_early_stop_heuristic_unsatisfied = torch.ones((batch_size, 1), dtype=torch.bool, device=device)
    running_beam_indices = torch.full(
        (batch_size, num_beams, max_length - cur_len), -1, dtype=torch.int32, device=device
    )
    beam_indices = running_beam_indices.clone()
    # the returned hypotheses (and their beam indices, for the final crop) of every sentence, filled as they finish
    output_sequences = sequences[:, :num_return_sequences].clone()
    output_beam_indices = beam_indices[:, :num_return_sequences].clone()
    sentences = torch.arange(batch_size, device=device)  # the running sentences' places in the outputs

    processors = _in_place_processors(logits_processor)
    drop_finished = _finished_rows_can_leave(processors, stopping_criteria)
    cache, ancestry = _beam_cache(model, model_kwargs, max_length, batch_size, num_beams)
    first_beams = torch.arange(batch_size, device=device) * num_beams
    encoder_hidden_states, source_mask = _sources(model_kwargs, first_beams)
    # The first step once per sentence: its beams are copies of one prompt, with the same scores.
    scores = _next_token_scores(model, input_ids[first_beams], encoder_hidden_states, source_mask, cache)
    log_probs = nn.functional.log_softmax(scores, dim=-1).repeat_interleave(num_beams, dim=0)
    all_score_buffers = _score_buffers(model, batch_size * num_beams, device)
    scores_buffers = all_score_buffers
    while True:
        flat_running_sequences = running_sequences[:, :, :cur_len].reshape(batch_size * num_beams, cur_len)
        if cur_len > prompt_len:
            mask = None if ancestry is None else ancestry.next_position_mask(cur_len - 1)
            scores = _next_token_scores(
                model,
                flat_running_sequences[:, -1:],
                encoder_hidden_states,
                source_mask,
                cache,
                out=scores_buffers,
                self_attention_mask=mask,
            )
            log_probs = torch.log_softmax(scores, dim=-1, out=scores)
        # a processor may return a view that is not contiguous (RepetitionPenaltyLogitsProcessor: a slice)
        log_probs = processors(flat_running_sequences, log_probs).contiguous()
        log_probs = log_probs.view(batch_size, num_beams, -1).add_(running_beam_scores[:, :, None]).view(batch_size, -1)

        topk_log_probs, topk_running_sequences, topk_running_beam_indices = model._get_top_k_continuations(
            accumulated_log_probs=log_probs,
            running_sequences=running_sequences,
            running_beam_indices=running_beam_indices,
            cur_len=cur_len,
            decoder_prompt_len=prompt_len,
            do_sample=False,
            beams_to_keep=beams_to_keep,
            num_beams=num_beams,
            batch_size=batch_size,
        )
        next_token_hits_stopping_criteria = stopping_criteria(
            topk_running_sequences[:, :, : cur_len + 1].reshape(batch_size * beams_to_keep, -1), None
        ).view(batch_size, beams_to_keep)
        running_sequences, running_beam_scores, running_beam_indices = model._get_running_beams_for_next_iteration(
            topk_log_probs=topk_log_probs,
            topk_running_sequences=topk_running_sequences,
            topk_running_beam_indices=topk_running_beam_indices,
            next_token_hits_stopping_criteria=next_token_hits_stopping_criteria,
            num_beams=num_beams,
        )
        sequences, beam_scores, beam_indices, is_sent_finished = model._update_finished_beams(
            sequences=sequences,
            topk_running_sequences=topk_running_sequences,
            beam_scores=beam_scores,
            topk_log_probs=topk_log_probs,
            beam_indices=beam_indices,
            topk_running_beam_indices=topk_running_beam_indices,
            is_early_stop_heuristic_unsatisfied=is_early_stop_heuristic_unsatisfied,
            is_sent_finished=is_sent_finished,
            next_token_hits_stopping_criteria=next_token_hits_stopping_criteria,
            top_num_beam_mask=top_num_beam_mask,
            num_beams=num_beams,
            cur_len=cur_len,
            decoder_prompt_len=prompt_len,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
        )
        beam_idx = running_beam_indices[..., cur_len - prompt_len].reshape(-1)
        first_step = cur_len == prompt_len
        cur_len += 1
        is_early_stop_heuristic_unsatisfied = model._check_early_stop_heuristic(
            is_early_stop_heuristic_unsatisfied=is_early_stop_heuristic_unsatisfied,
            running_beam_scores=running_beam_scores,
            beam_scores=beam_scores,
            is_sent_finished=is_sent_finished,
            cur_len=cur_len,
            max_length=max_length,
            decoder_prompt_len=prompt_len,
            early_stopping=early_stopping,
            length_penalty=length_penalty,
        )
        if not model._beam_search_has_unfinished_sequences(
            is_early_stop_heuristic_unsatisfied, is_sent_finished, next_token_hits_stopping_criteria, early_stopping
        ):
            break
        keep = None
        if drop_finished:
            done = is_early_stop_heuristic_unsatisfied.logical_not().squeeze(1)
            if early_stopping is True:
                done |= is_sent_finished.all(dim=1)
            if done.all():  # transformers' loop may go on (one sentence done one way, another the other): no change
                break
            if done.any():
                finished = done.nonzero().squeeze(1)
                output_sequences[sentences[finished]] = sequences[finished, :num_return_sequences]
                output_beam_indices[sentences[finished]] = beam_indices[finished, :num_return_sequences]
                keep = done.logical_not().nonzero().squeeze(1)
                sentences = sentences[keep]
                running_sequences, sequences = running_sequences[keep], sequences[keep]
                running_beam_scores, beam_scores = running_beam_scores[keep], beam_scores[keep]
                running_beam_indices, beam_indices = running_beam_indices[keep], beam_indices[keep]
                is_sent_finished = is_sent_finished[keep]
                is_early_stop_heuristic_unsatisfied = is_early_stop_heuristic_unsatisfied[keep]
                beam_idx = beam_idx.view(batch_size, num_beams)[keep].reshape(-1)
                batch_size = keep.shape[0]
                encoder_hidden_states = encoder_hidden_states[keep]
                source_mask = None if source_mask is None else source_mask[keep]
                cache.cross_attention_cache.batch_select_indices(keep)
                kept_rows = (keep[:, None] * num_beams + torch.arange(num_beams, device=device)).reshape(-1)
                processors = _processors_of_rows(processors, kept_rows)
                scores_buffers = _score_buffers_of_rows(all_score_buffers, batch_size * num_beams)
        # The surviving beams' self-attention states; after the first step the cache holds one row per sentence.
        if ancestry is None:
            cache.self_attention_cache.reorder_cache(beam_idx // num_beams if first_step else beam_idx)
        else:
            if keep is not None:
                cache.self_attention_cache.batch_select_indices(keep)
            ancestry.follow(beam_idx.view(batch_size, num_beams) % num_beams, keep)

    output_sequences[sentences] = sequences[:, :num_return_sequences]
    output_beam_indices[sentences] = beam_indices[:, :num_return_sequences]
    total = output_sequences.shape[0]
    output_sequences = output_sequences.reshape(total * num_return_sequences, -1)
    output_beam_indices = output_beam_indices.reshape(total * num_return_sequences, -1)
    generated_length = (output_beam_indices + 1).bool().sum(dim=1).max()  # transformers' crop of the unused positions
    return output_sequences[:, : prompt_len + generated_length]


class VaswaniGenerationMixin(GenerationMixin):
    """`GenerationMixin` with the paper's per-sentence length limit (Sec. 6.1) and, where they apply
    (`fast_decoding_applies`), the faster greedy and beam-search loops of this file."""

    @torch.no_grad()
    def generate(
        self,
        inputs: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        logits_processor: LogitsProcessorList | None = None,
        **kwargs,
    ) -> torch.LongTensor | ModelOutput:
        """`GenerationMixin.generate`, plus the paper's length limit (Sec. 6.1) when no length is asked for: each
        output is at most its source length + `generation_config.max_new_tokens_offset` tokens."""
        config = generation_config if generation_config is not None else self.generation_config
        input_ids = inputs if inputs is not None else kwargs.get("input_ids")
        check_generate_inputs(input_ids, kwargs.get("num_beams"), config.num_beams)
        offset = getattr(config, "max_new_tokens_offset", None)
        length_given = (
            kwargs.get("max_length") is not None
            or kwargs.get("max_new_tokens") is not None
            or config.max_length is not None
            or config.max_new_tokens is not None
        )
        if offset is None or length_given or input_ids is None or input_ids.dim() != 2:
            return super().generate(inputs, generation_config, logits_processor, **kwargs)

        attention_mask = kwargs.get("attention_mask")
        if attention_mask is None:
            attention_mask = input_ids.ne(self.config.pad_token_id)
        max_target_lengths = target_length_limits(self.config, attention_mask, offset)
        num_beams = kwargs.get("num_beams") or config.num_beams or 1
        # generate() repeats each source num_beams times for beam search, num_return_sequences times otherwise
        expansion = (
            num_beams if num_beams > 1 else kwargs.get("num_return_sequences") or config.num_return_sequences or 1
        )
        processors = LogitsProcessorList(logits_processor or [])
        eos_token_id = kwargs.get("eos_token_id", config.eos_token_id)
        eos_token_id = eos_token_id if eos_token_id is not None else self.config.eos_token_id
        if isinstance(eos_token_id, list):
            eos_token_id = eos_token_id[0]
        processors.append(
            SourceLengthLimitLogitsProcessor(max_target_lengths.repeat_interleave(expansion), eos_token_id)
        )
        kwargs["max_new_tokens"] = int(max_target_lengths.max()) + 1
        return super().generate(inputs, generation_config, processors, **kwargs)

    def _sample(
        self,
        input_ids: torch.LongTensor,
        logits_processor: LogitsProcessorList,
        stopping_criteria: StoppingCriteriaList,
        generation_config: GenerationConfig,
        synced_gpus: bool = False,
        streamer=None,
        **model_kwargs,
    ):
        """Greedy decoding through generation_vaswani.py when it applies, else `GenerationMixin`'s (sampling, ...)."""
        if fast_decoding_applies(self, generation_config, model_kwargs, synced_gpus, streamer):
            return greedy_search(self, input_ids, logits_processor, stopping_criteria, generation_config, model_kwargs)
        return super()._sample(
            input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus, streamer, **model_kwargs
        )

    def _beam_search(
        self,
        input_ids: torch.LongTensor,
        logits_processor: LogitsProcessorList,
        stopping_criteria: StoppingCriteriaList,
        generation_config: GenerationConfig,
        synced_gpus: bool = False,
        **model_kwargs,
    ):
        """Beam search through generation_vaswani.py when it applies, else `GenerationMixin`'s."""
        if fast_decoding_applies(self, generation_config, model_kwargs, synced_gpus, None):
            return beam_search(self, input_ids, logits_processor, stopping_criteria, generation_config, model_kwargs)
        return super()._beam_search(
            input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus, **model_kwargs
        )
