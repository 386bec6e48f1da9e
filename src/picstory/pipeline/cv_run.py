"""``picstory train DATA --folds K``: K ordinary training runs under one parent directory, one per fold.

The parent holds ``fold-1`` … ``fold-K`` (each a normal run directory whose config.yaml names its fold, so
``picstory train --config PARENT/fold-3/config.yaml`` replays that fold alone), ``config.yaml`` (the whole
cross-validation), ``cv.json`` / ``cv.html`` (mean ± std of every metric over the folds), ``oof.npz`` / ``oof.csv``
(each training image's probabilities from the one model that never saw it) and ``summary.json`` (the fold means,
so that ``picstory runs`` and sweeps read a cross-validation like one run). The test split is the same for every
fold and no fold trains on it.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np

from .. import config as C
from ..data import sources
from ..data.split import fold_assignment
from ..errors import ConfigError, UserError
from ..evaluation.metrics import summarize
from ..files import atomic_write, read_json
from ..runs import RunDir, create_run_dir, refuse_inside, slug
from . import training_run
from .evaluation_run import split_probabilities


def train(data: str | None = None, *, config=None, resume: str | Path | None = None, progress: bool = True,
          command: str = "", callbacks: list | None = None, started: float | None = None,
          **overrides) -> training_run.Run:
    """``picstory.train``: one run, or a cross-validation when ``folds`` ≥ 2 (and no single ``fold`` is asked)."""
    if resume:
        if RunDir(Path(resume)).folds.is_file():
            return _run_folds(Path(resume), progress, command, callbacks)
        return training_run.train(resume=resume, progress=progress, command=command, callbacks=callbacks)
    user = training_run.user_config(data, config, overrides)
    if not C.coerce("folds", user.get("folds", 0)) or C.coerce("fold", user.get("fold", 0)):
        # what the user set, not a full Config: unset keys must still take the preset's values
        rest = {k: v for k, v in user.items() if k != "data"}
        return training_run.train(user["data"], progress=progress, command=command, callbacks=callbacks,
                                  started=started, **rest)
    return cross_validate(user, progress=progress, command=command, callbacks=callbacks)


def cross_validate(user: dict, progress: bool = True, command: str = "", callbacks: list | None = None
                   ) -> training_run.Run:
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every rank would create its own parent folder
        raise UserError("--folds with --nproc / torchrun is not supported: run the folds in one process, or one fold "
                        "per launch with --fold N")
    if user.get("time_budget"):
        raise ConfigError(f"--time-budget {user['time_budget']} with --folds is not supported: the budget is for one "
                          "run; train one fold with --fold N, or set --epochs for the cross-validation")
    source = sources.resolve(user["data"], **C.label_file_options(user))
    cfg = training_run.resolve_config(user, source)
    d = cfg.data
    if source.multilabel:
        raise ConfigError(f"--folds {d.folds}: cross-validation of multi-label data is not supported; train "
                          "without --folds")
    fold_assignment(source.records, d.folds, d.test_fraction, cfg.train.seed)  # too few images: fail before a run
    if source.kind in ("folder", "filenames"):
        refuse_inside(cfg.run.out, source.root)
    parent = create_run_dir(cfg.run.out, cfg.run.name or f"{slug(cfg.model.model)}-{slug(d.data)}-cv{d.folds}")
    atomic_write(RunDir(parent).config, C.dump_yaml(cfg))
    atomic_write(RunDir(parent).folds, json.dumps({"folds": d.folds, "command": command or " ".join(sys.argv)}))
    return _run_folds(parent, progress, command, callbacks)


def _run_folds(parent: Path, progress: bool, command: str, callbacks: list | None) -> training_run.Run:
    """Train (or continue) every fold not yet finished, then add them up. Rerunning it resumes."""
    cfg = C.load_yaml(RunDir(parent).config)
    source = sources.resolve(cfg.data.data, **C.label_file_options(cfg))
    for k in range(1, cfg.data.folds + 1):
        fold_dir = parent / f"fold-{k}"
        summary = read_json(RunDir(fold_dir).summary)
        if summary.get("stop_reason") and summary["stop_reason"] != "interrupted":
            continue
        if progress:
            print(f"fold {k}/{cfg.data.folds}", file=sys.stderr, flush=True)
        if RunDir(fold_dir).last_checkpoint.is_file():
            training_run.train(resume=fold_dir, progress=progress, command=command, callbacks=callbacks)
            continue
        if fold_dir.exists():  # died before its first checkpoint: nothing in it to keep
            shutil.rmtree(fold_dir)
        fold_cfg = cfg.updated(fold=k, out=str(parent), name=f"fold-{k}")
        training_run.train(config=fold_cfg, progress=progress, command=command, callbacks=callbacks)
    summary = summarize_folds(parent, cfg, source)
    return training_run.Run(path=parent, summary=summary)


def summarize_folds(parent: Path, cfg: C.Config, source: sources.Source) -> dict:
    """cv.json, cv.html, oof.npz, oof.csv and summary.json from the finished folds."""
    folds = cfg.data.folds
    n, classes = len(source.records), None
    probs = fold_of = None
    rows = []
    for k in range(1, folds + 1):
        fold_dir = parent / f"fold-{k}"
        oof = split_probabilities(fold_dir, source, "val", tta=cfg.eval.tta, device=_device(cfg))
        if probs is None:
            classes = oof["classes"]
            probs = np.full((n, len(classes)), np.nan, dtype=np.float32)
            fold_of = np.zeros(n, dtype=np.int64)
        probs[oof["indices"]] = oof["probs"]
        fold_of[oof["indices"]] = k
        rows.append(fold_metrics(read_json(RunDir(fold_dir).summary), read_json(RunDir(fold_dir).eval()),
                                 summarize(oof["probs"], oof["labels"], classes)))
    seen = np.flatnonzero(fold_of > 0)
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[source.records[i].label] for i in seen], dtype=np.int64)
    oof_all = summarize(probs[seen], labels, classes)
    result = {"folds": folds, "data": cfg.data.data, "model": cfg.model.model, "classes": classes,
              "metrics": aggregate(rows), "per_fold": rows,
              "oof": {k: oof_all[k] for k in ("accuracy", "loss", "n")} | {"macro_f1": _macro_f1(oof_all)},
              "test_images": int(np.sum(fold_assignment(source.records, folds, cfg.data.test_fraction,
                                                        cfg.train.seed) < 0))}
    paths = [source.display_path(source.records[i]) for i in seen]
    _write_oof(parent, [source.records[i].ref for i in seen], paths, labels, probs[seen], fold_of[seen], classes)
    atomic_write(RunDir(parent).cv, json.dumps(result, indent=1))
    from ..pages.cv_page import cv_page

    atomic_write(RunDir(parent).cv_report, cv_page(result))
    summary = _parent_summary(parent, cfg, result)
    atomic_write(RunDir(parent).summary, json.dumps(summary, indent=1))
    return summary


def _device(cfg: C.Config) -> str:
    from ..device import pick_device

    return str(pick_device(cfg.train.device))


def fold_metrics(summary: dict, test_eval: dict, val: dict) -> dict:
    """Every scalar a fold reports: its validation fold (the out-of-fold predictions), the shared test split,
    per-class F1, and the run's own figures (best epoch, seconds)."""
    row = {"val_accuracy": val["accuracy"], "val_loss": val["loss"], "val_macro_f1": _macro_f1(val)}
    for c in val["per_class"]:
        row[f"val_f1[{c['class']}]"] = c["f1"]
    if test_eval:
        row.update(test_accuracy=test_eval.get("accuracy"), test_loss=test_eval.get("loss"),
                   test_top5_accuracy=test_eval.get("top5_accuracy"), test_macro_f1=_macro_f1(test_eval))
        for c in test_eval.get("per_class") or []:
            row[f"test_f1[{c['class']}]"] = c["f1"]
    for key in ("best_epoch", "epochs_run", "train_seconds", "images_per_second"):
        row[key] = summary.get(key)
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and v is not None}


