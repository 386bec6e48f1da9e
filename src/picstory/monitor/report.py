"""`picstory monitor RUN`: what the served model has been seeing, from its prediction log.

Drift is judged on the predicted-class distribution against the training distribution with the population
stability index (PSI = Σ (a − e)·ln(a / e) over classes): < 0.1 stable, 0.1–0.25 moderate, > 0.25 significant.
Low-confidence inputs are the relabel queue: ``export_relabel`` copies the stored ones into DIR/<predicted class>/
so a person can move each to its right folder and add the folder to the training data.
"""

from __future__ import annotations

import json
import math
import shutil
from datetime import datetime, timezone
from pathlib import Path

from ..deploy.log import default_log_path, read_rows
from ..errors import UserError
from ..files import atomic_write
from ..models.bundle import find_bundle, read_meta
from ..options import MONITOR
from ..pages.monitor_page import render_html
from ..runs import RunDir

PSI_EPS = 1e-4  # a class never seen on one side would make ln(a/e) infinite
LEAST_CONFIDENT = 24
HIST_BINS = 20


def psi(expected: dict[str, float], actual: dict[str, float], eps: float = PSI_EPS) -> float:
    """Population stability index between two distributions over the same keys (counts or fractions)."""
    keys = sorted(set(expected) | set(actual))
    e_tot = sum(expected.get(k, 0) for k in keys) or 1
    a_tot = sum(actual.get(k, 0) for k in keys) or 1
    total = 0.0
    for k in keys:
        e = max(expected.get(k, 0) / e_tot, eps)
        a = max(actual.get(k, 0) / a_tot, eps)
        total += (a - e) * math.log(a / e)
    return total


def drift_level(value: float) -> str:
    return "stable" if value < 0.1 else "moderate" if value <= 0.25 else "significant"


def training_distribution(home: Path, meta: dict) -> tuple[dict[str, float], str]:
    """Class counts the model was trained on (RUN/summary.json "class_counts"), else uniform over its classes."""
    summary = RunDir(home).summary
    try:
        counts = json.loads(summary.read_text(encoding="utf-8")).get("class_counts")
    except (OSError, ValueError, AttributeError):
        counts = None
    if isinstance(counts, dict) and counts and all(isinstance(v, (int, float)) for v in counts.values()):
        return {str(k): float(v) for k, v in counts.items()}, f"{summary} class_counts"
    return {c: 1.0 for c in meta["classes"]}, "uniform over model.json classes (no class_counts in summary.json)"


def _time_buckets(times: list[float]) -> tuple[str, dict[str, int]]:
    # hours read well for a few days of traffic, days beyond that
    unit = "hour" if times[-1] - times[0] <= 3 * 86400 else "day"
    fmt = "%Y-%m-%d %H:00" if unit == "hour" else "%Y-%m-%d"
    counts: dict[str, int] = {}
    for t in times:
        key = datetime.fromtimestamp(t, timezone.utc).strftime(fmt)
        counts[key] = counts.get(key, 0) + 1
    return unit, counts


def unknown_trend(rows: list[dict], meta: dict) -> dict:
    """How many answers were "unknown", per time bucket and early vs late: a rising share means the inputs drift
    away from the training images (the validation split expects 1 − target_accept, about 5 %)."""
    decided = [r for r in rows if r.get("unknown") is not None]
    ood = meta.get("ood") or {}
    expected = round(1 - float(ood["target_accept"]), 4) if "target_accept" in ood else None
    if not decided:
        return {"decided": 0, "expected_share": expected,
                "note": "no logged answer carries an unknown verdict (a log or a bundle from before it)"}
    unit = "hour" if decided[-1]["time"] - decided[0]["time"] <= 3 * 86400 else "day"
    fmt = "%Y-%m-%d %H:00" if unit == "hour" else "%Y-%m-%d"
    per: dict[str, list[int]] = {}
    for r in decided:
        cell = per.setdefault(datetime.fromtimestamp(r["time"], timezone.utc).strftime(fmt), [0, 0])
        cell[0] += 1
        cell[1] += int(r["unknown"])
    half = len(decided) // 2

    def share(part: list[dict]) -> float | None:
        return sum(int(r["unknown"]) for r in part) / len(part) if part else None

    early, late = share(decided[:half]), share(decided[half:])
    base = max(early or 0.0, expected or 0.0)
    rising = late is not None and len(decided) >= 20 and late > 2 * base and late - base >= 0.05
    return {"decided": len(decided), "unknown": sum(int(r["unknown"]) for r in decided),
            "share": share(decided), "expected_share": expected, "early_share": early, "late_share": late,
            "rising": bool(rising), "unit": unit,
            "over_time": {k: {"n": n, "unknown": u, "share": u / n} for k, (n, u) in per.items()}}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def _least_confident(rows: list[dict], n: int) -> list[dict]:
    """The n lowest-confidence distinct inputs (an input sent twice is listed once)."""
    seen, out = set(), []
    for r in sorted(rows, key=lambda r: (r["top1_prob"] is None, r["top1_prob"] or 0.0)):
        if r["input_sha256"] in seen:
            continue
        seen.add(r["input_sha256"])
        out.append({"time": _iso(r["time"]), "input_sha256": r["input_sha256"], "label": r["top1_label"],
                    "probability": r["top1_prob"], "width": r["width"], "height": r["height"],
                    "stored_path": r["stored_path"], "topk": json.loads(r["topk_json"] or "[]")})
        if len(out) == n:
            break
    return out


