"""Multi30k En-De prepared once per run of the experiments, and the models trained on it, kept for reuse."""

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import DataCollatorForSeq2Seq

from vaswani_hf.configuration_vaswani import VaswaniConfig
from vaswani_hf.data import MULTI30K_SPLITS, TokenBatchSampler, load_parallel_corpus, preprocess
from vaswani_hf.evaluation import evaluate_translation
from vaswani_hf.modeling_vaswani import VaswaniForConditionalGeneration
from vaswani_hf.tokenization import train_tokenizer

from .budget import Budget
from .loop import smoothed_loss, train_steps

MODEL_COLUMNS = ["input_ids", "attention_mask", "labels"]


def new_model(config: VaswaniConfig, seed: int) -> VaswaniForConditionalGeneration:
    """A freshly initialised model from `seed`, with eager attention: the implementation that returns the weights of
    Eq. 1 (`output_attentions`) and exposes the additive mask to hooks."""
    torch.manual_seed(seed)
    model = VaswaniForConditionalGeneration(config)
    model.set_attn_implementation("eager")
    return model


@dataclass
class TrainedRun:
    """A model trained on Multi30k with the budget's steps, and what was measured along the way."""

    model: VaswaniForConditionalGeneration
    train_losses: list[float]
    validation_losses: list[list[float]]  # [step, loss] pairs, step 0 is the initialisation
    bleu: float  # greedy decoding on the budget's test sentences
    train_seconds: float


class Multi30kTask:
    """Multi30k En-De (`../shared/data/multi30k`) with one BPE vocabulary for both languages, learned and applied
    once; the validation and test splits are cut to `budget.eval_pairs` sentences. `trained(**overrides)` trains a
    model once per set of config overrides, so experiments asking for the same model share one training."""

    def __init__(self, data_dir: str | os.PathLike, budget: Budget):
        self.budget = budget
        corpus = load_parallel_corpus(data_dir, "en", "de", splits=MULTI30K_SPLITS)
        if budget.train_pairs is not None:
            corpus["train"] = corpus["train"].select(range(min(budget.train_pairs, len(corpus["train"]))))
        for split in ("validation", "test"):
            corpus[split] = corpus[split].select(range(min(budget.eval_pairs, len(corpus[split]))))
        self.tokenizer = train_tokenizer(
            (text for pair in corpus["train"]["translation"] for text in pair.values()), vocab_size=budget.vocab_size
        )
        self.data = preprocess(corpus, self.tokenizer, "en", "de")
        self.collator = DataCollatorForSeq2Seq(self.tokenizer, label_pad_token_id=-100, return_tensors="pt")
        self._columns = {split: self.data[split].select_columns(MODEL_COLUMNS).to_dict() for split in self.data}
        self._runs: dict[str, TrainedRun] = {}

    def collate(self, split: str, indices: list[int]) -> dict[str, torch.Tensor]:
        columns = self._columns[split]
        return dict(self.collator([{name: columns[name][i] for name in MODEL_COLUMNS} for i in indices]))

    def batches(self, seed: int) -> Iterator[dict[str, torch.Tensor]]:
        """Training batches of at most `budget.max_tokens` padded tokens (Sec. 5.1), epoch after epoch."""
        sampler = TokenBatchSampler(
            self.data["train"]["source_length"], self.data["train"]["target_length"], self.budget.max_tokens, seed=seed
        )
        epoch = 0
        while True:
            sampler.set_epoch(epoch)
            for indices in sampler:
                yield self.collate("train", indices)
            epoch += 1

    def probe_batch(self, size: int = 32) -> dict[str, torch.Tensor]:
        """The first validation sentences, as one batch: where attention is looked at."""
        return self.collate("validation", list(range(min(size, len(self.data["validation"])))))

    def config(self, **overrides) -> VaswaniConfig:
        """The small preset with the budget's model and this vocabulary, then `overrides`."""
        return VaswaniConfig.from_preset(
            "small", **{"vocab_size": len(self.tokenizer), **self.budget.model, **overrides}
        )

    @torch.no_grad()
    def validation_loss(self, model: VaswaniForConditionalGeneration) -> float:
        """Cross-entropy per target token on the validation sentences, without label smoothing."""
        model.eval()
        split = self.data["validation"]
        sampler = TokenBatchSampler(
            split["source_length"], split["target_length"], self.budget.max_tokens, shuffle=False
        )
        total, tokens = 0.0, 0
        for indices in sampler:
            batch = self.collate("validation", indices)
            count = int(batch["labels"].ne(-100).sum())
            total += smoothed_loss(model, batch, label_smoothing=0.0).item() * count
            tokens += count
        return total / tokens

    def test_bleu(self, model: VaswaniForConditionalGeneration) -> float:
        """sacreBLEU of greedy translations of the budget's test sentences (greedy, not the paper's beam 4: faster,
        and the comparisons between models are what matters here)."""
        pairs = self.data["test"]["translation"]
        sources, references = [pair["en"] for pair in pairs], [pair["de"] for pair in pairs]
        result, _ = evaluate_translation(model, self.tokenizer, sources, references, num_beams=1, batch_size=100)
        return result["score"]

    def trained(self, **overrides) -> TrainedRun:
        """The model of `config(**overrides)` trained for `budget.train_steps` from the budget's seed; trained once."""
        key = self.config(**overrides).to_json_string()  # the same model asked for in other words is the same run
        if key not in self._runs:
            self._runs[key] = self._train(overrides)
        return self._runs[key]

    def _train(self, overrides: dict) -> TrainedRun:
        budget = self.budget
        model = new_model(self.config(**overrides), budget.seed)
        eval_steps = {round(budget.train_steps * (i + 1) / budget.eval_points) for i in range(budget.eval_points)}
        validation = [[0, self.validation_loss(model)]]
        evaluation_seconds = 0.0

        def evaluate(step: int, model: VaswaniForConditionalGeneration) -> None:
            nonlocal evaluation_seconds
            if step in eval_steps:
                started = time.perf_counter()
                validation.append([step, self.validation_loss(model)])
                evaluation_seconds += time.perf_counter() - started

        started = time.perf_counter()
        losses = train_steps(
            model,
            self.batches(budget.seed),
            budget.train_steps,
            budget.warmup_steps,
            budget.lr_scale,
            on_step_end=evaluate,
        )
        seconds = time.perf_counter() - started - evaluation_seconds
        return TrainedRun(model, losses, validation, self.test_bleu(model), seconds)
