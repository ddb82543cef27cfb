"""Devices and precisions: the one place that resolves ``device="auto"`` and ``precision="auto"``
for the Python side (training, checkpoint evaluation); the C++ runner applies the same rules."""

from __future__ import annotations

import functools
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
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX-BF16). Without it bfloat16
    is emulated and slower than float32. ATen's cpuinfo answers, as in the C++ runner."""
    caps = torch._C._cpu._get_cpu_capability()
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"``: bfloat16 on a CPU with native bfloat16 and on CUDA (as the C++ runner), else
    float32; other names are checked (float16 needs CUDA)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bfloat16" if device.type == "cuda" or cpu_has_native_bfloat16() else "float32"
    if precision == "float16" and device.type != "cuda":
        raise ValueError("precision float16 needs a CUDA device; use float32 or bfloat16 on the CPU")
    return precision


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The autocast context of a resolved precision (disabled for float32)."""
    dtype = _DTYPES[precision]
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)
