"""Speed on one device (a GPU, or the CPU in the dry run): ours against MarianMTModel holding the same weights, and
what the choices made for CPUs cost there. Used by benchmarks/gpu_check.py.

The CPU benchmark (scripts/benchmark.py speed) measures resident memory from /proc and times without device
synchronisation; here every timed run ends with `torch.cuda.synchronize`, and peak memory is the CUDA allocator's."""

import statistics
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from unittest import mock

import torch
from transformers import GenerationConfig
from transformers.trainer_pt_utils import LabelSmoother

import vaswani_hf.modeling_vaswani as modeling
from vaswani_hf import VaswaniConfig, VaswaniForConditionalGeneration, convert_to_marian
from vaswani_hf.callbacks import NonFiniteGradientGuard


@dataclass
class Sizes:
    """What is measured: the paper's base model and batch on a GPU (`gpu()`), a toy on the CPU (`dry()`)."""

    config: VaswaniConfig
    train_batch: int  # sentences per training step, each `length` source and `length` target tokens
    length: int
    generation_batches: tuple[int, ...]
    new_tokens: int
    repeats: int

    @classmethod
    def gpu(cls) -> "Sizes":
        # base preset with the 37k En-De vocabulary; 784 x 32 = 25,088 target (and as many source) tokens (Sec. 5.1)
        return cls(VaswaniConfig.from_preset("base", vocab_size=37000), 784, 32, (32, 128), 30, 10)

    @classmethod
    def dry(cls) -> "Sizes":
        toy = dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=64, decoder_ffn_dim=64)
        config = VaswaniConfig.from_preset(
            "small", vocab_size=101, encoder_attention_heads=2, decoder_attention_heads=2, **toy
        )
        return cls(config, 4, 8, (2, 3), 4, 2)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(run: Callable[[], object], device: torch.device) -> float | None:
    """Peak CUDA memory allocated during one call of `run` above what was held before (None on a CPU)."""
    if device.type != "cuda":
        run()
        return None
    synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run()
    synchronize(device)
    return round((torch.cuda.max_memory_allocated(device) - before) / 2**20, 1)


def alternating(runs: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, dict]:
    """Each callable timed `repeats` times, alternating and reversing the order every other round, each run ended by a
    device synchronisation; after two warm-up runs (kernel selection, allocator growth) and one for peak memory."""
    for run in runs.values():
        run()
        run()
    memory = {name: peak_memory_mb(run, device) for name, run in runs.items()}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else names[::-1]:
            synchronize(device)
            started = time.perf_counter()
            runs[name]()
            synchronize(device)
            seconds[name].append(time.perf_counter() - started)
    return {
        name: {"median_seconds": statistics.median(seconds[name]), "seconds": seconds[name], "peak_mb": memory[name]}
        for name in names
    }


def ratio(timings: dict[str, dict], slower: str, faster: str) -> float:
    """How many times faster `faster` ran than `slower`: the median of the per-round ratios."""
    pairs = zip(timings[slower]["seconds"], timings[faster]["seconds"], strict=True)
    return round(statistics.median(a / b for a, b in pairs), 3)


def side_by_side(timings: dict[str, dict], tokens: int) -> dict:
    """Each model's tokens per second, median seconds and peak memory, and ours' speed ratio to Marian's."""
    rows = {
        name: {
            "target_tokens_per_second": round(tokens / timing["median_seconds"]),
            "median_seconds": round(timing["median_seconds"], 4),
            "peak_memory_mb": timing["peak_mb"],
        }
        for name, timing in timings.items()
    }
    return {**rows, "ratio_ours_to_marian": ratio(timings, "marian", "ours")}


@contextmanager
def float32_matmul_precision(precision: str):
    """`highest` (float32) or `high` (TF32 on NVIDIA GPUs) for the matrix products inside, restored after."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def precision_context(precision: str, device: torch.device):
    """float32 (strict), tf32 (float32 weights, TF32 products) or bf16 (autocast)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return float32_matmul_precision("high" if precision == "tf32" else "highest")


