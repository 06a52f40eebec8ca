"""The Transformer of "Attention Is All You Need" (Vaswani et al., 2017) as a transformers model.

Read top to bottom: positions (Sec. 3.5), attention (Sec. 3.2), feed-forward (Sec. 3.3), the post-LN encoder and
decoder layers (Sec. 3.1), the stacks, then the encoder-decoder with its tied output projection (Sec. 3.4).

This file is uploaded with published models for `trust_remote_code=True`: it imports only `transformers`, `torch`,
`safetensors` (a dependency of transformers) and its siblings `configuration_vaswani`, `generation_vaswani` (decoding)
and `loss_vaswani` (the training loss), through relative imports.
"""

import json
import math
from collections.abc import Callable

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import GenerationConfig, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_flash_attention_utils import FlashAttentionKwargs
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, slice_logits_to_keep
from transformers.processing_utils import Unpack
from transformers.utils import GENERATION_CONFIG_NAME, TransformersKwargs, cached_file, logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_vaswani import VaswaniConfig
from .generation_vaswani import VaswaniGenerationMixin, paper_generation_config
from .loss_vaswani import label_smoothed_loss

logger = logging.get_logger(__name__)


class VaswaniSinusoidalPositionalEncoding(nn.Module):
    """Sec. 3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model)).

    Computed for any length, without parameters; the table is built once and grown only when a longer sequence
    comes, so positions are not recomputed at every step of generation.
    """

    def __init__(self, d_model: int):
        super().__init__()
        self.d_model = d_model
        self._table = torch.empty(0, d_model)

    @staticmethod
    def table(num_positions: int, d_model: int) -> torch.Tensor:
        """The (num_positions, d_model) encoding, computed in float64 and returned in float32."""
        position = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)
        inverse_frequency = 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
        angles = position * inverse_frequency
        table = torch.empty(num_positions, d_model, dtype=torch.float64)
        table[:, 0::2] = torch.sin(angles)
        table[:, 1::2] = torch.cos(angles)
        return table.float()

    def forward(self, start: int, length: int, like: torch.Tensor) -> torch.Tensor:
        end = start + length
        if self._table.shape[0] < end or self._table.device != like.device:
            size = max(end, 2 * self._table.shape[0], 256)
            self._table = self.table(size, self.d_model).to(like.device)
        return self._table[start:end].to(like.dtype)


class VaswaniLearnedPositionalEmbedding(nn.Embedding):
    """Learned absolute positions (Table 3 row E), limited to `max_position_embeddings`."""

    def forward(self, start: int, length: int, like: torch.Tensor) -> torch.Tensor:
        if start + length > self.num_embeddings:
            raise ValueError(
                f"sequence of {start + length} positions is longer than max_position_embeddings={self.num_embeddings}"
                " of the learned position embedding"
            )
        return super().forward(torch.arange(start, start + length, device=like.device)).to(like.dtype)


def build_position_encoding(config: VaswaniConfig) -> nn.Module | None:
    if config.position_encoding == "sinusoidal":
        return VaswaniSinusoidalPositionalEncoding(config.d_model)
    if config.position_encoding == "learned":
        return VaswaniLearnedPositionalEmbedding(config.max_position_embeddings, config.d_model)
    return None


def _shape_mismatches(path, from_pretrained_kwargs: dict, model_class: type) -> str:
    """'name: checkpoint (a, b) vs config (c, d)' for each weight whose stored shape differs from the config's (the
    files `from_pretrained` read: same revision, subfolder, cache)."""
    download = _download_arguments(from_pretrained_kwargs)
    config = from_pretrained_kwargs.get("config")
    config = config if isinstance(config, VaswaniConfig) else VaswaniConfig.from_pretrained(path, **download)
    with torch.device("meta"):
        expected = model_class(config).state_dict()
    with safe_open(cached_file(path, "model.safetensors", **download), framework="pt") as stored:
        found = {name: tuple(stored.get_slice(name).get_shape()) for name in stored.keys()}
    return "; ".join(
        f"{name}: checkpoint {found[name]} vs config {tuple(tensor.shape)}"
        for name, tensor in expected.items()
        if name in found and found[name] != tuple(tensor.shape)
    )


