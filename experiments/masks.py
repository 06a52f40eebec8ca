"""Experiment 4, Sec. 3.2.3: the decoder's causal mask, seen and removed.

The mask sets the scores of illegal connections (query i, key j > i) to the dtype's minimum before the softmax, so
position i predicts token i + 1 from tokens up to i only. Shown here: the pre-softmax scores of a trained decoder,
future masked; and what happens without the mask: with teacher forcing the decoder can read the token it is asked
to predict from its own input, so the training loss collapses, while greedy decoding, where the future does not
exist yet, fails (the "cheating" signature).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from matplotlib import pyplot as plt

from vaswani_hf.files import write_json
from vaswani_hf.modeling_vaswani import VaswaniForConditionalGeneration

from .budget import Budget
from .loop import train_steps
from .measures import save_figure
from .multi30k import Multi30kTask, new_model


@contextmanager
def without_causal_mask(model: VaswaniForConditionalGeneration) -> Iterator[None]:
    """Inside, the decoder's self-attention sees every position (padding stays masked). A forward pre-hook on each
    decoder self-attention module replaces every row of its additive mask by the last row, which the causal mask
    leaves open up to the end and so holds only the padding mask. Needs eager attention (its mask is a tensor);
    during generation with a cache the query is one position and its row is unchanged."""
    if model.config._attn_implementation != "eager":
        raise ValueError("without_causal_mask needs attn_implementation='eager'")

    def open_mask(module, args):
        hidden_states, mask, *rest = args
        return (hidden_states, mask[..., -1:, :].expand_as(mask), *rest)

    handles = [layer.self_attn.register_forward_pre_hook(open_mask) for layer in model.get_decoder().layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def decoder_scores(model: VaswaniForConditionalGeneration, batch: dict[str, torch.Tensor], layer: int = 0):
    """The pre-softmax scores Q K^T * scaling + mask of a decoder self-attention layer, (batch, heads, q, k), with
    teacher forcing on `batch["labels"]`: recomputed from the module's own projection on its own inputs."""
    module = model.get_decoder().layers[layer].self_attn
    captured = {}

    def capture(module, args):
        captured["hidden_states"], captured["mask"] = args[0], args[1]

    handle = module.register_forward_pre_hook(capture)
    try:
        model.eval()
        model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=model.prepare_decoder_input_ids_from_labels(batch["labels"]),
            decoder_attention_mask=batch["labels"].ne(-100).long(),
        )
    finally:
        handle.remove()
    query, key, _ = module._heads(module.qkv_proj(captured["hidden_states"]), 3)
    return torch.matmul(query, key.transpose(2, 3)) * module.scaling + captured["mask"]


def run_masks(budget: Budget, output_dir: str | Path, task: Multi30kTask) -> dict:
    """Writes `masks.json` and `masks.png`; returns the JSON's content."""
    output_dir = Path(output_dir)
    masked = task.trained()
    sentence = task.probe_batch(1)
    scores = decoder_scores(masked.model, sentence)[0]  # (heads, q, k)
    minimum = torch.finfo(scores.dtype).min
    future = torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1)
    future_masked = bool((scores[:, future] <= minimum / 2).all())
    past_open = bool((scores[:, ~future] > minimum / 2).all())
    future_weight = float(torch.softmax(scores, -1)[:, future].max()) if future.any() else 0.0

    # The same model, seed and batches, trained without the mask for the same steps.
    cheater = new_model(task.config(), budget.seed)
    validation = [[0, task.validation_loss(cheater)]]
    with without_causal_mask(cheater):

        def evaluate(step: int, model) -> None:
            if step in {v[0] for v in masked.validation_losses}:
                validation.append([step, task.validation_loss(model)])

        losses = train_steps(
            cheater,
            task.batches(budget.seed),
            budget.train_steps,
            budget.warmup_steps,
            budget.lr_scale,
            on_step_end=evaluate,
        )
        cheater_bleu = task.test_bleu(cheater)
    tail = max(1, len(losses) // 10)
    final = {"masked": float(np.mean(masked.train_losses[-tail:])), "unmasked": float(np.mean(losses[-tail:]))}

    findings = [
        f"Decoder layer 1, first validation sentence ({scores.shape[-1]} target positions): every future score "
        f"is the additive minimum: {future_masked}; every past score is finite: {past_open}; largest softmax weight "
        f"on a future position {future_weight:.1e}.",
        f"Mean training loss (label-smoothed) over the last {tail} of {budget.train_steps} steps: "
        f"{final['masked']:.3f} with the mask, {final['unmasked']:.3f} without; teacher-forced validation loss "
        f"{masked.validation_losses[-1][1]:.3f} vs {validation[-1][1]:.3f}.",
        f"Greedy test BLEU: {masked.bleu:.2f} with the mask, {cheater_bleu:.2f} without.",
    ]
    disagreements = []
    if not final["unmasked"] < final["masked"]:
        disagreements.append("Without the mask the training loss did not fall below the masked model's.")
    if not cheater_bleu < masked.bleu:
        disagreements.append("Without the mask greedy decoding did not score lower than with it.")

    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    shown = scores[0].masked_fill(future, float("nan")).numpy()
    image = axes[0].imshow(shown, cmap="viridis")
    axes[0].imshow(np.where(future.numpy(), 1.0, np.nan), cmap="Greys", vmin=0, vmax=2)
    axes[0].set(title="Pre-softmax scores, decoder layer 1 head 1", xlabel="key position (grey: masked)")
    axes[0].set_ylabel("query position")
    figure.colorbar(image, ax=axes[0])
    axes[1].plot(range(1, len(masked.train_losses) + 1), masked.train_losses, label="causal mask")
    axes[1].plot(range(1, len(losses) + 1), losses, label="no mask")
    axes[1].set(title="Training loss (label-smoothed)", xlabel="step")
    axes[1].legend()
    axes[2].bar(["causal mask", "no mask"], [masked.bleu, cheater_bleu], color=["tab:blue", "tab:red"])
    axes[2].set(title="Greedy test BLEU", ylabel="BLEU")
    save_figure(figure, output_dir / "masks.png")

    result = {
        "title": "The decoder's causal mask (Sec. 3.2.3)",
        "paper": "Masking out (setting to -inf) the softmax inputs of illegal connections preserves the "
        "auto-regressive property: predictions for position i depend only on outputs before i.",
        "findings": findings,
        "disagreements": disagreements,
        "figures": ["masks.png"],
        "future_scores_masked": future_masked,
        "past_scores_finite": past_open,
        "largest_future_weight": future_weight,
        "scores_head_1": [  # null where masked
            [None if is_future else round(value, 4) for value, is_future in zip(row, future_row, strict=True)]
            for row, future_row in zip(scores[0].tolist(), future.tolist(), strict=True)
        ],
        "final_train_loss": final,
        "validation_losses": {"masked": masked.validation_losses, "unmasked": validation},
        "bleu": {"masked": masked.bleu, "unmasked": cheater_bleu},
        "train_losses": {"masked": masked.train_losses, "unmasked": losses},
    }
    write_json(output_dir / "masks.json", result)
    return result
