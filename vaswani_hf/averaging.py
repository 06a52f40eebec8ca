"""Checkpoint averaging (Sec. 6.1): the element-wise mean of saved models' weights, refused where the checkpoints are
of different models or cannot be read."""

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, PreTrainedModel

from .files import atomic_folder, read_json
from .tokenization import load_tokenizer


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


# config.json entries that record how and by what a checkpoint was saved, or how it was being trained (a dropout
# schedule changes P_drop during a run), not which model it is
CONFIG_BOOKKEEPING = frozenset(
    {"transformers_version", "_name_or_path", "dtype", "torch_dtype", "auto_map", "custom_pipelines"}
    | {"dropout", "attention_dropout", "activation_dropout"}
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
