"""The short training loop all experiments share: the paper's recipe (Sec. 5.3, 5.4) without the Trainer.

A direct loop rather than `training.VaswaniTrainer`: runs last a minute, and the experiments read gradients between
the backward pass and the update (experiment 1) and hook attention modules (experiment 4), which a plain loop shows
in a few lines; checkpoints, evaluation schedules and distributed training, the Trainer's strengths, are not needed.
"""

from collections.abc import Callable, Iterable

import torch
from torch import nn

from vaswani_hf.trainer import eq3_learning_rate

LABEL_SMOOTHING = 0.1  # Sec. 5.4


def smoothed_loss(model: nn.Module, batch: dict[str, torch.Tensor], label_smoothing: float = LABEL_SMOOTHING):
    """Cross-entropy of the model on `batch` (labels -100 where ignored), with label smoothing, mean per token."""
    return model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=batch["labels"],
        label_smoothing=label_smoothing,
    ).loss


def train_steps(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    steps: int,
    warmup_steps: int,
    lr_scale: float,
    after_backward: Callable[[int, nn.Module], None] | None = None,
    on_step_end: Callable[[int, nn.Module], None] | None = None,
) -> list[float]:
    """Train `steps` updates with Adam (beta 0.9 / 0.98, eps 1e-9) and the learning rate of Eq. 3; returns the
    training losses (label-smoothed). `after_backward(step, model)` sees the gradients before the update;
    `on_step_end(step, model)` runs after it (evaluations: the model is put back in training mode afterwards)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.0, betas=(0.9, 0.98), eps=1e-9)
    losses = []
    model.train()
    for step, batch in zip(range(1, steps + 1), batches, strict=False):  # batches may be endless
        for group in optimizer.param_groups:
            group["lr"] = eq3_learning_rate(step, model.config.d_model, warmup_steps, lr_scale)
        loss = smoothed_loss(model, batch)
        loss.backward()
        if after_backward is not None:
            after_backward(step, model)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if on_step_end is not None:
            on_step_end(step, model)
            model.train()
    if len(losses) < steps:
        raise ValueError(f"the batches ran out after {len(losses)} of {steps} steps")
    return losses
