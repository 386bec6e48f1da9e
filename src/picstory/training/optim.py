"""Optimizers with per-group LR multipliers, and LR schedules as pure functions of the step.

A schedule is ``lr_factor(step) -> float`` times the peak LR; the engine sets every param group's LR from it each
step, so resuming needs only the step counter (no scheduler object to pickle).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ..config import OPTIMIZERS, SCHEDULES
from ..errors import ConfigError


def param_groups(model: nn.Module, weight_decay: float, backbone: list[nn.Parameter] | None = None,
                 backbone_lr_mult: float = 1.0) -> list[dict]:
    """Split parameters into decay / no-decay (norms, biases, 1-d tensors) and backbone / head groups.

    Weight decay on BatchNorm scales and biases only fights the normalisation (timm and fastai skip it too).
    Each group carries ``lr_mult``: the backbone of a pretrained model learns slower than its new head.
    """
    backbone_ids = {id(p) for p in backbone} if backbone else set()
    groups: dict[tuple[bool, bool], list] = {}
    for p in model.parameters():
        key = (id(p) in backbone_ids, p.ndim > 1)
        groups.setdefault(key, []).append(p)
    out = []
    for (is_backbone, decay), params in sorted(groups.items()):
        out.append({"params": params, "weight_decay": weight_decay if decay else 0.0,
                    "lr_mult": backbone_lr_mult if is_backbone else 1.0})
    return out


def build_optimizer(name: str, groups: list[dict], lr: float, momentum: float = 0.9,
                    nesterov: bool = True) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr)
    if name == "sgd-momentum":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if name == "adam":
        # Adam's weight_decay is L2 in the gradient; decoupled decay is what adamw is for
        return torch.optim.Adam(groups, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "adamax":
        return torch.optim.Adamax(groups, lr=lr)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, momentum=momentum)
    if name == "adagrad":
        return torch.optim.Adagrad(groups, lr=lr)
    raise ConfigError(f"unknown optimizer '{name}' (choose from {', '.join(OPTIMIZERS)})")


MAX_WARMUP_SHARE = 0.2


def make_schedule(name: str, total_steps: int, warmup_steps: int = 0) -> Callable[[int], float]:
    """LR factor in [0, 1] for step 0 … total_steps-1."""
    total = max(1, total_steps)
    # warm-up takes at most a fifth of the run: on a short run (--epochs 2) a preset's warm-up of several epochs would
    # otherwise span the whole run and the LR would end at its peak instead of decaying
    warm = min(max(0, warmup_steps), int(MAX_WARMUP_SHARE * total))

    def warmup(step: int) -> float | None:
        return (step + 1) / (warm + 1) if step < warm else None

    if name in ("constant", "plateau"):
        return lambda step: warmup(step) or 1.0
    if name == "step":
        size = max(1, total // 3)
        return lambda step: warmup(step) or 0.1 ** (step // size)
    if name == "cosine":
        return lambda step: warmup(step) or 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
    if name == "linear":
        return lambda step: warmup(step) or max(0.0, 1 - (step - warm) / max(1, total - warm))
    if name == "onecycle":
        # PyTorch OneCycleLR's shape: cosine from lr/25 up to lr over the first 25 %, then down to lr/1e4
        up = max(1, int(0.25 * total))

        def onecycle(step: int) -> float:
            if step < up:
                return _cos(1 / 25, 1.0, step / up)
            return _cos(1.0, 1 / 25 / 1e4, (step - up) / max(1, total - up))

        return onecycle
    raise ConfigError(f"unknown schedule '{name}' (choose from {', '.join(SCHEDULES)})")


def _cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2 * (math.cos(math.pi * min(1.0, pct)) + 1)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)
