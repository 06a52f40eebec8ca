"""Configuration of the Transformer of "Attention Is All You Need" (Vaswani et al., 2017).

This file is uploaded next to `modeling_vaswani.py` in published repos so that `trust_remote_code=True` works
without the package: it imports nothing from `vaswani_hf`.
"""

import sys
from typing import Any

from transformers import PretrainedConfig
from transformers.activations import ACT2FN

POSITION_ENCODINGS = ("sinusoidal", "learned", "none")

# Table 3 of the paper. "small" is ours: a model that trains on Multi30k on a 2-core CPU in about an hour
# (the size of a MarianMTModel that does the same), with the paper's shapes scaled down.
PRESETS: dict[str, dict[str, Any]] = {
    "small": dict(
        vocab_size=8000,
        d_model=256,
        encoder_layers=3,
        decoder_layers=3,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=1024,
        decoder_ffn_dim=1024,
        dropout=0.1,
    ),
    "base": dict(
        vocab_size=37000,
        d_model=512,
        encoder_layers=6,
        decoder_layers=6,
        encoder_attention_heads=8,
        decoder_attention_heads=8,
        encoder_ffn_dim=2048,
        decoder_ffn_dim=2048,
        dropout=0.1,
    ),
    # P_drop 0.3 is the En-De big model; the paper used 0.1 for big En-Fr (Sec. 6.1): pass dropout=0.1 for it.
    "big": dict(
        vocab_size=37000,
        d_model=1024,
        encoder_layers=6,
        decoder_layers=6,
        encoder_attention_heads=16,
        decoder_attention_heads=16,
        encoder_ffn_dim=4096,
        decoder_ffn_dim=4096,
        dropout=0.3,
    ),
}


class VaswaniConfig(PretrainedConfig):
    r"""Configuration of [`VaswaniModel`] and [`VaswaniForConditionalGeneration`].

    The defaults are the paper's base model (Table 3) with a 37,000-token shared vocabulary. Use
    [`VaswaniConfig.from_preset`] for `"small"`, `"base"` and `"big"`.

    Args:
        vocab_size: size of the shared source/target BPE vocabulary (Sec. 5.1).
        d_model: width of the residual stream, embeddings and sub-layer outputs (Sec. 3.1).
        encoder_layers / decoder_layers: the N of the paper, stacks of identical layers.
        encoder_attention_heads / decoder_attention_heads: h, the number of heads (Sec. 3.2.2).
        encoder_ffn_dim / decoder_ffn_dim: d_ff, the inner width of the feed-forward networks (Eq. 2).
        dropout: P_drop, applied to each sub-layer output and to the sums of embeddings and positions (Sec. 5.4).
        attention_dropout: dropout on the attention weights (not in the paper; 0 by default).
        activation_dropout: dropout after the FFN activation (not in the paper; 0 by default).
        activation_function: the FFN non-linearity; the paper's is `"relu"` (Eq. 2).
        max_position_embeddings: size of the table for `position_encoding="learned"`, and the nominal maximum
            length kept in the config for tools; sinusoidal encodings are computed for any length.
        scale_embedding: multiply the embeddings by sqrt(d_model) (Sec. 3.4).
        scale_attention: the 1/sqrt(d_k) factor of Eq. 1 (ablation switch; on in the paper).
        position_encoding: `"sinusoidal"` (Sec. 3.5), `"learned"` (Table 3 row E) or `"none"` (ablation).
        init_std: standard deviation of the normal init of the shared embedding; `None` means d_model^-0.5.
        tie_word_embeddings: one matrix for encoder input, decoder input and output projection (Sec. 3.4);
            `False` gives three separate matrices.
    """

    model_type = "vaswani"
    keys_to_ignore_at_inference = ["cache"]
    # `generate()` and the cache classes read these generic names; the decoder is the stack they size.
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "decoder_attention_heads",
        "num_hidden_layers": "decoder_layers",
    }

    vocab_size: int = 37000
    d_model: int = 512
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_attention_heads: int = 8
    decoder_attention_heads: int = 8
    encoder_ffn_dim: int = 2048
    decoder_ffn_dim: int = 2048
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    activation_function: str = "relu"
    max_position_embeddings: int = 1024
    scale_embedding: bool = True
    scale_attention: bool = True
    position_encoding: str = "sinusoidal"
    init_std: float | None = None
    tie_word_embeddings: bool = True
    use_cache: bool = True
    is_encoder_decoder: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    decoder_start_token_id: int | None = 1

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        self._check_values()

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "VaswaniConfig":
        """The config of a named preset (`"small"`, `"base"`, `"big"`), with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def custom_pipelines(self) -> dict[str, Any]:
        """The pipelines that a published repo declares for remote code (`config.json` "custom_pipelines"), minus the
        tasks that transformers already serves in this process. Importing `vaswani_hf` registers "translation", and
        `pipeline()` would otherwise take the repo's remote-code route for it and demand `trust_remote_code=True`
        although the installed package has the same pipeline. The declaration itself is kept and saved as loaded."""
        declared = self.__dict__.get("custom_pipelines", {})
        pipelines = sys.modules.get("transformers.pipelines")  # not imported: no pipeline is being built
        registry = getattr(pipelines, "PIPELINE_REGISTRY", None)
        if registry is None:
            return declared
        return {task: info for task, info in declared.items() if task not in registry.supported_tasks}

    @custom_pipelines.setter
    def custom_pipelines(self, value: dict[str, Any]) -> None:
        self.__dict__["custom_pipelines"] = value

    # By hand rather than with transformers' `@strict` field validators (huggingface_hub.dataclasses, as MarianConfig):
    # those raise StrictDataclass*Error, not the ValueError the commands report, and only warn on special ids.
    def _check_values(self) -> None:
        for field in (
            "vocab_size",
            "d_model",
            "encoder_layers",
            "decoder_layers",
            "encoder_attention_heads",
            "decoder_attention_heads",
            "encoder_ffn_dim",
            "decoder_ffn_dim",
            "max_position_embeddings",
        ):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        for field in ("encoder_attention_heads", "decoder_attention_heads"):
            if self.d_model % getattr(self, field):
                raise ValueError(f"d_model ({self.d_model}) must be divisible by {field} ({getattr(self, field)})")
        for field in ("dropout", "attention_dropout", "activation_dropout"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"{field} must be a probability in [0, 1), got {value!r}")
        if self.activation_function not in ACT2FN:
            raise ValueError(f"activation_function {self.activation_function!r} is unknown; e.g. 'relu', 'gelu'")
        if self.position_encoding not in POSITION_ENCODINGS:
            raise ValueError(f"position_encoding must be one of {POSITION_ENCODINGS}, got {self.position_encoding!r}")
        if self.position_encoding == "sinusoidal" and self.d_model % 2:
            raise ValueError(
                f"d_model must be even for sinusoidal position encodings (sin/cos pairs), got {self.d_model}"
            )
        if self.init_std is not None and not self.init_std > 0:
            raise ValueError(f"init_std must be positive or None, got {self.init_std!r}")
        for field in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
            value = getattr(self, field)
            if value is not None and not (isinstance(value, int) and 0 <= value < self.vocab_size):
                raise ValueError(f"{field} must be None or an id in [0, vocab_size={self.vocab_size}), got {value!r}")
        if self.decoder_start_token_id is None:
            raise ValueError("decoder_start_token_id must be set: the decoder's input is the target shifted right")


__all__ = ["VaswaniConfig", "PRESETS"]
