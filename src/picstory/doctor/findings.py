"""Loading a run and the small helpers every rule uses."""

from __future__ import annotations

import csv
import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..config import plural  # noqa: F401  (doctor rules and pages use it from here too)
from ..errors import UserError
from ..runs import RunDir, find_run

SEVERITIES = ("problem", "warning", "info")
OPTIONAL_FILES = ("history.json", "eval.json", "data.json", "lr_find.json", "env.json")
BIGGER_MODEL = {"picnet-s": "picnet-m", "picnet-m": "picnet-l"}
PRETRAINED = "efficientnet_lite0"


@dataclass
class Finding:
    kind: str
    severity: str  # "info" | "warning" | "problem"
    title: str
    evidence: str  # plain sentences with the numbers behind the finding
    next_steps: list[str]  # picstory commands first; a plain sentence where no command fits
    facts: dict = field(default_factory=dict)  # machine-readable numbers (since_epoch, share, gain, …)


# ---------------------------------------------------------------- loading


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read ({e}); re-run `picstory eval` or train again") from None


def _read_metrics(path: Path) -> list[dict]:
    rows = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            rows.append({k: _num(v) for k, v in row.items() if k})
    return rows


def _num(v: str | None) -> float | None:
    try:
        return float(v)  # "nan" stays nan: the diverged rule needs to see it
    except (TypeError, ValueError):
        return None


def load_run(run_dir: str | Path) -> dict:
    """The run directory's files as dicts; optional files missing → None, missing metrics → []."""
    run = find_run(run_dir)
    if not RunDir(run).metrics.is_file() and not RunDir(run).summary.is_file():
        raise UserError(f"{run}: not a run directory (no metrics.csv or summary.json); give runs/NAME")
    out: dict[str, Any] = {"dir": run}
    out["metrics"] = _read_metrics(RunDir(run).metrics) if RunDir(run).metrics.is_file() else []
    out["summary"] = _read_json(RunDir(run).summary) if RunDir(run).summary.is_file() else {}
    cfg = RunDir(run).config
    out["config"] = (yaml.safe_load(cfg.read_text()) or {}) if cfg.is_file() else {}
    for name in OPTIONAL_FILES:
        p = run / name
        out[name.split(".")[0]] = _read_json(p) if p.is_file() else None
    out["label_issues"] = None
    from .issues import label_issues, oof_file

    if oof_file(run) is not None:  # a cross-validation: label checks from out-of-fold probabilities
        try:
            found = label_issues(run)
            out["label_issues"] = {"n": found["n"], "rows": found["rows"][:200], "count": len(found["rows"])}
        except UserError:
            pass
    return out


# ---------------------------------------------------------------- helpers


def cfg_value(run: Mapping, section: str, key: str, default: Any = None) -> Any:
    return ((run.get("config") or {}).get(section) or {}).get(key, default)


def data_spec(run: Mapping) -> str:
    return str((run.get("summary") or {}).get("data") or cfg_value(run, "data", "data") or "DATA")


def train_cmd(run: Mapping, *flags: str, same_recipe: bool = True) -> str:
    """``picstory train DATA --config RUN/config.yaml FLAGS``: the same recipe with only the named changes.

    config.yaml holds resolved values (image size, LR, epochs), so a new model or preset gets ``same_recipe=False``
    and lets picstory choose them afresh."""
    parts = ["picstory", "train", shlex.quote(data_spec(run))]
    if run.get("dir") and same_recipe:
        parts += ["--config", shlex.quote(str(Path(run["dir"]) / "config.yaml"))]
    return " ".join(parts + list(flags))


def _run_path(run: Mapping) -> str:
    return shlex.quote(str(run.get("dir") or "RUN"))


def _col(rows: list[dict], key: str) -> list[float]:
    return [r.get(key) if r.get(key) is not None else math.nan for r in rows]


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(x) for x in xs)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _peak_lr(run: Mapping) -> float | None:
    lrs = [x for x in _col(run.get("metrics") or [], "lr") if math.isfinite(x)]
    if lrs:
        return max(lrs)
    return _num(cfg_value(run, "train", "lr"))


def _lower_lr_steps(run: Mapping, factor: float) -> list[str]:
    lr = _peak_lr(run)
    steps = [train_cmd(run, f"--lr {lr / factor:.2g}")] if lr else []
    warm = float(cfg_value(run, "train", "warmup_epochs", 1.0) or 0)
    steps += [train_cmd(run, f"--warmup-epochs {max(2.0, 2 * warm):g}", "--grad-clip 1.0"),
              f"picstory lr-find {shlex.quote(data_spec(run))}"]
    return steps


def run_classes(run: Mapping) -> list[str]:
    return list((run.get("eval") or {}).get("classes") or (run.get("summary") or {}).get("classes") or [])


def run_confusion(run: Mapping) -> tuple[list[list[float]], str]:
    """The test confusion matrix, else the validation one of the best (or last) epoch."""
    ev = run.get("eval") or {}
    if ev.get("confusion"):
        return ev["confusion"], f"{ev.get('split', 'test')} split"
    per_epoch = (run.get("history") or {}).get("confusion") or []
    if not per_epoch:
        return [], ""
    best = int((run.get("summary") or {}).get("best_epoch") or len(per_epoch))
    return per_epoch[min(max(best, 1), len(per_epoch)) - 1], "validation split"


def _recalls(run: Mapping) -> dict[str, float]:
    per_class = (run.get("eval") or {}).get("per_class") or []
    if per_class:
        return {str(p["class"]): float(p["recall"]) for p in per_class if p.get("support")}
    cm, classes = run_confusion(run)[0], run_classes(run)
    return {c: row[i] / sum(row) for i, (c, row) in enumerate(zip(classes, cm)) if sum(row)}


def _train_counts(run: Mapping) -> dict[str, int]:
    counts = (run.get("data") or {}).get("class_counts") or (run.get("summary") or {}).get("class_counts") or {}
    return {str(k): int(v) for k, v in (counts.get("train") or {}).items()}


def baselines(run: Mapping) -> dict:
    """Balanced accuracy and the majority-class baseline of the split the accuracy comes from, read from the
    confusion matrix (so runs written before eval.json carried them get them too)."""
    cm, where = run_confusion(run)
    classes = run_classes(run)
    rows = [sum(r) for r in cm]
    total = sum(rows)
    if not total:
        return {}
    recalls = [r[i] / n for i, (r, n) in enumerate(zip(cm, rows)) if n]
    top = max(range(len(rows)), key=rows.__getitem__)
    return {"balanced_accuracy": sum(recalls) / len(recalls), "majority_baseline": rows[top] / total,
            "majority_class": classes[top] if top < len(classes) else str(top), "where": where}


def _accuracy(run: Mapping) -> tuple[float | None, str]:
    s, ev = run.get("summary") or {}, run.get("eval") or {}
    if s.get("test_accuracy") is not None:
        return float(s["test_accuracy"]), "test"
    if ev.get("accuracy") is not None:
        return float(ev["accuracy"]), str(ev.get("split", "test"))
    if s.get("val_accuracy") is not None:
        return float(s["val_accuracy"]), "validation"
    va = [x for x in _col(run.get("metrics") or [], "val_acc") if math.isfinite(x)]
    return (max(va), "validation") if va else (None, "")


# ---------------------------------------------------------------- rules: training dynamics
