"""Experiment tracking as training callbacks: TensorBoard event files and MLflow runs (``--log tensorboard,mlflow``).

Both are optional extras. Tracking is a copy of what the run directory already holds, so a tracker that fails (MLflow
server down, disk full) warns once and switches itself off: training continues and nothing in the run is lost.

Per step (every ``log_every``): training loss and LR. Per epoch: every metrics.csv column. After the run
(:meth:`Tracker.finish_run`, called by the pipeline once the report exists): test metrics, hyperparameters with the
final metrics, the confusion matrix and mistake gallery as images; MLflow also gets report.html and the bundle.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path

from ..errors import UserError
from ..runs import RunDir
from .engine import Callback, Learner

EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}  # name → (module, extra)
EPOCH_SCALARS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "img_size", "seconds")
FINAL_METRICS = ("test_accuracy", "val_accuracy", "best_epoch", "epochs_run", "train_seconds")
FIGURES = {"confusion_matrix": "confusion_matrix.png", "mistakes": "errors.png", "curves": "curves.png"}


def check_available(names: list[str]) -> None:
    """Fail before training when a requested tracker's package is missing, with the line that installs it."""
    for name in names:
        module, extra = EXTRAS[name]
        if importlib.util.find_spec(module) is None:
            raise UserError(f"--log {name} needs the {module} package: pip install 'picstory[{extra}]'")


def make_trackers(log: str, run_dir: Path, params: dict, log_every: int) -> list["Tracker"]:
    names = [n.strip() for n in log.split(",") if n.strip()]
    check_available(names)
    kinds = {"tensorboard": TensorBoardTracker, "mlflow": MLflowTracker}
    return [kinds[n](run_dir, params, log_every) for n in dict.fromkeys(names)]


class Tracker(Callback):
    """Shared plumbing: rank 0 only, every-N-steps scalars, and a failure that disables the tracker."""

    order = 60  # after the metrics log and checkpoints: a slow tracker never delays what resume needs
    name = "tracker"

    def __init__(self, run_dir: Path, params: dict, log_every: int = 50):
        self.run_dir, self.params, self.log_every = Path(run_dir), params, log_every
        self.active = True

    def _guard(self, fn, *args) -> None:
        if not self.active:
            return
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 — tracking is a copy; the run must go on without it
            self.active = False
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            print(f"warning: {self.name} logging failed and is off for the rest of this run ({first}); "
                  f"the run directory has everything", file=sys.stderr)

    def on_fit_start(self, L: Learner) -> None:
        if L.is_main:
            self._guard(self.start, L)

    def on_batch_end(self, L: Learner) -> None:
        if L.is_main and L.step % self.log_every == 0:
            self._guard(self.step_scalars, L.step, float(L.batch_loss), float(L.current_lr))

    def on_epoch_end(self, L: Learner) -> None:
        if L.is_main:
            scalars = {k: float(L.metrics[k]) for k in EPOCH_SCALARS if isinstance(L.metrics.get(k), (int, float))}
            self._guard(self.epoch_scalars, L.epoch, scalars)

    def on_fit_end(self, L: Learner) -> None:
        if L.is_main:
            self._guard(self.flush)

    def finish_run(self, summary: dict) -> None:
        """After evaluation and the report: final metrics, figures, artifacts; then close."""
        final = {k: float(summary[k]) for k in FINAL_METRICS if isinstance(summary.get(k), (int, float))}
        self._guard(self.finish, final)
        self._guard(self.close)

    # what each tracker implements
    def start(self, L: Learner) -> None: ...
    def step_scalars(self, step: int, loss: float, lr: float) -> None: ...
    def epoch_scalars(self, epoch: int, scalars: dict) -> None: ...
    def flush(self) -> None: ...
    def finish(self, final: dict) -> None: ...
    def close(self) -> None: ...


