"""The learning-rate range test (Smith 2015, as fastai runs it): train a copy of the model for ~100 steps while the
LR grows exponentially from 1e-7 to 10, record the smoothed loss, stop once it explodes, and suggest the LR in the
longest downhill stretch of the curve ("valley").

The test trains a deep copy and restores the random state afterwards, so ``train(lr="auto")`` trains exactly as
a run given the found LR by hand would. ``picstory lr-find`` (pipeline/lr_find_run.py) and
``train(lr="auto")`` both call :func:`suggest_lr`.
"""

from __future__ import annotations

import copy
import math
import time

import torch

from .. import config as C
from ..models import backbone_parameters
from .checkpoint import rng_state, set_rng_state
from .engine import Callback, Learner, StopTraining
from .optim import build_optimizer, param_groups

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


class RangeTest(Callback):
    """Records the smoothed loss after every step of an exponentially growing LR and stops the fit once the loss
    explodes or ``steps`` are done — the range test runs through the real fit loop, not a copy of its step."""

    def __init__(self, steps: int):
        self.steps, self.lrs, self.losses = steps, [], []
        self.avg, self.best = 0.0, math.inf

    def on_batch_end(self, learner: Learner) -> None:
        value, lr = float(learner.batch_loss), learner.current_lr
        if not math.isfinite(value):
            raise StopTraining(f"loss not finite at lr {lr:.2g}")
        self.avg = BETA * self.avg + (1 - BETA) * value
        smooth = self.avg / (1 - BETA ** (len(self.losses) + 1))
        self.lrs.append(lr)
        self.losses.append(smooth)
        self.best = min(self.best, smooth)
        if smooth > DIVERGE * self.best:
            raise StopTraining(f"loss above {DIVERGE:g}× its minimum at lr {lr:.2g}")
        if len(self.lrs) >= self.steps:
            raise StopTraining(f"reached lr {lr:.2g}")


class _NoValidation:
    """The range test needs no validation between its passes over a small training set."""

    size = 0

    def __iter__(self):
        return iter(())


def _range_test(cfg: C.Config, td, device, autocast, steps: int, start_lr: float,
                end_lr: float) -> tuple[list[float], list[float], str]:
    t = cfg.train
    model = copy.deepcopy(td.model).train()
    backbone = backbone_parameters(model) if td.pretrained else None
    groups = param_groups(model, t.weight_decay, backbone, cfg.model.backbone_lr_mult if td.pretrained else 1.0)
    recorder = RangeTest(steps)
    learner = Learner(
        model=model, optimizer=build_optimizer(t.optimizer, groups, start_lr, t.momentum, t.nesterov),
        train_batches=td.train_batches, val_batches=_NoValidation(), lr=1.0,
        schedule=lambda step: lr_schedule(step, steps, start_lr, end_lr),
        epochs=10**9,  # as many passes as the steps need (a small training set is seen more than once, as fastai)
        num_classes=len(td.classes), loss_weight=td.loss_weight, label_smoothing=t.label_smoothing,
        grad_clip=t.grad_clip,  # the test must see the optimiser training will use, clipping included
        autocast_dtype=autocast, device=device, callbacks=[recorder],
        multilabel=getattr(td, "multilabel", False), pos_weight=getattr(td, "pos_weight", None))
    learner.fit()
    return recorder.lrs, recorder.losses, learner.stop_reason


__all__ = ["suggest_lr", "RangeTest", "suggest", "valley", "steepest", "lr_schedule"]
