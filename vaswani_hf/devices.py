"""The device a command runs on (`--device`): `cpu`, `cuda`, `cuda:N` (or another accelerator torch knows, such as
`mps` or `xpu`), or `auto` for this machine's accelerator where it has one, else the CPU."""

import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N (or mps, xpu, ...: the accelerators torch knows)"


def resolve_device(name: str) -> torch.device:
    """The torch device `name` means on this machine. A `ValueError` says why when it is not a device name, or names
    a device this machine does not have (with what it has)."""
    if name == "auto":
        return torch.accelerator.current_accelerator(check_available=True) or torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; choices: {DEVICE_CHOICES}") from None
    if device.type == "cpu":
        return device
    accelerator = torch.accelerator.current_accelerator(check_available=True)
    if accelerator is None or accelerator.type != device.type:
        found = f"only {accelerator.type} devices" if accelerator is not None else "no accelerator"
        raise ValueError(
            f"device {name!r} is not available: this machine has {found} usable by torch {torch.__version__}; "
            "use --device cpu, or auto for whatever is there"
        )
    count = torch.accelerator.device_count()
    if device.index is not None and device.index >= count:
        raise ValueError(
            f"device {name!r} is not available: this machine has {count} {device.type} device(s), "
            f"{device.type}:0 to {device.type}:{count - 1}"
        )
    return device


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU has bfloat16 matrix units (AVX512-BF16 or AMX); without them PyTorch emulates bfloat16, and
    bfloat16 runs slower than float32."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.exists() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def warn_if_bfloat16_is_emulated(device: torch.device, what: str) -> None:
    """Warn that `what` (bfloat16 decoding, bf16 training) runs slower than float32 when `device` is a CPU without
    bfloat16 units (`cpu_has_native_bfloat16`)."""
    if device.type == "cpu" and not cpu_has_native_bfloat16():
        logger.warning(
            f"this CPU has no bfloat16 units (AMX / AVX512-BF16): {what} is emulated and slower than float32"
        )
