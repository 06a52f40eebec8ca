"""The paper's experiments at small scale (`experiments/`): each runs on a tiny budget, writes its JSON and
figure, and measures what it claims to measure."""

import contextlib
import json
import math
import os
import subprocess
import sys
from dataclasses import replace

import matplotlib.image
import pytest
import torch
from helpers import ROOT

from experiments import BUDGETS, EXPERIMENTS, Multi30kTask, render_report
from experiments.cost import fitted_slope, run_cost
from experiments.heads import HEADS, run_heads
from experiments.loop import train_steps
from experiments.masks import decoder_scores, run_masks, without_causal_mask
from experiments.multi30k import new_model
from experiments.pictures import run_pictures
from experiments.positions import TASKS, run_positions, sequence_batch
from experiments.report import RUN_FILE
from experiments.scaling import D_KS, run_scaling
from vaswani_hf import VaswaniConfig
from vaswani_hf.trainer import eq3_learning_rate

TINY = BUDGETS["tiny"]


@pytest.fixture(scope="module")
def task(multi30k_dir) -> Multi30kTask:
    return Multi30kTask(multi30k_dir, TINY)


def written(folder, name: str) -> dict:
    """The experiment's JSON, after checking that each figure it names is a real image."""
    result = json.loads((folder / f"{name}.json").read_text())
    assert result["figures"] and result["findings"]
    for figure in result["figures"]:
        image = matplotlib.image.imread(folder / figure)
        assert image.ndim == 3 and min(image.shape[:2]) > 100
    return result


def test_scaling_unscaled_attention_saturates_at_initialisation(task, tmp_path):
    run_scaling(TINY, tmp_path, task)
    result = written(tmp_path, "scaling")
    probes = {(p["d_k"], p["scaled"]): p for p in result["probes"]}
    for d_k in D_KS:
        scaled, unscaled = probes[(d_k, True)], probes[(d_k, False)]
        assert unscaled["entropy"][0][1] < scaled["entropy"][0][1] <= result["uniform_entropy"]
        assert len(scaled["query_gradient_norm"]) == 1 + TINY.probe_steps // TINY.probe_every
    # the larger d_k, the more saturated the unscaled softmax (dot products of variance d_k)
    initial = [probes[(d_k, False)]["entropy"][0][1] for d_k in D_KS]
    assert initial == sorted(initial, reverse=True)
    # Sec. 3.2.1: per unit of dot product, less gradient passes back through a saturated softmax
    assert (
        probes[(256, False)]["dot_product_gradient_norm"][0][1] < probes[(256, True)]["dot_product_gradient_norm"][0][1]
    )
    assert set(result["convergence"]) == {"scaled", "unscaled"}


def test_positions_tasks_and_extrapolation_lengths(task, tmp_path):
    batch = sequence_batch([torch.tensor([5, 6, 7]), torch.tensor([8])], "reverse")
    assert batch["labels"].tolist() == [[7, 6, 5, 2], [8, 2, -100, -100]]
    assert batch["input_ids"].tolist() == [[5, 6, 7, 2], [8, 2, 0, 0]]
    assert sequence_batch([torch.tensor([5, 6, 7])], "copy")["labels"].tolist() == [[5, 6, 7, 2]]

    run_positions(TINY, tmp_path, task)
    result = written(tmp_path, "positions")
    for name in TASKS:
        for encoding in ("sinusoidal", "learned", "none"):
            accuracy = result["synthetic"][name][encoding]["accuracy_by_length"]
            assert [int(n) for n in accuracy] == list(range(1, 2 * TINY.synthetic_length + 1))
            assert all(0.0 <= value <= 1.0 for value in accuracy.values())
    assert set(result["multi30k"]) == {"sinusoidal", "learned", "none"}


def test_heads_entropy_per_head(task, tmp_path):
    run_heads(TINY, tmp_path, task)
    result = written(tmp_path, "heads")
    assert [int(h) for h in result["heads"]] == list(HEADS)
    longest_source = task.probe_batch()["attention_mask"].sum(-1).max().item()
    for heads, measured in result["heads"].items():
        assert measured["d_k"] * int(heads) == result["d_model"]
        encoder = measured["entropy"]["encoder"]
        assert len(encoder) == task.config().encoder_layers and all(len(layer) == int(heads) for layer in encoder)
        assert all(0.0 <= value <= math.log(longest_source) + 1e-4 for layer in encoder for value in layer)


def test_causal_mask_hook_opens_the_future_and_is_removed(task):
    model = new_model(task.config(), 0).eval()
    batch = task.probe_batch(2)
    scores = decoder_scores(model, batch)
    future = torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1)
    assert (scores[..., future] == torch.finfo(scores.dtype).min).all()

    changed = batch["labels"].clone()
    changed[:, -2] = 5  # a late target token: with the mask, earlier positions cannot see it

    def logits(labels):
        return model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=model.prepare_decoder_input_ids_from_labels(labels),
        ).logits[:, :3]

    with torch.no_grad():
        assert torch.equal(logits(batch["labels"]), logits(changed))
        with without_causal_mask(model):
            assert not torch.allclose(logits(batch["labels"]), logits(changed))
            open_scores = decoder_scores(model, batch)
        assert torch.equal(logits(batch["labels"]), logits(changed))  # the hooks are gone
    first = batch["labels"][0].ne(-100).sum()  # the first sentence's real positions: nothing masked among them
    assert (open_scores[0, :, :first, :first] > torch.finfo(scores.dtype).min).all()


