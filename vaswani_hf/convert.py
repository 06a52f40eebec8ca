"""Exact weight conversion between `VaswaniForConditionalGeneration` and transformers' `MarianMTModel`.

The two are the same post-LN architecture. They differ in three places, which the conversion accounts for:
- the sinusoid layout: the paper interleaves sin (even dims) and cos (odd dims); Marian puts all sines first.
  Every d_model axis of every weight is permuted, which is exact: LayerNorm, residual sums and linear maps are
  equivariant under a permutation of the residual stream's coordinates;
- fused projections: ours stacks q, k, v (self-attention) and k, v (cross-attention) in one matrix;
- Marian's `final_logits_bias` (none in the paper): zeros on export, and a non-zero one is refused on import.
Start and special tokens are carried over as config values, so Marian's pad-as-start convention is kept.

`export_ctranslate2` goes one step further, through the Marian layout, to a CTranslate2 model for fast inference;
`quantize_dynamic_int8` makes a CPU int8 copy of a model for PyTorch inference.
"""

import copy
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import MarianConfig, MarianMTModel, PreTrainedTokenizerBase

from .configuration_vaswani import VaswaniConfig
from .files import atomic_folder
from .modeling_vaswani import VaswaniForConditionalGeneration

# Which axis of a weight lies along d_model (the residual stream) and must be permuted: 1 for inputs, 0 for outputs.
_IN, _OUT, _NONE = 1, 0, None


def _sinusoid_permutation(d_model: int) -> torch.Tensor:
    """Index such that marian[..., k] == ours[..., permutation[k]]."""
    return torch.cat([torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)])


def _attention(ours: str, marian: str, fused: list[tuple[str, list[str]]]) -> Iterator[tuple[str, list[str], int]]:
    for our_proj, marian_projs in fused:
        yield f"{ours}.{our_proj}.weight", [f"{marian}.{p}.weight" for p in marian_projs], _IN
        yield f"{ours}.{our_proj}.bias", [f"{marian}.{p}.bias" for p in marian_projs], _NONE
    yield f"{ours}.out_proj.weight", [f"{marian}.out_proj.weight"], _OUT
    yield f"{ours}.out_proj.bias", [f"{marian}.out_proj.bias"], _OUT


def _layer_norm(ours: str, marian: str) -> Iterator[tuple[str, list[str], int]]:
    yield f"{ours}.weight", [f"{marian}.weight"], _OUT
    yield f"{ours}.bias", [f"{marian}.bias"], _OUT


def _feed_forward(ours: str, marian: str) -> Iterator[tuple[str, list[str], int]]:
    yield f"{ours}.ffn.fc1.weight", [f"{marian}.fc1.weight"], _IN
    yield f"{ours}.ffn.fc1.bias", [f"{marian}.fc1.bias"], _NONE
    yield f"{ours}.ffn.fc2.weight", [f"{marian}.fc2.weight"], _OUT
    yield f"{ours}.ffn.fc2.bias", [f"{marian}.fc2.bias"], _OUT
    yield from _layer_norm(f"{ours}.ffn_layer_norm", f"{marian}.final_layer_norm")


def _weight_map(config: VaswaniConfig) -> Iterator[tuple[str, list[str], int]]:
    """(our key, Marian keys it splits into along dim 0, permuted axis) for every stored weight."""
    yield "model.shared.weight", ["model.shared.weight"], _IN
    self_qkv = [("qkv_proj", ["q_proj", "k_proj", "v_proj"])]
    for i in range(config.encoder_layers):
        ours, marian = f"model.encoder.layers.{i}", f"model.encoder.layers.{i}"
        yield from _attention(f"{ours}.self_attn", f"{marian}.self_attn", self_qkv)
        yield from _layer_norm(f"{ours}.self_attn_layer_norm", f"{marian}.self_attn_layer_norm")
        yield from _feed_forward(ours, marian)
    for i in range(config.decoder_layers):
        ours, marian = f"model.decoder.layers.{i}", f"model.decoder.layers.{i}"
        yield from _attention(f"{ours}.self_attn", f"{marian}.self_attn", self_qkv)
        yield from _layer_norm(f"{ours}.self_attn_layer_norm", f"{marian}.self_attn_layer_norm")
        cross = [("q_proj", ["q_proj"]), ("kv_proj", ["k_proj", "v_proj"])]
        yield from _attention(f"{ours}.cross_attn", f"{marian}.encoder_attn", cross)
        yield from _layer_norm(f"{ours}.cross_attn_layer_norm", f"{marian}.encoder_attn_layer_norm")
        yield from _feed_forward(ours, marian)


