"""The arguments of a training run, as HfArgumentParser reads them from the command line or a recipe: the model
(`ModelArguments`), the data (`DataArguments`), and the paper's recipe (`VaswaniTrainingArguments`, Sec. 5), with
the checks that refuse a bad value naming it."""

import difflib
import json
import math
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from transformers import Seq2SeqTrainingArguments

from .configuration_vaswani import PRESETS, VaswaniConfig


def close_names(name: str, known: Iterable[str]) -> str:
    """' (did you mean ...?)' with the known names closest to a misspelt `name`, or '' when none is close."""
    matches = difflib.get_close_matches(name, sorted(known), n=3)
    return f" (did you mean {' or '.join(repr(m) for m in matches)}?)" if matches else ""


def check_choices(arguments: object) -> None:
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
        parse_file_splits(self.file_splits)  # a malformed list is an error before anything is read


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
    dropout_schedule: str | None = field(
        default=None,
        metadata={
            "help": "P_drop from given updates on, 'UPDATE:P[,UPDATE:P...]', e.g. '2800:0.3' (the model's dropout "
            "before the first): a lower dropout early trains faster, a higher one later overfits less"
        },
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
        parse_dropout_schedule(self.dropout_schedule)  # bad schedules and marks are errors before anything starts
        parse_eval_at_minutes(self.eval_at_minutes)
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


def parse_dropout_schedule(text: str | None) -> list[tuple[int, float]]:
    """'2800:0.3,5000:0.4' -> [(2800, 0.3), (5000, 0.4)]: updates in increasing order, each P_drop in [0, 1)."""
    changes: list[tuple[int, float]] = []
    for item in text.split(",") if text else []:
        update, _, p = item.partition(":")
        try:
            change = int(update), float(p)
        except ValueError:
            raise ValueError(f"dropout_schedule {text!r}: {item!r} is not UPDATE:P (e.g. 2800:0.3)") from None
        if change[0] < 1 or not 0.0 <= change[1] < 1.0 or (changes and change[0] <= changes[-1][0]):
            raise ValueError(
                f"dropout_schedule {text!r}: {item!r} needs an update of 1 or more, after the one before it, and a "
                "P_drop in [0, 1)"
            )
        changes.append(change)
    return changes


def parse_file_splits(text: str | None) -> dict[str, str] | None:
    """'train=train,validation=val' -> {'train': 'train', 'validation': 'val'} (split name = file stem)."""
    if not text:
        return None
    splits = {}
    for item in text.split(","):
        split, sep, stem = (part.strip() for part in item.partition("="))
        if not (sep and split and stem) or split in splits:
            raise ValueError(
                f"file_splits {text!r}: {item!r} is not SPLIT=STEM, or names a split twice (e.g. train=train,"
                "validation=val)"
            )
        splits[split] = stem
    return splits


def parse_eval_at_minutes(text: str | None) -> list[float]:
    """'10,30' -> [10.0, 30.0]: training minutes, positive and increasing."""
    marks: list[float] = []
    for item in text.split(",") if text else []:
        try:
            mark = float(item)
        except ValueError:
            raise ValueError(f"eval_at_minutes {text!r}: {item!r} is not a number of minutes (e.g. 10,30)") from None
        if not 0 < mark < math.inf or (marks and mark <= marks[-1]):
            raise ValueError(f"eval_at_minutes {text!r}: {item!r} must be positive and after the mark before it")
        marks.append(mark)
    return marks


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
