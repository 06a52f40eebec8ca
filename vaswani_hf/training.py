"""Training through `Seq2SeqTrainer` with the paper's recipe (Sec. 5): token batches, Adam with the learning rate of
Eq. 3, label smoothing, checkpoints written so that a kill never leaves one that loads but is wrong, checkpoint
averaging (Sec. 6.1), sacreBLEU evaluation, and a record of the run (metrics JSON, test translations, curves PNG)."""

import copy
import difflib
import json
import logging
import os
import re
import shlex
import shutil
import time
import typing
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, str_to_bool
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import (
    AutoModelForSeq2SeqLM,
    DataCollatorForSeq2Seq,
    EarlyStoppingCallback,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    TrainerCallback,
    TrainerState,
    set_seed,
)
from transformers.trainer_callback import ExportableState, ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .configuration_vaswani import PRESETS, VaswaniConfig
from .corpus import load_corpus
from .data import TokenBatchSampler, is_hub_dataset_id, preprocess
from .evaluation import bleu, bleu_metric_for_trainer, chrf, tokenized_bleu, translate
from .files import atomic_folder, read_json, write_json, write_text_lines
from .modeling_vaswani import VaswaniForConditionalGeneration
from .tokenization import load_tokenizer, train_tokenizer

logger = logging.getLogger(__name__)

# Written last, atomically, recording what the save wrote: a checkpoint without it, or whose files differ from its
# record, is not resumed from.
COMPLETE_MARKER = "checkpoint_complete"
# The Trainer's own checkpoint folders; other names (a user's checkpoint-12-backup) are never read or moved.
CHECKPOINT_NAME = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")
# Where a checkpoint that is not complete is moved: a name neither the Trainer's rotation nor ours matches.
SET_ASIDE_PREFIX = "incomplete-"


def eq3_learning_rate(step: int, d_model: int, warmup_steps: int, scale: float = 1.0) -> float:
    """Eq. 3: lrate = d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5), times `scale`; `step` counts from 1."""
    return scale * d_model**-0.5 * min(step**-0.5, step * warmup_steps**-1.5)


def close_names(name: str, known: Iterable[str]) -> str:
    """' (did you mean ...?)' with the known names closest to a misspelt `name`, or '' when none is close."""
    matches = difflib.get_close_matches(name, sorted(known), n=3)
    return f" (did you mean {' or '.join(repr(m) for m in matches)}?)" if matches else ""


def check_choices(arguments) -> None:
    """Refuse a value outside a `Literal` field's choices, naming the field, the value and the choices: the check
    HfArgumentParser makes for command-line flags, here also for values from a recipe file or from Python."""
    for name, hint in typing.get_type_hints(type(arguments)).items():
        if typing.get_origin(hint) is Literal and getattr(arguments, name) not in typing.get_args(hint):
            choices = ", ".join(repr(choice) for choice in typing.get_args(hint))
            raise ValueError(f"{name} {getattr(arguments, name)!r} is not one of the choices: {choices}")


# Fields a config override may set: those VaswaniConfig declares (PretrainedConfig's bookkeeping fields such as
# transformers_version or id2label are no recipe's business), plus the attention backend PretrainedConfig reads.
CONFIG_FIELDS = frozenset(VaswaniConfig.__annotations__) | {"attn_implementation"}


@dataclass
class ModelArguments:
    """Which model to train: a preset with overrides, or a saved model to continue from."""

    preset: Literal[tuple(PRESETS)] = field(default="small", metadata={"help": "Table 3's base and big, or ours"})
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "comma-separated VaswaniConfig field=value pairs (JSON values), e.g. 'dropout=0.3,decoder_layers=4'"
        },
    )
    model_name_or_path: str | None = field(default=None, metadata={"help": "a saved model folder or Hub id"})

    def __post_init__(self):
        check_choices(self)
        parse_overrides(self.config_overrides)


@dataclass
class DataArguments:
    """Which parallel data, which tokenizer, and which length filters."""

    dataset: str = field(
        metadata={
            "help": "required: a folder of {split}.{lang}[.gz] files (e.g. ../shared/data/multi30k), a TSV or "
            "JSON-lines file, or a Hub dataset id (e.g. wmt/wmt14 with --dataset_config de-en); with "
            "dataset_format treebank, a zip or folder of Penn Treebank .mrg files"
        }
    )
    dataset_format: Literal["translation", "treebank"] = field(
        default="translation",
        metadata={"help": "translation: sentence pairs; treebank: sentences and linearized trees (parsing, Sec. 6.3)"},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset config, e.g. de-en"})
    hub_dataset: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset loaded instead when the local folder or file `dataset` does not exist, e.g."
            " bentrevett/multi30k (with its default config; file_splits apply to the folder only)"
        },
    )
    source_lang: str = "en"
    target_lang: str = "de"
    file_splits: str | None = field(
        default=None, metadata={"help": "for a folder: split=stem pairs, e.g. 'train=train,validation=val'"}
    )
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str | None = "test"
    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "otherwise a BPE is learned"})
    vocab_size: int = field(
        default=8000,
        metadata={"help": "size of the shared BPE learned when none is given; a reused tokenizer must match it"},
    )
    max_source_tokens: int = 256
    max_target_tokens: int = 256
    max_length_ratio: float = 3.0
    max_eval_samples: int | None = field(default=None, metadata={"help": "validation sentences scored during training"})
    preprocessing_num_workers: int | None = None

    def __post_init__(self):
        check_choices(self)