def test_masks_experiment_shows_the_masked_future(task, tmp_path):
    run_masks(TINY, tmp_path, task)
    result = written(tmp_path, "masks")
    assert result["future_scores_masked"] and result["past_scores_finite"]
    assert result["largest_future_weight"] == 0.0
    scores = result["scores_head_1"]
    assert all(value is None for row, cells in enumerate(scores) for value in cells[row + 1 :])
    assert len(result["train_losses"]["masked"]) == len(result["train_losses"]["unmasked"]) == TINY.train_steps
    assert set(result["bleu"]) == {"masked", "unmasked"}


def test_without_the_mask_the_decoder_predicts_unpredictable_tokens_by_reading_them():
    """Targets drawn independently of the source: a causal decoder cannot beat chance, log(20) nats; without the
    mask, position i reads token i + 1 from its own input and the training loss falls below it (the cheating that
    `run_masks` shows on Multi30k, where a quick run has the time for the shortcut to be learned)."""
    generator = torch.Generator().manual_seed(0)

    def batches():
        while True:
            yield {
                "input_ids": torch.randint(4, 24, (32, 8), generator=generator),
                "attention_mask": torch.ones(32, 8, dtype=torch.long),
                "labels": torch.randint(4, 24, (32, 8), generator=generator),
            }

    config = VaswaniConfig(
        vocab_size=24, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, dropout=0.0,
    )  # fmt: skip
    final = {}
    for masked in (True, False):
        model = new_model(config, 0)
        with contextlib.nullcontext() if masked else without_causal_mask(model):
            losses = train_steps(model, batches(), 300, 10, 3e-3 / eq3_learning_rate(10, 32, 10))  # peak 3e-3
        final[masked] = sum(losses[-20:]) / 20
    assert final[True] > math.log(20) - 0.05
    assert final[False] < math.log(20) - 0.3


def test_cost_attention_memory_grows_faster_than_lstm(tmp_path):
    budget = replace(TINY, cost_lengths=(128, 256, 512, 1024))
    run_cost(budget, tmp_path)
    result = written(tmp_path, "cost")
    slopes = result["slopes"]
    assert slopes["self-attention (eager)"]["memory"] > 1.5
    assert slopes["self-attention (eager)"]["memory"] > slopes["LSTM"]["memory"] + 0.5
    for measured in result["measured"].values():
        assert len(measured["seconds"]) == 4 and all(seconds > 0 for seconds in measured["seconds"])
    assert fitted_slope([1, 2, 4, 8], [3, 12, 48, 192]) == pytest.approx(2.0)
    assert fitted_slope([1, 2, 4, 8], [9, 9, 4, 8], from_length=4) == pytest.approx(1.0)
    assert fitted_slope([1, 2, 4, 8], [0, 0, 0, 5]) is None  # one positive point cannot give a slope


def test_pictures_one_panel_per_layer_and_head(task, tmp_path):
    run_pictures(TINY, tmp_path, task)
    result = written(tmp_path, "pictures")
    assert result["figures"] == ["pictures_encoder.png", "pictures_decoder.png", "pictures_cross.png"]
    config = task.config()
    for kind in ("encoder", "decoder", "cross"):
        assert len(result["entropy"][kind]) == config.encoder_layers
        assert all(len(layer) == config.encoder_attention_heads for layer in result["entropy"][kind])
    assert result["source"] == task.data["test"][result["test_index"]]["translation"]["en"]


def test_run_all_script_writes_the_report_with_every_figure(tmp_path):
    output = tmp_path / "report"
    command = [sys.executable, "scripts/experiments/run_all.py", "--budget", "tiny", "--only", "cost"]
    finished = subprocess.run(
        [*command, "--output_dir", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = (output / "report.md").read_text()
    run = json.loads((output / RUN_FILE).read_text())
    assert run["budget"] == "tiny" and set(run["seconds"]) == {"cost"}
    assert run["command"] in report and "--only cost" in run["command"]
    for figure in output.glob("*.png"):
        assert f"]({figure.name})" in report
    # another experiment's JSON in the folder is rendered too, in the order of EXPERIMENTS
    (output / "masks.json").write_text(
        json.dumps({"title": "Masks", "paper": "p", "findings": ["f"], "disagreements": ["d"], "figures": ["m.png"]})
    )
    text = render_report(output, tuple(EXPERIMENTS)).read_text()
    assert text.index("## Masks") < text.index("## Cost") and "](m.png)" in text and "- d" in text
