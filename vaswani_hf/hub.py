"""Publishing a trained model to the Hugging Face Hub: the repo folder, its model card, the upload.

`build_repo_folder` turns the output folder of `train()` into exactly what the repo holds: safetensors weights,
`config.json` (with `auto_map` and `custom_pipelines` for users without the package), `generation_config.json`,
tokenizer files, the code files for `trust_remote_code`, the model card, the metrics JSON and the training curves.
`publish` validates that folder and uploads it in one commit with `huggingface_hub.HfApi`.
"""

import json
import os
import shutil
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import RepositoryNotFoundError
from transformers import GenerationConfig

from .data import is_hub_repo_id
from .files import atomic_folder, read_json
from .modeling_vaswani import VaswaniForConditionalGeneration
from .pipeline_vaswani import TranslationPipeline
from .tokenization import load_tokenizer

# Package data (pyproject's package-data), so an installed package finds it as an editable checkout does.
DEFAULT_CARD_TEMPLATE = resources.files(__package__) / "model_cards" / "vaswani_translation.md"

# What the output folder of a training run must hold to be published, and why.
RUN_FILES = {
    "config.json": "the model configuration",
    "generation_config.json": "the decoding settings",
    "model.safetensors": "the weights in safetensors",
    "tokenizer.json": "the tokenizer",
    "tokenizer_config.json": "the tokenizer settings",
    "metrics.json": "the evaluation results written by train()",
}
OPTIONAL_RUN_FILES = ("training_curves.png",)
CODE_FILES = (
    "configuration_vaswani.py",
    "generation_vaswani.py",
    "loss_vaswani.py",
    "modeling_vaswani.py",
    "pipeline_vaswani.py",
)
REPO_FILES = (*RUN_FILES, "README.md", *CODE_FILES)
BUILT_BY = "vaswani-publish"  # `atomic_folder`'s record: a repo folder publish built may be rebuilt without --overwrite
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# Hub license identifiers a translation model is likely to carry; the Hub rejects free text like "Apache 2.0".
LICENSES = (
    "apache-2.0",
    "mit",
    "bsd-3-clause",
    "cc-by-4.0",
    "cc-by-sa-4.0",
    "cc-by-nc-4.0",
    "cc-by-nc-sa-4.0",
    "openrail",
    "other",
    "unknown",
)
LANGUAGE_NAMES = {"en": "English", "de": "German", "fr": "French", "cs": "Czech", "ro": "Romanian", "ru": "Russian"}
HUB_DATASET_NAMES = {
    "wmt/wmt14": "WMT 2014",
    "wmt14": "WMT 2014",
    "wmt16": "WMT 2016",
    "bentrevett/multi30k": "Multi30k",
}


def missing_run_files(run_dir: str | os.PathLike) -> list[str]:
    """The required files absent from a training output folder, each named with what it is."""
    run_dir = Path(run_dir)
    return [f"{name} ({what})" for name, what in RUN_FILES.items() if not (run_dir / name).is_file()]


