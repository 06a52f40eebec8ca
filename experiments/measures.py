"""Measurements read from a model: attention weights and their entropy, gradient norms; and figure saving."""

import os

import matplotlib

matplotlib.use("Agg")  # files only, no display
import torch
from matplotlib import pyplot as plt
from torch import nn

from vaswani_hf.modeling_vaswani import VaswaniAttention

ATTENTION_KINDS = ("encoder", "decoder", "cross")


def attention_entropy(weights: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
    """Mean entropy in nats of the attention rows of each head, (batch, heads, queries, keys) -> (heads,), over the
    rows of real queries (`query_mask` (batch, queries) is 1 there). Low entropy is a peaked, saturated softmax."""
    entropy = -torch.special.xlogy(weights.float(), weights.float()).sum(-1)
    mask = query_mask[:, None, :].to(entropy.dtype)
    return (entropy * mask).sum((0, 2)) / mask.sum((0, 2))


@torch.no_grad()
def attention_weights(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """Per kind (`encoder`, `decoder` self-attention, `cross`), one (batch, heads, queries, keys) tensor per layer,
    from `output_attentions` with teacher forcing on `batch["labels"]`. The model must use eager attention, the
    implementation that materialises the weights of Eq. 1."""
    if model.config._attn_implementation != "eager":
        raise ValueError("attention weights need attn_implementation='eager'")
    model.eval()
    outputs = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        decoder_input_ids=model.prepare_decoder_input_ids_from_labels(batch["labels"]),
        decoder_attention_mask=batch["labels"].ne(-100).long(),
        output_attentions=True,
    )
    return {
        "encoder": list(outputs.encoder_attentions),
        "decoder": list(outputs.decoder_attentions),
        "cross": list(outputs.cross_attentions),
    }


def attention_entropies(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, list[list[float]]]:
    """Per kind, per layer, per head: the mean entropy of the attention rows over the batch's real queries."""
    query_masks = {
        "encoder": batch["attention_mask"],
        "decoder": batch["labels"].ne(-100),
        "cross": batch["labels"].ne(-100),
    }
    return {
        kind: [attention_entropy(layer, query_masks[kind]).tolist() for layer in layers]
        for kind, layers in attention_weights(model, batch).items()
    }


def query_gradient_norm(model: nn.Module) -> float:
    """Frobenius norm of the gradient of every query projection W^Q (Sec. 3.2.2) together: the q block of the fused
    self-attention projections and the q projection of cross-attention."""
    squares = 0.0
    for module in model.modules():
        if isinstance(module, VaswaniAttention):
            weight = module.q_proj.weight if module.is_cross_attention else module.qkv_proj.weight
            squares += weight.grad[: module.config.d_model].float().pow(2).sum().item()
    return squares**0.5


def save_figure(figure: plt.Figure, path: str | os.PathLike) -> None:
    """Save at 100 dpi (small files for the repository) and free the figure."""
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
