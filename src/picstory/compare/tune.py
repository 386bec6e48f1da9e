"""``picstory tune``: hyper-parameter search with Optuna — TPE sampling and pruning on validation accuracy per epoch.

A grid spends most of its cells where the first few already showed the answer; TPE proposes the next setting from the
results so far, and the pruner stops a trial whose validation accuracy falls behind the median of earlier trials at
the same epoch (or, with ``--pruner halving``, successive halving). Each trial is an ordinary run directory
(``out/NAME/trial-003/``) that picstory's other commands understand.

The study lives in ``out/NAME/study.db`` (Optuna's SQLite storage), so the same command resumes it: finished and
pruned trials count, a trial interrupted mid-training is retried with the same setting from its last checkpoint.
The best trial is chosen on validation accuracy; test accuracy is reported, never optimised.

A space is ``KEY=LOW..HIGH`` (uniform; ``:log`` for log-uniform; lr and weight_decay are log-uniform by default),
``KEY=A,B,C`` (a choice), given once per key on the command line or as a YAML mapping of key → such strings/lists.
"""

from __future__ import annotations

import datetime
import json
import math
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml

from .. import config as C
from ..errors import ConfigError, UserError
from ..files import atomic_write, read_json
from ..options import TUNE
from ..runs import RunDir, slug
from ..training.engine import Callback, Learner, StopTraining

DEFAULT_SPACE = {"lr": "1e-4..3e-2", "optimizer": "adamw,sgd-momentum", "weight_decay": "1e-5..1e-1"}
LOG_BY_DEFAULT = ("lr", "weight_decay")
NOT_TUNABLE = {"data": "tune on one data set per study", "out": "the tune folder is set with --out",
               "name": "the study is named with --name", "seed": "trials share the seed so they compare settings"}
PRUNERS = C.PRUNERS


def _need_optuna():
    try:
        import optuna
    except ImportError:
        raise UserError("picstory tune needs Optuna: pip install 'picstory[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


# ---------------------------------------------------------------- the space


def parse_space(space: Any) -> dict[str, dict]:
    """``["lr=1e-4..1e-1", "optimizer=adam,sgd"]``, a YAML file, a dict or None (the default space) →
    ``{key: {"kind": "float"|"int"|"choice", ...}}``, every key and bound checked against the config."""
    items = _space_items(space)
    out: dict[str, dict] = {}
    for key, spec in items.items():
        key = str(key).strip().replace("-", "_")
        if key in out:
            raise ConfigError(f"--space: '{key}' is given twice; give its range or choices once")
        if key in NOT_TUNABLE:
            raise ConfigError(f"--space cannot vary '{key}': {NOT_TUNABLE[key]}")
        if key not in C.FIELDS:
            raise ConfigError(f"--space: unknown config key '{key}'{C.suggest(key, C.FIELDS)}")
        out[key] = _dimension(key, spec)
    if not out:
        raise ConfigError("--space is empty: give KEY=LOW..HIGH or KEY=A,B (e.g. --space lr=1e-4..1e-1)")
    return out


def _space_items(space: Any) -> dict:
    if space is None or (isinstance(space, (list, tuple)) and not space):
        return dict(DEFAULT_SPACE)
    if isinstance(space, dict):
        return space
    items: dict = {}
    for entry in [space] if isinstance(space, (str, Path)) else space:
        text = str(entry).strip()
        if "=" in text:
            key, _, spec = text.partition("=")
            if key.strip() in items:
                raise ConfigError(f"--space: '{key.strip()}' is given twice; give its range or choices once")
            items[key.strip()] = spec.strip()
            continue
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"--space {text!r}: expected KEY=LOW..HIGH, KEY=A,B or a YAML space file")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"--space {text}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"--space {text}: expected a mapping of config keys to ranges or lists")
        items.update(loaded)
    return items


