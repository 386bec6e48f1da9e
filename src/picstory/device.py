"""Device, precision and thread choices made at run time from what the machine has."""

from __future__ import annotations

import functools
import os
import time
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:
    import torch


def cores() -> int:
    """Cores this process may run on (taskset, containers), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def pick_device(name: str = "auto") -> torch.device:
    import torch

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
    import torch

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


def probe_bf16(model: torch.nn.Module, x: torch.Tensor, min_gain: float = 1.15) -> bool:
    """Time forward+backward of this model on one batch in fp32 and in bf16 autocast; True when bf16 is at
    least ``min_gain`` faster. Native bf16 pays for dense convolutions and matmuls but can lose on depthwise
    convolutions (EfficientNet), so the choice is measured per model. Eval mode keeps BatchNorm statistics
    untouched and no optimizer step runs, so the probe leaves the model as it was."""
    import torch

    was_training = model.training
    model.eval()
    x = x[:32]
    timings = {}
    try:
        for dtype in (None, torch.bfloat16, None, torch.bfloat16):  # interleaved: noise hits both alike
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
                model(x).float().sum().backward()  # warm-up: oneDNN builds its kernels on first use
                start = time.perf_counter()
                model(x).float().sum().backward()
            timings.setdefault(dtype, []).append(time.perf_counter() - start)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return min(timings[None]) >= min_gain * min(timings[torch.bfloat16])


def remembered_bf16_choice(arch: str, model: torch.nn.Module, x: torch.Tensor) -> bool:
    """probe_bf16, remembered per (architecture, input shape, CPU, torch) in the cache folder: timing noise must
    not make two runs with the same seed compute differently, and the probe is paid once per machine."""
    import json
    import platform

    import torch

    from .files import atomic_write, cache_root

    key = f"{arch}|{tuple(x.shape[1:])}|{min(len(x), 32)}|{platform.processor() or platform.machine()}|" \
          f"{torch.__version__}|{torch.get_num_threads()}"
    path = cache_root() / "precision.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = probe_bf16(model, x)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(known, indent=1))
    return bool(known[key])


def set_threads(threads: int = 0) -> int:
    """``threads`` or all cores of this process, shared among the local ranks under torchrun."""
    import torch

    if not threads:
        threads = max(1, cores() // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    torch.set_num_threads(threads)
    return threads
