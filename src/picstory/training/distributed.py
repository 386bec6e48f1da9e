"""torchrun support: rank / world size from the environment, one process group, rank 0 writes.

The rules every rank keeps (README "Multi-node"):

- ``--batch-size`` is the GLOBAL batch: each of N ranks takes ``batch // N`` images a step and DDP averages the
  gradients, so a step sees the same images and the same learning rate at any world size, and one config.yaml
  means one recipe on 1 process or 16 (a resume may change the world size).
- Training batches come from one shuffle per (seed, epoch), sharded ``order[rank::N]`` and cut to equal length
  (every rank must take the same number of steps, or a gradient all-reduce waits forever). Validation does no
  gradient sync, so each rank takes an uneven shard ``[rank::N]`` without the cut, and the all-reduced sums cover
  every sample exactly once. The test split is evaluated by rank 0 alone.
- BatchNorm keeps per-rank batch statistics (no SyncBatchNorm): with ≥ 16 images per rank that is the usual DDP
  practice (torchvision's reference scripts make sync-BN opt-in), and on CPUs over gloo a collective per BN layer
  would cost more than it gains. DDP broadcasts rank 0's running statistics before each forward, and the engine
  once more before validation, so every rank evaluates (and rank 0 saves) the same model. Below 16 images per rank
  a warning says so (SyncBatchNorm does not run on CPUs at all).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import sys
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ..errors import UserError
from ..models.wrappers import plain_state_dict  # noqa: F401  (part of this module's face for DDP code)
from .callbacks import NaNGuard

DEFAULT_TIMEOUT_S = 300
# Waiting for rank 0 to decode a large data set into the cache can take hours; that one wait uses its own group
SLOW_TIMEOUT_S = 6 * 3600
MIN_RANK_BATCH = 16  # below this per-rank batch, BatchNorm statistics get noisy (no SyncBatchNorm on CPUs)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    slow_group: object = field(default=None, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_seconds(name: str, default: int) -> datetime.timedelta:
    raw = os.environ.get(name, str(default))
    try:
        seconds = float(raw)
        if seconds <= 0:
            raise ValueError
    except ValueError:
        raise UserError(f"{name} must be a positive number of seconds, got {raw!r}") from None
    return datetime.timedelta(seconds=seconds)


def setup(device: torch.device) -> Dist:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return Dist()
    if device.type == "cuda":
        local_world, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", 1)), torch.cuda.device_count()
        if local_world > gpus:  # NCCL cannot put two ranks on one GPU
            raise UserError(f"{local_world} processes on this node but {gpus} GPU(s) visible: start one process "
                            f"per GPU (--nproc-per-node {gpus}) or train on the CPU (--device cpu)")
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # a bounded timeout: a rank that hangs ends the job with an error instead of a silent wait
        timeout = _env_seconds("PICSTORY_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)
        if device.type == "cuda":
            dist.init_process_group(backend="nccl", timeout=timeout, device_id=device)
        else:
            dist.init_process_group(backend="gloo", timeout=timeout)
    slow = dist.new_group(backend="gloo", timeout=_env_seconds("PICSTORY_CACHE_TIMEOUT", SLOW_TIMEOUT_S))
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(),
                local_rank=int(os.environ.get("LOCAL_RANK", 0)), slow_group=slow)


def barrier(d: Dist, slow: bool = False) -> None:
    """Wait for every rank; ``slow`` for waits on long one-rank work (filling the cache)."""
    if d.enabled:
        dist.barrier(group=d.slow_group if slow else None)


def broadcast_object(d: Dist, obj):
    """Rank 0's value on every rank (the run directory name, a measured precision or LR choice)."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_same_data(d: Dist, source) -> None:
    """Every rank must list the same records (same files, labels and order): otherwise the seeded split and the
    shards differ between ranks and the job trains on a mix. Names and labels only, so copies of the data on
    other nodes (other mtimes) pass."""
    if not d.enabled:
        return
    h = hashlib.sha256()
    for r in source.records:
        h.update(f"{r.ref}\0{r.label}\0{r.split}\n".encode())
    mine = (len(source.records), h.hexdigest()[:16])
    everyone = [None] * d.world_size
    dist.all_gather_object(everyone, mine)
    odd = [rank for rank, v in enumerate(everyone) if v != everyone[0]]
    if odd:
        raise UserError(f"rank {odd[0]} sees different data at {source.spec} ({everyone[odd[0]][0]} images vs "
                        f"{everyone[0][0]} on rank 0): every node needs the same files at the same path")


def local_batch_size(global_batch: int, d: Dist) -> int:
    """Images per rank and step for a global ``--batch-size``."""
    per_rank = max(1, global_batch // d.world_size)
    if per_rank * d.world_size != global_batch and d.is_main:
        print(f"warning: --batch-size {global_batch} is not a multiple of {d.world_size} processes; each takes "
              f"{per_rank}, a global batch of {per_rank * d.world_size}", file=sys.stderr)
    if d.enabled and per_rank < MIN_RANK_BATCH and d.is_main:
        print(f"warning: {per_rank} images per process and step: BatchNorm statistics over so few are noisy and "
              "the all-reduce dominates; use fewer processes or a larger --batch-size", file=sys.stderr)
    return per_rank


def eval_shard(images: torch.Tensor, labels: torch.Tensor, d: Dist) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's part of an evaluation split: every sample on exactly one rank, shards may differ by one."""
    return images[d.rank::d.world_size], labels[d.rank::d.world_size]


def wrap_model(model: torch.nn.Module, device: torch.device, d: Dist, find_unused: bool) -> torch.nn.Module:
    """DistributedDataParallel under torchrun; ``find_unused`` when parameters are frozen after wrapping (a
    frozen backbone's first epochs), which DDP otherwise reports as a reduction error."""
    if not d.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)


class EpochNaNGuard(NaNGuard):
    """NaNGuard for DDP: a per-step check would stop one rank alone while the others wait in the next gradient
    all-reduce until the timeout. The epoch check on the all-reduced train loss stops every rank together."""

    def on_batch_end(self, L) -> None:
        pass


def teardown(d: Dist) -> None:
    """Leave the process group together, after rank 0 has written the summary and report (hence the long-timeout
    wait). A rank that destroyed its group while a peer still used it aborted at exit now and then (gloo:
    'terminate called without an active exception'), and torchrun then failed the whole job."""
    if d.enabled and dist.is_initialized():
        dist.barrier(group=d.slow_group)
        dist.destroy_process_group()
