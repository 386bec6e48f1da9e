"""Run directories: the names of the files in one (RunDir), unique names (never overwritten), listing."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError, UserError
from .files import read_json


@dataclass(frozen=True)
class RunDir:
    """The files of a run directory, named in one place (DESIGN.md lists what each holds)."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    config = property(lambda self: self.path / "config.yaml")
    summary = property(lambda self: self.path / "summary.json")
    metrics = property(lambda self: self.path / "metrics.csv")
    history = property(lambda self: self.path / "history.json")
    split = property(lambda self: self.path / "split.csv")
    data = property(lambda self: self.path / "data.json")
    env = property(lambda self: self.path / "env.json")
    lr_find = property(lambda self: self.path / "lr_find.json")
    report = property(lambda self: self.path / "report.html")
    bundle = property(lambda self: self.path / "model")
    last_checkpoint = property(lambda self: self.path / "checkpoints" / "last.pt")
    # a cross-validation parent: one run directory per fold (fold-1 …) and what they add up to
    folds = property(lambda self: self.path / "folds.json")
    cv = property(lambda self: self.path / "cv.json")
    cv_report = property(lambda self: self.path / "cv.html")
    oof = property(lambda self: self.path / "oof.npz")
    oof_csv = property(lambda self: self.path / "oof.csv")
    issues = property(lambda self: self.path / "issues.csv")
    # penultimate features of the training split (similar, the report's neighbours), keyed by the weights' sha256
    embeddings = property(lambda self: self.path / "embeddings.npz")

    def eval(self, data: str | None = None) -> Path:
        """eval.json for the run's own test split, eval-DATA.json for other data."""
        return self.path / ("eval.json" if data is None else f"eval-{slug(data)}.json")

    def read_summary(self) -> dict:
        return read_json(self.summary)


RUN_MARKER = ".picstory-run"  # in every run directory: a data scan skips the folder, so runs are never learned


def refuse_inside(out: str | Path, data_root: Path | None, what: str = "--out") -> None:
    """Nothing picstory writes may land inside the data set: the next scan would learn a class "runs"."""
    if data_root is None:
        return
    out, root = Path(out).expanduser().resolve(), Path(data_root).resolve()
    if out == root or root in out.parents:
        raise DataError(f"{what} {out} is inside the data folder {root}; picstory never writes into the data, "
                        "choose a folder outside it")


def slug(text: str) -> str:
    text = re.sub(r"^builtin:", "", text.strip().rstrip("/\\"))
    text = Path(text).stem if ("/" in text or "\\" in text or "." in text) else text
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-").lower() or "run"


def create_run_dir(out: str | Path, name: str) -> Path:
    """Make ``out/name`` (or name-2, name-3, …). ``os.mkdir`` is atomic, so two runs started at once with the
    same name get two different directories."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the output folder {out}: {e.strerror}; choose another with --out") from None
    if not os.access(out, os.W_OK):
        raise UserError(f"output folder {out} is not writable; choose another with --out")
    for i in range(1, 10_000):
        path = out / (name if i == 1 else f"{name}-{i}")
        try:
            path.mkdir()
            (path / RUN_MARKER).write_text("a picstory run directory; data scans skip this folder\n")
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise UserError(f"cannot create {path}: {e.strerror}; choose another folder with --out") from None
    raise UserError(f"too many runs named {name} in {out}; choose another --name")


def find_run(run: str | Path) -> Path:
    path = Path(run)
    if not path.is_dir():
        candidates = [Path("runs") / run] if not path.is_absolute() else []
        path = next((c for c in candidates if c.is_dir()), path)
    if not path.is_dir():
        raise UserError(f"run not found: {run} (give a run directory such as runs/NAME; `picstory runs` lists them)")
    if not RunDir(path).config.is_file() and not (RunDir(path).bundle / "model.json").is_file():
        raise UserError(f"{path} is not a picstory run directory (no config.yaml or model/model.json)")
    return path


def list_runs(root: str | Path = "runs") -> list[dict]:
    """One dict per run under root (recursively, so sweep cells are listed too)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"no runs folder at {root}; train a model first or pass the folder holding runs")
    rows = []
    for cfg in sorted(root.rglob("config.yaml")):
        run = cfg.parent
        summary = RunDir(run).read_summary()
        import yaml

        try:
            config = yaml.safe_load(cfg.read_text()) or {}
        except Exception:
            config = {}
        train = config.get("train", {})
        rows.append({
            "name": str(run.relative_to(root)), "data": config.get("data", {}).get("data", ""),
            "model": summary.get("model") or config.get("model", {}).get("model", ""),
            "optimizer": train.get("optimizer", ""), "lr": summary.get("lr", train.get("lr", "")),
            "best_val": summary.get("val_accuracy"), "test": summary.get("test_accuracy"),
            "epochs": summary.get("epochs_run"), "seconds": summary.get("train_seconds"),
            "status": summary.get("stop_reason", "running or interrupted"),
            "date": summary.get("finished", ""),
        })
    return rows