@dataclass
class VaswaniTrainingArguments(Seq2SeqTrainingArguments):
    """`Seq2SeqTrainingArguments` with the paper's defaults (Sec. 5.3, 5.4) and token batching."""

    adam_beta2: float = 0.98
    adam_epsilon: float = 1e-9
    weight_decay: float = 0.0  # AdamW without decay is the paper's Adam
    warmup_steps: float = 4000
    label_smoothing_factor: float = 0.1
    predict_with_generate: bool = True
    max_tokens: int | None = field(
        default=4096, metadata={"help": "padded source + target tokens per batch and device (Sec. 5.1); 0: sentences"}
    )
    lr_schedule: Literal["eq3", "hf"] = field(
        default="eq3", metadata={"help": "eq3 (the paper's Eq. 3), or hf for lr_scheduler_type and learning_rate"}
    )
    lr_scale: float = field(default=1.0, metadata={"help": "factor on the Eq. 3 learning rate"})
    max_train_minutes: float | None = field(default=None, metadata={"help": "stop after this much training time"})
    eval_at_minutes: str | None = field(
        default=None, metadata={"help": "comma-separated training minutes at which to evaluate and save, e.g. 10,30"}
    )
    average_checkpoints: Literal["last", "best", "around_best"] = field(
        default="last",
        metadata={
            "help": "which checkpoints_to_average checkpoints the final evaluation averages, the average replacing "
            "the last weights where its validation BLEU is higher: the 'last' ones (Sec. 6.1), the 'best' ones by "
            "metric_for_best_model, or the consecutive ones centred on the best ('around_best'); the last two need "
            "an evaluation at every checkpoint"
        },
    )
    checkpoints_to_average: int = field(
        default=5, metadata={"help": "how many checkpoints average_checkpoints averages (0: none, with 'last')"}
    )
    average_last_checkpoints: int | None = field(
        default=None,
        metadata={"help": "the earlier spelling of average_checkpoints 'last' with checkpoints_to_average N"},
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "stop training after this many evaluations in a row without a better metric_for_best_model "
            "(transformers' EarlyStoppingCallback); None: never"
        },
    )
    save_total_limit: int | None = field(
        default=None,
        metadata={
            "help": "checkpoints kept as the run goes, N: with average_checkpoints 'last', the newest N complete ones "
            "plus the best by metric_for_best_model; with 'best', the best N plus the newest (for resuming); with "
            "'around_best', the N centred on the best plus the newest (N - 1) // 2 + 1. Only checkpoint-<step> "
            "folders are deleted. Default: checkpoints_to_average (at least 1), what the final averaging reads; "
            "0: keep every checkpoint"
        },
    )
    max_grad_norm: float = field(
        default=0.0,
        metadata={
            "help": "clip the gradients to this total norm; 0 (default): no clipping, as in the paper and fairseq's "
            "reproduction (Ott et al. 2018, --clip-norm 0)"
        },
    )
    restore_callback_states_from_checkpoint: bool = True  # the time budget continues across a resume
    tokenized_bleu: bool = field(
        default=False,
        metadata={
            "help": "also report the paper's metric, tokenized BLEU with compound splitting (tensor2tensor "
            "get_ende_bleu), beside sacreBLEU in metrics.json (WMT14 recipes: for comparison with the paper's tables)"
        },
    )
    nonfinite_gradients: Literal["stop", "skip"] = field(
        default="stop",
        metadata={
            "help": "on a NaN/inf gradient: 'stop' (an error naming the step) or 'skip' the update; under fp16, "
            "GradScaler skips such updates itself (see max_consecutive_fp16_skips)"
        },
    )
    max_consecutive_fp16_skips: int = field(
        default=30,
        metadata={
            "help": "fp16: stop training after this many updates in a row that GradScaler skipped for overflowing "
            "gradients (it halves its scale each time: 30 take its initial 2^16 below fairseq's --min-loss-scale "
            "1e-4); 0: never"
        },
    )

    def __post_init__(self):
        check_choices(self)
        if self.average_last_checkpoints is not None:
            default = type(self).__dataclass_fields__["checkpoints_to_average"].default
            if self.average_checkpoints != "last" or self.checkpoints_to_average not in (
                default,
                self.average_last_checkpoints,
            ):
                raise ValueError(
                    f"average_last_checkpoints {self.average_last_checkpoints} (the earlier spelling of "
                    f"average_checkpoints 'last' with checkpoints_to_average {self.average_last_checkpoints}) "
                    f"contradicts average_checkpoints {self.average_checkpoints!r} with checkpoints_to_average "
                    f"{self.checkpoints_to_average}: give only the latter two"
                )
            self.checkpoints_to_average = self.average_last_checkpoints
        if self.checkpoints_to_average < 0:
            raise ValueError(f"checkpoints_to_average must be 0 or more, got {self.checkpoints_to_average}")
        if self.save_total_limit is None:
            self.save_total_limit = max(self.checkpoints_to_average, 1)
        elif self.save_total_limit < 0:
            raise ValueError(f"save_total_limit must be 0 (keep every checkpoint) or more, got {self.save_total_limit}")
        elif 0 < self.save_total_limit < self.checkpoints_to_average:
            raise ValueError(
                f"save_total_limit {self.save_total_limit} keeps fewer checkpoints than checkpoints_to_average "
                f"{self.checkpoints_to_average} averages: raise save_total_limit (0 keeps all) or lower "
                "checkpoints_to_average"
            )
        if self.max_consecutive_fp16_skips < 0:
            raise ValueError(
                f"max_consecutive_fp16_skips must be 0 (no limit) or more, got {self.max_consecutive_fp16_skips}"
            )
        super().__post_init__()  # fills in eval_steps (from logging_steps) and the strategies, checked below
        self._check_selection_by_metric()

    def _check_selection_by_metric(self) -> None:
        """Refuse a selection by validation metric ('best', 'around_best', early stopping) where the metric is missing:
        no metric_for_best_model, no evaluation, or checkpoints saved at updates without an evaluation."""
        users = []
        if self.average_checkpoints != "last":
            users.append(f"average_checkpoints {self.average_checkpoints!r}")
        if self.early_stopping_patience is not None:
            if self.early_stopping_patience < 1:
                raise ValueError(
                    f"early_stopping_patience must be 1 or more evaluations (None: no early stopping), got "
                    f"{self.early_stopping_patience}"
                )
            users.append(f"early_stopping_patience {self.early_stopping_patience}")
        if not users:
            return
        needs = " and ".join(users) + " rank the evaluations by metric_for_best_model"
        if self.metric_for_best_model is None:
            raise ValueError(f"{needs}, which is not set: set metric_for_best_model (e.g. bleu)")
        if self.eval_strategy.value == "no":
            raise ValueError(f"{needs}, but eval_strategy is 'no': set eval_strategy to 'steps' with eval_steps")
        if self.average_checkpoints == "last":
            return
        if self.checkpoints_to_average < 1:
            raise ValueError(f"{needs}: checkpoints_to_average must be 1 or more, got {self.checkpoints_to_average}")
        # Each checkpoint must carry its own evaluation: saves fall on evaluations, in the same unit.
        saves, evaluations = self.save_strategy.value, self.eval_strategy.value
        steps = (saves, evaluations) == ("steps", "steps")
        ratios = min(self.save_steps, self.eval_steps) < 1  # fractions of the run: no multiple is known in advance
        if saves in ("steps", "epoch") and (
            saves != evaluations or steps and (ratios or self.save_steps % self.eval_steps != 0)
        ):
            raise ValueError(
                f"{needs} of each checkpoint, but save_strategy {saves!r} with save_steps {self.save_steps} saves "
                f"checkpoints where eval_strategy {evaluations!r} with eval_steps {self.eval_steps} does not "
                "evaluate: save at evaluations, with the same strategy and save_steps a multiple of eval_steps "
                "(both in updates)"
            )


class TrainingTimeBudget(TrainerCallback, ExportableState):
    """Counts training time (time inside optimizer steps: evaluation and saving excluded), asks for an evaluation
    and a checkpoint at each of `marks_minutes`, and stops training with a checkpoint after `budget_minutes` (with an
    evaluation too if `evaluate_at_stop`: a checkpoint selection by metric then ranks the last one as well). Its
    count is saved in checkpoints: a resumed run goes on from it (`continue_from`) under the budget and marks it is
    given; `reached` records (minutes, step) of each mark passed."""

    def __init__(
        self,
        budget_minutes: float | None,
        marks_minutes: list[float],
        trained_seconds: float = 0.0,
        evaluate_at_stop: bool = False,
    ):
        self.budget_minutes = budget_minutes
        self.marks_minutes = sorted(marks_minutes)
        self.trained_seconds = trained_seconds
        self.evaluate_at_stop = evaluate_at_stop
        self.reached: list[list[float]] = []
        self._step_started = 0.0

    def state(self) -> dict:
        return {
            "args": {
                "budget_minutes": self.budget_minutes,
                "marks_minutes": self.marks_minutes,
                "evaluate_at_stop": self.evaluate_at_stop,
            },
            "attributes": {"trained_seconds": self.trained_seconds, "reached": self.reached},
        }

    def continue_from(self, trained_seconds: float, reached: list[list[float]]) -> None:
        """Go on from a checkpoint's count: its training time counts against this budget and the marks it passed stay
        passed, while the budget and the marks still ahead are this one's (a resumed recipe may extend them)."""
        self.trained_seconds, self.reached = trained_seconds, reached
        self.marks_minutes = [mark for mark in self.marks_minutes if mark > trained_seconds / 60]

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.trained_seconds += time.perf_counter() - self._step_started
        minutes = self.trained_seconds / 60
        while self.marks_minutes and minutes >= self.marks_minutes[0]:
            self.reached.append([self.marks_minutes.pop(0), state.global_step])
            control.should_evaluate = control.should_save = True
        if self.budget_minutes is not None and minutes >= self.budget_minutes:
            self.reached.append([self.budget_minutes, state.global_step])
            # a checkpoint; its evaluation only where a selection by metric needs it: train() evaluates the final
            # weights right after
            control.should_training_stop = control.should_save = True
            control.should_evaluate = control.should_evaluate or self.evaluate_at_stop
        return control