def _hparams(params: dict) -> dict:
    """Flat config values TensorBoard's and MLflow's hparams accept (numbers, strings, bools)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}


def _png(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


class TensorBoardTracker(Tracker):
    """Event files under RUN/tensorboard/ (``tensorboard --logdir runs`` shows every run side by side)."""

    name = "TensorBoard"

    def start(self, L: Learner) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run continues its curves: events after the checkpointed step replace the interrupted ones
        self.writer = SummaryWriter(str(RunDir(self.run_dir).path / "tensorboard"), purge_step=L.step or None)

    def step_scalars(self, step: int, loss: float, lr: float) -> None:
        self.writer.add_scalar("step/train_loss", loss, step)
        self.writer.add_scalar("step/lr", lr, step)

    def epoch_scalars(self, epoch: int, scalars: dict) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(f"epoch/{k}", v, epoch)

    def flush(self) -> None:
        self.writer.flush()

    def finish(self, final: dict) -> None:
        for tag, name in FIGURES.items():
            if (self.run_dir / name).is_file():
                self.writer.add_image(f"figures/{tag}", _png(self.run_dir / name), dataformats="HWC")
        metrics = {f"final/{k}": v for k, v in final.items() if not math.isnan(v)}
        self.writer.add_hparams(_hparams(self.params), metrics, run_name="hparams")

    def close(self) -> None:
        self.writer.close()


class MLflowTracker(Tracker):
    """One MLflow run per picstory run: params, metrics, report.html and the bundle as artifacts.

    The store is ``MLFLOW_TRACKING_URI`` when set, else ``./mlruns`` (a local file store; for MLflow 3, which puts
    that store behind ``MLFLOW_ALLOW_FILE_STORE``, picstory sets that variable when it picks the default). The
    experiment is
    ``MLFLOW_EXPERIMENT_NAME`` or "picstory". A resumed run logs into the same MLflow run.
    """

    name = "MLflow"
    state_keys = ("mlflow_run_id",)

    def __init__(self, run_dir: Path, params: dict, log_every: int = 50):
        super().__init__(run_dir, params, log_every)
        self.mlflow_run_id: str | None = None

    def start(self, L: Learner) -> None:
        # an unreachable server must cost seconds, not the client's default minutes of retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            # the local file store needs no server and no database; MLflow 3 keeps it behind an opt-in
            uri = Path("mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        import mlflow

        self.mlflow = mlflow
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        exp_name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "picstory")
        exp = self.client.get_experiment_by_name(exp_name)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(exp_name)
        if self.mlflow_run_id is None:
            run = self.client.create_run(exp_id, run_name=self.run_dir.name,
                                         tags={"picstory.run_dir": str(self.run_dir.resolve())})
            self.mlflow_run_id = run.info.run_id
            params = [mlflow.entities.Param(k, str(v)[:500]) for k, v in _hparams(self.params).items()]
            for i in range(0, len(params), 100):  # the batch API takes at most 100 params
                self.client.log_batch(self.mlflow_run_id, params=params[i:i + 100])
        else:
            self.client.update_run(self.mlflow_run_id, status="RUNNING")

    def _metrics(self, values: dict, step: int) -> None:
        import time

        now = int(time.time() * 1000)
        ms = [self.mlflow.entities.Metric(k, v, now, step) for k, v in values.items() if math.isfinite(v)]
        self.client.log_batch(self.mlflow_run_id, metrics=ms)

    def step_scalars(self, step: int, loss: float, lr: float) -> None:
        self._metrics({"step_train_loss": loss, "step_lr": lr}, step)

    def epoch_scalars(self, epoch: int, scalars: dict) -> None:
        self._metrics(scalars, epoch)

    def finish(self, final: dict) -> None:
        self._metrics({f"final_{k}": v for k, v in final.items()}, 0)
        rd = RunDir(self.run_dir)
        for f in ("report.html", "summary.json", "config.yaml", "metrics.csv", *FIGURES.values()):
            if (self.run_dir / f).is_file():
                self.client.log_artifact(self.mlflow_run_id, str(self.run_dir / f))
        if rd.bundle.is_dir():
            self.client.log_artifacts(self.mlflow_run_id, str(rd.bundle), artifact_path="model")

    def close(self) -> None:
        self.client.set_terminated(self.mlflow_run_id, status="FINISHED")
