"""The fit loop. It knows batches, loss, optimizer and events — nothing about early stopping, checkpoints or bars.

Callbacks hook named events (fastai style) and stop training by raising :class:`StopTraining`. The loop body fits on
one screen on purpose (airbench style).
"""

from __future__ import annotations

import contextlib
import difflib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..models.wrappers import without_ddp
from .optim import set_lr

EVENTS = ("on_fit_start", "on_epoch_start", "on_batch_end", "on_validate_end", "on_epoch_end", "on_fit_end")


class StopTraining(Exception):
    """Raised by a callback to end training after the current epoch; ``reason`` lands in summary.json."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Callback:
    order = 0  # lower runs first at every event
    state_keys: tuple[str, ...] = ()  # attributes saved in checkpoints/last.pt for a bit-identical resume

    def __init_subclass__(cls, **kwargs):
        """A misspelt hook (``on_epoch_ends``) would never run: refuse it when the class is defined."""
        super().__init_subclass__(**kwargs)
        unknown = [name for name in vars(cls) if name.startswith("on_") and name not in EVENTS]
        if unknown:
            hint = {n: difflib.get_close_matches(n, EVENTS, 1) for n in unknown}
            raise TypeError(f"{cls.__name__}: {', '.join(unknown)} is not a training event; events are "
                            f"{', '.join(EVENTS)}" + "".join(f" (did you mean {h[0]}?)" for h in hint.values() if h))

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.state_keys}

    def load_state_dict(self, state: dict) -> None:
        for k in self.state_keys:
            if k in state:
                setattr(self, k, state[k])


@dataclass
class Learner:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_batches: Any  # BatchIterator: set_epoch(), size, __iter__, __len__
    val_batches: Any
    lr: float
    schedule: Callable[[int], float]
    epochs: int
    num_classes: int
    loss_weight: torch.Tensor | None = None
    label_smoothing: float = 0.0
    grad_clip: float = 0.0
    autocast_dtype: torch.dtype | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    callbacks: list[Callback] = field(default_factory=list)
    eval_model: nn.Module | None = None  # e.g. the EMA copy; defaults to model
    is_main: bool = True  # rank 0 writes; every rank runs the same events
    multilabel: bool = False  # y is N×K multi-hot: sigmoid + BCE, accuracy = every label right (exact match)
    pos_weight: torch.Tensor | None = None  # multi-label: BCE weight of each label's positives
    # state
    epoch: int = 0  # epochs completed
    step: int = 0
    metrics: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    stop_reason: str = "max epochs"
    current_lr: float = 0.0  # the head's LR at the last step (the backbone's may be a fraction of it)

    def emit(self, event: str) -> None:
        """Run every callback for the event; a stop request is raised after all of them ran (so the last
        checkpoint is still written in the epoch early stopping ends)."""
        stop = None
        for cb in sorted(self.callbacks, key=lambda c: c.order):
            fn = getattr(cb, event, None)
            if fn is None:
                continue
            try:
                fn(self)
            except StopTraining as s:
                stop = stop or s
        if stop is not None:
            raise stop

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def loss_fn(self, logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        if self.multilabel:
            return self.bce(logits, y, w, self.label_smoothing)
        if w is None:
            return F.cross_entropy(logits.float(), y, weight=self.loss_weight, label_smoothing=self.label_smoothing)
        # per-sample weights (--weight-col): a weighted mean, so the loss keeps its scale whatever the weights' unit
        each = F.cross_entropy(logits.float(), y, weight=self.loss_weight, label_smoothing=self.label_smoothing,
                               reduction="none")
        return (each * w).sum() / w.sum().clamp(min=1e-12)

    def bce(self, logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None, smoothing: float = 0.0,
            reduction: str = "mean") -> torch.Tensor:
        """Binary cross-entropy per label, averaged over labels; label smoothing pulls each target towards 0.5."""
        y = y.float() * (1 - smoothing) + smoothing / 2
        each = F.binary_cross_entropy_with_logits(logits.float(), y, pos_weight=self.pos_weight,
                                                  reduction="none").mean(1)
        if w is not None:
            return (each * w).sum() / w.sum().clamp(min=1e-12)
        return each.sum() if reduction == "sum" else each.mean()

    def fit(self) -> None:
        self.emit("on_fit_start")
        try:
            while self.epoch < self.epochs:
                self.emit("on_epoch_start")
                start = time.perf_counter()
                train_loss, train_acc = self.train_epoch()
                val = self.validate()
                self.epoch += 1
                self.metrics = {"epoch": self.epoch, "img_size": self.train_batches.size,
                                "lr": self.current_lr, "train_loss": train_loss,
                                "train_acc": train_acc, **val, "seconds": time.perf_counter() - start}
                self.emit("on_validate_end")
                self.history.append({k: v for k, v in self.metrics.items() if k != "confusion"})
                self.emit("on_epoch_end")
        except StopTraining as stop:
            self.stop_reason = stop.reason
        self.emit("on_fit_end")

    def train_epoch(self) -> tuple[float, float]:
        model, opt = self.model, self.optimizer
        model.train()
        self.train_batches.set_epoch(self.epoch)
        # running sums stay on the device: no host sync per step on a GPU
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        seen = 0
        for x, y, *w in self.train_batches:  # a third element: per-sample loss weights
            self.current_lr = self.lr * self.schedule(self.step)
            set_lr(opt, self.current_lr)
            with self.autocast():
                logits = model(x)
            loss = self.loss_fn(logits, y, w[0] if w else None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
            opt.step()
            self.step += 1
            loss_sum += loss.detach() * len(y)
            if self.multilabel:
                correct += ((logits.detach() > 0) == (y > 0.5)).all(1).sum()
            else:
                hard = y if y.ndim == 1 else y.argmax(1)
                correct += (logits.detach().argmax(1) == hard).sum()
            seen += len(y)
            self.batch_loss = loss.detach()
            self.emit("on_batch_end")
        seen = max(seen, 1)
        return _reduce_mean(loss_sum, seen), _reduce_mean(correct, seen)

    @torch.inference_mode()
    def validate(self) -> dict:
        # not through DDP: it would sync buffers in every forward, a collective the ranks' uneven validation shards
        # (one batch more on some) cannot match
        model = self.eval_model or without_ddp(self.model)
        model.eval()
        _broadcast_buffers(model)
        k = self.num_classes
        confusion = torch.zeros(k, k, dtype=torch.long, device=self.device)
        loss_sum = torch.zeros((), device=self.device)
        n = 0
        self.val_batches.size = self.train_batches.size
        if self.multilabel:
            return self._validate_multilabel(model)
        for x, y, *_ in self.val_batches:
            with self.autocast():
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            # index_add_, not bincount: bincount reads its input's max back to the host, a sync per batch on a GPU
            confusion.view(-1).index_add_(0, y * k + logits.argmax(1), torch.ones_like(y))
            n += len(y)
        confusion = _all_reduce(confusion)
        total = int(confusion.sum())
        return {"val_loss": _reduce_mean(loss_sum, n), "val_acc": float(confusion.diag().sum()) / max(total, 1),
                "confusion": confusion.cpu().tolist()}

    def _validate_multilabel(self, model: nn.Module) -> dict:
        """Validation loss (unsmoothed BCE) and exact-match ratio at the 0.5 threshold; no confusion matrix."""
        loss_sum = torch.zeros((), device=self.device)
        exact = torch.zeros((), device=self.device)
        n = 0
        for x, y, *_ in self.val_batches:
            with self.autocast():
                logits = model(x)
            loss_sum += self.bce(logits, y, reduction="sum")
            exact += ((logits > 0) == (y > 0.5)).all(1).sum()
            n += len(y)
        return {"val_loss": _reduce_mean(loss_sum, n), "val_acc": _reduce_mean(exact, n), "confusion": []}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "lr": self.lr, "history": self.history,
                "callbacks": {type(cb).__name__: cb.state_dict() for cb in self.callbacks}}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step, self.lr = int(state["epoch"]), int(state["step"]), float(state["lr"])
        self.history = list(state["history"])
        for cb in self.callbacks:
            cb.load_state_dict(state["callbacks"].get(type(cb).__name__, {}))


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks under torchrun; identity in a single process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t


def _broadcast_buffers(model: nn.Module) -> None:
    """Under torchrun: rank 0's BatchNorm statistics on every rank, so all ranks evaluate the model rank 0 saves
    (each rank's last training step updated its own)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        nccl = torch.distributed.get_backend() == "nccl"
        for buf in model.buffers():
            # statistics only: counters agree on every rank already, and NCCL sends no CPU tensors (EMA's count)
            if buf.is_floating_point() and (buf.is_cuda or not nccl):
                torch.distributed.broadcast(buf, src=0)


def _reduce_mean(total: torch.Tensor, count: int) -> float:
    t = torch.stack([total.float(), torch.tensor(float(count), device=total.device)])
    t = _all_reduce(t)
    value = float(t[0] / t[1]) if float(t[1]) else math.nan
    return value