def _dimension(key: str, spec: Any) -> dict:
    typ = C.field_python_type(key)
    if isinstance(spec, list):
        return _choice(key, spec)
    text = str(spec).strip()
    if ".." in text:
        bounds, _, scale = text.partition(":")
        low_t, _, high_t = bounds.partition("..")
        if scale not in ("", "log", "linear"):
            raise ConfigError(f"--space {key}={text}: scale must be :log or :linear, got :{scale}")
        num = int if typ is int else float
        if key == "lr":
            num = float
        elif typ not in (int, float):
            raise ConfigError(f"--space {key}={text}: '{key}' is not a number; list its choices, e.g. {key}=A,B")
        try:
            low, high = num(float(low_t)), num(float(high_t))
        except ValueError:
            raise ConfigError(f"--space {key}={text}: expected LOW..HIGH numbers, e.g. {key}=1e-4..1e-1") from None
        if not low < high:
            raise ConfigError(f"--space {key}={text}: empty range (LOW must be below HIGH)")
        log = scale == "log" or (scale == "" and key in LOG_BY_DEFAULT)
        if log and low <= 0:
            raise ConfigError(f"--space {key}={text}: a log-uniform range needs LOW > 0")
        for v in (low, high):
            C.coerce(key, str(v) if key == "lr" else v)  # the config's own bounds (min/max) hold for the range
        return {"kind": "int" if num is int else "float", "low": low, "high": high, "log": log,
                "text": f"{low:g}..{high:g}" + (" (log)" if log else "")}
    return _choice(key, [v for v in text.split(",")])


def _choice(key: str, values: list) -> dict:
    values = [v.strip() if isinstance(v, str) else v for v in values]
    if not values or any(v in ("", None) for v in values):
        raise ConfigError(f"--space {key}: empty choice; write {key}=A,B")
    coerced = [C.coerce(key, v) for v in values]
    if len(set(map(str, coerced))) != len(coerced):
        raise ConfigError(f"--space {key}: a choice is listed twice ({', '.join(map(str, values))})")
    if len(coerced) == 1:
        raise ConfigError(f"--space {key}: one choice is not a search; fix it with --{key.replace('_', '-')} instead")
    return {"kind": "choice", "choices": coerced, "text": ",".join(map(str, coerced))}


def suggest(trial, space: dict[str, dict]) -> dict:
    out = {}
    for key, d in space.items():
        if d["kind"] == "float":
            out[key] = trial.suggest_float(key, d["low"], d["high"], log=d["log"])
        elif d["kind"] == "int":
            out[key] = trial.suggest_int(key, d["low"], d["high"], log=d["log"])
        else:
            out[key] = trial.suggest_categorical(key, d["choices"])
    return out


# ---------------------------------------------------------------- pruning


class OptunaPruning(Callback):
    """Reports validation accuracy per epoch to the trial and stops training when the pruner says so."""

    order = 25  # after the best checkpoint (10) and early stopping (20): the pruned run keeps its best epoch

    def __init__(self, trial):
        self.trial = trial
        self.pruned_at: int | None = None

    def on_fit_start(self, L: Learner) -> None:
        for row in L.history:  # a resumed trial: the epochs before the interruption count too
            self.trial.report(float(row["val_acc"]), int(row["epoch"]))

    def on_epoch_end(self, L: Learner) -> None:
        value = float(L.metrics["val_acc"])
        self.trial.report(value if math.isfinite(value) else 0.0, L.epoch)
        if L.epoch < L.epochs and self.trial.should_prune():
            self.pruned_at = L.epoch
            raise StopTraining(f"pruned at epoch {L.epoch}: validation accuracy {value:.4f} behind earlier trials")


# ---------------------------------------------------------------- the study


def _identity(data: str, space: dict, overrides: dict, pruner: str) -> dict:
    return {"data": data, "space": {k: d["text"] for k, d in space.items()},
            "overrides": {k: v for k, v in overrides.items() if k != "threads"}, "pruner": pruner}


