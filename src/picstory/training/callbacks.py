"""Callbacks on the engine's named events. Each is small and owns one concern."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from ..files import atomic_torch_save, atomic_write
from ..runs import RunDir
from .checkpoint import rng_state
from .engine import Callback, Learner, StopTraining

METRIC_COLUMNS = ["epoch", "img_size", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"]


def _better(monitor: str, value: float, best: float | None, min_delta: float = 0.0) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    if monitor == "val_loss":
        return value < best - min_delta
    return value > best + min_delta


class _Patience(Callback):
    """Counts epochs since ``monitor`` last improved by more than ``min_delta`` (``wait``)."""

    state_keys = ("best", "wait")

    def __init__(self, monitor: str, patience: int, min_delta: float):
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.best: float | None = None
        self.wait = 0

    def improved(self, L: Learner) -> bool:
        value = L.metrics[self.monitor]
        if _better(self.monitor, value, self.best, self.min_delta):
            self.best, self.wait = value, 0
            return True
        self.wait += 1
        return False


class EarlyStopping(_Patience):
    order = 20

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.001):
        super().__init__(monitor, patience, min_delta)

    def on_epoch_end(self, L: Learner) -> None:
        if self.improved(L):
            return
        if self.patience and self.wait >= self.patience:
            raise StopTraining(f"early stopping: {self.monitor} did not improve for {self.wait} epochs")



class BestCheckpoint(Callback):
    """Keeps the best epoch's weights as the bundle (the model that predict / serve / export use)."""

    order = 10
    state_keys = ('best', 'best_epoch')

    def __init__(self, save: Callable[[Learner], None], monitor: str = "val_loss"):
        self.save, self.monitor = save, monitor
        self.best: float | None = None
        self.best_epoch = 0

    def on_epoch_end(self, L: Learner) -> None:
        value = L.metrics[self.monitor]
        if _better(self.monitor, value, self.best):
            self.best, self.best_epoch = value, L.epoch
            if L.is_main:
                self.save(L)



class LastCheckpoint(Callback):
    """checkpoints/last.pt after every epoch: everything resume needs to continue bit-identically."""

    order = 90

    def __init__(self, path: Path, extra: Callable[[], dict]):
        self.path, self.extra = path, extra

    def on_epoch_end(self, L: Learner) -> None:
        if not L.is_main:
            return
        state = {"model": L.model.state_dict(), "optimizer": L.optimizer.state_dict(), "learner": L.state_dict(),
                 "rng": rng_state(), **self.extra()}
        if L.eval_model is not None:
            state["ema"] = L.eval_model.state_dict()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(self.path, state)


class MetricsLog(Callback):
    """metrics.csv (one row per epoch) and history.json (per-epoch validation confusion matrices)."""

    order = 5
    state_keys = ('confusion',)

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.confusion: list = []

    def on_epoch_end(self, L: Learner) -> None:
        self.confusion.append(L.metrics["confusion"])
        if not L.is_main:
            return
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for row in L.history:
            w.writerow({k: _fmt(row.get(k)) for k in METRIC_COLUMNS})
        atomic_write(RunDir(self.run_dir).metrics, buf.getvalue())
        atomic_write(RunDir(self.run_dir).history, json.dumps({"confusion": self.confusion}))



def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


class NaNGuard(Callback):
    order = 0

    def on_batch_end(self, L: Learner) -> None:
        # on a CPU the check is free; on a GPU it would sync every step, so there it waits for the epoch's mean
        if L.device.type == "cpu" and not torch.isfinite(L.batch_loss):
            raise StopTraining(f"nan loss at epoch {L.epoch + 1}, step {L.step}: lower --lr or add warmup")

    def on_validate_end(self, L: Learner) -> None:
        if not math.isfinite(L.metrics["train_loss"]):
            raise StopTraining(f"nan loss at epoch {L.epoch}: lower --lr or add warmup")


class PlateauLR(_Patience):
    """ReduceLROnPlateau: multiply the peak LR by ``factor`` after ``patience`` epochs without improvement."""

    order = 15

    def __init__(self, monitor: str = "val_loss", factor: float = 0.2, patience: int = 2, min_delta: float = 1e-3):
        super().__init__(monitor, patience, min_delta)
        self.factor = factor

    def on_epoch_end(self, L: Learner) -> None:
        if not self.improved(L) and self.wait >= self.patience:
            L.lr *= self.factor
            self.wait = 0



class ProgressiveResize(Callback):
    """Small images first: the epochs are split into equal phases, one per size (fastai / seed notes)."""

    order = -10

    def __init__(self, sizes: list[int]):
        self.sizes = sizes

    def on_epoch_start(self, L: Learner) -> None:
        phase = min(len(self.sizes) - 1, L.epoch * len(self.sizes) // max(1, L.epochs))
        L.train_batches.size = self.sizes[phase]


class FreezeBackbone(Callback):
    """Train only the new head for the first ``epochs`` epochs, then the whole network (discriminative LR is
    in the optimizer's param groups)."""

    order = -5

    def __init__(self, epochs: int, set_frozen: Callable[[bool], None]):
        self.epochs, self.set_frozen = epochs, set_frozen

    def on_epoch_start(self, L: Learner) -> None:
        self.set_frozen(L.epoch < self.epochs)


class EMA(Callback):
    """Exponential moving average of the weights, evaluated and saved instead of the raw weights."""

    order = 1

    def __init__(self, ema_model: torch.nn.Module):
        self.ema_model = ema_model

    def on_batch_end(self, L: Learner) -> None:
        self.ema_model.update_parameters(L.model)


class Progress(Callback):
    """A live bar on a terminal, one line per epoch otherwise (logs, CI)."""

    order = 50

    def __init__(self, enabled: bool = True, stream=None):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.bar = None

    def on_epoch_start(self, L: Learner) -> None:
        if self.enabled and L.is_main and self.stream.isatty():
            from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(TextColumn(f"epoch {L.epoch + 1}/{L.epochs}"), BarColumn(),
                                    TextColumn("{task.completed}/{task.total} loss {task.fields[loss]}"),
                                    TimeRemainingColumn(), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("train", total=len(L.train_batches), loss="…")

    def on_batch_end(self, L: Learner) -> None:
        if self.bar is not None:
            loss = f"{float(L.batch_loss):.3f}" if L.step % 10 == 0 else self.bar.tasks[0].fields["loss"]
            self.bar.update(self.task, advance=1, loss=loss)

    def on_validate_end(self, L: Learner) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        if self.enabled and L.is_main:
            m = L.metrics
            print(f"epoch {m['epoch']:>3}/{L.epochs}  size {m['img_size']}  lr {m['lr']:.2e}  "
                  f"train loss {m['train_loss']:.4f} acc {m['train_acc']:.4f}  "
                  f"val loss {m['val_loss']:.4f} acc {m['val_acc']:.4f}  {m['seconds']:.1f}s",
                  file=self.stream, flush=True)


class ThreadShare(Callback):
    """Re-divides the cores among the live picstory runs every few seconds: runs started together register one
    after another, and a run that ends frees its share for the others (device.shared_threads)."""

    order = -20

    def __init__(self, every_s: float = 2.0):
        self.every_s = every_s
        self.next_check = 0.0

    def _check(self) -> None:
        from ..device import set_threads

        now = time.monotonic()
        if now >= self.next_check:
            self.next_check = now + self.every_s
            set_threads()

    def on_epoch_start(self, L: Learner) -> None:
        self._check()

    def on_batch_end(self, L: Learner) -> None:
        self._check()
