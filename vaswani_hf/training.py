"""`train()`: a whole run with the paper's recipe (Sec. 5), data to output folder: the corpus, the tokenizer it learns
or checks, the model, training by `VaswaniTrainer` (resumable), the final evaluation of the last weights and the
checkpoint average (Sec. 6.1) by sacreBLEU, and the record of the run (metrics JSON, test translations, curves PNG)."""

import io
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import broadcast_object_list, str_to_bool
from datasets import DatasetDict
from transformers import (
    AutoModelForSeq2SeqLM,
    DataCollatorForSeq2Seq,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerState,
    set_seed,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .arguments import (
    DataArguments,
    ModelArguments,
    VaswaniTrainingArguments,
    parse_dropout_schedule,
    parse_eval_at_minutes,
    parse_file_splits,
    parse_overrides,
)
from .averaging import load_averaged_model
from .callbacks import DropoutSchedule, EarlyStopping, TrainingTimeBudget
from .checkpoints import (
    checkpoint_problem,
    checkpoint_scores,
    checkpoint_step,
    complete_checkpoints,
    logged_metric,
    resumable_checkpoint,
    select_checkpoints,
)
from .configuration_vaswani import VaswaniConfig
from .corpus import load_corpus
from .data import is_hub_repo_id, preprocess
from .devices import warn_if_bfloat16_is_emulated
from .evaluation import bleu, bleu_metric_for_trainer, chrf, tokenized_bleu, translate
from .files import files_replaced_in, read_json, write_bytes, write_json, write_text_lines
from .modeling_vaswani import VaswaniForConditionalGeneration
from .tokenization import (
    check_tokenizer_fits,
    load_tokenizer,
    save_learned_tokenizer,
    train_tokenizer,
    train_tokenizer_command,
)
from .trainer import VaswaniTrainer

logger = logging.getLogger(__name__)


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
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=100)
    plt.close(figure)
    write_bytes(path, image.getvalue())


# Above this many training pairs, a multi-process run refuses to learn its BPE: the other processes would wait for it
# at a barrier that fails after ddp_timeout (1,800 s by default), and the learning time grows with the corpus and
# depends on the machine, so no timeout is known to suffice. The tokenizer is then a step of its own
# (vaswani-train-tokenizer), learned once for every run that uses it. Measured on 2 shared cores
# (docs/benchmarks/tokenizer_scale.md): 35 s for 0.5M pairs, 162 s for 1.5M, 488 s for WMT14 En-De's 4.5M (3.5 GB),
# and En-Fr's 36M would take an hour or more; below 1M pairs it waits under 3 minutes here.
MAX_PAIRS_TO_LEARN_BPE_IN_MULTI_PROCESS_RUN = 1_000_000


def build_tokenizer(
    data_args: DataArguments, corpus: DatasetDict, output_dir: Path, training_args: VaswaniTrainingArguments
) -> PreTrainedTokenizerBase:
    """The recipe's tokenizer: `tokenizer_name_or_path`, the run's own `tokenizer/` (on resume), or a BPE learned
    here from the training split. A missing local `tokenizer_name_or_path`, and learning from more than
    `MAX_PAIRS_TO_LEARN_BPE_IN_MULTI_PROCESS_RUN` pairs in a multi-process run, are refused with the
    vaswani-train-tokenizer command to run first."""
    if data_args.tokenizer_name_or_path:
        folder = data_args.tokenizer_name_or_path
        if not Path(folder).exists() and not is_hub_repo_id(folder):  # a local path: never looked up on the Hub
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


def build_model(model_args: ModelArguments, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
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
    splits = parse_file_splits(data_args.file_splits)
    if data_args.hub_dataset is None or Path(data_args.dataset).exists():
        return data_args.dataset, data_args.dataset_config, splits
    logger.warning(
        "%s does not exist: loading the Hub dataset %s instead (hub_dataset; metrics.json records it)",
        data_args.dataset,
        data_args.hub_dataset,
    )
    return data_args.hub_dataset, None, None


def check_splits(corpus: DatasetDict, data_args: DataArguments, source: str) -> None:
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


def check_precision(training_args: VaswaniTrainingArguments) -> None:
    """Refuse the precision settings that would do nothing here without a word, and warn where bf16 is emulated:
    fp16 on a CPU (accelerate turns on neither autocast nor a loss scaler there: the run is float32), and
    `bf16_full_eval` / `fp16_full_eval` (the Trainer casts only in an `evaluate()` outside `train()`, and the final
    evaluation decodes with the saved float32 weights)."""
    half_eval = [name for name in ("bf16_full_eval", "fp16_full_eval") if getattr(training_args, name)]
    if half_eval:
        raise ValueError(
            f"{' and '.join(half_eval)} would not change this run's evaluations; to decode in bfloat16 evaluate the "
            "trained model with `vaswani-evaluate MODEL SRC REF --dtype bfloat16`"
        )
    if training_args.fp16 and training_args.device.type == "cpu":
        raise ValueError("fp16 trains on GPUs only (on a CPU the run would be float32): use --bf16 true on a CPU")
    if training_args.bf16:
        warn_if_bfloat16_is_emulated(training_args.device, "bf16 training")


def train(model_args: ModelArguments, data_args: DataArguments, training_args: VaswaniTrainingArguments) -> dict:
    """The whole run: data, tokenizer, model, training (resumable), checkpoint averaging, sacreBLEU (BLEU, chrF) on
    the test split, and the output folder (model, tokenizer, generation config, metrics.json, test_predictions.txt,
    training_curves.png). An output folder holding an earlier run is refused unless `resume_from_checkpoint` is set,
    and a reused tokenizer must fit the recipe (`check_tokenizer_fits`), both before anything is written. FSDP and
    DeepSpeed are refused before anything is read (`check_engine`), and so are precision settings that would do
    nothing (`check_precision`)."""
    check_engine(training_args)
    check_precision(training_args)
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

    marks = parse_eval_at_minutes(training_args.eval_at_minutes)
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
    if changes := parse_dropout_schedule(training_args.dropout_schedule):
        trainer.add_callback(DropoutSchedule(changes, initial=model.config.dropout))
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
    if training_args.should_save:  # the last weights; replaced below if averaging does better
        with files_replaced_in(output_dir) as staging:
            trainer.save_model(str(staging))

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


def run_settings(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: VaswaniTrainingArguments,
    model: PreTrainedModel,
) -> dict:
    """What a reader needs to know and repeat about a run: arguments, recipe and model size."""
    recipe = {name: getattr(training_args, name) for name in RECIPE_SETTINGS}
    return {
        "model": {**asdict(model_args), "num_parameters": model.num_parameters()},
        "data": asdict(data_args),
        "training": recipe,
    }


def pair_counts(corpus: DatasetDict, data: DatasetDict) -> dict[str, dict[str, int]]:
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


def averaged_checkpoints(output_dir: Path, training_args: VaswaniTrainingArguments) -> list[dict]:
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
    with files_replaced_in(output_dir) as staging:
        if best != "last":
            candidates[best].save_pretrained(staging)
        trainer.processing_class.save_pretrained(staging)
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
