"""Experiment 2, Sec. 3.5 and Table 3 row E: sinusoidal, learned, or no position encodings.

The paper found learned positions nearly identical to sinusoids (Table 3 row E) and chose sinusoids because they
"may allow the model to extrapolate to sequence lengths longer than the ones encountered during training". Measured
here: exact-match accuracy on synthetic copy and reverse tasks trained on lengths 1..L and tested up to 2L (the
extrapolation), and validation loss and greedy BLEU on Multi30k.
"""

from collections.abc import Iterator
from pathlib import Path

import torch
from matplotlib import pyplot as plt

from vaswani_hf.configuration_vaswani import POSITION_ENCODINGS, VaswaniConfig
from vaswani_hf.files import write_json
from vaswani_hf.trainer import eq3_learning_rate

from .budget import Budget
from .loop import train_steps
from .measures import save_figure
from .multi30k import Multi30kTask, new_model

TASKS = ("copy", "reverse")
FIRST_SYMBOL = 4  # after <pad>, <s>, </s>, <unk>
SYNTHETIC_PEAK_LR = 3e-3


def sequence_batch(sources: list[torch.Tensor], task: str) -> dict[str, torch.Tensor]:
    """Sources (each followed by </s>) and their copies or reversals as labels, right-padded (labels with -100)."""
    longest = max(len(s) for s in sources) + 1
    input_ids = torch.zeros(len(sources), longest, dtype=torch.long)
    labels = torch.full_like(input_ids, -100)
    for row, tokens in enumerate(sources):
        target = tokens if task == "copy" else tokens.flip(0)
        input_ids[row, : len(tokens)] = tokens
        labels[row, : len(tokens)] = target
        input_ids[row, len(tokens)] = labels[row, len(tokens)] = 2
    return {"input_ids": input_ids, "attention_mask": input_ids.ne(0).long(), "labels": labels}


def synthetic_batches(budget: Budget, task: str, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless training batches of random symbol strings of lengths 1..`budget.synthetic_length`."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        lengths = torch.randint(1, budget.synthetic_length + 1, (budget.synthetic_batch,), generator=generator)
        yield sequence_batch(
            [
                torch.randint(FIRST_SYMBOL, FIRST_SYMBOL + budget.synthetic_symbols, (int(n),), generator=generator)
                for n in lengths
            ],
            task,
        )


@torch.no_grad()
def exact_match_by_length(model, budget: Budget, task: str, seed: int) -> dict[int, float]:
    """Share of test strings of each length 1..2L whose greedy output is exactly the copy / reversal."""
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    accuracy = {}
    for length in range(1, 2 * budget.synthetic_length + 1):
        batch = sequence_batch(
            [
                torch.randint(FIRST_SYMBOL, FIRST_SYMBOL + budget.synthetic_symbols, (length,), generator=generator)
                for _ in range(budget.synthetic_test)
            ],
            task,
        )
        generated = model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            num_beams=1,
            max_new_tokens=length + 1,
            min_new_tokens=length,  # no </s> before the last symbol: outputs line up with the labels
        )
        accuracy[length] = generated[:, 1:].eq(batch["labels"]).all(-1).float().mean().item()
    return accuracy


def _synthetic_model(budget: Budget, encoding: str):
    config = VaswaniConfig.from_preset(
        "small",
        **{
            **budget.synthetic_model,
            "vocab_size": FIRST_SYMBOL + budget.synthetic_symbols,
            "position_encoding": encoding,
            # the learned table covers the test lengths (source or target + </s> + start token); rows beyond L are
            # never trained, which is the point of the extrapolation test
            "max_position_embeddings": 2 * budget.synthetic_length + 2,
        },
    )
    return new_model(config, budget.seed)