def _macro_f1(result: dict) -> float:
    f1 = [c["f1"] for c in result.get("per_class") or [] if c.get("support")]
    return float(np.mean(f1)) if f1 else float("nan")


def aggregate(rows: list[dict]) -> dict:
    """metric → {mean, std (sample, ddof 1), min, max, n}; a metric some fold lacks is averaged over the rest."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    out = {}
    for key in keys:
        xs = [r[key] for r in rows if key in r and np.isfinite(r[key])]
        if xs:
            out[key] = {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
                        "min": min(xs), "max": max(xs), "n": len(xs)}
    return out


def _write_oof(parent: Path, refs: list[str], paths: list[str], labels: np.ndarray, probs: np.ndarray,
               fold: np.ndarray, classes: list[str]) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, refs=np.array(refs), paths=np.array(paths), labels=labels, probs=probs, fold=fold,
                        classes=np.array(classes))
    atomic_write(RunDir(parent).oof, buf.getvalue())
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(["path", "label", "fold", *[f"p[{c}]" for c in classes]])
    for p, y, f, row in zip(paths, labels, fold, probs):
        w.writerow([p, classes[y], int(f), *[f"{x:.6g}" for x in row]])
    atomic_write(RunDir(parent).oof_csv, text.getvalue())


def _parent_summary(parent: Path, cfg: C.Config, result: dict) -> dict:
    m = result["metrics"]
    mean = lambda key: m[key]["mean"] if key in m else None  # noqa: E731
    first = read_json(RunDir(parent / "fold-1").summary)
    return {"val_accuracy": mean("val_accuracy"), "test_accuracy": mean("test_accuracy"),
            "val_accuracy_std": m.get("val_accuracy", {}).get("std"),
            "test_accuracy_std": m.get("test_accuracy", {}).get("std"),
            "oof_accuracy": result["oof"]["accuracy"], "folds": result["folds"], "best_epoch": None,
            "epochs_run": mean("epochs_run"), "train_seconds": round(sum(r.get("train_seconds", 0)
                                                                         for r in result["per_fold"]), 2),
            "stop_reason": f"cross-validated ({result['folds']} folds)", "classes": result["classes"],
            "class_counts": first.get("class_counts"), "model": first.get("model", cfg.model.model),
            "data": cfg.data.data, "img_size": cfg.data.img_size, "lr": first.get("lr"),
            "optimizer": cfg.train.optimizer,
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


__all__ = ["train", "cross_validate", "summarize_folds", "aggregate", "fold_metrics"]
