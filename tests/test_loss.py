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


@pytest.mark.parametrize("training", [True, False], ids=["fused", "plain"])
def test_the_count_of_items_may_come_as_a_tensor_of_any_one_element_shape(training):
    # the Trainer passes num_items_in_batch as a tensor; nn.DataParallel scatters it to each replica as (1, 1)
    model = tiny_model().train(training)
    batch = copy_task_batch(torch.Generator().manual_seed(5), batch_size=6)
    losses = [
        model(**batch, label_smoothing=0.1, num_items_in_batch=count).loss
        for count in (50, torch.tensor(50), torch.tensor([[50]]))
    ]
    assert all(loss.shape == () for loss in losses)
    for loss in losses[1:]:
        torch.testing.assert_close(loss, losses[0])


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


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_the_fused_loss_under_bf16_autocast_equals_the_unfused_loss_under_autocast(label_smoothing):
    """Under bfloat16 autocast the training loss is fused too (the logits never stored): the same loss and gradients
    as the unfused path under the same autocast (bf16 products, float32 softmax), within bf16's precision."""
    model = tiny_model(seed=7, vocab_size=300)  # dropout 0: training and evaluation mode compute the same function
    batch = copy_task_batch(torch.Generator().manual_seed(8), batch_size=6)
    results = {}
    for training in (True, False):
        model.train(training)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(**batch, label_smoothing=label_smoothing, num_items_in_batch=50)
        out.loss.backward()
        results[training] = (out, {name: p.grad.clone() for name, p in model.named_parameters()})
    (fused, fused_grads), (plain, plain_grads) = results[True], results[False]
    assert fused.logits is None and plain.logits.dtype == torch.bfloat16  # the fused path ran, and the plain one
    assert fused.loss.dtype == plain.loss.dtype == torch.float32
    torch.testing.assert_close(fused.loss, plain.loss, rtol=1e-5, atol=1e-5)  # the same bf16 logits, float32 loss
    for name, grad in plain_grads.items():
        assert fused_grads[name].dtype == torch.float32, name
        # bf16 rounds to 8 bits of mantissa (relative 2^-8): the two paths round the same sums in another order
        torch.testing.assert_close(fused_grads[name], grad, rtol=0.02, atol=0.02 * grad.abs().max().item(), msg=name)
        assert torch.nn.functional.cosine_similarity(fused_grads[name].flatten(), grad.flatten(), dim=0) > 0.999


def test_the_fused_loss_computes_in_bf16_across_chunks_like_the_plain_bf16_loss():
    generator = torch.Generator().manual_seed(9)
    hidden = torch.randn(7, 16, generator=generator).bfloat16().requires_grad_()
    weight = torch.randn(40, 16, generator=generator, requires_grad=True)
    labels = torch.tensor([3, -100, 0, 39, 4, -100, 7])
    fused = LinearCrossEntropy.apply(hidden, weight, labels, 0.1, 5, 3, torch.bfloat16)  # chunks 3 + 3 + 1
    fused.backward()
    fused_grads = hidden.grad, weight.grad
    hidden.grad = weight.grad = None
    logits = (hidden @ weight.bfloat16().t()).float()
    plain = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1, reduction="sum") / 5
    plain.backward()
    torch.testing.assert_close(fused, plain)
    assert fused_grads[0].dtype == torch.bfloat16 and fused_grads[1].dtype == torch.float32
    torch.testing.assert_close(fused_grads[0], hidden.grad)
    torch.testing.assert_close(fused_grads[1], weight.grad, rtol=0.01, atol=1e-3)


def test_float16_autocast_keeps_the_unfused_loss():
    # Its gradients would be computed before GradScaler scales them, and could underflow in float16.
    model = tiny_model(seed=7).train()
    batch = copy_task_batch(torch.Generator().manual_seed(8), batch_size=2)
    with torch.autocast("cpu", dtype=torch.float16):
        assert model(**batch, label_smoothing=0.1).logits is not None
