"""Training through `Seq2SeqTrainer` with the paper's recipe (Sec. 5)."""

from torch.utils.data import DataLoader
from transformers import Seq2SeqTrainer

from .data import TokenBatchSampler


class VaswaniTrainer(Seq2SeqTrainer):
    """`Seq2SeqTrainer` whose training batches hold at most `max_tokens` padded source + target tokens (Sec. 5.1),
    built by `TokenBatchSampler` from the dataset's `source_length` / `target_length` columns. With
    `max_tokens=None` it batches by `per_device_train_batch_size` sentences, as `Seq2SeqTrainer` does."""

    def __init__(self, *args, max_tokens: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_tokens = max_tokens

    def get_train_dataloader(self) -> DataLoader:
        if self.max_tokens is None:
            return super().get_train_dataloader()
        if self.train_dataset is None:
            raise ValueError("VaswaniTrainer: training requires a train_dataset")
        missing = {"source_length", "target_length"} - set(self.train_dataset.column_names)
        if missing:
            raise ValueError(f"token batching needs the columns {sorted(missing)}: build the data with data.preprocess")
        sampler = TokenBatchSampler(
            self.train_dataset["source_length"],
            self.train_dataset["target_length"],
            max_tokens=self.max_tokens,
            seed=self.args.seed,
            num_replicas=self.args.world_size,
        )
        dataset = self._remove_unused_columns(self.train_dataset, description="training")
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        # accelerate wraps the batch sampler in a BatchSamplerShard: process r takes batches r, r + n, ...
        return self.accelerator.prepare(loader)
