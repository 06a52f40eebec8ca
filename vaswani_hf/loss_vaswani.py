"""The training loss: label-smoothed cross-entropy (Sec. 5.4), fused with the output projection when that saves the
(tokens x vocabulary) logits.

This file is uploaded with published models for `trust_remote_code=True`, beside `modeling_vaswani.py` (which calls
it): it imports only `torch`.
"""

import torch
from torch import nn


class LinearCrossEntropy(torch.autograd.Function):
    """Output projection and label-smoothed cross-entropy (Sec. 5.4) in one step that never stores the
    (tokens x vocabulary) logits: chunk by chunk of rows, the forward pass computes the logits, their loss and at once
    their gradient (softmax - smoothed target), folds it into the gradients of the hidden states and of the weight,
    and drops the chunk. The backward pass only scales those gradients. Float32 training spends much of its output
    layer time writing, reading and freeing the logits, their log-probabilities and their gradients (three arrays of
    4,096 x 37,000 floats per base batch), which this avoids; the matrix products are the same."""

    @staticmethod
    def forward(
        ctx,
        hidden,
        weight,
        labels,
        label_smoothing: float,
        denominator,
        chunk_rows: int,
        compute_dtype: torch.dtype | None = None,
    ):
        vocab_size = weight.shape[0]
        keep_weight_grad = ctx.needs_input_grad[1]
        # The matrix products run in `compute_dtype` (autocast's bfloat16, say: the weight is cast once, as autocast
        # casts it for a Linear), the softmax and the loss in float32 on their float32 results, as the unfused loss
        # computes cross_entropy on logits.float(); the gradients of the products come back in float32.
        compute_dtype = compute_dtype or hidden.dtype
        low_precision = torch.finfo(compute_dtype).bits < 32
        accumulate_dtype = torch.float32 if low_precision else hidden.dtype
        rows_all = hidden.to(compute_dtype)
        weight_compute = weight.to(compute_dtype)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=accumulate_dtype) if keep_weight_grad else None
        loss = hidden.new_zeros((), dtype=accumulate_dtype)
        # Every chunk reuses the same buffers, and each pass over a chunk's logits is in place: writing a fresh array
        # of this size (~128 MB, pages new from the system) took several times as long as a pass in place.
        chunk_rows = max(1, min(chunk_rows, hidden.shape[0]))
        logits_buffer = hidden.new_empty((chunk_rows, vocab_size), dtype=accumulate_dtype)
        products_buffer = hidden.new_empty((chunk_rows, vocab_size), dtype=compute_dtype) if low_precision else None
        if low_precision and keep_weight_grad:
            weight_products = torch.empty_like(weight, dtype=compute_dtype)
            weight_products_widened = torch.empty_like(grad_weight)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], chunk_rows):
                rows = rows_all[start : start + chunk_rows]
                count = rows.shape[0]
                targets = labels[start : start + chunk_rows]
                kept = targets.ne(-100)
                targets = targets.clamp(min=0).unsqueeze(1)
                logits = logits_buffer[:count]
                if low_precision:
                    logits.copy_(torch.mm(rows, weight_compute.t(), out=products_buffer[:count]))
                else:
                    torch.mm(rows, weight_compute.t(), out=logits)
                # The loss from logits shifted by their row maximum (the shift cancels): with Z = sum(exp(shifted)),
                # -log p(target) mixed with the mean of -log p over the vocabulary, as LabelSmoother and cross_entropy.
                logits.sub_(logits.amax(dim=-1, keepdim=True))
                target_logits = logits.gather(1, targets).squeeze(1)
                logits_sum = logits.sum(-1)
                exponentials = logits.exp_()
                normaliser = exponentials.sum(-1, keepdim=True)
                token_loss = (
                    normaliser.log().squeeze(1)
                    - (1 - label_smoothing) * target_logits
                    - label_smoothing / vocab_size * logits_sum
                )
                loss += token_loss.masked_fill(~kept, 0.0).sum()
                # d loss / d logits = (exp / Z - (1 - eps) one-hot - eps / V) * kept / denominator, the one-hot
                # folded in first (times Z). In place and in one dtype: passes that convert as they go are slower.
                scale = (kept / denominator).unsqueeze(1)
                exponentials.scatter_add_(1, targets, (label_smoothing - 1) * normaliser)
                grad_logits = exponentials.mul_(scale / normaliser).sub_(label_smoothing / vocab_size * scale)
                if low_precision:
                    grad_logits = products_buffer[:count].copy_(grad_logits)
                if grad_hidden.dtype == compute_dtype:
                    torch.mm(grad_logits, weight_compute, out=grad_hidden[start : start + count])
                else:
                    grad_hidden[start : start + count] = grad_logits @ weight_compute
                if keep_weight_grad:
                    if low_precision:
                        torch.mm(grad_logits.t(), rows, out=weight_products)
                        grad_weight += weight_products_widened.copy_(weight_products)
                    else:
                        grad_weight.addmm_(grad_logits.t(), rows)
        if keep_weight_grad:
            grad_weight = grad_weight.to(weight.dtype)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return loss / denominator

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_weight = None if grad_weight is None else grad_weight * grad_loss
        return grad_hidden * grad_loss, grad_weight, None, None, None, None, None


