"""loss_vaswani.py: the label-smoothed loss fused with the output projection, against the plain path and the
Trainer's LabelSmoother."""

import pytest
import torch
from helpers import copy_task_batch, tiny_model
from transformers.trainer_pt_utils import LabelSmoother

from vaswani_hf.loss_vaswani import LinearCrossEntropy

ATTENTION_IMPLEMENTATIONS = ["eager", "sdpa"]


def test_loss_ignores_minus_100_and_matches_cross_entropy():
    model = tiny_model()
    batch = copy_task_batch(torch.Generator().manual_seed(3), batch_size=4)
    out = model(**batch)
    labels = batch["labels"]
    expected = torch.nn.functional.cross_entropy(out.logits[labels != -100], labels[labels != -100])
    torch.testing.assert_close(out.loss, expected)
    total = (labels != -100).sum()
    summed = model(**batch, num_items_in_batch=2 * total).loss
    torch.testing.assert_close(summed, expected / 2)


def test_label_smoothing_matches_the_trainers_label_smoother():
    model = tiny_model()
    batch = copy_task_batch(torch.Generator().manual_seed(4), batch_size=4)
    out = model(**batch, label_smoothing=0.1)
    total = (batch["labels"] != -100).sum()
    smoother = LabelSmoother(epsilon=0.1)
    torch.testing.assert_close(out.loss, smoother(out, batch["labels"]))
    summed = model(**batch, label_smoothing=0.1, num_items_in_batch=2 * total).loss
    torch.testing.assert_close(summed, smoother(out, batch["labels"], num_items_in_batch=2 * total))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_training_loss_fused_with_the_output_projection_equals_the_plain_path(label_smoothing):
    # Dropout 0: training and evaluation mode compute the same function; only the loss path differs.
    model = tiny_model()
    batch = copy_task_batch(torch.Generator().manual_seed(5), batch_size=6)
    results = {}
    for training in (True, False):
        model.train(training)
        model.zero_grad()
        out = model(**batch, label_smoothing=label_smoothing, num_items_in_batch=50)
        out.loss.backward()
        results[training] = (out, {name: p.grad.clone() for name, p in model.named_parameters()})
    (fused, fused_grads), (plain, plain_grads) = results[True], results[False]
    assert fused.logits is None and plain.logits is not None
    torch.testing.assert_close(fused.loss, plain.loss, atol=1e-6, rtol=1e-5)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_fused_loss_gradients_match_finite_differences_across_chunks():
    generator = torch.Generator().manual_seed(6)
    hidden = torch.randn(7, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(11, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    labels = torch.tensor([3, -100, 0, 10, 4, -100, 7])
    # chunks of 3 rows: 3 + 3 + 1, the last one partial
    assert torch.autograd.gradcheck(lambda h, w: LinearCrossEntropy.apply(h, w, labels, 0.1, 5, 3), (hidden, weight))
    fused = LinearCrossEntropy.apply(hidden, weight, labels, 0.1, 5, 3)
    plain = torch.nn.functional.cross_entropy(hidden @ weight.t(), labels, label_smoothing=0.1, reduction="sum") / 5
    torch.testing.assert_close(fused, plain)


def test_a_hooked_output_projection_keeps_the_plain_loss_path_in_training():
    model = tiny_model().train()
    batch = copy_task_batch(torch.Generator().manual_seed(5), batch_size=2)
    seen = []
    model.lm_head.register_forward_hook(lambda module, args, output: seen.append(output.shape))
    out = model(**batch, label_smoothing=0.1)
    assert out.logits is not None and seen == [out.logits.shape]
