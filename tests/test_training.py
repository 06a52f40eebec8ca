"""VaswaniTrainer: Seq2SeqTrainer fed with token-based batches."""

import torch
from conftest import tiny_model
from datasets import Dataset
from transformers import Seq2SeqTrainingArguments

from vaswani_hf.training import VaswaniTrainer


def test_trainer_batches_by_tokens(tmp_path):
    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(200):
        n = int(torch.randint(2, 20, (1,), generator=generator))
        ids = torch.randint(4, 97, (n,), generator=generator).tolist() + [2]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids[::-1][1:] + [2]})
    for row in rows:
        row["source_length"], row["target_length"] = len(row["input_ids"]), len(row["labels"])
    dataset = Dataset.from_list(rows)
    model = tiny_model()
    seen = []  # padded source + target tokens of each batch the model receives
    model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].numel() + kwargs["labels"].numel()),
        with_kwargs=True,
    )
    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_strategy="no",
        seed=1,
    )
    trainer = VaswaniTrainer(model=model, args=args, train_dataset=dataset, data_collator=_pad, max_tokens=256)
    trainer.train()
    assert seen and max(seen) <= 256
    assert len(seen) == len(trainer.get_train_dataloader())


def _pad(features: list[dict]) -> dict:
    def stack(key, value):
        longest = max(len(f[key]) for f in features)
        return torch.tensor([f[key] + [value] * (longest - len(f[key])) for f in features])

    return {
        "input_ids": stack("input_ids", 0),
        "attention_mask": stack("attention_mask", 0),
        "labels": stack("labels", -100),
    }
