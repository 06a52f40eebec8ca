"""vaswani-hf: the Transformer of "Attention Is All You Need" as a Hugging Face model.

Importing the package registers the model with the Auto classes, so `AutoConfig`, `AutoModel` and
`AutoModelForSeq2SeqLM` resolve `model_type="vaswani"` without `trust_remote_code`, and brings back
`pipeline("translation")`, which transformers 5 removed.
"""

import re

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM, pipelines

from .configuration_vaswani import PRESETS, VaswaniConfig
from .convert import convert_from_marian, convert_to_marian, export_ctranslate2, quantize_dynamic_int8
from .modeling_vaswani import VaswaniForConditionalGeneration, VaswaniModel, VaswaniPreTrainedModel
from .pipeline_vaswani import TranslationPipeline

AutoConfig.register(VaswaniConfig.model_type, VaswaniConfig, exist_ok=True)
AutoModel.register(VaswaniConfig, VaswaniModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(VaswaniConfig, VaswaniForConditionalGeneration, exist_ok=True)

# save_pretrained() then writes an `auto_map` and copies the two model files, so a saved folder or published repo
# also loads with `trust_remote_code=True` where this package is not installed.
VaswaniConfig.register_for_auto_class()
VaswaniModel.register_for_auto_class("AutoModel")
VaswaniForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")

_LANGUAGE_PAIR_TASK = re.compile(r"translation_(\w+?)_to_(\w+)")


def _register_translation_pipeline() -> None:
    """Make `pipeline("translation")` and `pipeline("translation_xx_to_yy")` return [`TranslationPipeline`].

    transformers 5 lists "translation" in `pipelines.REMOVED_TASKS`, and `pipeline()` raises a `KeyError` for it (and
    for every "translation_*" task) before it looks at the registry. So: drop that one entry, register the task, and
    let the registry's `check_task` read "translation_xx_to_yy" as "translation" with the language pair as options,
    as transformers 4 did. Other tasks are untouched. tests/test_pipeline.py fails if the mechanism changes.
    """
    if not isinstance(getattr(pipelines, "REMOVED_TASKS", None), dict):
        raise ImportError(
            "vaswani_hf expects transformers.pipelines.REMOVED_TASKS (transformers 5.x) to register the translation "
            "pipeline; this transformers version has changed the mechanism"
        )
    pipelines.REMOVED_TASKS.pop("translation", None)
    registry = pipelines.PIPELINE_REGISTRY
    registry.register_pipeline("translation", TranslationPipeline, pt_model=AutoModelForSeq2SeqLM, type="text")
    check_task = registry.check_task

    def check_task_with_language_pair(task: str) -> tuple:
        pair = _LANGUAGE_PAIR_TASK.fullmatch(task)
        if pair is None:
            return check_task(task)
        return "translation", registry.supported_tasks["translation"], pair.groups()

    registry.check_task = check_task_with_language_pair


_register_translation_pipeline()

__all__ = [
    "PRESETS",
    "TranslationPipeline",
    "VaswaniConfig",
    "VaswaniModel",
    "VaswaniPreTrainedModel",
    "VaswaniForConditionalGeneration",
    "convert_to_marian",
    "convert_from_marian",
    "export_ctranslate2",
    "quantize_dynamic_int8",
]