# from_pretrained's keyword arguments that say where files come from, passed on when it looks at files itself
_DOWNLOAD_ARGUMENTS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder")


def _download_arguments(from_pretrained_kwargs: dict) -> dict:
    return {name: from_pretrained_kwargs[name] for name in _DOWNLOAD_ARGUMENTS if name in from_pretrained_kwargs}


def _has_generation_config(path, from_pretrained_kwargs: dict) -> bool:
    """Whether `path` has a generation_config.json, refusing one that cannot be read or that GenerationConfig
    rejects, by name: transformers would fall back to its own defaults (greedy, 20 tokens) without a word."""
    download = _download_arguments(from_pretrained_kwargs)
    resolved = cached_file(path, GENERATION_CONFIG_NAME, _raise_exceptions_for_missing_entries=False, **download)
    if resolved is None:
        return False
    try:
        with open(resolved, encoding="utf-8") as file:
            values = json.load(file)
        if not isinstance(values, dict):
            raise ValueError(f"it holds a JSON {type(values).__name__}, not an object of settings")
        GenerationConfig.from_dict(values)
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as error:
        raise ValueError(
            f"{resolved} cannot be read as a generation config: {error}. Fix or delete it (without it the model "
            "decodes as the paper, Sec. 6.1), or pass generation_config= to from_pretrained"
        ) from error
    return True


def _check_all_weights_loaded(path, loading_info: dict) -> None:
    """Refuse a load that left weights randomly initialised or dropped some (`from_pretrained(..., strict=False)`
    allows it); transformers only reports them."""
    problems = []
    for key, what in (
        ("missing_keys", "the model needs but the checkpoint lacks (randomly initialised otherwise)"),
        ("unexpected_keys", "the checkpoint holds but the model has no place for (a config with fewer layers?)"),
    ):
        names = sorted(loading_info[key])
        if names:
            shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
            problems.append(f"{len(names)} weight(s) {what}: {shown}")
    if problems:
        raise ValueError(
            f"{path}: the weights do not match config.json: "
            + "; ".join(problems)
            + ". Use the config the weights were saved with, or pass strict=False to load them anyway"
        )


def check_token_inputs(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, vocab_size: int, name: str, mask_name: str
) -> None:
    """Refuse what would otherwise fail deep in the model with an unnamed error (an id outside the embedding table)
    or, worse, run silently wrong (a mask of another shape is broadcast or cut by the mask functions; padding before
    tokens, see `check_attention_mask`)."""
    if input_ids.dim() != 2:
        raise ValueError(f"{name} must be (batch, length), got shape {tuple(input_ids.shape)}")
    check_attention_mask(attention_mask, input_ids.shape, name, mask_name, read_back=False)
    # one pass each and one read back to the host (on an accelerator, a wait for it): the ids' range and the padding
    id_range = torch.aminmax(input_ids) if input_ids.numel() else (input_ids.new_zeros(()), input_ids.new_zeros(()))
    padding = _padding_before_tokens(attention_mask)
    extra = [] if padding is None else [padding.to(input_ids.device, input_ids.dtype)]
    smallest, largest, *padded_before = torch.stack([*id_range, *extra]).tolist()
    if smallest < 0 or largest >= vocab_size:
        bad = input_ids[(input_ids < 0) | (input_ids >= vocab_size)][0].item()
        raise ValueError(f"{name} holds id {bad}, outside the vocabulary of {vocab_size} tokens (0-{vocab_size - 1})")
    if any(padded_before):
        raise _padding_before_tokens_error(mask_name)


def check_attention_mask(
    attention_mask: torch.Tensor | None, shape: torch.Size, name: str, mask_name: str, read_back: bool = True
) -> None:
    """Refuse a padding mask of another (batch, length) than the inputs', and (with `read_back`) one that pads before
    a row's tokens: positions count from each row's first column (Sec. 3.5), so a left-padded row would take other
    positions than the same sentence alone."""
    if attention_mask is None:
        return
    # a 2D padding mask matches the inputs; a prepared 4D mask (batch, 1, query, key), as generate() builds for a
    # static cache, matches them in batch and query length
    prepared = attention_mask.dim() == 4 and attention_mask.shape[::2] == shape[:2]
    if attention_mask.shape != shape[:2] and not prepared:
        raise ValueError(
            f"{mask_name} has shape {tuple(attention_mask.shape)} but {name} has {tuple(shape[:2])}: "
            "they must match, or be a prepared (batch, 1, query, key) mask"
        )
    padding = _padding_before_tokens(attention_mask) if read_back else None
    if padding is not None and padding.item():
        raise _padding_before_tokens_error(mask_name)