def _open(path: Path, identity: dict) -> dict:
    record = read_json(path / "tune.json")
    if record:
        diffs = [k for k in ("data", "space", "overrides", "pruner") if record.get(k) != identity[k]]
        if diffs:
            raise UserError(f"{path} holds a different study ({', '.join(diffs)} differ); repeat its original "
                            "options to resume it, or pass --name NEW for a new study")
        return record
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"{path} exists and is not a tune folder (no tune.json); pass --name NEW or --out DIR")
    path.mkdir(parents=True, exist_ok=True)
    return {**identity, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _pruner(optuna, name: str):
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def tune(data: str, trials: int = TUNE.trials, budget_minutes: float | None = TUNE.budget_minutes, space: Any = None,
         pruner: str = TUNE.pruner,
         name: str = "", out: str = "runs", command: str = "", progress: bool = True, **train_overrides) -> dict:
    """Run (or resume) a study of ``trials`` trials on ``data``; no new trial starts after ``budget_minutes``.
    Writes tune.json, trials.csv and tune.html in ``out/NAME`` and returns ``{"dir", "best", "trials", ...}``."""
    from ..data import sources
    from ..pipeline.training_run import train

    if trials < 1:
        raise ConfigError(f"--trials must be ≥ 1, got {trials}")
    if budget_minutes is not None and budget_minutes <= 0:
        raise ConfigError(f"--budget-minutes must be > 0, got {budget_minutes:g}")
    if pruner not in PRUNERS:
        raise ConfigError(f"--pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    dims = parse_space(space)
    overrides = {k: C.coerce(k, v) for k, v in train_overrides.items() if v is not None}
    both = [k for k in dims if k in overrides]
    if both:
        raise ConfigError(f"'{both[0]}' is both in --space and a fixed option ({overrides[both[0]]}); drop one")
    optuna = _need_optuna()
    sources.resolve(data, **C.label_file_options(overrides))  # fail before any trial
    path = Path(out or "runs") / (name or f"tune-{slug(data)}")
    record = _open(path, _identity(data, dims, overrides, pruner))
    record["command"] = command or record.get("command", "")
    atomic_write(path / "tune.json", json.dumps(record, indent=1))
    seed = int(overrides.get("seed", 0))
    study = optuna.create_study(study_name="picstory", storage=f"sqlite:///{(path / 'study.db').resolve()}",
                                direction="maximize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=seed), pruner=_pruner(optuna, pruner))
    gone = _retry_interrupted(optuna, study, record)
    atomic_write(path / "tune.json", json.dumps(record, indent=1))
    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    done = sum(t.state in counted and t.number not in gone for t in study.trials)
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    say(f"tune {path}: {trials} trials ({done} finished, {max(0, trials - done)} to run)")

    def objective(trial) -> float:
        params = suggest(trial, dims)
        run_dir = _trial_dir(path, trial)
        trial.set_user_attr("run", run_dir.name)
        cb = OptunaPruning(trial)
        resume = run_dir if RunDir(run_dir).last_checkpoint.is_file() else None
        if resume is None and run_dir.exists():
            shutil.rmtree(run_dir)  # died before its first checkpoint: nothing to keep
        try:
            run = train(None if resume else data, resume=resume, out=str(path), name=run_dir.name, progress=False,
                        callbacks=[cb], **({} if resume else {**overrides, **params, "seed": seed}))
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        s = run.summary or {}
        trial.set_user_attr("test_accuracy", s.get("test_accuracy"))
        trial.set_user_attr("epochs", s.get("epochs_run"))
        trial.set_user_attr("seconds", s.get("train_seconds"))
        value = s.get("val_accuracy")
        say(f"[trial {trial.number}] {', '.join(f'{k}={_short(v)}' for k, v in params.items())}: "
            f"val {value if value is None else f'{value:.4f}'}"
            + (f" (pruned at epoch {cb.pruned_at})" if cb.pruned_at else ""))
        if value is None or not math.isfinite(value):
            raise UserError(f"trial {trial.number}: {s.get('stop_reason', 'no validated epoch')}")
        if cb.pruned_at:
            raise optuna.TrialPruned()
        return float(value)

    if done < trials:
        try:
            study.optimize(objective, n_trials=trials - done, timeout=budget_minutes * 60 if budget_minutes else None,
                           catch=(UserError,), gc_after_trial=True)
        except KeyboardInterrupt:
            write_tune_report(path, study, dims, record)
            say(f"tune interrupted; run the same command again to resume ({path})")
            raise
    return write_tune_report(path, study, dims, record)


def _trial_dir(path: Path, trial) -> Path:
    return path / trial.user_attrs.get("resume_dir", f"trial-{trial.number:03d}")


def _retry_interrupted(optuna, study, record: dict) -> set[int]:
    """Trials an interrupted process left behind — failed with the ``interrupted`` mark, or still RUNNING after a
    kill — are queued again with the same setting and run directory, so their checkpoint is continued. Returns the
    numbers of those trials (they count neither as finished nor in the table; their retry does)."""
    killed = record.setdefault("killed", [])
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        killed.append(t.number)
    gone = {t.number for t in study.trials if t.user_attrs.get("interrupted")} | set(killed)
    retried = record.setdefault("retried", [])
    for t in study.trials:
        if t.number in gone and t.number not in retried:
            study.enqueue_trial(t.params, user_attrs={"resume_dir": t.user_attrs.get("run", f"trial-{t.number:03d}")})
            retried.append(t.number)
    return gone


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------- the report


def trial_rows(study, record: dict) -> list[dict]:
    rows = []
    gone = set(record.get("killed", []))
    for t in study.trials:
        if t.user_attrs.get("interrupted") or t.number in gone or t.state.name in ("RUNNING", "WAITING"):
            continue
        value = t.value if t.state.name == "COMPLETE" else (
            t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None)
        rows.append({"number": t.number, "state": t.state.name, "params": dict(t.params), "value": value,
                     "test": t.user_attrs.get("test_accuracy"), "epochs": t.user_attrs.get("epochs"),
                     "seconds": t.user_attrs.get("seconds"), "run": t.user_attrs.get("run"),
                     "note": f"epoch {max(t.intermediate_values)}" if t.state.name == "PRUNED"
                     and t.intermediate_values else ""})
    return rows


def write_tune_report(path: Path, study, dims: dict, record: dict) -> dict:
    import csv
    import io

    from ..pages import tune_page

    optuna = _need_optuna()
    rows = trial_rows(study, record)
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    best = max(complete, key=lambda r: (r["value"], -r["number"])) if complete else None
    importances: dict[str, float] = {}
    if len(complete) >= 2 and len(dims) > 0:
        try:
            with warnings.catch_warnings():  # "importances will be equal" when every trial scored the same
                warnings.simplefilter("ignore")
                importances = {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
        except (RuntimeError, ValueError):  # every finished trial had the same setting: nothing to attribute
            importances = {}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["trial", "state", *dims, "val_acc", "test_acc", "epochs", "seconds", "run"])
    for r in rows:
        w.writerow([r["number"], r["state"].lower(), *[r["params"].get(k, "") for k in dims], r["value"], r["test"],
                    r["epochs"], r["seconds"], r["run"]])
    atomic_write(path / "trials.csv", buf.getvalue())
    record.update(best=best, importances=importances, trials=len(rows))
    atomic_write(path / "tune.json", json.dumps(record, indent=1))
    html = tune_page.render_html(path.name, record["data"], {k: d["text"] for k, d in dims.items()}, rows, best,
                                 importances, record.get("command", ""))
    atomic_write(path / "tune.html", html.encode())
    return {"dir": path, "best": best, "trials": rows, "importances": importances}


__all__ = ["tune", "parse_space", "OptunaPruning", "DEFAULT_SPACE"]
