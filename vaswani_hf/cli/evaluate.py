"""Translate a source file with a trained model and score it against a reference file with sacreBLEU.

vaswani-evaluate runs/multi30k_en_de_small test.en test.de --output_file hyp.de --metrics_file bleu.json
vaswani-evaluate runs/multi30k_en_de_small test.en test.de --num_beams 1 --batch_size 128 --device cuda
accelerate launch --num_processes 8 -m vaswani_hf.cli.evaluate runs/wmt14_en_de_base newstest2014.en newstest2014.de

Under `accelerate launch` each process translates its share of the batches (on its own GPU with --device auto);
the main process scores, writes the files and prints the result.
"""

import argparse
import json

from accelerate import PartialState

from vaswani_hf.cli import input_errors_as_messages
from vaswani_hf.cli.decoding import add_decoding_arguments, decoding_options
from vaswani_hf.evaluation import evaluate_files
from vaswani_hf.files import write_json


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a saved model folder (with its tokenizer) or Hub id")
    parser.add_argument("source_file", help="one sentence a line, UTF-8")
    parser.add_argument("reference_file", help="the references, aligned by line")
    parser.add_argument("--output_file", help="write the translations here, one a line (atomically)")
    parser.add_argument("--metrics_file", help="write the BLEU result as JSON here")
    add_decoding_arguments(parser, batch_size=64)
    args = parser.parse_args(argv)
    device, dtype, generate_kwargs = decoding_options(parser, args)
    with input_errors_as_messages():  # bad input, a model folder that cannot be read, an output it cannot write
        result = evaluate_files(
            args.model,
            args.source_file,
            args.reference_file,
            args.output_file,
            batch_size=args.batch_size,
            device=device,
            dtype=dtype,
            across_processes=True,
            **generate_kwargs,
        )
        state = PartialState()  # after evaluate_files, which sets up the processes (on a CPU only when told to)
        if state.is_main_process:
            if args.metrics_file:
                write_json(args.metrics_file, result)
            print(json.dumps({"bleu": round(result["score"], 2), "signature": result["signature"]}))
    # A process that exits with its gloo group alive can abort in the group's destructor ("terminate called
    # without an active exception"): all leave together, the group taken down first.
    state.wait_for_everyone()
    state.destroy_process_group()


if __name__ == "__main__":
    main()
