"""Train a Vaswani Transformer with the paper's recipe through Seq2SeqTrainer.

    accelerate launch scripts/train.py recipes/multi30k_en_de_cpu.yaml
    accelerate launch scripts/train.py --dataset wmt14 --dataset_config de-en --preset base --output_dir out ...

One YAML or JSON file of all arguments, or command-line flags (see --help): model (ModelArguments), data
(DataArguments) and training (VaswaniTrainingArguments, i.e. Seq2SeqTrainingArguments with the paper's defaults).
"""

import sys

from transformers import HfArgumentParser

from vaswani_hf.training import DataArguments, ModelArguments, VaswaniTrainingArguments, train


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser((ModelArguments, DataArguments, VaswaniTrainingArguments))
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        model_args, data_args, training_args = parser.parse_yaml_file(argv[0])
    elif len(argv) == 1 and argv[0].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(argv[0])
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv)
    train(model_args, data_args, training_args)


if __name__ == "__main__":
    main()