def run_positions(budget: Budget, output_dir: str | Path, task: Multi30kTask) -> dict:
    """Writes `positions.json` and `positions.png`; returns the JSON's content."""
    output_dir = Path(output_dir)
    length = budget.synthetic_length
    warmup = max(1, budget.synthetic_steps // 10)
    synthetic: dict[str, dict[str, dict]] = {}
    for name in TASKS:
        synthetic[name] = {}
        for encoding in POSITION_ENCODINGS:
            model = _synthetic_model(budget, encoding)
            lr_scale = SYNTHETIC_PEAK_LR / eq3_learning_rate(warmup, model.config.d_model, warmup)
            losses = train_steps(
                model, synthetic_batches(budget, name, budget.seed), budget.synthetic_steps, warmup, lr_scale
            )
            by_length = exact_match_by_length(model, budget, name, budget.seed + 1)
            synthetic[name][encoding] = {
                "final_train_loss": losses[-1],
                "accuracy_by_length": by_length,
                "accuracy_up_to_L": sum(by_length[n] for n in range(1, length + 1)) / length,
                "accuracy_L_to_2L": sum(by_length[n] for n in range(length + 1, 2 * length + 1)) / length,
            }
    runs = {encoding: task.trained(position_encoding=encoding) for encoding in POSITION_ENCODINGS}
    multi30k = {
        encoding: {
            "validation_loss": run.validation_losses[-1][1],
            "bleu": run.bleu,
            "train_seconds": run.train_seconds,
        }
        for encoding, run in runs.items()
    }

    rows = [
        f"| encoding | copy, length <= {length} | copy, {length + 1}-{2 * length} | reverse, <= {length} | "
        f"reverse, {length + 1}-{2 * length} | Multi30k validation loss | Multi30k greedy BLEU |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for encoding in POSITION_ENCODINGS:
        copy, reverse = synthetic["copy"][encoding], synthetic["reverse"][encoding]
        rows.append(
            f"| {encoding} | {copy['accuracy_up_to_L']:.1%} | {copy['accuracy_L_to_2L']:.1%} | "
            f"{reverse['accuracy_up_to_L']:.1%} | {reverse['accuracy_L_to_2L']:.1%} | "
            f"{multi30k[encoding]['validation_loss']:.3f} | {multi30k[encoding]['bleu']:.2f} |"
        )
    findings = [
        f"Synthetic tasks: {budget.synthetic_symbols} symbols, trained {budget.synthetic_steps} steps of "
        f"{budget.synthetic_batch} strings of length 1-{length}; exact match of greedy outputs, "
        f"{budget.synthetic_test} test strings per length.",
        f"Multi30k: {budget.train_steps} steps per model; validation loss sinusoidal "
        f"{multi30k['sinusoidal']['validation_loss']:.3f}, learned {multi30k['learned']['validation_loss']:.3f}, "
        f"none {multi30k['none']['validation_loss']:.3f}.",
    ]
    disagreements = []
    loss_gap = abs(multi30k["sinusoidal"]["validation_loss"] - multi30k["learned"]["validation_loss"])
    bleu_gap = abs(multi30k["sinusoidal"]["bleu"] - multi30k["learned"]["bleu"])
    if loss_gap > 0.1 or bleu_gap > 1.0:
        disagreements.append(
            f"On Multi30k, sinusoidal and learned positions differ by {loss_gap:.3f} in validation loss and "
            f"{bleu_gap:.2f} BLEU; the paper finds them nearly identical (perplexity 4.92 both, BLEU 25.8 vs 25.7 "
            "on newstest2013, Table 3 row E)."
        )
    if multi30k["sinusoidal"]["validation_loss"] > multi30k["learned"]["validation_loss"]:
        disagreements.append(
            "Sinusoids trained slower than learned positions on Multi30k here. A likely cause at this budget: the "
            "learned table starts small (N(0, d_model^-0.5), like the embeddings before their sqrt(d_model) factor), "
            "so the learned model begins close to the one without positions, while sinusoids add unit-scale "
            "signals to the unit-scale embeddings from the first step; the paper compares fully trained models."
        )
    extrapolates = {
        name: synthetic[name]["sinusoidal"]["accuracy_L_to_2L"] > synthetic[name]["learned"]["accuracy_L_to_2L"]
        for name in TASKS
    }
    for name, better in extrapolates.items():
        if not better:
            disagreements.append(
                f"On {name}, sinusoids did not extrapolate better than learned positions to lengths "
                f"{length + 1}-{2 * length}: the paper's hope (Sec. 3.5) is not borne out here."
            )
    if synthetic["reverse"]["none"]["accuracy_up_to_L"] >= synthetic["reverse"]["sinusoidal"]["accuracy_up_to_L"]:
        disagreements.append("Without positions the model reversed as well as with sinusoids: unexpected.")

    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for column, name in enumerate(TASKS):
        for encoding in POSITION_ENCODINGS:
            by_length = synthetic[name][encoding]["accuracy_by_length"]
            axes[column].plot(list(by_length), list(by_length.values()), marker="o", label=encoding)
        axes[column].axvline(length + 0.5, color="gray", linestyle=":", label="longest trained")
        axes[column].set(title=f"{name}: exact match by length", xlabel="source length", ylabel="accuracy")
        axes[column].legend()
    axes[2].bar(list(multi30k), [multi30k[e]["validation_loss"] for e in POSITION_ENCODINGS], color="tab:purple")
    axes[2].set(title=f"Multi30k validation loss ({budget.train_steps} steps)", ylabel="cross-entropy per token")
    save_figure(figure, output_dir / "positions.png")

    result = {
        "title": "Position encodings (Sec. 3.5, Table 3 row E)",
        "paper": "Learned positional embeddings give nearly identical results to sinusoids (Table 3 row E); "
        "sinusoids were chosen in the hope of extrapolating to longer sequences.",
        "findings": findings,
        "table": "\n".join(rows),
        "disagreements": disagreements,
        "figures": ["positions.png"],
        "synthetic": synthetic,
        "multi30k": multi30k,
    }
    write_json(output_dir / "positions.json", result)
    return result