def _histogram(values: list[float], bins: int) -> dict:
    counts = [0] * bins
    for v in values:
        counts[min(int(v * bins), bins - 1)] += 1
    return {"edges": [i / bins for i in range(bins + 1)], "counts": counts}


def _class_dir(label: str) -> str:
    # class names come from model.json: never let one climb out of the export folder
    name = "".join("_" if ch in "/\\\0" else ch for ch in str(label)).strip()
    return name if name not in ("", ".", "..") else f"_{name}"


def copy_for_relabel(rows: list[dict], dest: str | Path, threshold: float) -> dict:
    """Copy stored inputs predicted below ``threshold`` into dest/<predicted class>/; originals stay untouched."""
    dest = Path(dest).expanduser()
    stats = {"dir": str(dest.resolve()), "threshold": threshold, "copied": 0, "already_there": 0,
             "not_stored": 0}
    done: set[str] = set()
    for r in rows:
        if r["top1_prob"] is None or r["top1_prob"] >= threshold or r["input_sha256"] in done:
            continue
        done.add(r["input_sha256"])
        src = Path(r["stored_path"]) if r["stored_path"] else None
        if src is None or not src.is_file():
            stats["not_stored"] += 1
            continue
        target = dest / _class_dir(r["top1_label"]) / src.name
        if target.exists():
            stats["already_there"] += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
        stats["copied"] += 1
    return stats


def _summarise(rows: list[dict], meta: dict, home: Path, low_confidence: float) -> dict:
    classes = [str(c) for c in meta["classes"]]
    predicted = {c: 0 for c in classes}
    for r in rows:
        predicted[r["top1_label"]] = predicted.get(r["top1_label"], 0) + 1
    training, source = training_distribution(home, meta)
    value = psi(training, predicted)
    probs = sorted(r["top1_prob"] for r in rows if r["top1_prob"] is not None)
    unit, per_time = _time_buckets([r["time"] for r in rows])
    n = len(rows)
    return {
        "predictions": n, "first": _iso(rows[0]["time"]), "last": _iso(rows[-1]["time"]),
        "over_time": {"unit": unit, "counts": per_time},
        "class_distribution": {c: {"predicted": predicted.get(c, 0) / n,
                                   "training": training.get(c, 0) / (sum(training.values()) or 1)}
                               for c in sorted(set(predicted) | set(training), key=_class_order(classes))},
        "training_distribution_source": source,
        "drift": {"psi": round(value, 4), "level": drift_level(value),
                  "reading": "PSI < 0.1 stable, 0.1-0.25 moderate, > 0.25 significant"},
        "confidence": {"mean": sum(probs) / len(probs) if probs else None,
                       "median": probs[len(probs) // 2] if probs else None,
                       "threshold": low_confidence,
                       "below_threshold": sum(p < low_confidence for p in probs),
                       "histogram": _histogram(probs, HIST_BINS)},
        "least_confident": _least_confident(rows, LEAST_CONFIDENT),
        "unknown": unknown_trend(rows, meta),
    }


def _class_order(classes: list[str]):
    index = {c: i for i, c in enumerate(classes)}
    return lambda c: (index.get(c, len(index)), str(c))


def monitor(run: str | Path, log: str | Path | None = None, out: str | Path | None = None,
            export_relabel: str | Path | None = None, low_confidence: float = MONITOR.low_confidence) -> dict:
    """Write OUT/monitor.json and OUT/monitor.html (OUT defaults to the run directory); returns the json dict."""
    if not 0.0 < low_confidence <= 1.0:
        raise UserError(f"--low-confidence {low_confidence}: must be in (0, 1]")
    bundle = find_bundle(run).resolve()
    meta, home = read_meta(bundle), bundle.parent
    log_path = Path(log).expanduser().resolve() if log else default_log_path(bundle)
    rows = read_rows(log_path)
    if not rows:
        raise UserError(f"no predictions logged yet at {log_path}; start `picstory serve {run}` and send images")
    mine = [r for r in rows if r["model_sha256"] in (meta["sha256"], None)]
    if not mine:
        raise UserError(f"{log_path}: {len(rows)} predictions logged, none by this model (sha256 "
                        f"{meta['sha256'][:12]}); give the log of `picstory serve {run}` with --log")
    report = {"run": str(home), "log": str(log_path), "model": {"arch": meta["arch"], "sha256": meta["sha256"]},
              "other_models_rows": len(rows) - len(mine), **_summarise(mine, meta, home, low_confidence)}
    if export_relabel is not None:
        report["relabel"] = copy_for_relabel(mine, export_relabel, low_confidence)
    out_dir = Path(out).expanduser() if out else home
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "monitor.json", json.dumps(report, indent=2).encode() + b"\n")
    atomic_write(out_dir / "monitor.html", render_html(report, meta).encode())
    report["files"] = [str(out_dir / "monitor.json"), str(out_dir / "monitor.html")]
    return report