def render_model_card(
    metrics: dict[str, Any],
    model: VaswaniForConditionalGeneration,
    repo_id: str,
    license: str = "apache-2.0",
    example_source: str = "A man in a red shirt is riding a bike.",
    template_path: str | os.PathLike | Traversable = DEFAULT_CARD_TEMPLATE,
) -> ModelCard:
    """The model card of a run: YAML metadata (languages, license, datasets, `model-index` with the measured BLEU and
    its sacreBLEU signature) and the sections of `vaswani_hf/model_cards/vaswani_translation.md` (or `template_path`),
    filled from `metrics.json`."""
    if "settings" not in metrics or "evaluation" not in metrics:
        raise ValueError("metrics.json lacks 'settings' or 'evaluation': it was not written by this version's train()")
    data, training = metrics["settings"]["data"], metrics["settings"]["training"]
    source, target = data["source_lang"], data["target_lang"]
    published = metrics["evaluation"][metrics["final_model"]]
    if "test_bleu" in published:
        split, result = "test", published["test_bleu"]
    else:
        split, result = "validation", published["validation_bleu"]
    # what train() really loaded: the Hub dataset where the recipe's local folder was missing (`hub_dataset`)
    loaded = data.get("loaded", {"dataset": data["dataset"], "dataset_config": data.get("dataset_config")})
    dataset, dataset_config = loaded["dataset"], loaded["dataset_config"]
    is_hub_dataset = is_hub_repo_id(dataset)
    dataset_type = dataset if is_hub_dataset else Path(dataset).name
    dataset_name = HUB_DATASET_NAMES.get(dataset_type, dataset_type)
    if dataset_type.lower() == "multi30k":
        dataset_name = "Multi30k"
    task_name = f"Translation {source}-{target}"
    model_name = repo_id.split("/")[-1]
    card_data = ModelCardData(
        model_name=model_name,
        language=[source, target],
        license=license,
        library_name="transformers",
        pipeline_tag="translation",
        tags=["translation", "transformer", "vaswani", f"{source}-{target}"],
        datasets=[dataset] if is_hub_dataset else None,
        metrics=["bleu"],
        eval_results=[
            EvalResult(
                task_type="translation",
                task_name=task_name,
                dataset_type=dataset_type,
                dataset_name=f"{dataset_name} {source}-{target}",
                dataset_config=dataset_config if is_hub_dataset else None,
                dataset_split=split,
                metric_type="bleu",
                metric_name="sacreBLEU",
                metric_value=round(result["score"], 2),
                metric_config=result["signature"],
            )
        ],
    )
    train = metrics["train"]
    template = Path(template_path) if isinstance(template_path, (str, os.PathLike)) else template_path
    return ModelCard.from_template(
        card_data,
        template_str=template.read_text(encoding="utf-8"),
        repo_id=repo_id,
        model_name=model_name,  # card_data.to_dict() leaves it out (it goes into model-index only)
        source_lang=source,
        target_lang=target,
        source_name=LANGUAGE_NAMES.get(source, source),
        target_name=LANGUAGE_NAMES.get(target, target),
        dataset=dataset,
        dataset_config=dataset_config if is_hub_dataset else None,
        dataset_name=dataset_name,
        test_split=split,
        test_bleu=result["score"],
        signature=result["signature"],
        config=model.config,
        generation=model.generation_config,
        num_parameters=model.num_parameters(),
        training=training,
        trained_minutes=train.get("trained_minutes", train.get("train_runtime", 0) / 60),
        steps=metrics["log_history"][-1]["step"] if metrics.get("log_history") else "?",
        epochs=train.get("epoch", 0.0),
        final_model=metrics["final_model"],
        evaluation=metrics["evaluation"],
        example_source=example_source,
    )


def build_repo_folder(
    run_dir: str | os.PathLike,
    repo_folder: str | os.PathLike,
    repo_id: str,
    license: str = "apache-2.0",
    template_path: str | os.PathLike | Traversable = DEFAULT_CARD_TEMPLATE,
    overwrite: bool = False,
) -> Path:
    """Write the folder a published repo holds, from a training output folder, and validate it. The folder is built
    beside `repo_folder` and renamed into place (`atomic_folder`), so a failure never leaves a half-built one. An
    existing non-empty `repo_folder` is replaced only if an earlier build made it, or with `overwrite`; the run
    folder, a folder holding it and the current directory never are."""
    run_dir, repo_folder = Path(run_dir), Path(repo_folder)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"training output folder {run_dir} does not exist")
    missing = missing_run_files(run_dir)
    if missing:
        raise FileNotFoundError(f"{run_dir} cannot be published, it lacks: " + "; ".join(missing))
    with atomic_folder(repo_folder, overwrite, keep=[("the training run", run_dir)], built_by=BUILT_BY) as staging:
        metrics = read_json(run_dir / "metrics.json")
        model = VaswaniForConditionalGeneration.from_pretrained(run_dir, use_safetensors=True)
        model.generation_config = GenerationConfig.from_pretrained(run_dir)
        tokenizer = load_tokenizer(run_dir)
        # Saving through the pipeline writes `custom_pipelines` into config.json and copies pipeline_vaswani.py;
        # the model's save adds `auto_map` and the two model files.
        TranslationPipeline(model=model, tokenizer=tokenizer, task="translation").save_pretrained(staging)
        for name in ("metrics.json", *OPTIONAL_RUN_FILES):
            if (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, staging / name)
        card = render_model_card(metrics, model, repo_id, license=license, template_path=template_path)
        card.save(staging / "README.md")
        validate_repo_folder(staging)
    return repo_folder


