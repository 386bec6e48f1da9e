"""Device, precision and thread choices made at run time from what the machine has."""

from __future__ import annotations

import functools
import os

import torch

from .errors import UserError


def pick_device(name: str = "auto") -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA GPU is visible to torch; use --device cpu (or auto)")
        local = int(os.environ.get("LOCAL_RANK", 0))
        return torch.device("cuda", local % torch.cuda.device_count())
    return torch.device("cpu")


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX). Elsewhere bf16 matmuls are emulated and
    ~100× slower than fp32, so 'auto' must not pick it."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def pick_precision(name: str, device: torch.device, cpu_bf16_pays: bool = True) -> torch.dtype | None:
    """The autocast dtype, or None for fp32."""
    if name == "fp32":
        return None
    if name == "fp16":
        if device.type != "cuda":
            raise UserError("--precision fp16 needs a CUDA GPU; on a CPU use bf16 (or auto)")
        return torch.float16
    if name == "bf16":
        if device.type == "cpu" and not cpu_has_fast_bf16():
            print("warning: this CPU has no native bf16 (AVX512-BF16/AMX); bf16 will be slow", flush=True)
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if (cpu_bf16_pays and cpu_has_fast_bf16()) else None


def set_threads(threads: int = 0) -> int:
    """``threads`` or all cores of this process, shared among the local ranks under torchrun."""
    if not threads:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    torch.set_num_threads(threads)
    return threads