def random_batch(config: VaswaniConfig, sentences: int, length: int, device: torch.device, seed: int = 0) -> dict:
    generator = torch.Generator(device=device).manual_seed(seed)
    ids = torch.randint(4, config.vocab_size, (2, sentences, length), generator=generator, device=device)
    start = torch.full((sentences, 1), config.decoder_start_token_id, device=device)
    return {
        "input_ids": ids[0],
        "attention_mask": torch.ones_like(ids[0]),
        "decoder_input_ids": torch.cat([start, ids[1, :, :-1]], 1),
        "labels": ids[1],
    }


def same_weights(config: VaswaniConfig, device: torch.device) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    ours = VaswaniForConditionalGeneration(config)
    return {"ours": ours.to(device), "marian": convert_to_marian(ours).to(device)}


def training_steps(sizes: Sizes, precision: str, device: torch.device) -> dict[str, Callable[[], None]]:
    """One training step each (forward, loss with label smoothing 0.1 as Seq2SeqTrainer computes it for each model:
    ours fused in the model, Marian's by LabelSmoother from its logits; backward; fused AdamW)."""
    models = same_weights(sizes.config, device)
    batch = random_batch(sizes.config, sizes.train_batch, sizes.length, device)
    unlabelled = {key: value for key, value in batch.items() if key != "labels"}
    smoother = LabelSmoother(epsilon=0.1)
    losses = {
        "ours": lambda: models["ours"](**batch, label_smoothing=0.1).loss,
        "marian": lambda: smoother(models["marian"](**unlabelled), batch["labels"]),
    }
    optimizers = {
        name: torch.optim.AdamW(model.train().parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9, fused=True)
        for name, model in models.items()
    }

    def step(name: str) -> Callable[[], None]:
        def run() -> None:
            with precision_context(precision, device):
                loss = losses[name]()
            loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)

        return run

    return {name: step(name) for name in models}


def training_speed(sizes: Sizes, precisions: list[str], device: torch.device) -> dict:
    results = {}
    tokens = sizes.train_batch * sizes.length
    for precision in precisions:
        timings = alternating(training_steps(sizes, precision, device), sizes.repeats, device)
        results[precision] = side_by_side(timings, tokens)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"target_tokens_per_step": tokens, **results}


def generation_speed(sizes: Sizes, dtypes: list[torch.dtype], device: torch.device) -> dict:
    """`generate` of both on the same random sources (`sizes.length` tokens), exactly `sizes.new_tokens` new tokens
    each (end of sentence suppressed until then), greedy and beam 4 (length penalty 0.6)."""
    results = {}
    base = same_weights(sizes.config, device)
    for dtype in dtypes:
        models = {name: model.to(dtype).eval() for name, model in base.items()}
        for batch_size in sizes.generation_batches:
            batch = random_batch(sizes.config, batch_size, sizes.length, device, seed=batch_size)
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            for num_beams, search in ((1, "greedy"), (4, "beam4")):
                generation = GenerationConfig(
                    num_beams=num_beams,
                    do_sample=False,
                    min_new_tokens=sizes.new_tokens,
                    max_new_tokens=sizes.new_tokens,
                    decoder_start_token_id=sizes.config.decoder_start_token_id,
                    pad_token_id=sizes.config.pad_token_id,
                    eos_token_id=sizes.config.eos_token_id,
                    **({"length_penalty": 0.6, "early_stopping": True} if num_beams > 1 else {}),
                )
                name = f"{str(dtype).removeprefix('torch.')}_batch{batch_size}_{search}"
                results[name] = generation_case(models, inputs, generation, sizes.repeats, device)
    return results


def host_synchronisations(run: Callable[[], object], device: torch.device) -> list[str] | None:
    """The operations of one call of `run` that waited for the device to read a value back (CUDA's sync debug
    mode warns at each), first line of each warning; None on a CPU, where nothing waits."""
    if device.type != "cuda":
        return None
    synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [str(w.message).splitlines()[0][:160] for w in caught if "synchroniz" in str(w.message)]


