"""vaswani-hf: the Transformer of "Attention Is All You Need" as a Hugging Face model.

Importing the package registers the model with the Auto classes, so `AutoConfig`, `AutoModel` and
`AutoModelForSeq2SeqLM` resolve `model_type="vaswani"` without `trust_remote_code`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from .configuration_vaswani import PRESETS, VaswaniConfig
from .convert import convert_from_marian, convert_to_marian
from .modeling_vaswani import VaswaniForConditionalGeneration, VaswaniModel, VaswaniPreTrainedModel

AutoConfig.register(VaswaniConfig.model_type, VaswaniConfig, exist_ok=True)
AutoModel.register(VaswaniConfig, VaswaniModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(VaswaniConfig, VaswaniForConditionalGeneration, exist_ok=True)

# save_pretrained() then writes an `auto_map` and copies the two model files, so a saved folder or published repo
# also loads with `trust_remote_code=True` where this package is not installed.
VaswaniConfig.register_for_auto_class()
VaswaniModel.register_for_auto_class("AutoModel")
VaswaniForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")

__all__ = [
    "PRESETS",
    "VaswaniConfig",
    "VaswaniModel",
    "VaswaniPreTrainedModel",
    "VaswaniForConditionalGeneration",
    "convert_to_marian",
    "convert_from_marian",
]
