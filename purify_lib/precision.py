"""Which float precision the matrix work runs in: bf16 autocast where the hardware has it, fp32 elsewhere.

On a CPU with AVX-512 BF16 or AMX, ``torch.autocast("cpu", dtype=torch.bfloat16)`` trains
PreAct-ResNet18 faster than fp32: about 2.5x on an AMX machine, 1.5x on an AVX-512 BF16 one
without AMX (README, "Precision").  Weights, optimiser state, losses and metrics stay fp32:
autocast only lowers the inputs of convolutions and matrix products, runs cross-entropy in
fp32, and logits are cast to fp32 before victim losses and every metric.

The setting is ``$PURIFY_PRECISION`` (or a ``precision=`` argument where one is taken):

- ``auto`` (default): bf16 on a CPU that supports it and on a GPU of compute capability 8 or
  more, fp16 on an older GPU, fp32 on any other CPU;
- ``bf16``, ``fp16`` or ``fp32`` forces one; forcing a precision the device lacks is an error
  raised before any work starts.

The resolved name (never ``auto``) is part of every victim's and every defense result's
cache key, so a model trained in one precision is never served for another.
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch

from .errors import PurifyError

PRECISION_ENV = "PURIFY_PRECISION"
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@functools.lru_cache(maxsize=None)
def cpu_has_bf16() -> bool:
    """True when this CPU has native bf16 matrix instructions (AVX-512 BF16 or AMX), detected once."""
    checks = [getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None)]
    if any(check is not None and check() for check in checks):
        return True
    try:  # older torch without those probes: the kernel's CPU flags
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def gpu_has_bf16(device) -> bool:
    """Native bf16 matrix units: compute capability 8.0 and up (Ampere on).  ``torch.cuda.is_bf16_supported()``
    also says yes where bf16 is only emulated (a V100 or a T4), where it runs slower than fp16."""
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def resolve_precision(device, precision: str | None = None) -> str:
    """``bf16``, ``fp16`` or ``fp32`` for ``device``: ``precision``, else ``$PURIFY_PRECISION``, else ``auto``."""
    setting = precision or os.environ.get(PRECISION_ENV) or "auto"
    source = f"precision={setting!r}" if precision else f"{PRECISION_ENV}={setting!r}"
    if setting not in PRECISIONS:
        raise PurifyError(f"{source} is not a precision; allowed: {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if device.type == "cuda":
        bf16_ok = gpu_has_bf16(device)
        if setting == "auto":
            return "bf16" if bf16_ok else "fp16"
        if setting == "bf16" and not bf16_ok:
            raise PurifyError(f"{source}, but GPU {torch.cuda.get_device_name(device)} (compute capability "
                              f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))}) has no native bf16; use fp16, fp32 or auto")
        return setting
    if setting == "auto":
        return "bf16" if cpu_has_bf16() else "fp32"
    if setting == "fp16":
        raise PurifyError(f"{source} is for GPUs; on the CPU use bf16 (where supported), fp32 or auto")
    if setting == "bf16" and not cpu_has_bf16():
        raise PurifyError(f"{source}, but this CPU has neither AVX-512 BF16 nor AMX; use fp32 or auto")
    return setting


def autocast(device, precision: str | None = None):
    """The autocast context for ``device`` at ``precision`` (a no-op for fp32).  A resolved name (what the
    training loops pass, having checked it once with ``resolve_precision``) is used as it is, so no step
    re-resolves it; ``None`` or ``auto`` is resolved here."""
    device = torch.device(device)
    resolved = precision if precision in ("bf16", "fp16", "fp32") else resolve_precision(device, precision)
    if resolved == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[resolved])
