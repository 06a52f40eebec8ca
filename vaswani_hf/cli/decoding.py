"""The decoding options the translating commands share (`vaswani-translate`, `vaswani-evaluate`), named as in
`generate()`; unset ones leave the model's generation config in charge (beam 4, length penalty 0.6: Sec. 6.1)."""

import argparse

import torch

from vaswani_hf.devices import DEVICE_CHOICES, resolve_device, warn_if_bfloat16_is_emulated

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_decoding_arguments(parser: argparse.ArgumentParser, batch_size: int) -> None:
    parser.add_argument("--batch_size", type=int, default=batch_size, help="sentences per generate() call")
    parser.add_argument("--num_beams", type=int, help="beam size; default: the model's generation config (4)")
    parser.add_argument("--length_penalty", type=float, help="default: the model's generation config (0.6)")
    parser.add_argument("--device", default="auto", help=f"where the model runs: {DEVICE_CHOICES} (default: auto)")
    parser.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default="float32",
        help="the weights' precision while decoding (the model is trained and saved in float32): bfloat16 decodes "
        "faster on GPUs and on CPUs with bfloat16 units (AMX / AVX512-BF16), float16 on GPUs only",
    )


def decoding_options(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[torch.device, torch.dtype, dict]:
    """(the device, the weights' dtype, the generate() arguments) that `args` ask for; bad values end in
    `parser.error`, naming them."""
    if args.batch_size < 1:
        parser.error(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.num_beams is not None and args.num_beams < 1:
        parser.error(f"--num_beams must be at least 1, got {args.num_beams}")
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        parser.error(f"--device: {error}")
    dtype = DTYPES[args.dtype]
    if device.type == "cpu" and dtype == torch.float16:
        parser.error("--dtype float16 decodes on GPUs only; on a CPU use float32, or bfloat16 where it has bf16 units")
    if dtype == torch.bfloat16:
        warn_if_bfloat16_is_emulated(device, "bfloat16")
    names = ("num_beams", "length_penalty")
    return device, dtype, {name: getattr(args, name) for name in names if getattr(args, name) is not None}
