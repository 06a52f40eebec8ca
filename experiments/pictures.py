"""Experiment 6, the paper's Figures 3-5: what the heads of a trained model attend to.

For one test sentence translated greedily by the budget's Multi30k model, heat maps of the encoder self-attention,
the decoder self-attention and the cross-attention, one panel per layer and head, read from `output_attentions`.
"""

from pathlib import Path

import torch
from matplotlib import pyplot as plt

from vaswani_hf.files import write_json

from .budget import Budget
from .measures import ATTENTION_KINDS, attention_entropy, attention_weights, save_figure
from .multi30k import Multi30kTask

MAX_SOURCE_TOKENS = 14  # a sentence whose tokens fit as readable tick labels
EXTRA_OUTPUT_TOKENS = 6  # an output at most this much longer than its source, for the same reason


def _labels(tokenizer, ids: list[int]) -> list[str]:
    # each token decoded alone: readable text rather than byte-level symbols (a character split over two tokens
    # shows as a replacement mark)
    return [tokenizer.decode([token]).strip() or "_" for token in ids]


def run_pictures(budget: Budget, output_dir: str | Path, task: Multi30kTask) -> dict:
    """Writes `pictures.json` and `pictures_{encoder,decoder,cross}.png`; returns the JSON's content. The output is
    greedy, cut at the source length + `EXTRA_OUTPUT_TOKENS` tokens."""
    output_dir = Path(output_dir)
    model = task.trained().model.eval()
    test = task.data["test"]
    index = next((i for i, n in enumerate(test["source_length"]) if n <= MAX_SOURCE_TOKENS), 0)
    source = test[index]["input_ids"]
    input_ids = torch.tensor([source])
    generated = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        num_beams=1,
        max_new_tokens=len(source) + EXTRA_OUTPUT_TOKENS,
    )
    output = generated[0, 1:].tolist()  # without the start token, ending in </s>
    weights = attention_weights(
        model, {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": torch.tensor([output])}
    )
    source_labels = _labels(task.tokenizer, source)
    decoder_labels = _labels(task.tokenizer, [model.config.decoder_start_token_id] + output[:-1])
    axes_labels = {
        "encoder": (source_labels, source_labels),
        "decoder": (decoder_labels, decoder_labels),
        "cross": (decoder_labels, source_labels),
    }
    figures, entropies = [], {}
    for kind in ATTENTION_KINDS:
        layers = weights[kind]
        heads = layers[0].shape[1]
        entropies[kind] = [
            attention_entropy(layer, torch.ones(layer.shape[:1] + layer.shape[2:3])).tolist() for layer in layers
        ]
        figure, axes = plt.subplots(
            len(layers), heads, figsize=(3.2 * heads, 3.4 * len(layers)), squeeze=False, layout="constrained"
        )
        rows, columns = axes_labels[kind]
        for layer, layer_weights in enumerate(layers):
            for head in range(heads):
                axis = axes[layer][head]
                axis.imshow(layer_weights[0, head].numpy(), cmap="Blues", vmin=0, vmax=1, aspect="auto")
                axis.set_title(f"layer {layer + 1} head {head + 1}", fontsize=8)
                axis.set_xticks(range(len(columns)), columns, rotation=90, fontsize=6)
                axis.set_yticks(range(len(rows)), rows, fontsize=6)
        figure.suptitle(f"{kind} attention (rows: queries, columns: keys)")
        name = f"pictures_{kind}.png"
        save_figure(figure, output_dir / name)
        figures.append(name)

    translation = task.tokenizer.decode(output, skip_special_tokens=True)
    last_cross = weights["cross"][-1][0].mean(0)  # (target, source), averaged over heads
    alignment = [
        [target, source_labels[int(column)]]
        for target, column in zip(_labels(task.tokenizer, output), last_cross.argmax(-1), strict=True)
    ]
    pair = test[index]["translation"]
    result = {
        "title": "What the heads attend to (Figures 3-5)",
        "paper": "Heads learn distinct behaviours: long-distance dependencies, anaphora resolution, heads "
        "related to sentence structure (Figures 3-5, layer 5 of 6 of a trained base model).",
        "findings": [
            f'Test sentence {index}: "{pair["en"]}" -> greedy, cut at {EXTRA_OUTPUT_TOKENS} tokens more than the '
            f'source: "{translation}" (reference "{pair["de"]}").',
            "Most-attended source token of each output token, last decoder layer, mean over heads: "
            + ", ".join(f"{t}->{s}" for t, s in alignment)
            + ".",
        ],
        "disagreements": [],
        "figures": figures,
        "test_index": index,
        "source": pair["en"],
        "reference": pair["de"],
        "translation": translation,
        "entropy": entropies,
        "alignment": alignment,
    }
    write_json(output_dir / "pictures.json", result)
    return result