def validate_repo_folder(folder: str | os.PathLike) -> None:
    """Check a repo folder before upload: required files, no pickles, the remote-code declarations, and the card's
    metadata (parsed by `huggingface_hub`'s card classes, plus the exact values the Hub expects). Raises a
    `ValueError` listing every problem."""
    folder = Path(folder)
    problems = [f"missing {name}" for name in REPO_FILES if not (folder / name).is_file()]
    problems += [
        f"{path.name} is a pickle-format file; publish safetensors only"
        for path in folder.iterdir()
        if path.suffix in PICKLE_SUFFIXES
    ]
    if (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        auto_map = config.get("auto_map", {})
        for auto_class in ("AutoConfig", "AutoModelForSeq2SeqLM"):
            if auto_class not in auto_map:
                problems.append(f"config.json auto_map lacks {auto_class}")
        translation = config.get("custom_pipelines", {}).get("translation", {})
        if translation.get("impl") != "pipeline_vaswani.TranslationPipeline":
            problems.append("config.json custom_pipelines does not declare pipeline_vaswani.TranslationPipeline")
    if (folder / "README.md").is_file():
        problems += card_metadata_problems(ModelCard.load(folder / "README.md").data)
    if problems:
        raise ValueError(f"{folder} is not ready to publish: " + "; ".join(problems))


def card_metadata_problems(data: ModelCardData) -> list[str]:
    """The metadata mistakes that local parsing lets through but the Hub (or its users) would not."""
    problems = []
    if data.pipeline_tag != "translation":
        problems.append(f"pipeline_tag is {data.pipeline_tag!r}, not 'translation'")
    if data.library_name != "transformers":
        problems.append(f"library_name is {data.library_name!r}, not 'transformers'")
    if data.license not in LICENSES:
        problems.append(f"license {data.license!r} is not a Hub license identifier such as {LICENSES[:3]}")
    if not data.language or not all(isinstance(code, str) and 2 <= len(code) <= 3 for code in data.language):
        problems.append(f"language must list ISO 639-1/3 codes, got {data.language!r}")
    results = data.eval_results or []
    if not any(r.metric_type == "bleu" and isinstance(r.metric_value, (int, float)) for r in results):
        problems.append("model-index has no numeric BLEU result")
    return problems


def _visibility(private: bool) -> str:
    return "private" if private else "public"


def check_visibility(api: HfApi, repo_id: str, private: bool | None) -> None:
    """Refuse to publish to an existing repo whose visibility is not the one asked for (`private` True or False;
    None accepts either): a `--private` model must never land in a public repo. Raises a `ValueError` naming both."""
    if private is None:
        return
    try:
        existing = api.model_info(repo_id).private
    except RepositoryNotFoundError:
        return  # a new repo: create_repo makes it as asked
    if existing is not None and existing != private:
        raise ValueError(
            f"{repo_id} exists as a {_visibility(existing)} repo, but a {_visibility(private)} one was asked for; "
            "nothing was uploaded. Change the repo's visibility on the Hub first, or publish to another repo"
        )


def publish(
    run_dir: str | os.PathLike,
    repo_id: str,
    repo_folder: str | os.PathLike | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload Vaswani Transformer",
    license: str = "apache-2.0",
    token: str | None = None,
    dry_run: bool = False,
    overwrite: bool = False,
) -> str:
    """Build and validate the repo folder from `run_dir` (`build_repo_folder`, by default `run_dir/hub/ORG--NAME`),
    then create `repo_id` and upload the folder in one commit. `private`: True or False is the visibility the repo
    must have (a new repo is created so; an existing one of the other visibility is refused before any upload), None
    takes an existing repo as it is and creates a new one public. `token=None` uses `HF_TOKEN` or the saved login, as
    `huggingface_hub` does; the endpoint follows `HF_ENDPOINT`. With `dry_run`, nothing is uploaded. Returns the
    commit URL, or the folder's path for a dry run."""
    repo_folder = Path(repo_folder) if repo_folder is not None else Path(run_dir) / "hub" / repo_id.replace("/", "--")
    if not dry_run:
        api = HfApi(token=token)
        check_visibility(api, repo_id, private)  # before building: a refusal costs nothing and writes nothing
    build_repo_folder(run_dir, repo_folder, repo_id, license=license, overwrite=overwrite)
    if dry_run:
        return str(repo_folder)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id, folder_path=repo_folder, revision=revision, commit_message=commit_message
    )
    return commit.commit_url