class TrainingMinutesProgress(ProgressCallback):
    """transformers' `ProgressCallback` whose training bar counts minutes of training time (the `TrainingTimeBudget`'s
    count) against `max_train_minutes`, so its total and ETA follow the time budget; its steps bar would show the
    `max_steps` the Trainer derives from `num_train_epochs`, which the budget cuts short. The budget is looked up in
    the trainer's callbacks at each step, where a resume puts it back (`VaswaniTrainer._load_callback_state`)."""

    def __init__(self, callback_handler):
        super().__init__()
        self.callback_handler = callback_handler

    def _budget(self) -> TrainingTimeBudget:
        return next(c for c in self.callback_handler.callbacks if isinstance(c, TrainingTimeBudget))

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            budget = self._budget()
            self.training_bar = tqdm(
                total=budget.budget_minutes,
                initial=min(budget.trained_seconds / 60, budget.budget_minutes),
                unit="min",
                bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} training minutes [{elapsed}<{remaining}{postfix}]",
                dynamic_ncols=True,
            )
        self.current_step = 0

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            budget = self._budget()
            # with max_steps as well, the run ends at whichever comes first: the steps are shown against it
            steps = f"{state.global_step}/{args.max_steps}" if args.max_steps > 0 else state.global_step
            self.training_bar.set_postfix(step=steps, refresh=False)
            self.training_bar.update(min(budget.trained_seconds / 60, budget.budget_minutes) - self.training_bar.n)
            self.current_step = state.global_step


class EarlyStopping(EarlyStoppingCallback):
    """transformers' `EarlyStoppingCallback` (stop after `early_stopping_patience` evaluations in a row without a
    better metric_for_best_model than `state.best_metric`, which the Trainer keeps whenever metric_for_best_model is
    set), less its warning that load_best_model_at_end is off: the final evaluation (`_final_evaluation`) chooses the
    final model from the checkpoints instead of loading the best. Its count is saved in checkpoints; on resume the
    patience given to the trainer (the recipe's) applies (`VaswaniTrainer._load_callback_state`)."""

    def on_train_begin(self, args, state, control, **kwargs):
        return control  # the arguments were checked by VaswaniTrainingArguments

    def stopped(self) -> bool:
        """Whether this callback stopped (or, from a checkpoint's count, would stop) the training."""
        return self.early_stopping_patience_counter >= self.early_stopping_patience


class NonFiniteGradientGuard(TrainerCallback):
    """Before each optimizer step, check the gradients: a NaN or inf (a diverging run, a bad batch, an overflow) would
    otherwise be written into every weight by Adam. `policy="stop"` raises an error naming the update; `"skip"`
    drops that update (the optimizer skips parameters without gradients), logs a warning and records the step.

    Under fp16 GradScaler checks the gradients itself: an update whose gradients overflow is skipped and the loss
    scale lowered, a routine event (most often in the first updates), so the guard leaves those to it, whatever the
    policy. Training stops only after `max_consecutive_fp16_skips` skipped updates in a row (0: never), which no
    lowering of the scale cures (a NaN loss, a diverged run), as fairseq stops at its `--min-loss-scale`. Skipped
    updates are recorded in `skipped_steps` in both cases."""

    def __init__(self, policy: str = "stop", max_consecutive_fp16_skips: int = 30):
        if policy not in ("stop", "skip"):
            raise ValueError(f"nonfinite_gradients must be 'stop' or 'skip', got {policy!r}")
        self.policy = policy
        self.max_consecutive_fp16_skips = max_consecutive_fp16_skips
        self.skipped_steps: list[int] = []
        self.skipped_in_a_row = 0
        self.scale: float | None = None  # fp16: GradScaler's scale after the last update (or before the first)

    def on_train_begin(self, args, state, control, **kwargs):
        self.scale, self.skipped_in_a_row = None, 0  # a resumed run's scaler comes from its checkpoint

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        scaler = getattr(optimizer, "scaler", None)
        if scaler is not None:  # fp16: GradScaler's step checks these gradients; on_optimizer_step reads its verdict
            if self.scale is None:
                self.scale = scaler.get_scale()
            return control
        gradients = [p.grad for p in model.parameters() if p.grad is not None]
        # The norm is reduced on the device: reading back whether it is finite is this update's one host sync.
        if not gradients or torch.isfinite(torch.nn.utils.get_total_norm(gradients)):
            return control
        update = state.global_step + 1
        if self.policy == "stop":
            raise FloatingPointError(
                f"non-finite gradient (NaN or inf) at update {update}: training stopped before the weights were "
                "changed; resume from the last checkpoint with a lower learning rate, or set nonfinite_gradients=skip"
            )
        logger.warning("non-finite gradient at update %d: update skipped", update)
        self.skipped_steps.append(update)
        for parameter in model.parameters():
            parameter.grad = None
        return control

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        scaler = getattr(optimizer, "scaler", None)
        if scaler is None:
            return control
        # GradScaler lowers its scale exactly when it skipped the update. (accelerate's step_was_skipped misses the
        # skips of fused optimizers, which GradScaler lets skip inside their own step.) Reading the scale is the
        # update's one host sync.
        previous, self.scale = self.scale, scaler.get_scale()
        if self.scale >= previous:
            self.skipped_in_a_row = 0
            return control
        update = state.global_step + 1
        self.skipped_steps.append(update)
        self.skipped_in_a_row += 1
        logger.info("fp16: gradient overflow at update %d, skipped by GradScaler, which lowered its scale", update)
        if self.max_consecutive_fp16_skips and self.skipped_in_a_row >= self.max_consecutive_fp16_skips:
            raise FloatingPointError(
                f"fp16: GradScaler skipped {self.skipped_in_a_row} updates in a row (updates "
                f"{update - self.skipped_in_a_row + 1} to {update}) for NaN or inf gradients, lowering its loss scale "
                "each time: the run has diverged (max_consecutive_fp16_skips). Resume from the last checkpoint with "
                "a lower learning rate, or train in bf16"
            )
        return control


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
        self.checkpoints_kept = self.args.save_total_limit
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

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        smoother = self.label_smoother
        smoothing_model = isinstance(self.accelerator.unwrap_model(model), VaswaniForConditionalGeneration)
        if smoother is None or not smoothing_model or not model.training or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # The Trainer then passes the labels to the model (with num_items_in_batch) and takes its loss.
        self.label_smoother = None
        try:
            inputs = {**inputs, "label_smoothing": smoother.epsilon}
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        finally:
            self.label_smoother = smoother

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


def safetensors_names(path: Path) -> list[str]:
    """The tensor names a safetensors file's header lists (reading the header only)."""
    with safe_open(path, framework="pt") as weights:
        return sorted(weights.keys())


