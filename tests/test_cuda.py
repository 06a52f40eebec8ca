"""The model on each device: on CUDA when there is one (marker `cuda`, skipped without), and the same tests on the CPU,
so that they run in every CI and cannot rot. `pytest -m cuda tests/test_cuda.py` runs only the CUDA ones
(benchmarks/gpu_check.py does, on a GPU machine)."""

import copy

import pytest
import torch
from helpers import (
    copy_task_batch,
    fp16_trainer,
    generate_with_each_loop,
    pad,
    padded_batch,
    reversal_dataset,
    tiny_model,
    trainer_for,
)
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.trainer_pt_utils import LabelSmoother

from vaswani_hf.generation_vaswani import _next_token_scores, _score_buffers

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")],
    ),
]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


def on(batch: dict, device: torch.device) -> dict:
    return {key: value.to(device) for key, value in batch.items()}


def test_eager_and_sdpa_give_the_same_outputs_in_float32_and_under_bf16_autocast(device):
    batch = on(copy_task_batch(torch.Generator().manual_seed(4), batch_size=8), device)  # padded sources and targets
    logits = {}
    for implementation in ("eager", "sdpa"):
        model = tiny_model(seed=3, attn_implementation=implementation).to(device)
        with torch.no_grad():
            logits[implementation, "float32"] = model(**batch).logits
            with torch.autocast(device.type, dtype=torch.bfloat16):
                logits[implementation, "bfloat16"] = model(**batch).logits.float()
    # SDPA's CUDA kernels (memory-efficient, flash in bf16) sum in another order than eager's matrix products
    tolerance = 1e-5 if device.type == "cpu" else 1e-4
    torch.testing.assert_close(logits["eager", "float32"], logits["sdpa", "float32"], rtol=0, atol=tolerance)
    torch.testing.assert_close(logits["eager", "bfloat16"], logits["sdpa", "bfloat16"], rtol=0, atol=0.05)
    assert (logits["eager", "bfloat16"] - logits["eager", "float32"]).abs().max() > 0  # bf16 really ran


def loss_and_gradients(model, batch: dict, autocast_dtype: torch.dtype | None = None):
    with torch.autocast(
        batch["labels"].device.type, dtype=autocast_dtype or torch.bfloat16, enabled=bool(autocast_dtype)
    ):
        output = model(**batch, label_smoothing=0.1)
    output.loss.backward()
    gradients = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return output, gradients


def test_the_fused_label_smoothed_loss_equals_the_plain_loss_in_float32_and_under_bf16_autocast(device):
    batch = on(copy_task_batch(torch.Generator().manual_seed(2), batch_size=16), device)
    model = tiny_model(seed=2).to(device)  # dropout 0: training and evaluation mode compute the same function
    model.eval()
    plain, plain_gradients = loss_and_gradients(model, batch)  # evaluation mode: the loss from the logits
    model.train()
    fused, fused_gradients = loss_and_gradients(model, batch)
    assert fused.logits is None and plain.logits is not None  # the fused path ran, and the plain one
    torch.testing.assert_close(fused.loss, plain.loss)
    torch.testing.assert_close(fused_gradients, plain_gradients, rtol=1e-4, atol=1e-6)

    # Under bf16 autocast the training loss is fused too: the loss of the bf16 logits (transformers' LabelSmoother on
    # the logits evaluation mode returns), within bf16's precision of float32's, with gradients pointing the same way.
    autocast, autocast_gradients = loss_and_gradients(model, batch, torch.bfloat16)
    assert autocast.logits is None
    model.eval()
    autocast_plain, autocast_plain_gradients = loss_and_gradients(model, batch, torch.bfloat16)
    assert autocast_plain.logits.dtype == torch.bfloat16
    smoother = LabelSmoother(epsilon=0.1)
    torch.testing.assert_close(
        autocast_plain.loss, smoother({"logits": autocast_plain.logits.float()}, batch["labels"])
    )
    torch.testing.assert_close(autocast.loss, autocast_plain.loss, rtol=1e-4, atol=1e-5)
    assert torch.nn.functional.cosine_similarity(autocast_gradients, autocast_plain_gradients, dim=0) > 0.999
    torch.testing.assert_close(autocast.loss, fused.loss, rtol=0.02, atol=0)
    assert torch.nn.functional.cosine_similarity(autocast_gradients, fused_gradients, dim=0) > 0.99


@pytest.mark.parametrize("num_beams", [1, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_generate_gives_the_tokens_of_transformers_loops(reversal_model, device, num_beams, dtype):
    model = copy.deepcopy(reversal_model).to(device=device, dtype=dtype)
    batch = on(copy_task_batch(torch.Generator().manual_seed(9), batch_size=12), device)
    del batch["labels"]
    ours, theirs = generate_with_each_loop(model, batch, num_beams=num_beams, max_new_tokens=12)
    assert ours.device.type == device.type
    assert torch.equal(ours, theirs)
    assert len({tuple(row.tolist()) for row in ours}) == len(ours)  # varied outputs: the comparison means something
    ours, theirs = generate_with_each_loop(model, on(padded_batch(5), device), num_beams=num_beams)  # Sec. 6.1 limit
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_training_steps_under_mixed_precision_keep_float32_weights_finite_and_learn(tmp_path, device, precision):
    """bf16 autocast, and fp16 autocast with GradScaler (accelerate's on CUDA; on a CPU accelerate makes none, so the
    test gives the Trainer one as test_faults.py does), through VaswaniTrainer."""
    model = tiny_model(seed=5)
    batch = pad([reversal_dataset()[i] for i in range(32)])
    with torch.no_grad():
        initial = model(**batch).loss.item()
    options = dict(max_steps=40, lr_scale=0.2, warmup_steps=10, use_cpu=device.type == "cpu")
    if precision == "fp16" and device.type == "cpu":
        trainer = fp16_trainer(tmp_path, model, init_scale=2.0**16, **options)
    else:
        trainer = trainer_for(tmp_path, model, **{precision: True}, **options)
    trainer.train()
    assert trainer.state.global_step == 40
    if precision == "fp16":
        scaler = trainer.accelerator.scaler
        assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled() and scaler.get_scale() > 0
    assert {p.device.type for p in model.parameters()} == {device.type}
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    with torch.no_grad():
        trained = model.eval()(**on(batch, device)).loss.item()
    assert trained < 0.9 * initial, (initial, trained)


def test_the_decoding_score_buffers_fit_the_device_and_give_the_projections_logits(device):
    # On a CPU the product is weight x hidden^T plus a transposing copy (faster with MKL); elsewhere it goes
    # straight into the scores. Both ways, on the CPU, give lm_head's logits.
    model = tiny_model(seed=2, vocab_size=300).to(device)
    hidden_states = torch.randn(5, 4, model.config.d_model, device=device)
    ids = torch.randint(4, 300, (5, 1), device=device)
    buffers = _score_buffers(model, 5, device)
    assert (buffers[1] is not None) == (device.type == "cpu")
    ways = [buffers, (buffers[0], None)] if device.type == "cpu" else [buffers]
    with torch.no_grad():
        expected = _next_token_scores(
            model, ids, hidden_states, None, EncoderDecoderCache(DynamicCache(), DynamicCache())
        )
        for out in ways:
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            scores = _next_token_scores(model, ids, hidden_states, None, cache, out=out)
            assert scores.data_ptr() == buffers[0].data_ptr()
            torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-5)
