"""The device a command runs on (`--device`): `cpu`, `cuda`, `cuda:N` (or another accelerator torch knows, such as
`mps` or `xpu`), or `auto` for this machine's accelerator where it has one, else the CPU. Also what a CPU offers
(bfloat16 units) and how training on it keeps its memory (`keep_freed_memory`)."""

import ctypes
import platform
from pathlib import Path

import torch

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


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse rather than hand it back to the system; True where it did (Linux
    with glibc), else nothing changes. A training step on a CPU frees and allocates the same large tensors every step
    (the tied embedding's gradient, the loss's chunks, the autocast copies: tens of MB each), which glibc otherwise
    serves from fresh `mmap`s whose every page faults in on first touch: 12-14 million page faults and 23-25 s of
    system time in 300 updates of the Multi30k CPU recipe, 1.07-1.09x faster with freed memory kept, for a 5-10%
    larger peak (docs/benchmarks/freed_memory.md). Process-wide: the training command calls it for runs on a CPU."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))