def checkpoint_record(folder: Path) -> dict:
    """What a checkpoint's save wrote, for its completion marker: each file's size in bytes, and the tensor names of
    each safetensors file. Hashes are left out: sizes and headers find a truncated, missing or rewritten file, and a
    resume reads every checkpoint's record."""
    files = {
        path.relative_to(folder).as_posix(): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != COMPLETE_MARKER
    }
    tensors = {name: safetensors_names(folder / name) for name in files if name.endswith(".safetensors")}
    return {"files": files, "tensors": tensors}


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """None if `folder` is a complete checkpoint, otherwise what is wrong with it, naming the file. Complete means: its
    completion marker is there, every file the marker records has the recorded size, and each safetensors file's
    header reads and lists the recorded tensors. (Trainer 5 resumes without a missing optimizer.pt, scheduler.pt or
    rng_state.pth with at most a log line, and initialises a missing tensor at random.)"""
    folder = Path(folder)
    marker = folder / COMPLETE_MARKER
    if not marker.is_file():
        return f"{marker} is missing: the save that wrote the checkpoint did not finish"
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
        files, tensors = dict(record["files"]), dict(record["tensors"])
    except (ValueError, KeyError, TypeError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return f"{marker} does not record the checkpoint's files ({type(error).__name__}: {error})"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return f"{path} has {path.stat().st_size} bytes, not the {size} its save wrote"
    for name, expected in tensors.items():
        try:
            found = safetensors_names(folder / name)
        except SafetensorError as error:
            return f"{folder / name} cannot be read ({error})"
        if found != sorted(expected):
            missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
            return f"{folder / name} lacks the tensors {missing} and holds the unexpected tensors {unexpected}"
    return None


def checkpoint_step(folder: Path) -> int:
    return int(CHECKPOINT_NAME.fullmatch(folder.name).group(1))


def checkpoint_folders(output_dir: str | os.PathLike) -> list[Path]:
    """The folders of `output_dir` named as the Trainer names its checkpoints (`checkpoint-<step>`), oldest first."""
    folders = [p for p in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*") if CHECKPOINT_NAME.fullmatch(p.name)]
    return sorted((p for p in folders if p.is_dir()), key=checkpoint_step)


def complete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint folders written to the end and still whole (`checkpoint_problem`), oldest first."""
    return [folder for folder in checkpoint_folders(output_dir) if checkpoint_problem(folder) is None]


def logged_metric(args) -> str | None:
    """The name under which the Trainer logs `args.metric_for_best_model` (bleu: eval_bleu), or None if unset."""
    metric = args.metric_for_best_model
    return None if metric is None else metric if metric.startswith("eval_") else f"eval_{metric}"


def checkpoint_metric(folder: str | os.PathLike, metric: str) -> float | None:
    """The validation `metric` (as the Trainer logs it: eval_bleu for metric_for_best_model bleu) of the evaluation at
    the checkpoint's own update, from the log history its trainer_state.json holds (so it survives a resume and the
    deletion of other checkpoints); None if that update was not evaluated."""
    state = read_json(Path(folder) / "trainer_state.json")
    at_step = (entry for entry in reversed(state["log_history"]) if entry.get("step") == state["global_step"])
    return next((entry[metric] for entry in at_step if metric in entry), None)


def select_checkpoints(
    scores: dict[int, float | None], selection: str, count: int, greater_is_better: bool = True
) -> list[int]:
    """The steps of the `count` checkpoints that `selection` names among `scores` ({step: metric, None where not
    evaluated}), oldest first: the newest ('last', Sec. 6.1), the best by metric ('best'; of equal scores the older),
    or the consecutive ones centred on the best ('around_best': (count - 1) // 2 before it and count // 2 after it,
    fewer at the ends). Checkpoints without a score are never ranked."""
    steps = sorted(scores)
    if count <= 0:
        return []
    if selection == "last":
        return steps[-count:]
    scored = [step for step in steps if scores[step] is not None]
    ranked = sorted(scored, key=lambda step: scores[step], reverse=greater_is_better)  # stable: ties stay in order
    if selection == "best":
        return sorted(ranked[:count])
    if selection != "around_best":
        raise ValueError(f"checkpoint selection {selection!r} is not one of 'last', 'best', 'around_best'")
    if not ranked:
        return []
    best = steps.index(ranked[0])
    return steps[max(best - (count - 1) // 2, 0) : best + count // 2 + 1]


def checkpoints_to_keep(
    scores: dict[int, float | None], selection: str, limit: int, greater_is_better: bool = True
) -> set[int]:
    """The steps of the checkpoints that a run averaging by `selection` keeps, `limit` of them being what the final
    averaging may read (`select_checkpoints`), besides the best by metric (never deleted) and the newest (to resume
    from): at most `limit` + 1 checkpoints, and for 'around_best' also the newest (limit - 1) // 2, which a later
    best would have before it (at most limit + (limit - 1) // 2 + 1)."""
    steps = sorted(scores)
    kept = set(select_checkpoints(scores, selection, limit, greater_is_better)) | set(steps[-1:])
    kept |= set(select_checkpoints(scores, "best", 1, greater_is_better))
    if selection == "around_best":
        kept |= set(steps[-((limit - 1) // 2) - 1 :])
    return kept


def checkpoint_scores(checkpoints: Iterable[Path], metric: str | None) -> dict[int, float | None]:
    """{step: its validation `metric` (`checkpoint_metric`), or None} of `checkpoints`; all None without a metric."""
    return {checkpoint_step(folder): checkpoint_metric(folder, metric) if metric else None for folder in checkpoints}


def delete_old_checkpoints(output_dir: str | os.PathLike, keep: Iterable[int]) -> list[Path]:
    """Delete the complete checkpoints of `output_dir` but those of the steps in `keep` (`checkpoints_to_keep`), and
    return them. Only complete `checkpoint-<step>` folders are deleted: one that is not complete is left for
    `last_complete_checkpoint` to set aside, and folders of other names (a user's checkpoint-12-backup) are never
    touched. Each loses its completion marker first, so that a kill during the deletion leaves a checkpoint that no
    longer counts, never a damaged one that does."""
    kept = set(keep)
    deleted = [folder for folder in complete_checkpoints(output_dir) if checkpoint_step(folder) not in kept]
    for folder in deleted:
        (folder / COMPLETE_MARKER).unlink()
        shutil.rmtree(folder)
        logger.info("deleted %s (save_total_limit)", folder)
    return deleted


def set_aside(folder: Path) -> Path:
    """Move `folder` to a free name starting with `SET_ASIDE_PREFIX` beside it, and return that name."""
    aside = folder.with_name(SET_ASIDE_PREFIX + folder.name)
    suffix = 1
    while aside.exists():
        suffix += 1
        aside = folder.with_name(f"{SET_ASIDE_PREFIX}{folder.name}-{suffix}")
    folder.rename(aside)
    return aside


def last_complete_checkpoint(output_dir: str | os.PathLike, move_aside: bool = True) -> Path | None:
    """The newest complete checkpoint of `output_dir`, to resume from. Checkpoint folders that are not complete are
    moved aside (`set_aside`, with a warning naming the file at fault) so that neither the Trainer nor a reader
    picks them up and the resumed run can save its own: those a kill left without their marker, and damaged ones (a
    recorded file missing, of another size, or unreadable). A damaged checkpoint with no complete one to go back to
    is an error naming the file. Folders not named `checkpoint-<step>` are never touched, and with
    `move_aside=False` none is (the look of a process that leaves the moving to another: `resumable_checkpoint`)."""
    complete, not_complete, damaged = [], [], []
    for folder in checkpoint_folders(output_dir):
        problem = checkpoint_problem(folder)
        if problem is None:
            complete.append(folder)
        else:
            not_complete.append((folder, problem))
            if (folder / COMPLETE_MARKER).is_file():
                damaged.append(problem)
    if damaged and not complete:
        raise ValueError(
            f"no complete checkpoint to resume from in {output_dir}: {'; '.join(damaged)}. Restore the file, or "
            "move the checkpoint folders away to train from the start"
        )
    for folder, problem in not_complete if move_aside else ():
        logger.warning("%s is not a complete checkpoint (%s): moved to %s", folder, problem, set_aside(folder))
    return complete[-1] if complete else None


def resumable_checkpoint(output_dir: str | os.PathLike, training_args: VaswaniTrainingArguments) -> Path | None:
    """`last_complete_checkpoint` for every process of a run. The processes that save checkpoints
    (`training_args.should_save`: the main one, or each node's with `save_on_each_node`) look first and move the
    incomplete ones aside while the others wait; the others then look without moving anything. (Each node's main
    process first, as `main_process_first` orders them, would have the nodes move the same folders of a shared
    file system at once.)"""
    state = PartialState()
    if training_args.should_save:
        try:
            return last_complete_checkpoint(output_dir)
        finally:  # also when it fails: the others then find the same fault and fail with it instead of waiting
            state.wait_for_everyone()
    state.wait_for_everyone()
    return last_complete_checkpoint(output_dir, move_aside=False)


def average_checkpoints(folders: list[str | os.PathLike]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the weights of saved models (Sec. 6.1), read from their `model.safetensors`."""
    if not folders:
        raise ValueError("no checkpoints to average")
    total: dict[str, torch.Tensor] = {}
    for folder in folders:
        path = Path(folder) / "model.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: only safetensors checkpoints are averaged")
        try:
            weights = load_file(path)
        except SafetensorError as error:
            raise ValueError(f"{path} cannot be read, it is truncated or corrupted ({error})") from error
        if total and weights.keys() != total.keys():
            raise ValueError(f"{path} holds other weights than {Path(folders[0]) / 'model.safetensors'}")
        for name, tensor in weights.items():
            if name in total and tensor.shape != total[name].shape:
                raise ValueError(f"{path}: {name} has shape {tuple(tensor.shape)}, not {tuple(total[name].shape)}")
            total[name] = total[name] + tensor.double() if name in total else tensor.double()
    return {name: (tensor / len(folders)).float() for name, tensor in total.items()}


# config.json entries that record how and by what a checkpoint was saved, not which model it is
CONFIG_BOOKKEEPING = frozenset(
    {"transformers_version", "_name_or_path", "dtype", "torch_dtype", "auto_map", "custom_pipelines"}
)


def config_differences(folders: list[str | os.PathLike]) -> list[str]:
    """The model config fields (`config.json`, less `CONFIG_BOOKKEEPING`) on which `folders` do not all agree, each
    with its values: checkpoints of one model agree on all, and averaging others would mix unrelated models."""
    configs = {}
    for folder in folders:
        path = Path(folder) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: a checkpoint to average needs its model config")
        configs[str(folder)] = read_json(path)
    names = sorted(set().union(*configs.values()) - CONFIG_BOOKKEEPING)
    differences = []
    for name in names:
        values = {folder: config.get(name, "(absent)") for folder, config in configs.items()}
        if len({json.dumps(value, sort_keys=True) for value in values.values()}) > 1:
            shown = ", ".join(f"{value!r} in {folder}" for folder, value in values.items())
            differences.append(f"{name} ({shown})")
    return differences


def load_averaged_model(folders: list[str | os.PathLike]) -> PreTrainedModel:
    """The model of the last folder with the averaged weights of all; tied weights stay tied. Folders whose model
    configs differ (`config_differences`) are refused: they hold different models, even where the shapes agree."""
    differences = config_differences(folders)
    if differences:
        raise ValueError(
            "these checkpoints are of different models and were not averaged; their configs differ in: "
            + "; ".join(differences)
        )
    model = AutoModelForSeq2SeqLM.from_pretrained(folders[-1])
    averaged = average_checkpoints(folders)
    result = model.load_state_dict({k: v.to(model.dtype) for k, v in averaged.items()}, strict=False)
    untied_missing = set(result.missing_keys) - set(model.all_tied_weights_keys)
    if untied_missing or result.unexpected_keys:
        raise ValueError(f"averaged weights do not fit: missing {untied_missing}, unexpected {result.unexpected_keys}")
    return model


def average_checkpoint_folders(
    folders: list[str | os.PathLike], output_dir: str | os.PathLike, overwrite: bool = False
) -> PreTrainedModel:
    """Save the averaged model of `folders` to `output_dir` (atomically), with the last folder's tokenizer if it has
    one: a model folder, without the checkpoints' optimizer state or completion marker. `output_dir` must not be
    one of `folders`, hold one or lie inside one, and an existing non-empty one is refused unless `overwrite`."""
    inputs = [("the checkpoint", folder) for folder in folders]
    with atomic_folder(output_dir, overwrite, keep=inputs, untouched=inputs) as staging:
        model = load_averaged_model(folders)
        model.save_pretrained(staging)
        if (Path(folders[-1]) / "tokenizer.json").is_file():
            load_tokenizer(folders[-1]).save_pretrained(staging)
    return model


def parse_overrides(text: str | None) -> dict:
    """'dropout=0.3,decoder_layers=4' -> {'dropout': 0.3, 'decoder_layers': 4} (values read as JSON if they can);
    a field VaswaniConfig does not have is refused (PretrainedConfig would keep it as a silent attribute)."""
    overrides = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"config override {item!r} is not field=value")
        key = key.strip()
        if key not in CONFIG_FIELDS:
            raise ValueError(
                f"config override {key!r} is not a VaswaniConfig field{close_names(key, CONFIG_FIELDS)}; "
                f"the fields: {', '.join(sorted(CONFIG_FIELDS))}"
            )
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def plot_training_curves(
    log_history: list[dict], path: str | os.PathLike, final_bleu: dict[str, tuple[int, float]] | None = None
) -> None:
    """A PNG of training loss, learning rate and validation BLEU against optimizer steps; `final_bleu` adds the
    final evaluation's validation BLEU, {name: (step, BLEU)} (the last weights, the checkpoint average)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {
        "training loss": [(e["step"], e["loss"]) for e in log_history if "loss" in e],
        "learning rate": [(e["step"], e["learning_rate"]) for e in log_history if "learning_rate" in e],
        "validation BLEU": [(e["step"], e["eval_bleu"]) for e in log_history if "eval_bleu" in e],
    }
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for axis, (title, points) in zip(axes, series.items(), strict=True):
        if points:
            steps, values = zip(*points, strict=True)
            axis.plot(steps, values, marker="." if len(points) < 30 else None)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    for name, (step, score) in (final_bleu or {}).items():
        axes[2].scatter([step], [score], marker="*", s=80, label=f"final: {name}", zorder=3)
    if final_bleu:
        axes[2].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# Written beside a tokenizer that train() learns: what it was learned for, compared when it is reused.
TOKENIZER_RECORD = "learned_for.json"


def save_learned_tokenizer(
    tokenizer: PreTrainedTokenizerBase, folder: str | os.PathLike, languages: list[str], vocab_size: int
) -> None:
    """Save a tokenizer just learned, atomically, with the record of its languages and requested vocabulary size
    (`TOKENIZER_RECORD`) that a run reusing the folder compares with its recipe. The folder must be new or empty:
    the atomic save replaces it whole."""
    if Path(folder).is_dir() and any(Path(folder).iterdir()):
        present = sorted(p.name for p in Path(folder).iterdir())
        raise FileExistsError(f"{folder} already holds {present}: save the tokenizer to a new or empty folder")
    with atomic_folder(folder) as staging:
        tokenizer.save_pretrained(staging)
        write_json(staging / TOKENIZER_RECORD, {"languages": languages, "vocab_size": vocab_size})


# Above this many training pairs, a multi-process run refuses to learn its BPE: the other processes would wait for it
# at a barrier that fails after ddp_timeout (1,800 s by default), and the learning time grows with the corpus and
# depends on the machine, so no timeout is known to suffice. The tokenizer is then a step of its own
# (vaswani-train-tokenizer), learned once for every run that uses it. Measured on 2 shared cores
# (docs/benchmarks/tokenizer_scale.md): 35 s for 0.5M pairs, 162 s for 1.5M, 488 s for WMT14 En-De's 4.5M (3.5 GB),
# and En-Fr's 36M would take an hour or more; below 1M pairs it waits under 3 minutes here.
MAX_PAIRS_TO_LEARN_BPE_IN_MULTI_PROCESS_RUN = 1_000_000


def train_tokenizer_command(data_args: DataArguments, folder: str | os.PathLike) -> str:
    """The vaswani-train-tokenizer command line that learns the recipe's BPE into `folder`."""
    command = [
        "vaswani-train-tokenizer", data_args.dataset, data_args.source_lang, data_args.target_lang, str(folder)
    ]
    if data_args.dataset_format != "translation":
        command += ["--dataset_format", data_args.dataset_format]
    if data_args.dataset_config:
        command += ["--config_name", data_args.dataset_config]
    if data_args.train_split != "train":
        command += ["--split", data_args.train_split]
    return shlex.join([*command, "--vocab_size", str(data_args.vocab_size)])


def build_tokenizer(data_args: DataArguments, corpus, output_dir: Path, training_args) -> PreTrainedTokenizerBase:
    """The recipe's tokenizer: `tokenizer_name_or_path`, the run's own `tokenizer/` (on resume), or a BPE learned
    here from the training split. A missing local `tokenizer_name_or_path`, and learning from more than
    `MAX_PAIRS_TO_LEARN_BPE_IN_MULTI_PROCESS_RUN` pairs in a multi-process run, are refused with the
    vaswani-train-tokenizer command to run first."""
    if data_args.tokenizer_name_or_path:
        folder = data_args.tokenizer_name_or_path
        if not Path(folder).exists() and not is_hub_dataset_id(folder):  # a local path: never looked up on the Hub
            raise FileNotFoundError(
                f"tokenizer_name_or_path {folder} does not exist: learn it first with "
                f"{train_tokenizer_command(data_args, folder)}"
            )
    else:
        folder = output_dir / "tokenizer"
        pairs = len(corpus[data_args.train_split])
        # Checked by every process before the barrier: an error inside main_process_first would leave the others
        # waiting there until ddp_timeout.
        limit = MAX_PAIRS_TO_LEARN_BPE_IN_MULTI_PROCESS_RUN
        if training_args.world_size > 1 and pairs > limit and not (folder / "tokenizer.json").is_file():
            name = f"{data_args.source_lang}_{data_args.target_lang}_bpe{data_args.vocab_size}"
            learned = output_dir.parent / "tokenizers" / name  # beside the runs: one tokenizer serves several
            raise ValueError(
                f"learning a BPE from {pairs:,} training pairs (more than {limit:,}) in a run of "
                f"{training_args.world_size} processes would keep all but one waiting at a barrier that fails after "
                f"ddp_timeout ({training_args.ddp_timeout} s); learn it first, once, with "
                f"{train_tokenizer_command(data_args, learned)} and set tokenizer_name_or_path: {learned}"
            )
        # One process of the whole run learns it into the shared output_dir (per machine only where each machine
        # saves to its own disk): two machines saving one folder would collide.
        local = training_args.save_on_each_node
        with training_args.main_process_first(local=local, desc="learning the shared BPE"):
            if not (folder / "tokenizer.json").is_file():
                texts = (text for pair in corpus[data_args.train_split]["translation"] for text in pair.values())
                languages = [data_args.source_lang, data_args.target_lang]
                tokenizer = train_tokenizer(texts, vocab_size=data_args.vocab_size)
                save_learned_tokenizer(tokenizer, folder, languages, data_args.vocab_size)
    tokenizer = load_tokenizer(folder)
    check_tokenizer_fits(tokenizer, folder, data_args)
    return tokenizer


def check_tokenizer_fits(
    tokenizer: PreTrainedTokenizerBase, folder: str | os.PathLike, data_args: DataArguments
) -> None:
    """Refuse a reused tokenizer learned for another vocabulary size or other languages than the recipe's, naming
    both values: a model built on it would not be the recipe's, and resuming would mix two runs."""
    record_path = Path(folder) / TOKENIZER_RECORD
    fix = "set vocab_size and the languages to the tokenizer's, or choose another tokenizer or output_dir"
    if record_path.is_file():
        record = read_json(record_path)
        if record["vocab_size"] != data_args.vocab_size:
            raise ValueError(
                f"the tokenizer in {folder} was learned with vocab_size {record['vocab_size']}, but the recipe asks "
                f"for vocab_size {data_args.vocab_size}: {fix}"
            )
        languages = [data_args.source_lang, data_args.target_lang]
        if sorted(record["languages"]) != sorted(languages):  # one shared BPE serves both directions
            raise ValueError(
                f"the tokenizer in {folder} was learned for the languages {record['languages']}, but the recipe "
                f"translates {languages}: {fix}"
            )
    # Without a record only the size can be checked. BPE learns at most vocab_size tokens and fewer when a small
    # corpus runs out of pairs to merge, so only a larger vocabulary proves that the tokenizer is not the recipe's.
    elif len(tokenizer) > data_args.vocab_size:
        raise ValueError(
            f"the tokenizer in {folder} has {len(tokenizer)} tokens, more than the recipe's vocab_size "
            f"{data_args.vocab_size}: {fix}"
        )


# What an earlier run leaves in its output folder: a new run beside it would mix with it (its checkpoints would be
# averaged into the new model, its tokenizer reused).
RUN_OUTPUTS = ("model.safetensors", "metrics.json", "trainer_state.json", "tokenizer", "tokenizer.json")


def earlier_run_outputs(output_dir: str | os.PathLike) -> list[str]:
    """The names in `output_dir` that an earlier run wrote (checkpoints, weights, metrics, tokenizer)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    return sorted(
        path.name
        for path in folder.iterdir()
        if path.name in RUN_OUTPUTS
        or path.name.startswith((f"{PREFIX_CHECKPOINT_DIR}-", "test_predictions"))
        or path.suffix == ".safetensors"
    )


def check_output_dir(training_args: VaswaniTrainingArguments) -> None:
    """Refuse to start a new run in a folder holding an earlier one, unless it is resumed."""
    found = earlier_run_outputs(training_args.output_dir)
    if found and training_args.resume_from_checkpoint is None:
        shown = ", ".join(found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
        raise FileExistsError(
            f"output_dir {training_args.output_dir} holds an earlier run ({shown}); a new run there would mix with "
            "it. Resume it with --resume_from_checkpoint last, or choose another --output_dir"
        )


def build_model(model_args: ModelArguments, tokenizer) -> PreTrainedModel:
    if model_args.model_name_or_path:
        return AutoModelForSeq2SeqLM.from_pretrained(model_args.model_name_or_path)
    overrides = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "decoder_start_token_id": tokenizer.bos_token_id,
        **parse_overrides(model_args.config_overrides),
    }
    return VaswaniForConditionalGeneration(VaswaniConfig.from_preset(model_args.preset, **overrides))


def dataset_source(data_args: DataArguments) -> tuple[str, str | None, dict[str, str] | None]:
    """(dataset, config, file splits) to load: `dataset`, or `hub_dataset` (said loudly) if the folder is missing."""
    splits = dict(p.split("=", 1) for p in data_args.file_splits.split(",")) if data_args.file_splits else None
    if data_args.hub_dataset is None or Path(data_args.dataset).exists():
        return data_args.dataset, data_args.dataset_config, splits
    logger.warning(
        "%s does not exist: loading the Hub dataset %s instead (hub_dataset; metrics.json records it)",
        data_args.dataset,
        data_args.hub_dataset,
    )
    return data_args.hub_dataset, None, None


def check_splits(corpus, data_args: DataArguments, source: str) -> None:
    """Refuse a training or validation split the dataset does not have, naming the splits it has and the argument
    that chooses it (before anything is learned from the data)."""
    for argument in ("train_split", "validation_split"):
        split = getattr(data_args, argument)
        if split not in corpus:
            folder = ", or file_splits (split=stem pairs) for a folder's files" if Path(source).is_dir() else ""
            raise ValueError(
                f"{source} has no {split!r} split ({argument}); its splits are {sorted(corpus)}: set {argument} to"
                f" one of them{folder}"
            )


# Set by `accelerate launch --use_fsdp` / `--use_deepspeed` or an accelerate config of that distributed_type; the
# Accelerator the Trainer builds reads them.
ENGINE_VARIABLES = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed"}


def check_engine(training_args: VaswaniTrainingArguments) -> None:
    """Refuse FSDP and DeepSpeed, from the training arguments (`fsdp`, `deepspeed`) or from accelerate's launcher:
    DDP is the engine this package trains and saves with."""
    engines = [name for name, value in (("FSDP", training_args.fsdp), ("DeepSpeed", training_args.deepspeed)) if value]
    engines += [name for variable, name in ENGINE_VARIABLES.items() if str_to_bool(os.environ.get(variable, "0"))]
    if engines:
        raise ValueError(
            f"{' and '.join(dict.fromkeys(engines))} requested (training arguments or accelerate launch/config), but"
            " DDP is the supported engine: the largest model (big, the paper's 213M parameters) fits on every GPU"
            " with its gradients and Adam state (about 3.4 GB in float32), so sharding it buys nothing, and the"
            " checkpoint, averaging and resume code reads DDP's layouts (one model.safetensors, one optimizer.pt)."
            " Unset fsdp and deepspeed and launch with --multi_gpu (distributed_type: MULTI_GPU, as in"
            " recipes/accelerate_8gpu.yaml)"
        )


def train(model_args: ModelArguments, data_args: DataArguments, training_args: VaswaniTrainingArguments) -> dict:
    """The whole run: data, tokenizer, model, training (resumable), checkpoint averaging, sacreBLEU (BLEU, chrF) on
    the test split, and the output folder (model, tokenizer, generation config, metrics.json, test_predictions.txt,
    training_curves.png). An output folder holding an earlier run is refused unless `resume_from_checkpoint` is set,
    and a reused tokenizer must fit the recipe (`check_tokenizer_fits`), both before anything is written. FSDP and
    DeepSpeed are refused before anything is read (`check_engine`)."""
    check_engine(training_args)
    output_dir = Path(training_args.output_dir)
    check_output_dir(training_args)
    PartialState().wait_for_everyone()  # every process has looked before the first one writes anything
    output_dir.mkdir(parents=True, exist_ok=True)
    source, config_name, splits = dataset_source(data_args)
    corpus = load_corpus(
        source, data_args.source_lang, data_args.target_lang, data_args.dataset_format, config_name, splits
    )
    check_splits(corpus, data_args, source)
    tokenizer = build_tokenizer(data_args, corpus, output_dir, training_args)
    set_seed(training_args.seed)  # before the model exists: its initial weights come from this seed
    model = build_model(model_args, tokenizer)
    with training_args.main_process_first(desc="preprocessing"):
        data = preprocess(
            corpus,
            tokenizer,
            data_args.source_lang,
            data_args.target_lang,
            max_source_tokens=data_args.max_source_tokens,
            max_target_tokens=data_args.max_target_tokens,
            max_length_ratio=data_args.max_length_ratio,
            filter_splits=(data_args.train_split,),
            num_proc=data_args.preprocessing_num_workers,
        )
    data_counts = pair_counts(corpus, data)
    for split, counts in data_counts.items():
        logger.info("%s: %d pairs read, %d filtered out by length, %d kept", split, *counts.values())
    validation = data[data_args.validation_split]
    if data_args.max_eval_samples is not None:
        validation = validation.select(range(min(data_args.max_eval_samples, len(validation))))

    marks = [float(m) for m in training_args.eval_at_minutes.split(",")] if training_args.eval_at_minutes else []
    by_metric = training_args.average_checkpoints != "last"
    budget = TrainingTimeBudget(training_args.max_train_minutes, marks, evaluate_at_stop=by_metric)
    trainer = VaswaniTrainer(
        model=model,
        args=training_args,
        train_dataset=data[data_args.train_split],
        eval_dataset=validation,
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        compute_metrics=bleu_metric_for_trainer(tokenizer),
        callbacks=[budget],
    )
    resume = training_args.resume_from_checkpoint
    if resume in ("last", "true", "True"):
        resume = resumable_checkpoint(output_dir, training_args)
        resume = str(resume) if resume else None
    elif resume is not None and (problem := checkpoint_problem(resume)):
        raise ValueError(f"cannot resume from {resume}: {problem}")
    started = time.perf_counter()
    if resume is not None and _finished(Path(resume), training_args):
        # Trainer would take one more step past max_steps when resumed from the final checkpoint (measured:
        # tests/test_faults.py); the run is over, so its weights and state are taken as they are.
        trainer._load_from_checkpoint(resume)
        trainer.state = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json"))
        stored = _stored_callback(Path(resume), TrainingTimeBudget).get("attributes", {})
        budget.continue_from(stored.get("trained_seconds", 0.0), stored.get("reached", []))
        for callback in trainer.callback_handler.callbacks:
            if isinstance(callback, EarlyStopping):
                counts = _stored_callback(Path(resume), EarlyStopping).get("attributes", {})
                callback.early_stopping_patience_counter = counts.get("early_stopping_patience_counter", 0)
        train_metrics = {"resumed_from_final_checkpoint": resume}
    else:
        train_metrics = trainer.train(resume_from_checkpoint=resume).metrics
    metrics = {"train": {**train_metrics, "wall_seconds": time.perf_counter() - started}}
    metrics["train"]["world_size"] = training_args.world_size
    metrics["train"]["trained_minutes"] = budget.trained_seconds / 60
    metrics["train"]["time_marks"] = budget.reached
    stopping = [c for c in trainer.callback_handler.callbacks if isinstance(c, EarlyStopping)]
    if stopping:
        metrics["train"]["stopped_early_at_step"] = trainer.state.global_step if stopping[0].stopped() else None
    metrics["settings"] = run_settings(model_args, data_args, training_args, model)
    metrics["settings"]["data"]["loaded"] = {"dataset": source, "dataset_config": config_name}
    metrics["data"] = data_counts
    trainer.save_model(str(output_dir))  # the last weights; replaced below if averaging does better

    evaluation = _final_evaluation(trainer, data, data_args, training_args, output_dir)  # on every process
    if not trainer.is_world_process_zero():
        return metrics
    metrics.update(evaluation)
    metrics["log_history"] = trainer.state.log_history
    write_json(output_dir / "metrics.json", metrics)
    final_bleu = {
        name: (trainer.state.global_step, result["validation_bleu"]["score"])
        for name, result in metrics["evaluation"].items()
    }
    plot_training_curves(trainer.state.log_history, output_dir / "training_curves.png", final_bleu)
    _print_summary(metrics, output_dir)
    return metrics


# The training arguments that define the recipe, recorded in metrics.json for the model card and for reproduction.
RECIPE_SETTINGS = (
    "seed",
    "max_tokens",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "world_size",
    "learning_rate",
    "lr_schedule",
    "lr_scale",
    "warmup_steps",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "weight_decay",
    "label_smoothing_factor",
    "max_grad_norm",
    "num_train_epochs",
    "max_steps",
    "max_train_minutes",
    "eval_steps",
    "save_steps",
    "save_total_limit",
    "metric_for_best_model",
    "average_checkpoints",
    "checkpoints_to_average",
    "early_stopping_patience",
    "tokenized_bleu",
    "bf16",
    "fp16",
)


def run_settings(model_args: ModelArguments, data_args: DataArguments, training_args, model: PreTrainedModel) -> dict:
    """What a reader needs to know and repeat about a run: arguments, recipe and model size."""
    recipe = {name: getattr(training_args, name) for name in RECIPE_SETTINGS}
    return {
        "model": {**asdict(model_args), "num_parameters": model.num_parameters()},
        "data": asdict(data_args),
        "training": recipe,
    }


def pair_counts(corpus, data) -> dict[str, dict[str, int]]:
    """Per split: sentence pairs read, filtered out by `preprocess`'s length filters (empty sides, too many tokens, a
    length ratio too high), and kept."""
    return {
        split: {"read": len(corpus[split]), "filtered": len(corpus[split]) - len(data[split]), "kept": len(data[split])}
        for split in data
    }


def _stored_callback(checkpoint: Path, kind: type) -> dict:
    """The state of the callback of class `kind` saved in a checkpoint's trainer_state.json: {"args": ...,
    "attributes": ...}, or {} if it has none."""
    state = read_json(checkpoint / "trainer_state.json")
    stored = state.get("stateful_callbacks", {}).get(kind.__name__, {})
    return stored[0] if isinstance(stored, list) and stored else stored


def _finished(checkpoint: Path, training_args: VaswaniTrainingArguments) -> bool:
    """Whether `checkpoint` ends the run: it holds max_steps updates, the training time it records has spent the
    recipe's time budget (the budget it was saved under may have been smaller), or the evaluations it counts without
    improvement reach the recipe's early_stopping_patience."""
    state = read_json(checkpoint / "trainer_state.json")
    if training_args.max_steps > 0 and state["global_step"] >= training_args.max_steps:
        return True
    patience = training_args.early_stopping_patience
    counted = _stored_callback(checkpoint, EarlyStopping).get("attributes", {})
    if patience is not None and counted.get("early_stopping_patience_counter", 0) >= patience:
        return True
    minutes = training_args.max_train_minutes
    trained_seconds = _stored_callback(checkpoint, TrainingTimeBudget).get("attributes", {}).get("trained_seconds", 0)
    return minutes is not None and trained_seconds / 60 >= minutes


def _split_texts(dataset, data_args: DataArguments) -> tuple[list[str], list[str]]:
    pairs = dataset["translation"]
    return [p[data_args.source_lang] for p in pairs], [p[data_args.target_lang] for p in pairs]


# The name of the averaged model in metrics.json, by average_checkpoints and the number of checkpoints averaged.
AVERAGE_NAMES = {
    "last": "average of {}",
    "best": "average of the best {}",
    "around_best": "average of {} around the best",
}


def averaged_checkpoints(output_dir: Path, training_args) -> list[dict]:
    """The complete checkpoints that the final evaluation averages (`select_checkpoints` by
    `training_args.average_checkpoints` and `checkpoints_to_average`), oldest first: {"step", "folder", and the
    validation metric each recorded (e.g. "eval_bleu": 37.8, or None; absent without metric_for_best_model)}."""
    metric = logged_metric(training_args)
    folders = {checkpoint_step(folder): folder for folder in complete_checkpoints(output_dir)}
    scores = checkpoint_scores(folders.values(), metric)
    selection, count = training_args.average_checkpoints, training_args.checkpoints_to_average
    chosen = select_checkpoints(scores, selection, count, training_args.greater_is_better is not False)
    recorded = {step: {metric: scores[step]} if metric else {} for step in chosen}
    return [{"step": step, "folder": str(folders[step]), **recorded[step]} for step in chosen]


def _final_evaluation(trainer, data, data_args, training_args, output_dir: Path) -> dict | None:
    """Validation BLEU of the last weights and of the average of the checkpoints `averaged_checkpoints` chooses (the
    last N, the best N by validation metric, or the N around the best); the better one becomes the saved model. BLEU
    and chrF of both on validation and test are reported, with the steps and validation metric of the checkpoints
    averaged, and the test translations written one a line: `test_predictions.txt` of the saved model,
    `test_predictions_{last,average}.txt` of the other. Every process builds both models and translates its share of
    each split (`translate(across_processes=True)`); the main process alone scores, writes and returns the results,
    the others return None."""
    candidates = {"last": trainer.model}
    found = averaged_checkpoints(output_dir, training_args) if trainer.is_world_process_zero() else None
    averaged = broadcast_object_list([found])[0]  # the main process's choice: every process averages the same
    # One checkpoint of the last update is the last weights themselves.
    if averaged and [checkpoint["step"] for checkpoint in averaged] != [trainer.state.global_step]:
        average_name = AVERAGE_NAMES[training_args.average_checkpoints].format(len(averaged))
        folders = [checkpoint["folder"] for checkpoint in averaged]
        candidates[average_name] = load_averaged_model(folders).to(trainer.model.device)
    tokenizer = trainer.processing_class
    splits = {"validation": data_args.validation_split}
    if data_args.test_split and data_args.test_split in data:
        splits["test"] = data_args.test_split
    outputs = {
        name: {
            role: translate(
                model,
                tokenizer,
                _split_texts(data[split], data_args)[0],
                progress_bar=not training_args.disable_tqdm,
                description=f"{role}, {name}",
                across_processes=True,
            )
            for role, split in splits.items()
        }
        for name, model in candidates.items()
    }
    if not trainer.is_world_process_zero():
        return None
    results = {}
    for name in candidates:
        results[name] = {}
        for role, split in splits.items():
            hypotheses, references = outputs[name][role], _split_texts(data[split], data_args)[1]
            results[name][f"{role}_bleu"] = bleu(hypotheses, references)
            results[name][f"{role}_chrf"] = chrf(hypotheses, references)
            if training_args.tokenized_bleu:
                results[name][f"{role}_tokenized_bleu"] = tokenized_bleu(hypotheses, references)
        if "test" in outputs[name]:
            results[name]["test_hypotheses_head"] = outputs[name]["test"][:5]
        if name != "last":
            results[name]["checkpoints"] = [{k: v for k, v in c.items() if k != "folder"} for c in averaged]
    best = max(results, key=lambda name: results[name]["validation_bleu"]["score"])
    for name in candidates:
        if "test" in outputs[name]:
            file_name = "test_predictions.txt" if name == best else f"test_predictions_{name.split()[0]}.txt"
            write_text_lines(output_dir / file_name, outputs[name]["test"])
            results[name]["test_predictions"] = file_name
    if best != "last":
        candidates[best].save_pretrained(output_dir)
    trainer.processing_class.save_pretrained(output_dir)
    return {"final_model": best, "evaluation": results}


def _print_summary(metrics: dict, output_dir: Path) -> None:
    lines = [f"Training finished: {output_dir}", f"  final model: {metrics['final_model']}"]
    for split, counts in metrics.get("data", {}).items():
        lines.append(
            f"  {split}: {counts['read']} pairs read, {counts['filtered']} filtered out, {counts['kept']} kept"
        )
    for name, result in metrics["evaluation"].items():
        line = f"  {name}: validation BLEU {result['validation_bleu']['score']:.2f}"
        line += f" chrF {result['validation_chrf']['score']:.2f}"
        if "test_bleu" in result:
            line += f", test BLEU {result['test_bleu']['score']:.2f} chrF {result['test_chrf']['score']:.2f}"
            line += f" ({output_dir / result['test_predictions']})"
        lines.append(line)
        if "checkpoints" in result:
            shown = ", ".join(
                str(c["step"]) + "".join(f" ({v:.2f})" for k, v in c.items() if k != "step" and v is not None)
                for c in result["checkpoints"]
            )
            lines.append(f"    checkpoints averaged (validation metric): {shown}")
        if "validation_tokenized_bleu" in result:  # the paper's metric, labelled as such
            roles = [role for role in ("validation", "test") if f"{role}_tokenized_bleu" in result]
            shown = ", ".join(f"{role} {result[f'{role}_tokenized_bleu']['score']:.2f}" for role in roles)
            lines.append(f"    {result['validation_tokenized_bleu']['label']}: {shown}")
    scores = next(iter(metrics["evaluation"].values()))
    lines.append(f"  sacreBLEU signatures: BLEU {scores['validation_bleu']['signature']}")
    lines.append(f"                        chrF {scores['validation_chrf']['signature']}")
    print("\n".join(lines))