def _padding_before_tokens(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Whether a 2D mask has a padding column before a token column in some row (left or inner padding), as a
    boolean tensor on the mask's device; None where there is no 2D mask of two columns or more to look at."""
    if attention_mask is None or attention_mask.dim() != 2 or attention_mask.shape[1] < 2:
        return None
    attends = attention_mask != 0
    return (attends[:, 1:] & ~attends[:, :-1]).any()


def _padding_before_tokens_error(mask_name: str) -> ValueError:
    return ValueError(
        f"{mask_name} pads some row before its tokens (left padding?): this model counts positions from the first "
        "column, so pad on the right (tokenizer.padding_side = 'right', as its tokenizer is saved)"
    )


class VaswaniDropoutFunction(torch.autograd.Function):
    """Inverted dropout with its keep mask drawn from 16 random bits per element: four elements per 64-bit word of
    `torch.randint`, P_drop rounded to a multiple of 2^-16. Torch's CPU dropout draws one Bernoulli sample per
    element: 2-2.5x as slow, and 7-12% of a base training step on a 2-core CPU (docs/benchmarks/training_ab/)."""

    @staticmethod
    def forward(ctx, hidden_states: torch.Tensor, p: float) -> torch.Tensor:
        count = hidden_states.numel()
        words = torch.randint(-(2**63), 2**63 - 1, ((count + 3) // 4,), dtype=torch.int64, device=hidden_states.device)
        keep = words.view(torch.int16)[:count].view(hidden_states.shape) >= round(p * 2**16) - 2**15
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return torch.ops.aten.native_dropout_backward(hidden_states, keep, ctx.scale)  # x * keep / (1 - p)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        (keep,) = ctx.saved_tensors
        return torch.ops.aten.native_dropout_backward(grad_output, keep, ctx.scale), None


class VaswaniDropout(nn.Dropout):
    """Dropout (Sec. 5.4): in training on the CPU, where torch's masks were measured slow, `VaswaniDropoutFunction`;
    elsewhere nn.Dropout."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # a P_drop within 2^-17 of 1 rounds to 1 in 16 bits, where the mask would keep everything: nn.Dropout then
        in_16_bits = 0.0 < self.p and round(self.p * 2**16) < 2**16
        if self.training and in_16_bits and not self.inplace and hidden_states.device.type == "cpu":
            return VaswaniDropoutFunction.apply(hidden_states, self.p)
        return super().forward(hidden_states)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1: softmax(Q K^T / sqrt(d_k)) V, with an additive mask (0 or the dtype's minimum, never -inf)."""
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


def sdpa_masks_in_eager_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`eager_attention_forward` given the masks built for sdpa: boolean (True: attend), or None, which for a causal
    module over several queries means causal, as transformers' sdpa interface reads it."""
    if attention_mask is None and module.is_causal and query.shape[2] > 1:
        attention_mask = torch.ones(query.shape[2], key.shape[2], dtype=torch.bool, device=query.device).tril()
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        blocked = torch.finfo(query.dtype).min
        attention_mask = torch.zeros(attention_mask.shape, dtype=query.dtype, device=query.device).masked_fill_(
            attention_mask.logical_not(), blocked
        )
    return eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout)


def fused_attention_is_slow(query: torch.Tensor) -> bool:
    """Whether torch's fused attention (sdpa) is slower here than the plain products of `eager_attention_forward`:
    training in bfloat16 on a CPU, where its flash backward is (one layer's forward and backward at 128 x 8 heads x
    32 x 64: 49 ms against 12 ms eager on a Xeon with AMX; equal in float32: docs/benchmarks/bf16_attention/)."""
    return query.device.type == "cpu" and query.dtype == torch.bfloat16 and query.requires_grad


class VaswaniAttention(nn.Module):
    """Multi-head attention (Sec. 3.2.2) over the transformers attention interface (eager, sdpa, ...).

    Self-attention uses one fused projection for queries, keys and values; cross-attention one for queries and one
    fused projection for keys and values, whose result is cached once per generation. Where sdpa's kernel is slower
    than the plain products (`fused_attention_is_slow`: bfloat16 training on a CPU), an sdpa model runs the eager ones.
    """

    def __init__(
        self, config: VaswaniConfig, num_heads: int, *, is_cross_attention: bool, is_causal: bool, layer_idx: int
    ):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = config.d_model // num_heads
        self.scaling = self.head_dim**-0.5 if config.scale_attention else 1.0  # Eq. 1, or its ablation
        self.attention_dropout = config.attention_dropout
        self.is_cross_attention = is_cross_attention
        self.is_causal = is_causal  # read by the sdpa interface when no mask is given
        self.layer_idx = layer_idx
        if is_cross_attention:
            self.q_proj = nn.Linear(config.d_model, config.d_model)
            self.kv_proj = nn.Linear(config.d_model, 2 * config.d_model)
        else:
            self.qkv_proj = nn.Linear(config.d_model, 3 * config.d_model)
        self.out_proj = nn.Linear(config.d_model, config.d_model)

    def _heads(self, projected: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
        """(batch, length, parts * d_model) -> `parts` tensors of (batch, heads, length, head_dim)."""
        batch, length, _ = projected.shape
        return projected.view(batch, length, parts, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
        **kwargs: Unpack[FlashAttentionKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, _ = hidden_states.shape
        if self.is_cross_attention:
            (query,) = self._heads(self.q_proj(hidden_states), 1)
            if cache is not None and cache.is_updated.get(self.layer_idx):
                stored = cache.cross_attention_cache.layers[self.layer_idx]
                key, value = stored.keys, stored.values
            else:
                key, value = self._heads(self.kv_proj(encoder_hidden_states), 2)
                if cache is not None:
                    key, value = cache.cross_attention_cache.update(key, value, self.layer_idx)
                    cache.is_updated[self.layer_idx] = True
        else:
            query, key, value = self._heads(self.qkv_proj(hidden_states), 3)
            if cache is not None:
                key, value = cache.self_attention_cache.update(key, value, self.layer_idx)

        sources = key.shape[0]
        if sources != batch:  # beam search stores each sentence once for all its beams (generation_vaswani.py)
            query = query.reshape(sources, batch // sources, self.num_heads, length, self.head_dim).transpose(1, 2)
            query = query.reshape(sources, self.num_heads, -1, self.head_dim)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        if self.config._attn_implementation == "sdpa" and fused_attention_is_slow(query):
            attention_interface = sdpa_masks_in_eager_attention
        output, weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        return self.out_proj(output.reshape(batch, length, -1)), weights


class VaswaniFeedForward(nn.Module):
    """Eq. 2: FFN(x) = max(0, x W1 + b1) W2 + b2, applied to each position separately."""

    def __init__(self, d_model: int, ffn_dim: int, activation_function: str, activation_dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.activation = ACT2FN[activation_function]
        self.activation_dropout = VaswaniDropout(activation_dropout)
        self.fc2 = nn.Linear(ffn_dim, d_model)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_dropout(self.activation(self.fc1(hidden_states))))


class VaswaniEncoderLayer(GradientCheckpointingLayer):
    """Self-attention then FFN, each as LayerNorm(x + Dropout(Sublayer(x))) (Sec. 3.1, Sec. 5.4)."""

    def __init__(self, config: VaswaniConfig, layer_idx: int):
        super().__init__()
        self.self_attn = VaswaniAttention(
            config, config.encoder_attention_heads, is_cross_attention=False, is_causal=False, layer_idx=layer_idx
        )
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.ffn = VaswaniFeedForward(
            config.d_model, config.encoder_ffn_dim, config.activation_function, config.activation_dropout
        )
        self.ffn_layer_norm = nn.LayerNorm(config.d_model)
        self.dropout = VaswaniDropout(config.dropout)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs: Unpack[TransformersKwargs]
    ) -> torch.Tensor:
        attended, _ = self.self_attn(hidden_states, attention_mask, **kwargs)
        hidden_states = self.self_attn_layer_norm(hidden_states + self.dropout(attended))
        return self.ffn_layer_norm(hidden_states + self.dropout(self.ffn(hidden_states)))


class VaswaniDecoderLayer(GradientCheckpointingLayer):
    """Masked self-attention, attention over the encoder output, then FFN, each post-LN (Sec. 3.1)."""

    def __init__(self, config: VaswaniConfig, layer_idx: int):
        super().__init__()
        self.self_attn = VaswaniAttention(
            config, config.decoder_attention_heads, is_cross_attention=False, is_causal=True, layer_idx=layer_idx
        )
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.cross_attn = VaswaniAttention(
            config, config.decoder_attention_heads, is_cross_attention=True, is_causal=False, layer_idx=layer_idx
        )
        self.cross_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.ffn = VaswaniFeedForward(
            config.d_model, config.decoder_ffn_dim, config.activation_function, config.activation_dropout
        )
        self.ffn_layer_norm = nn.LayerNorm(config.d_model)
        self.dropout = VaswaniDropout(config.dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        attended, _ = self.self_attn(hidden_states, attention_mask, cache=cache, **kwargs)
        hidden_states = self.self_attn_layer_norm(hidden_states + self.dropout(attended))
        attended, _ = self.cross_attn(
            hidden_states, encoder_attention_mask, encoder_hidden_states, cache=cache, **kwargs
        )
        hidden_states = self.cross_attn_layer_norm(hidden_states + self.dropout(attended))
        return self.ffn_layer_norm(hidden_states + self.dropout(self.ffn(hidden_states)))


class VaswaniPreTrainedModel(PreTrainedModel):
    """Weight initialisation and the capabilities shared by the Vaswani models."""

    config: VaswaniConfig
    config_class = VaswaniConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["VaswaniEncoderLayer", "VaswaniDecoderLayer"]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, strict: bool = True, **kwargs):
        """`PreTrainedModel.from_pretrained`, with nothing wrong loaded silently, and load failures that name the file
        and the problem:
        - a truncated or corrupted `model.safetensors`, or weights whose shapes do not fit `config.json` (another
          vocabulary size), are a `ValueError`;
        - weights the model needs but the checkpoint lacks (a tensor removed, a config with more layers than the
          weights), or weights it holds that the model has no place for, are a `ValueError` naming them; weights tied
          to another (`lm_head` to the shared embedding) are not missing. `strict=False` loads as transformers does:
          missing weights randomly initialised, unexpected ones dropped, both only in its load report;
        - for generation: a `generation_config.json` that cannot be read is a `ValueError` naming it; without one,
          the model decodes as the paper (`paper_generation_config`), with a warning. A `generation_config=` argument
          replaces both.
        Only safetensors weights load (`use_safetensors=True` unless the caller says otherwise): a folder or repo
        holding only a pickled `pytorch_model.bin` is refused, never unpickled."""
        kwargs.setdefault("use_safetensors", True)
        wants_loading_info = kwargs.pop("output_loading_info", False)
        check_generation = (
            cls.can_generate() and kwargs.get("generation_config") is None and pretrained_model_name_or_path is not None
        )
        has_generation_file = check_generation and _has_generation_config(pretrained_model_name_or_path, kwargs)
        try:
            model, loading_info = super().from_pretrained(
                pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
            )
        except SafetensorError as error:
            raise ValueError(
                f"{pretrained_model_name_or_path}: model.safetensors cannot be read, it is truncated or corrupted "
                f"({error})"
            ) from error
        except RuntimeError as error:
            if "ignore_mismatched_sizes" not in str(error):
                raise
            raise ValueError(
                f"{pretrained_model_name_or_path}: the weights in model.safetensors do not fit config.json: "
                + _shape_mismatches(pretrained_model_name_or_path, kwargs, cls)
            ) from error
        if strict:
            _check_all_weights_loaded(pretrained_model_name_or_path, loading_info)
        if check_generation and not has_generation_file:
            model.generation_config = paper_generation_config(model.config)
            logger.warning(
                f"{pretrained_model_name_or_path} has no generation_config.json: decoding as the paper (Sec. 6.1), "
                "beam 4, length penalty 0.6, each output at most its source length + 50 tokens"
            )
        return (model, loading_info) if wants_loading_info else model

    def set_dropout(self, p: float) -> None:
        """Set P_drop, the dropout on each sub-layer's output and on the sums of embeddings and positions (Sec. 5.4),
        in the config and in every layer that applies it (a dropout schedule changes it during training)."""
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.config.dropout = p
        for module in self.modules():
            if isinstance(module, (VaswaniEncoderLayer, VaswaniDecoderLayer, VaswaniEncoder, VaswaniDecoder)):
                module.dropout.p = p

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # The paper does not state its initialisation. We follow its lineage (tensor2tensor, fairseq): Xavier-uniform
        # linear layers keep activations at unit scale through the post-LN stack, and N(0, d_model^-0.5) embeddings
        # become unit-scale after the sqrt(d_model) multiplication (Sec. 3.4), matching the sinusoids' range.
        if isinstance(module, VaswaniAttention):
            # A fused projection stacks square blocks (q, k, v): give each block the Xavier range of a square matrix.
            for projection in (getattr(module, name, None) for name in ("qkv_proj", "kv_proj")):
                if projection is not None:
                    blocks = projection.out_features // projection.in_features
                    init.xavier_uniform_(projection.weight, gain=math.sqrt((blocks + 1) / 2))
        elif isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=self.config.init_std or self.config.d_model**-0.5)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


class VaswaniEncoder(VaswaniPreTrainedModel):
    """The encoder stack: embeddings * sqrt(d_model) + positions, dropout, N encoder layers."""

    _can_record_outputs = {"hidden_states": VaswaniEncoderLayer, "attentions": VaswaniAttention}

    def __init__(self, config: VaswaniConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model, config.pad_token_id)
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.embed_positions = build_position_encoding(config)
        self.dropout = VaswaniDropout(config.dropout)
        self.layers = nn.ModuleList([VaswaniEncoderLayer(config, i) for i in range(config.encoder_layers)])
        self.gradient_checkpointing = False
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds to the encoder")
        if inputs_embeds is None:
            check_token_inputs(input_ids, attention_mask, self.config.vocab_size, "input_ids", "attention_mask")
            inputs_embeds = self.embed_tokens(input_ids)
        else:
            check_attention_mask(attention_mask, inputs_embeds.shape, "inputs_embeds", "attention_mask")
        hidden_states = inputs_embeds * self.embed_scale
        if self.embed_positions is not None:
            hidden_states = hidden_states + self.embed_positions(0, hidden_states.shape[1], hidden_states)
        hidden_states = self.dropout(hidden_states)  # Sec. 5.4
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask)
        for layer in self.layers:
            hidden_states = layer(hidden_states, mask, **kwargs)
        return BaseModelOutput(last_hidden_state=hidden_states)


class VaswaniDecoder(VaswaniPreTrainedModel):
    """The decoder stack: masked self-attention keeps position i from seeing positions > i (Sec. 3.2.3)."""

    _can_record_outputs = {
        "hidden_states": VaswaniDecoderLayer,
        "attentions": OutputRecorder(VaswaniAttention, index=1, layer_name="self_attn"),
        "cross_attentions": OutputRecorder(VaswaniAttention, index=1, layer_name="cross_attn"),
    }

    def __init__(self, config: VaswaniConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model, config.pad_token_id)
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.embed_positions = build_position_encoding(config)
        self.dropout = VaswaniDropout(config.dropout)
        self.layers = nn.ModuleList([VaswaniDecoderLayer(config, i) for i in range(config.decoder_layers)])
        self.gradient_checkpointing = False
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds to the decoder")
        if encoder_hidden_states is None:
            raise ValueError("the decoder attends over the encoder output: pass encoder_hidden_states")
        if use_cache and cache is None:
            cache = EncoderDecoderCache(DynamicCache(config=self.config), DynamicCache(config=self.config))
        if cache is not None and not isinstance(cache, EncoderDecoderCache):
            raise TypeError(f"cache must be an EncoderDecoderCache, got {type(cache).__name__}")
        past_length = cache.get_seq_length() if cache is not None else 0
        if inputs_embeds is None:
            if past_length == 0:  # the caller's ids; later steps of generation feed back the model's own
                check_token_inputs(
                    input_ids, attention_mask, self.config.vocab_size, "decoder_input_ids", "decoder_attention_mask"
                )
            inputs_embeds = self.embed_tokens(input_ids)
        elif past_length == 0:
            check_attention_mask(attention_mask, inputs_embeds.shape, "decoder_inputs_embeds", "decoder_attention_mask")
        hidden_states = inputs_embeds * self.embed_scale
        if self.embed_positions is not None:
            hidden_states = hidden_states + self.embed_positions(past_length, hidden_states.shape[1], hidden_states)
        hidden_states = self.dropout(hidden_states)  # Sec. 5.4

        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=hidden_states,
            attention_mask=attention_mask,
            cache=cache.self_attention_cache if cache is not None else None,
        )
        cross_mask = create_bidirectional_mask(
            config=self.config,
            inputs_embeds=hidden_states,
            attention_mask=encoder_attention_mask,
            encoder_hidden_states=encoder_hidden_states,
        )
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                causal_mask,
                encoder_hidden_states,
                encoder_attention_mask=cross_mask,
                cache=cache,
                **kwargs,
            )
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=hidden_states, cache=cache)


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Decoder inputs from labels: the targets shifted right by one, behind the start token (Sec. 3)."""
    shifted = labels.new_full(labels.shape, pad_token_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill_(shifted == -100, pad_token_id)


class VaswaniModel(VaswaniPreTrainedModel):
    """The encoder-decoder without output projection; returns the decoder's last hidden states."""

    _tied_weights_keys = {
        "encoder.embed_tokens.weight": "shared.weight",
        "decoder.embed_tokens.weight": "shared.weight",
    }
    # loaded from a VaswaniForConditionalGeneration checkpoint, the output projection has no place here by design
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]

    def __init__(self, config: VaswaniConfig):
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.d_model, config.pad_token_id)
        self.encoder = VaswaniEncoder(config)
        self.decoder = VaswaniDecoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.shared = value
        self.encoder.embed_tokens = value
        self.decoder.embed_tokens = value

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: EncoderDecoderCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqModelOutput:
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
            )
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(*encoder_outputs)
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            cache=cache,
            inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        return Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            cache=decoder_outputs.cache,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )


class VaswaniForConditionalGeneration(VaswaniPreTrainedModel, VaswaniGenerationMixin):
    """The Transformer for sequence-to-sequence generation: `VaswaniModel` and the output projection, tied to the
    shared embedding (Sec. 3.4). Decoding defaults follow Sec. 6.1: beam 4, length penalty 0.6, output length at most
    the source length + 50 (the generation config's `max_new_tokens_offset`)."""

    _tied_weights_keys = {"lm_head.weight": "model.shared.weight"}

    def __init__(self, config: VaswaniConfig):
        super().__init__(config)
        self.model = VaswaniModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()
        self.generation_config = paper_generation_config(config)

    def get_encoder(self, modality: str | None = None) -> VaswaniEncoder:
        return self.model.encoder

    def get_decoder(self) -> VaswaniDecoder:
        return self.model.decoder

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: EncoderDecoderCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        num_items_in_batch: int | torch.Tensor | None = None,
        label_smoothing: float = 0.0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqLMOutput:
        r"""`labels` are the target ids ending in `</s>`, -100 where ignored; the decoder input is derived from them
        when not given. The loss is their cross-entropy with `label_smoothing` (Sec. 5.4 uses 0.1), the mean over
        target tokens; `num_items_in_batch` (passed by `Trainer`) makes it a sum divided by the number of target tokens
        of the whole accumulated batch, so gradient accumulation equals one large batch. In training mode with
        gradients in float32 the loss is fused with the output projection and `logits` is None (see
        `label_smoothed_loss`)."""
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = shift_tokens_right(
                    labels, self.config.pad_token_id, self.config.decoder_start_token_id
                )
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            cache=cache,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        loss = None
        if labels is None:
            logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))
        else:
            # Training never reads the logits: let the loss skip storing them.
            loss, logits = label_smoothed_loss(
                outputs.last_hidden_state,
                self.lm_head,
                labels,
                label_smoothing,
                num_items_in_batch,
                keep_logits=not self.training,
            )
        return Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)


__all__ = [
    "VaswaniPreTrainedModel",
    "VaswaniModel",
    "VaswaniForConditionalGeneration",
    "VaswaniEncoder",
    "VaswaniDecoder",
]
