"""The learning-rate range test (Smith 2015, as fastai runs it): train a copy of the model for ~100 steps while the
LR grows exponentially from 1e-7 to 10, record the smoothed loss, stop once it explodes, and suggest the LR in the
longest downhill stretch of the curve ("valley").

The test trains a deep copy and restores the random state afterwards, so ``train(lr="auto")`` trains exactly as
a run given the found LR by hand would. ``picstory lr-find`` (pipeline/lr_find_run.py) and
``train(lr="auto")`` both call :func:`suggest_lr`.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time

import torch
import torch.nn.functional as F

from .. import config as C
from ..models import backbone_parameters
from .checkpoint import rng_state, set_rng_state
from .optim import build_optimizer, param_groups, set_lr

START_LR, END_LR, STEPS = 1e-7, 10.0, 100
BETA = 0.98  # loss smoothing, as fastai
DIVERGE = 4.0  # stop when the smoothed loss exceeds this multiple of its minimum
FALLBACK_LR = 1e-3


def lr_schedule(step: int, steps: int = STEPS, start: float = START_LR, end: float = END_LR) -> float:
    """Exponential from ``start`` (step 0) to ``end`` (step ``steps - 1``)."""
    return start * (end / start) ** (step / max(1, steps - 1))


def valley(lrs: list[float], losses: list[float]) -> int:
    """fastai's "valley": half-way along the longest decreasing run of the loss curve (its start plus a third plus
    a sixth of its length) — on the steep descent, safely before the minimum where the loss turns."""
    n = len(losses)
    longest = [1] * n
    start, end = 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
            if longest[end] < longest[i]:
                end = i
                start = end - longest[end]
    third = (end - start) / 3
    return min(n - 1, max(0, start + int(third) + int(third / 2)))


def steepest(lrs: list[float], losses: list[float]) -> int:
    """Index of the steepest descent of loss over log(LR)."""
    grads = [(losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i])) for i in range(len(lrs) - 1)]
    return min(range(len(grads)), key=grads.__getitem__) if grads else 0


def suggest(lrs: list[float], losses: list[float]) -> dict:
    """Suggestions from a recorded curve; the ends are cut as fastai does (the first tenth is noise from the random
    start, the last few points are the explosion)."""
    lo, hi = len(lrs) // 10, len(lrs) - 5
    if hi - lo < 5:
        lo, hi = 0, len(lrs)
    x, y = lrs[lo:hi], losses[lo:hi]
    if len(x) < 2:
        return {"suggested_lr": FALLBACK_LR, "method": "fallback (the loss diverged at once)",
                "steep_lr": None, "min_loss_lr": None}
    best = min(range(len(y)), key=y.__getitem__)
    return {"suggested_lr": float(x[valley(x, y)]), "method": "valley", "steep_lr": float(x[steepest(x, y)]),
            "min_loss_lr": float(x[best])}


def suggest_lr(cfg: C.Config, td, device: torch.device, autocast, steps: int = STEPS,
               start_lr: float = START_LR, end_lr: float = END_LR) -> dict:
    """Run the range test on a copy of ``td.model`` with the config's optimizer and loss.

    Returns ``{"suggested_lr", "lrs", "losses", ...}`` (the losses are the smoothed ones the suggestion used). The
    model, its optimizer-free state and the global random state are left as they were.
    """
    saved_rng = rng_state()
    began = time.perf_counter()
    try:
        lrs, losses, stopped = _range_test(cfg, td, device, autocast, steps, start_lr, end_lr)
    finally:
        set_rng_state(saved_rng)
    found = {**suggest(lrs, losses), "lrs": lrs, "losses": losses, "steps": len(lrs), "stopped": stopped,
             "optimizer": cfg.train.optimizer, "batch_size": cfg.train.batch_size,
             "seconds": round(time.perf_counter() - began, 2)}
    return found


def _range_test(cfg: C.Config, td, device, autocast, steps: int, start_lr: float,
                end_lr: float) -> tuple[list[float], list[float], str]:
    t = cfg.train
    model = copy.deepcopy(td.model).train()
    backbone = backbone_parameters(model) if td.pretrained else None
    groups = param_groups(model, t.weight_decay, backbone, cfg.model.backbone_lr_mult if td.pretrained else 1.0)
    opt = build_optimizer(t.optimizer, groups, start_lr, t.momentum, t.nesterov)
    lrs: list[float] = []
    losses: list[float] = []
    avg, best, epoch = 0.0, math.inf, 0
    while True:
        td.train_batches.set_epoch(epoch)  # more than one pass over a small training set, as fastai does
        for x, y in td.train_batches:
            step = len(lrs)
            lr = lr_schedule(step, steps, start_lr, end_lr)
            set_lr(opt, lr)
            ctx = torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
            with ctx:
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, weight=td.loss_weight, label_smoothing=t.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip > 0:  # the test must see the optimiser training will use, clipping included
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            opt.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                return lrs, losses, f"loss not finite at lr {lr:.2g}"
            avg = BETA * avg + (1 - BETA) * value
            smooth = avg / (1 - BETA ** (step + 1))
            lrs.append(lr)
            losses.append(smooth)
            best = min(best, smooth)
            if smooth > DIVERGE * best:
                return lrs, losses, f"loss above {DIVERGE:g}× its minimum at lr {lr:.2g}"
            if len(lrs) >= steps:
                return lrs, losses, f"reached lr {lr:.2g}"
        epoch += 1


__all__ = ["suggest_lr", "suggest", "valley", "steepest", "lr_schedule"]
