"""``--time-budget``: measure this machine's step time on the run's own data, plan the run to fit, stop at the deadline.

The LR schedule needs the run's length in advance, so the length is decided once, up front, from a few timed steps;
during training the plan is only ever shortened, by ending early with the best checkpoint kept (the schedule's
tail is lost, the deadline is not).
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from .checkpoint import rng_state, set_rng_state
from .engine import Callback, Learner, StopTraining

# Seconds the end of a run takes beyond the test forward passes: bundle, report.html with its figures, summary.
# Measured on 2 shared cores (digits and Fashion-MNIST runs: 2–6 s); kept generous because missing the budget is
# worse than one epoch less.
REPORT_SECONDS = 8.0
# Share of the budget held back for timing noise (a loaded machine, a slower epoch than the probe's steps).
MARGIN = 0.04
MIN_EPOCHS = 4  # below this a smaller model from the ladder trains better in the same time
MIN_FRACTION = 0.02  # the smallest share of the training set a budgeted epoch draws


@dataclass
class Costs:
    """Measured costs of one candidate model on this data, in seconds."""

    model: str
    step_s: float  # one training step (batch assembly, augmentation, forward, backward, optimizer)
    eval_image_s: float  # one image's forward pass at evaluation batch size
    steps_per_epoch: int
    n_val: int
    n_test: int
    tta_passes: int = 1
    n_train: int = 0  # training images: after training they go through the network once (unknown bank, gallery)

    @property
    def train_s(self) -> float:
        return self.steps_per_epoch * self.step_s

    @property
    def val_s(self) -> float:
        return self.n_val * self.eval_image_s

    @property
    def epoch_s(self) -> float:
        return self.train_s + self.val_s

    @property
    def final_s(self) -> float:
        """After the last epoch: calibration (a validation pass), the training features (one pass), the test
        split (its predictions, then its logits and features for calibration and unknown figures), the report."""
        images = self.n_val + self.n_train + self.n_test * (self.tta_passes + 1)
        return images * self.eval_image_s + REPORT_SECONDS


@dataclass
class Plan:
    budget_s: float
    model: str
    epochs: int
    epoch_s: float
    step_s: float
    final_s: float
    spent_s: float  # before training: data, cache, probes
    predicted_s: float  # spent + epochs × epoch + final
    fraction: float = 1.0  # share of the training set an epoch draws (below 1 when one full epoch does not fit)

    def line(self, text: str) -> str:
        epochs = (f"{self.epochs} epochs" if self.fraction >= 1 else
                  f"1 epoch over {100 * self.fraction:.0f}% of the training set")
        return (f"time budget {text}: {self.model}, {epochs} × {self.epoch_s:.1f}s "
                f"(step {1000 * self.step_s:.0f} ms) + test/report {self.final_s:.0f}s + {self.spent_s:.0f}s so far "
                f"≈ {_clock(self.predicted_s)} of {_clock(self.budget_s)}"
                + (" (over: this machine is slower than the budget allows; the smallest plan, ended early if it "
                   "must)" if self.predicted_s > self.budget_s else ""))

    def to_dict(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def plan_for(budget_s: float, spent_s: float, c: Costs, max_epochs: int) -> Plan:
    """As many epochs of ``c`` as fit into what is left of the budget (after the test evaluation and report and a
    margin), up to ``max_epochs``. When not even one epoch fits, one epoch over the share of the training set that
    does (at least ``MIN_FRACTION``): a finished schedule over fewer images beats a full one cut off mid-way,
    which would end at a high learning rate."""
    left = budget_s * (1 - MARGIN) - spent_s - c.final_s
    epochs = min(max_epochs, int(max(0.0, left) // max(c.epoch_s, 1e-9)))
    if epochs >= 1:
        return Plan(budget_s, c.model, epochs, c.epoch_s, c.step_s, c.final_s, spent_s,
                    spent_s + epochs * c.epoch_s + c.final_s)
    fraction = min(1.0, max(MIN_FRACTION, (left - c.val_s) / max(c.train_s, 1e-9)))
    epoch_s = c.train_s * fraction + c.val_s
    return Plan(budget_s, c.model, 1, epoch_s, c.step_s, c.final_s, spent_s, spent_s + epoch_s + c.final_s,
                round(fraction, 4))


def enough(plan: Plan, max_epochs: int) -> bool:
    """Whether the plan's model gets enough epochs to be worth it over the next smaller one."""
    return plan.fraction >= 1 and plan.epochs >= min(MIN_EPOCHS, max_epochs)


