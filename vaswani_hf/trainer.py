"""`VaswaniTrainer`: `Seq2SeqTrainer` with the paper's token batches (Sec. 5.1), the learning rate of Eq. 3 (Sec. 5.3),
the fused label-smoothed loss (Sec. 5.4) and checkpoints marked complete."""

import copy
from pathlib import Path

import torch
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader
from transformers import Seq2SeqTrainer
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_pt_utils import LabelSmoother
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .callbacks import EarlyStopping, NonFiniteGradientGuard, TrainingMinutesProgress, TrainingTimeBudget
from .checkpoints import (
    COMPLETE_MARKER,
    checkpoint_record,
    checkpoint_scores,
    checkpoints_to_keep,
    complete_checkpoints,
    delete_old_checkpoints,
    logged_metric,
)
from .data import TokenBatchSampler
from .files import write_json
from .modeling_vaswani import VaswaniForConditionalGeneration


def eq3_learning_rate(step: int, d_model: int, warmup_steps: int, scale: float = 1.0) -> float:
    """Eq. 3: lrate = d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5), times `scale`; `step` counts from 1."""
    return scale * d_model**-0.5 * min(step**-0.5, step * warmup_steps**-1.5)


class VaswaniTrainer(Seq2SeqTrainer):
    """`Seq2SeqTrainer` with the paper's batching and learning rate, and checkpoints marked complete.

    - Training batches hold at most `args.max_tokens` padded source + target tokens (Sec. 5.1), built by
      `TokenBatchSampler` from the dataset's `source_length` / `target_length` columns; accelerate gives each
      process its share. With `max_tokens` 0 or None it batches `per_device_train_batch_size` sentences.
    - With `args.lr_schedule == "eq3"` the learning rate follows Eq. 3 exactly (peak at `warmup_steps`).
    - Each checkpoint gets a marker written atomically after everything else, recording each file the save wrote
      (`checkpoint_record`); `last_complete_checkpoint` skips checkpoints without it or whose files no longer match.
    - On resume, a `TrainingTimeBudget` keeps the budget and marks given to this trainer (the recipe's) and takes
      the training time and marks passed from the checkpoint.
    - A NaN or inf gradient stops training or skips the update (`args.nonfinite_gradients`), never reaching the
      weights; under fp16 GradScaler skips such updates, and training stops after
      `args.max_consecutive_fp16_skips` of them in a row.
    - After each save, complete checkpoints but those `checkpoints_to_keep` names are deleted: by
      `args.average_checkpoints`, the newest `args.save_total_limit` and the best ('last'), or the best ones by the
      validation metric each checkpoint's trainer state records and the newest ('best', 'around_best')
      (`delete_old_checkpoints`, in place of the Trainer's rotation); folders of other names are never touched.
    - With `args.early_stopping_patience`, training stops after that many evaluations without improvement
      (`EarlyStopping`); on resume its count goes on from the checkpoint's.
    - With a `TrainingTimeBudget` of some minutes among the callbacks, the progress bar counts training minutes.
    - In training our model computes the label-smoothed loss itself (`label_smoothing=`), fused with its output
      projection, instead of the Trainer's `LabelSmoother` reading the stored logits; evaluation, and other models
      (a MarianMTModel, say), keep the latter.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.label_names is None:
            # The Trainer takes every forward() argument named like a label for one: ours' `label_smoothing` is not,
            # and with it counted no batch would seem to have labels (evaluation without generate: no eval_loss).
            self.label_names = [name for name in self.label_names if name != "label_smoothing"]
        self.checkpoints_kept = self.args.save_total_limit
        self.model_smooths_labels = self.logits_smoother is not None and isinstance(
            self.accelerator.unwrap_model(self.model), VaswaniForConditionalGeneration
        )
        self.add_callback(
            NonFiniteGradientGuard(
                getattr(self.args, "nonfinite_gradients", "stop"), getattr(self.args, "max_consecutive_fp16_skips", 30)
            )
        )
        if getattr(self.args, "early_stopping_patience", None) is not None:
            self.add_callback(EarlyStopping(self.args.early_stopping_patience))
        callbacks = self.callback_handler.callbacks
        timed = any(isinstance(c, TrainingTimeBudget) and c.budget_minutes is not None for c in callbacks)
        if timed and any(type(c) is ProgressCallback for c in callbacks):
            self.remove_callback(ProgressCallback)
            self.add_callback(TrainingMinutesProgress(self.callback_handler))
        self.max_tokens = getattr(self.args, "max_tokens", None)
        if getattr(self.args, "lr_schedule", "hf") == "eq3":
            d_model = self.model.config.d_model
            warmup = int(self.args.warmup_steps)
            if warmup < 1:
                raise ValueError(f"the Eq. 3 schedule needs warmup_steps >= 1, got {self.args.warmup_steps}")
            # The optimizer's base learning rate is the peak of Eq. 3; the scheduler scales it step by step.
            self.args.learning_rate = eq3_learning_rate(warmup, d_model, warmup, self.args.lr_scale)

    # Whether the model computes the label-smoothed loss of training itself: decided once, in __init__.
    model_smooths_labels = False

    @property
    def label_smoother(self) -> LabelSmoother | None:
        """The Trainer's `LabelSmoother` of the logits, where it applies: in evaluation, and for other models; none in
        training where the model smooths its loss itself (`model_smooths_labels`: the Trainer then passes it the
        labels, with num_items_in_batch, and takes its loss)."""
        return None if self.model_smooths_labels and self.model.training else self.logits_smoother

    @label_smoother.setter
    def label_smoother(self, smoother: LabelSmoother | None) -> None:
        self.logits_smoother = smoother  # set by Trainer.__init__ from label_smoothing_factor

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.model_smooths_labels and model.training and "labels" in inputs:
            inputs = {**inputs, "label_smoothing": self.logits_smoother.epsilon}
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if getattr(self.args, "lr_schedule", "hf") != "eq3":
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            warmup = int(self.args.warmup_steps)
            d_model = self.model.config.d_model
            peak = eq3_learning_rate(warmup, d_model, warmup)
            self.lr_scheduler = LambdaLR(
                self.optimizer if optimizer is None else optimizer,
                lambda step: eq3_learning_rate(step + 1, d_model, warmup) / peak,
            )
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def get_train_dataloader(self) -> DataLoader:
        if not self.max_tokens:
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

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        # Seq2SeqTrainer fills the model's generation config with transformers' defaults after generating, max_length
        # 20 among them; that fixed length would then replace the per-sentence limit (Sec. 6.1) in every later
        # generate() and in the saved model. The config is kept as it was.
        kept = copy.deepcopy(self.model.generation_config)
        try:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs)
        finally:
            self.model.generation_config = kept

    def train(self, *args, **kwargs):
        # The Trainer's own rotation (after each save, and at the end with save_total_limit 1) globs checkpoint-*, a
        # user's checkpoint-12-backup too, orders by mtime and runs before the completion marker is written. While
        # it trains it sees no limit; _save_checkpoint rotates instead (delete_old_checkpoints).
        self.checkpoints_kept, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            return super().train(*args, **kwargs)
        finally:
            self.args.save_total_limit = self.checkpoints_kept

    def _save_checkpoint(self, model, trial) -> None:
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:  # a run resumed from an older checkpoint saves over a newer one: unmark it first
            (folder / COMPLETE_MARKER).unlink(missing_ok=True)
        super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()  # each process's RNG state is written before the marker lists the files
        if self.args.should_save:
            write_json(folder / COMPLETE_MARKER, {"global_step": self.state.global_step, **checkpoint_record(folder)})
            if self.checkpoints_kept:
                scores = checkpoint_scores(complete_checkpoints(folder.parent), logged_metric(self.args))
                selection = getattr(self.args, "average_checkpoints", "last")
                # greater_is_better is None without metric_for_best_model, when no checkpoint has a score
                higher = self.args.greater_is_better is not False
                kept = checkpoints_to_keep(scores, selection, self.checkpoints_kept, higher)
                delete_old_checkpoints(folder.parent, kept | {self.state.global_step})

    def _load_callback_state(self) -> None:
        # The Trainer rebuilds each stateful callback from the checkpoint, arguments included: a time budget would come
        # back with the budget and marks of the run that saved it, early stopping with its patience. The callbacks
        # given to this trainer (the recipe's) are put back instead, going on from the checkpoint's training time and
        # marks passed, and from its count of evaluations without improvement.
        kinds = (TrainingTimeBudget, EarlyStopping)
        given = [c for c in self.callback_handler.callbacks if isinstance(c, kinds)]
        super()._load_callback_state()
        restored = [c for c in self.callback_handler.callbacks if isinstance(c, kinds) and c not in given]
        for kind in kinds:
            mine, stored = [c for c in given if isinstance(c, kind)], [c for c in restored if isinstance(c, kind)]
            for callback, stored_callback in zip(mine, stored, strict=False):
                self.callback_handler.remove_callback(stored_callback)
                if kind is TrainingTimeBudget:
                    callback.continue_from(stored_callback.trained_seconds, stored_callback.reached)
                else:
                    callback.early_stopping_patience_counter = stored_callback.early_stopping_patience_counter
                self.callback_handler.add_callback(callback)
