"""A translation pipeline for transformers 5, which removed its own.

`pipeline("translation", model=...)` returns [`TranslationPipeline`] once `vaswani_hf` is imported (see
`vaswani_hf/__init__.py` for the registration). Published repos carry this file and declare it in `config.json`
under `custom_pipelines`, so `pipeline("translation", model=repo, trust_remote_code=True)` works without the package:
it imports nothing from `vaswani_hf`.
"""

import os
from typing import Any

from transformers import AutoTokenizer, Pipeline
from transformers.utils import logging

logger = logging.get_logger(__name__)


class TranslationPipeline(Pipeline):
    """Translate text with a sequence-to-sequence model, as transformers 4's translation pipeline did.

    `pipe("A text.")` returns `[{"translation_text": ...}]`; `pipe(["A text.", "Another."])` returns one dict per
    input, in order (a list of `num_return_sequences` dicts per input when that is above 1). Decoding follows the
    model's `generation_config` (for Vaswani models the paper's beam 4 and length penalty 0.6, Sec. 6.1); generation
    arguments (`num_beams`, `max_new_tokens`, `generation_config`, ...) passed at creation or call time override it.
    `batch_size=n` translates n inputs per `generate` call: inputs of similar token counts together (the list is
    decoded in order of length, and the outputs returned in the input order).

    Defined results for awkward inputs:
    - an empty or whitespace-only string translates to `""`, without running the model;
    - a source longer than the model accepts (`max_position_embeddings`, or the tokenizer's `model_max_length` if
      smaller) raises a `ValueError` giving both lengths, unless `truncation=True`, which cuts it with a warning;
    - anything but a string (or a list of strings) raises a `TypeError` naming the item;
    - a string that is not valid Unicode (lone surrogates, as from bytes decoded with `errors="surrogateescape"`)
      raises a `ValueError` naming the item and the character;
    - special-token strings in the text (`"</s>"`, `"<pad>"`, ...) are translated as text, never as control tokens.
    """

    _pipeline_calls_generate = True
    # None: `pipeline()` tries to load the tokenizer without failing, so that __init__ can say what is missing
    # (for a model folder without one, transformers' own error asks to install sentencepiece)
    _load_tokenizer = None
    _load_processor = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.tokenizer is not None:
            return
        source = self.model.name_or_path
        if source and os.path.isdir(source):
            if not os.path.isfile(os.path.join(source, "tokenizer.json")):
                raise FileNotFoundError(
                    f"{source} has no tokenizer.json (the BPE vocabulary and merges); it holds "
                    f"{sorted(os.listdir(source))}: save the tokenizer beside the model, or pass tokenizer="
                )
            try:  # the load that failed, again, for its error (a damaged tokenizer.json, say)
                AutoTokenizer.from_pretrained(source)
            except Exception as error:
                raise ValueError(f"the tokenizer in {source} cannot be loaded: {error}") from error
        raise ValueError(f"no tokenizer could be loaded for {source or 'the model'}: pass tokenizer=")

    def _sanitize_parameters(
        self, truncation: bool | None = None, clean_up_tokenization_spaces: bool | None = None, **generate_kwargs
    ) -> tuple[dict, dict, dict]:
        preprocess_params = {} if truncation is None else {"truncation": truncation}
        postprocess_params = {}
        if clean_up_tokenization_spaces is not None:
            postprocess_params["clean_up_tokenization_spaces"] = clean_up_tokenization_spaces
        return preprocess_params, generate_kwargs, postprocess_params

    def __call__(self, inputs: str | list[str], **kwargs) -> list:
        single = isinstance(inputs, str)
        texts = [inputs] if single else inputs
        if not isinstance(texts, (list, tuple)):
            raise TypeError(f"TranslationPipeline expects a string or a list of strings, got {type(inputs).__name__}")
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"TranslationPipeline expects strings, but input {index} is {type(text).__name__}")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as error:  # lone surrogates: bytes decoded with errors="surrogateescape"
                raise ValueError(
                    f"input {index} is not valid Unicode text: {error.reason} at character {error.start} "
                    f"({text[error.start]!r}); undecodable bytes read from a file? Decode them with errors='replace'"
                ) from None

        to_translate = [index for index, text in enumerate(texts) if text.strip()]
        if len(to_translate) > 1:  # batches of similar lengths; the translations go back to their inputs' places
            to_translate = [to_translate[i] for i in self.length_order([texts[index] for index in to_translate])]
        outputs = super().__call__([texts[index] for index in to_translate], **kwargs) if to_translate else []
        # a blank input gets as many empty translations as the others got, or as the generation settings ask
        per_input = len(outputs[0]) if outputs else self._sequences_per_input(kwargs)
        translations = [[{"translation_text": ""} for _ in range(per_input)] for _ in texts]
        for index, output in zip(to_translate, outputs, strict=True):
            translations[index] = output
        if single:
            return translations[0]
        return [output[0] for output in translations] if all(len(o) == 1 for o in translations) else translations

    def _sequences_per_input(self, call_kwargs: dict) -> int:
        """How many translations `generate` would return per input: `num_return_sequences` from the call, else from
        the pipeline's creation, else from the generation config in force."""
        given = {**getattr(self, "_generate_kwargs", {}), **call_kwargs}  # Pipeline keeps creation's generation kwargs
        if given.get("num_return_sequences") is not None:
            return given["num_return_sequences"]
        return (given.get("generation_config") or self.model.generation_config).num_return_sequences or 1

    def length_order(self, texts: list[str]) -> list[int]:
        """The indices of `texts` from the fewest tokens to the most (stable): consecutive inputs, which `batch_size`
        decodes together, then have similar lengths, so less padding, and sentences that finish at similar steps."""
        if not texts:  # the tokenizer fails on an empty list
            return []
        lengths = [len(ids) for ids in self.tokenizer(list(texts), split_special_tokens=True)["input_ids"]]
        return sorted(range(len(texts)), key=lengths.__getitem__)

    def max_source_length(self) -> int | None:
        """The longest source, in tokens, that the model accepts (None if neither model nor tokenizer says)."""
        limits = [
            getattr(self.model.config, "max_position_embeddings", None),
            getattr(self.tokenizer, "model_max_length", None),
        ]
        limits = [limit for limit in limits if isinstance(limit, int) and limit < 1_000_000]
        return min(limits) if limits else None

    def preprocess(self, text: str, truncation: bool = False) -> dict[str, Any]:
        # a literal "</s>" or "<pad>" in the text is text, whatever the tokenizer was saved with
        encoded = self.tokenizer(text, return_tensors="pt", split_special_tokens=True)
        limit = self.max_source_length()
        length = encoded["input_ids"].shape[-1]
        if limit is not None and length > limit:
            if not truncation:
                raise ValueError(
                    f"The input has {length} tokens, more than the {limit} this model accepts (its "
                    f"max_position_embeddings or the tokenizer's model_max_length). Shorten it, or pass "
                    f"truncation=True to translate only its first {limit} tokens."
                )
            logger.warning(f"Input of {length} tokens truncated to the model's limit of {limit} tokens.")
            encoded = self.tokenizer(
                text, return_tensors="pt", truncation=True, max_length=limit, split_special_tokens=True
            )
        return encoded

    def _forward(self, model_inputs: dict[str, Any], **generate_kwargs) -> dict[str, Any]:
        output_ids = self.model.generate(**model_inputs, **self._prepare_generate_kwargs(generate_kwargs))
        # One row per source, holding its num_return_sequences outputs, so that batches split back per source.
        batch_size = model_inputs["input_ids"].shape[0]
        return {"output_ids": output_ids.reshape(batch_size, -1, output_ids.shape[-1])}

    def postprocess(
        self, model_outputs: dict[str, Any], clean_up_tokenization_spaces: bool | None = None
    ) -> list[dict[str, str]]:
        return [
            {
                "translation_text": self.tokenizer.decode(
                    ids, skip_special_tokens=True, clean_up_tokenization_spaces=clean_up_tokenization_spaces
                )
            }
            for ids in model_outputs["output_ids"][0]
        ]