def _check_marian_compatible(config: VaswaniConfig) -> None:
    problems = []
    if config.position_encoding != "sinusoidal":
        problems.append(f"position_encoding={config.position_encoding!r} (Marian has only sinusoids)")
    if not config.scale_attention:
        problems.append("scale_attention=False (Marian always scales by 1/sqrt(d_k))")
    if not config.tie_word_embeddings:
        problems.append("tie_word_embeddings=False (the conversion maps one shared matrix)")
    if problems:
        raise ValueError("this config has no MarianMTModel equivalent: " + "; ".join(problems))


# The config fields that mean the same in VaswaniConfig and MarianConfig.
SHARED_CONFIG_FIELDS = (
    "vocab_size",
    "d_model",
    "encoder_layers",
    "decoder_layers",
    "encoder_attention_heads",
    "decoder_attention_heads",
    "encoder_ffn_dim",
    "decoder_ffn_dim",
    "dropout",
    "attention_dropout",
    "activation_dropout",
    "activation_function",
    "max_position_embeddings",
    "scale_embedding",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "decoder_start_token_id",
)


def convert_to_marian(model: VaswaniForConditionalGeneration) -> MarianMTModel:
    """A `MarianMTModel` computing the same function as `model` (same logits, same greedy outputs)."""
    config = model.config
    _check_marian_compatible(config)
    marian_config = MarianConfig(
        **{name: getattr(config, name) for name in SHARED_CONFIG_FIELDS},
        decoder_vocab_size=config.vocab_size,
        forced_eos_token_id=None,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
    )
    marian = MarianMTModel(marian_config).to(device=model.device, dtype=model.dtype)
    ours = model.state_dict()
    permutation = _sinusoid_permutation(config.d_model).to(model.device)
    state = {}
    for our_key, marian_keys, axis in _weight_map(config):
        tensor = ours[our_key] if axis is None else ours[our_key].index_select(axis, permutation)
        state.update(zip(marian_keys, tensor.chunk(len(marian_keys), dim=0), strict=True))
    state["final_logits_bias"] = torch.zeros_like(marian.final_logits_bias)
    _load_exactly(marian, state)
    generation_config = copy.deepcopy(model.generation_config)
    if hasattr(generation_config, "max_new_tokens_offset"):
        del generation_config.max_new_tokens_offset
    if generation_config.max_length is None and generation_config.max_new_tokens is None:
        generation_config.max_length = config.max_position_embeddings  # Marian's position table is a hard cap
    marian.generation_config = generation_config
    return marian.train(model.training)


def convert_from_marian(marian: MarianMTModel) -> VaswaniForConditionalGeneration:
    """A `VaswaniForConditionalGeneration` computing the same function as a `MarianMTModel`."""
    mc = marian.config
    problems = []
    if not mc.share_encoder_decoder_embeddings or mc.decoder_vocab_size != mc.vocab_size:
        problems.append("separate source and target vocabularies (the paper shares one)")
    if not mc.tie_word_embeddings:
        problems.append("tie_word_embeddings=False")
    if torch.count_nonzero(marian.final_logits_bias):
        problems.append("a non-zero final_logits_bias (the paper's output layer has no bias)")
    if mc.d_model % 2:
        problems.append(f"odd d_model={mc.d_model}")
    if problems:
        raise ValueError("this MarianMTModel has no Vaswani equivalent: " + "; ".join(problems))
    config = VaswaniConfig(**{name: getattr(mc, name) for name in SHARED_CONFIG_FIELDS})
    model = VaswaniForConditionalGeneration(config).to(device=marian.device, dtype=marian.dtype)
    theirs = marian.state_dict()
    inverse = torch.argsort(_sinusoid_permutation(config.d_model)).to(marian.device)
    state = {}
    for our_key, marian_keys, axis in _weight_map(config):
        tensor = torch.cat([theirs[k] for k in marian_keys], dim=0)
        state[our_key] = tensor if axis is None else tensor.index_select(axis, inverse)
    _load_exactly(model, state)
    # The converted model decodes as the original did (Marian repos carry their own decoding settings).
    model.generation_config = copy.deepcopy(marian.generation_config)
    return model.train(marian.training)