def measure(model: torch.nn.Module, batches, val_batches, autocast, steps: int = 6, max_seconds: float = 4.0,
            device: torch.device | None = None) -> tuple[float, float]:
    """(seconds per training step, seconds per evaluation image) of ``model`` on the run's own batches. A copy of
    the model trains (the run's own starts untouched) and the RNG is restored, so planning does not change what
    the run computes."""
    state = rng_state()
    model = copy.deepcopy(model).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
    times = []
    try:
        batches.set_epoch(0)
        for i, (x, y, *_) in enumerate(batches):
            start = time.perf_counter()
            with _autocast(autocast, device):
                loss = F.cross_entropy(model(x).float(), y if y.ndim == 1 else y.argmax(1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - start)
            if i >= steps or sum(times[1:]) > max_seconds:
                break
        # the batch iterator's own time (augmentation) is part of a step: measure it apart, on a fresh pass
        it = iter(batches)
        t = time.perf_counter()
        n = 0
        for _ in range(min(3, len(batches))):
            next(it)
            n += 1
        batch_s = (time.perf_counter() - t) / max(n, 1)
        model.eval()
        x, *_ = next(iter(val_batches))
        x = x[:256]
        with torch.inference_mode(), _autocast(autocast, device):
            model(x[:8])  # warm-up
            timed = []
            for _ in range(2):  # the first full batch still allocates: the faster of two
                t = time.perf_counter()
                model(x)
                timed.append(time.perf_counter() - t)
            eval_s = min(timed) / len(x)
    finally:
        set_rng_state(state)
    # the first step builds kernels and allocates: not a steady-state step
    step_s = (sorted(times[1:])[len(times[1:]) // 2] if len(times) > 1 else times[0]) + batch_s
    return step_s, eval_s


def _autocast(dtype, device):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast((device or torch.device("cpu")).type, dtype=dtype)


class TimeBudget(Callback):
    """Ends training when the next epoch would not finish before ``deadline`` (a ``time.perf_counter`` value), and
    mid-epoch once the deadline has passed; the best epoch's checkpoint is what the run keeps either way."""

    order = 30
    state_keys = ()

    def __init__(self, deadline: float, epoch_s: float, check_batches: bool = True):
        self.deadline, self.epoch_s, self.check_batches = deadline, epoch_s, check_batches

    def on_epoch_end(self, L: Learner) -> None:
        seconds = L.metrics.get("seconds") or self.epoch_s
        self.epoch_s = max(seconds, 0.5 * self.epoch_s)  # the last epoch is the best guess of the next
        left = self.deadline - time.perf_counter()
        if L.epoch < L.epochs and left < self.epoch_s:
            raise StopTraining(f"time budget: {left:.0f}s left, an epoch takes {self.epoch_s:.0f}s")

    def on_batch_end(self, L: Learner) -> None:
        if self.check_batches and L.epoch >= 1 and time.perf_counter() > self.deadline:
            raise StopTraining(f"time budget: deadline reached in epoch {L.epoch + 1}")


def tta_passes(mode: str) -> int:
    return {"none": 1, "flip": 2}.get(mode, 6)


__all__ = ["Costs", "Plan", "plan_for", "enough", "measure", "TimeBudget", "REPORT_SECONDS", "MARGIN",
           "tta_passes"]