def generation_case(
    models: dict[str, torch.nn.Module], inputs: dict, generation: GenerationConfig, repeats: int, device: torch.device
) -> dict:
    outputs = {}

    def generate(name: str) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                outputs[name] = models[name].generate(**inputs, generation_config=generation)

        return run

    timings = alternating({name: generate(name) for name in models}, repeats, device)
    tokens = inputs["input_ids"].shape[0] * generation.max_new_tokens
    return {
        **side_by_side(timings, tokens),
        "same_tokens": torch.equal(outputs["ours"], outputs["marian"]),
    }


def projection_case(weight: torch.Tensor, rows: int, repeats: int, device: torch.device) -> dict:
    """20 products of `rows` hidden states with the output projection each way, into preallocated scores."""
    hidden = torch.randn(rows, weight.shape[1], device=device)
    scores, transposed = (
        torch.empty(rows, weight.shape[0], device=device),
        torch.empty(weight.shape[0], rows, device=device),
    )

    def weight_times_hidden_t() -> None:
        for _ in range(20):
            torch.mm(weight, hidden.t(), out=transposed)
            scores.copy_(transposed.t())

    def hidden_times_weight_t() -> None:
        for _ in range(20):
            torch.mm(hidden, weight.t(), out=scores)

    with float32_matmul_precision("highest"):
        timings = alternating({"transposed": weight_times_hidden_t, "plain": hidden_times_weight_t}, repeats, device)
    return {
        "microseconds_transposed_with_copy": round(timings["transposed"]["median_seconds"] / 20 * 1e6, 1),
        "microseconds_plain": round(timings["plain"]["median_seconds"] / 20 * 1e6, 1),
        "speed_of_plain_over_transposed": ratio(timings, "transposed", "plain"),
    }


def cpu_choice_costs(sizes: Sizes, device: torch.device) -> dict:
    """What three choices made on a CPU cost on this device:
    - the input checks' host reads (`check_token_inputs`: one per encoder and decoder forward) in a training step,
      against the same step with the checks switched off;
    - the output projection of the decoding loops as weight x hidden^T plus a transposing copy, against the plain
      hidden x weight^T (float32, the rows of each generation batch);
    - the gradient guard's check before each update (the norm of all gradients, read back to the host), against the
      training step it guards."""
    results = {}
    precision = "bf16" if device.type == "cuda" else "float32"
    steps = training_steps(sizes, precision, device)
    ours = steps["ours"]
    with mock.patch.object(modeling, "check_token_inputs", lambda *args, **kwargs: None):
        unchecked = alternating({"unchecked": ours}, sizes.repeats, device)["unchecked"]
    checked = alternating({"checked": ours}, sizes.repeats, device)["checked"]
    results[f"training_step_{precision}_input_checks"] = {
        "host_synchronisations_per_step": host_synchronisations(ours, device),
        "median_seconds_checked": round(checked["median_seconds"], 5),
        "median_seconds_unchecked": round(unchecked["median_seconds"], 5),
        "ratio_checked_to_unchecked": round(checked["median_seconds"] / unchecked["median_seconds"], 4),
    }

    weight = torch.randn(sizes.config.vocab_size, sizes.config.d_model, device=device)
    for rows in sizes.generation_batches + tuple(4 * b for b in sizes.generation_batches):  # greedy, beam 4
        results[f"output_projection_{rows}_rows"] = projection_case(weight, rows, sizes.repeats, device)

    model = next(iter(same_weights(sizes.config, device).values())).train()
    batch = random_batch(sizes.config, sizes.train_batch, sizes.length, device)
    model(**batch, label_smoothing=0.1).loss.backward()
    guard, state = NonFiniteGradientGuard(), SimpleNamespace(global_step=0)
    optimizer = SimpleNamespace()  # no GradScaler: the guard checks the gradients itself

    def check() -> None:
        guard.on_pre_optimizer_step(None, state, None, model=model, optimizer=optimizer)

    guarded = alternating({"guard": check}, sizes.repeats, device)["guard"]
    results["gradient_guard_per_update"] = {
        "milliseconds": round(guarded["median_seconds"] * 1e3, 3),
        f"share_of_a_{precision}_training_step": round(guarded["median_seconds"] / checked["median_seconds"], 4),
    }
    return results