def _load_exactly(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load `state`; every parameter must come from it, except aliases of tied weights and computed positions."""
    result = model.load_state_dict(state, strict=False)
    tied = set(model.all_tied_weights_keys)
    missing = [k for k in result.missing_keys if k not in tied and "embed_positions" not in k]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"conversion left weights unset: {missing}, unexpected: {result.unexpected_keys}")


def quantize_dynamic_int8(model: VaswaniForConditionalGeneration) -> VaswaniForConditionalGeneration:
    """A copy of `model` whose linear layers run in int8 with dynamic activation scales (`torch.ao`), for CPU
    inference; the embeddings stay in float32."""
    return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {torch.nn.Linear}, dtype=torch.qint8)


def _check_ctranslate2_compatible(config: VaswaniConfig, activations: dict | None) -> None:
    """Refuse, naming them, the settings CTranslate2's encoder-decoder loader would silently get wrong or fail on
    without saying why: one head count for both stacks (it gives the decoder the encoder's), and its activations
    (`activations`: the converter's table, when it has one)."""
    problems = []
    if config.encoder_attention_heads != config.decoder_attention_heads:
        problems.append(
            f"encoder_attention_heads={config.encoder_attention_heads} != decoder_attention_heads="
            f"{config.decoder_attention_heads} (its loader gives both stacks the encoder's)"
        )
    if activations is not None and config.activation_function not in activations:
        problems.append(f"activation_function={config.activation_function!r} (it knows {sorted(activations)})")
    if problems:
        raise ValueError("this config cannot be exported to CTranslate2: " + "; ".join(problems))


def export_ctranslate2(
    model: VaswaniForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: str | os.PathLike,
    quantization: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a CTranslate2 model that translates like `model` (same greedy tokens), with its vocabulary and, beside
    them, the tokenizer's files (`tokenizer.json`, `tokenizer_config.json`), so the folder is all a user needs.

    CTranslate2's converter knows `MarianMTModel` but assumes two Marian habits ours does not have: decoding starts
    from a zero embedding (ours starts from the embedding of `<s>`), and the last vocabulary entry is a `<pad>` to
    drop. So the Marian loader is used with the generic encoder-decoder (BART) rules for those two points, and the
    vocabulary stays as it is. `quantization`: CTranslate2's weight types (`"int8"`, `"int8_float32"`, `"float16"`,
    ...). Needs the `ctranslate2` package (`pip install vaswani-hf[ctranslate2]`). The folder is written atomically;
    an existing non-empty `output_dir` is refused unless `overwrite`, and the folders `model` and `tokenizer` were
    loaded from, a folder holding them and the current directory always are (`check_output_folder`).
    """
    try:
        from ctranslate2.converters import transformers as ctranslate2_transformers
        from ctranslate2.converters.transformers import BartLoader, MarianMTLoader
    except ImportError as error:
        raise ImportError("export_ctranslate2 needs the ctranslate2 package: pip install ctranslate2") from error
    _check_ctranslate2_compatible(model.config, getattr(ctranslate2_transformers, "_SUPPORTED_ACTIVATIONS", None))

    class VaswaniMarianLoader(MarianMTLoader):
        def get_model_spec(self, marian):
            marian.config.normalize_before = False  # post-LN (Sec. 3.1)
            marian.config.normalize_embedding = False
            return BartLoader.get_model_spec(self, marian)  # without Marian's removal of a last <pad> row

        def set_config(self, config, marian, tokenizer):
            BartLoader.set_config(self, config, marian, tokenizer)  # decoding starts from <s>, as ours does

        def set_decoder(self, spec, decoder):
            BartLoader.set_decoder(self, spec, decoder)  # the start token's own embedding, not zeros

        def get_vocabulary(self, marian, tokenizer):
            return BartLoader.get_vocabulary(self, marian, tokenizer)

    sources = [("the model", model.name_or_path), ("the tokenizer", tokenizer.name_or_path)]
    with atomic_folder(output_dir, overwrite, keep=[(what, path) for what, path in sources if path]) as staging:
        with torch.no_grad():
            spec = VaswaniMarianLoader()(convert_to_marian(model).float().eval(), tokenizer)
        spec.validate()
        spec.optimize(quantization=quantization)
        spec.save(str(staging))
        tokenizer.save_pretrained(staging)
    return Path(output_dir)