def label_smoothed_loss(
    hidden_states: torch.Tensor,
    output_projection: nn.Linear,
    labels: torch.LongTensor,
    label_smoothing: float = 0.0,
    num_items_in_batch: int | torch.Tensor | None = None,
    keep_logits: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cross-entropy of `output_projection(hidden_states)` against `labels` (-100 where ignored) with label smoothing
    (Sec. 5.4: the target puts 1 - eps on the label and eps spread over the vocabulary): the mean over the kept
    tokens, or their sum over `num_items_in_batch`. Returns (loss, logits). With `keep_logits=False`, when gradients
    flow through a plain float32 `nn.Linear` projection, in float32 or under bfloat16 autocast, the loss is fused with
    it (`LinearCrossEntropy`) and the logits are None."""
    if labels.shape != hidden_states.shape[:-1]:
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} do not match the decoder output's {tuple(hidden_states.shape[:-1])}"
        )
    vocab_size = output_projection.out_features
    outside = (labels != -100) & ((labels < 0) | (labels >= vocab_size))
    if outside.any():
        raise ValueError(
            f"labels hold id {labels[outside][0].item()}, neither -100 (ignored) nor in the vocabulary of "
            f"{vocab_size} tokens"
        )
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    denominator = labels.ne(-100).sum() if num_items_in_batch is None else num_items_in_batch
    if isinstance(denominator, torch.Tensor):  # one count, in any shape: nn.DataParallel scatters it as (1, 1)
        denominator = denominator.reshape(())
    device_type = hidden_states.device.type
    # Under bfloat16 autocast the products run in bfloat16 as autocast would run the projection; float16 autocast keeps
    # the unfused path: the fused gradients are computed before GradScaler's scale could keep them from underflowing.
    compute_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else torch.float32
    fused = (
        not keep_logits
        and torch.is_grad_enabled()
        # a plain projection: not one replaced (quantized, adapted) or hooked, whose output the fused loss would skip
        and type(output_projection) is nn.Linear
        and not (output_projection._forward_hooks or output_projection._forward_pre_hooks)
        and output_projection.weight.dtype == torch.float32
        and compute_dtype in (torch.float32, torch.bfloat16)
        and hidden_states.dtype in (torch.float32, compute_dtype)
        and output_projection.bias is None
    )
    if fused:
        chunk_rows = max(1, 2**25 // vocab_size)  # ~128 MB of float32 logits per chunk
        loss = LinearCrossEntropy.apply(
            hidden_states.flatten(0, -2),
            output_projection.weight,
            labels.flatten(),
            label_smoothing,
            denominator,
            chunk_rows,
            compute_dtype,
        )
        return loss, None
    logits = output_projection(hidden_states)
    loss = nn.functional.cross_entropy(
        logits.flatten(0, -2).float(),
        labels.flatten(),
        ignore_index=-100,
        reduction="sum",
        label_smoothing=label_smoothing,
    )
    return loss / denominator, logits


__all__ = ["LinearCrossEntropy", "label_smoothed_loss"]
