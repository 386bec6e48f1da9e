"""Device, precision and thread choices made at run time from what the machine has."""

from __future__ import annotations

import functools
import math
import os
import time
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:
    import torch


def cores() -> int:
    """Cores this process may run on: the affinity mask (taskset, cpusets) capped by a cgroup CPU quota
    (docker --cpus, Kubernetes limits), not the machine's count."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        n = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(n, math.ceil(quota))) if quota else n


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup") -> float | None:
    """CPUs' worth of time the cgroup may use (cgroup v2 cpu.max, v1 cfs quota/period); None when unlimited."""
    for path, split in ((f"{root}/cpu.max", True), (f"{root}/cpu/cpu.cfs_quota_us", False)):
        try:
            text = open(path).read().split()
            if split:
                quota, period = text[0], text[1]
            else:
                quota, period = text[0], open(f"{root}/cpu/cpu.cfs_period_us").read().split()[0]
            if quota in ("max", "-1"):
                return None
            return int(quota) / int(period)
        except (OSError, IndexError, ValueError):
            continue
    return None


# Live-run registry: one small file per training process under the cache root, so that runs started side by side
# split the cores instead of each starting a full thread pool (N runs × all cores threads collapse: the OpenMP
# threads spin and preempt each other).
def _live_dir():
    from .files import cache_root

    return cache_root() / "live"


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks (/proc/PID/stat field 22): tells a live run from a reused pid."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def register_run() -> None:
    """Mark this process as a live picstory run (removed by :func:`unregister_run`; a killed run's file is
    ignored and cleaned up by the next run that looks, because its pid is gone)."""
    folder = _live_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{os.getpid()}").write_text(_proc_start(os.getpid()) or "")
    except OSError:
        pass  # a read-only cache: this run is simply not counted by others


def unregister_run() -> None:
    try:
        (_live_dir() / f"{os.getpid()}").unlink(missing_ok=True)
    except OSError:
        pass


def live_runs() -> int:
    """Live picstory runs on this machine, this one included when registered (at least 1)."""
    n = 0
    try:
        entries = list(_live_dir().iterdir())
    except OSError:
        return 1
    for entry in entries:
        try:
            pid = int(entry.name)
            recorded = entry.read_text().strip()
        except (ValueError, OSError):
            continue
        start = _proc_start(pid)
        if start is None or (recorded and start != recorded):
            try:
                entry.unlink(missing_ok=True)  # stale: the run was killed
            except OSError:
                pass
            continue
        n += 1
    return max(1, n)


def shared_threads() -> int:
    """One share of the free cores: cores // live runs, at least 1 (one thread per process once processes
    outnumber cores)."""
    # torchrun's local ranks start together, before all of them registered: count them at least
    runs = max(live_runs(), int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return max(1, cores() // runs)


def process_age() -> float:
    """Seconds since this process started (a budget counts from the command's start, imports included)."""
    try:
        ticks = int(_proc_start(os.getpid()) or "")
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK"))
    except (ValueError, OSError, AttributeError):
        return 0.0


def passive_wait_env(env: dict | None = None) -> dict:
    """OMP_WAIT_POLICY=PASSIVE unless set: idle OpenMP threads sleep instead of spinning, so a process that
    waits (data, a barrier, a sibling run's turn on the core) does not burn the core another run needs. It is read
    when the OpenMP runtime loads, so it goes into the environment before torch is imported (the CLI) or into a
    child's environment (sweeps)."""
    env = os.environ if env is None else env
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


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
    """``threads``, or this process's share of the free cores: the cores divided among the live picstory runs
    (torchrun's local ranks among them)."""
    import torch

    if not threads:
        threads = shared_threads()
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads
