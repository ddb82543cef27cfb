"""Devices and precisions: the one place that resolves ``device="auto"`` and ``precision="auto"``
for the Python side (training, checkpoint evaluation); the C++ runner applies the same rules."""

from __future__ import annotations

import functools
import platform
from typing import Literal

import torch

Precision = Literal["auto", "float32", "bfloat16", "float16"]
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"``: the first CUDA GPU when torch sees one, else the CPU; a CUDA device without a GPU is
    an error naming the fix."""
    device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA GPU; use device='cpu'")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; expected cpu, cuda, cuda:N or auto") from None


@functools.cache
def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX-BF16 on x86, read from
    /proc/cpuinfo; Arm's BF16 extension). Without it bfloat16 is emulated and slower than float32."""
    machine = platform.machine().lower()
    try:
        with open("/proc/cpuinfo") as f:
            flags = set()
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags.update(line.split(":", 1)[1].split())
    except OSError:
        return False
    if machine in ("x86_64", "amd64"):
        return bool(flags & {"avx512_bf16", "amx_bf16"})
    return "bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"``: bfloat16 on a CPU with native bfloat16 or a bfloat16-capable GPU, else float32;
    other names are checked (float16 needs CUDA)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
        return "bfloat16" if cpu_has_native_bfloat16() else "float32"
    if precision == "float16" and device.type != "cuda":
        raise ValueError("precision float16 needs a CUDA device; use float32 or bfloat16 on the CPU")
    return precision


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The autocast context of a resolved precision (disabled for float32)."""
    dtype = _DTYPES[precision]
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)
