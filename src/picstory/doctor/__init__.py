"""`picstory doctor`: is the model good enough — and if not, what to try next.

Each ``check_*`` rule is a pure function of the loaded run (the dict :func:`load_run` returns; tests pass hand-made
dicts) that returns one :class:`Finding` or ``None``.

Ordering rule — the first finding's first command is "the next step":
1. severity: problem > warning > info;
2. then the order of :data:`KIND_ORDER`, which encodes the expected gain: a run that diverged or spikes must be fixed
   before anything else is measurable; a leak makes the test figure itself untrustworthy; then recipe fixes that
   are one flag away and usually move accuracy most (under-/overfitting); then fixes aimed at specific classes
   (imbalance, weak classes, a catch-all class, confused pairs); then data clean-ups;
3. then the finding's own estimated gain (``facts["gain"]``, a fraction of accuracy where it can be estimated).
"""

from __future__ import annotations

import base64
import csv
import re
import shutil
import textwrap
from dataclasses import asdict
from pathlib import Path
from typing import Mapping

from ..errors import UserError
from .findings import (
    SEVERITIES,
    Finding,
    _accuracy,
    _pct,
    _run_path,
    baselines,
    cfg_value,
    data_spec,
    load_run,
    plural,
    run_classes,
    run_confusion,
    train_cmd,
)
from .rules import (  # noqa: F401  (re-exported: picstory.doctor.check_* is the rules' public name)
    RULES,
    check_bad_files,
    check_catch_all,
    check_confused_pairs,
    check_diverged,
    check_few_images,
    check_imbalance,
    check_leaks,
    check_lr_too_high,
    check_mislabelled,
    check_near_baseline,
    check_overfitting,
    check_spikes,
    check_underfitting,
    check_weak_classes,
)

KIND_ORDER = ("diverged", "unstable", "lr_too_high", "leak", "near_baseline", "underfitting", "overfitting",
              "imbalance", "weak_classes", "catch_all", "confused_pair", "mislabelled", "few_images", "bad_files",
              "miscalibrated", "unknown_inputs", "calibrated")


# ---------------------------------------------------------------- verdict


def _fraction(x: float | None) -> float | None:
    return None if x is None else (x / 100 if x > 1 else float(x))  # "--target-accuracy 90" means 90 %


def _sort_key(f: Finding) -> tuple:
    return SEVERITIES.index(f.severity), KIND_ORDER.index(f.kind), -float(f.facts.get("gain", 0.0))


def diagnose(run_dir: str | Path, target_accuracy: float | None = None,
             class_recall_target: float | None = None) -> dict:
    """Read the run directory and judge it; see :func:`diagnose_loaded`."""
    return diagnose_loaded(load_run(run_dir), target_accuracy, class_recall_target)


def diagnose_loaded(run: Mapping, target_accuracy: float | None = None,
                    class_recall_target: float | None = None) -> dict:
    """verdict, one-sentence summary, ordered findings and the single most promising command. No side effects."""
    target, recall_target = _fraction(target_accuracy), _fraction(class_recall_target)
    findings = [f for f in (rule(run) for rule in RULES) if f]
    weak = check_weak_classes(run, recall_target)
    findings += [weak] if weak else []
    findings.sort(key=_sort_key)
    acc, split = _accuracy(run)
    base = baselines(run)
    blockers = [f for f in findings if f.kind in ("diverged", "leak") and f.severity == "problem"]
    if target is None and recall_target is None:
        verdict = "no target given"
    else:
        ok = acc is not None and (target is None or acc >= target) and not weak and not blockers
        verdict = "ready to deploy" if ok else "not yet"
        if verdict == "ready to deploy" and any(f.kind == "miscalibrated" for f in findings):
            verdict = "ready with a caveat"  # accurate, but its probabilities cannot be read as odds
    commands = [s for f in findings for s in f.next_steps if s.startswith("picstory ")]
    if verdict in ("ready to deploy", "ready with a caveat"):
        next_step = f"picstory export {_run_path(run)} --format onnx"
    elif commands:
        next_step = commands[0]
    else:  # nothing specific is wrong: a stronger preset is the generic next move
        next_step = train_cmd(run, "--preset best", same_recipe=False)
    return {"verdict": verdict, "accuracy": acc, "split": split, "target_accuracy": target,
            "class_recall_target": recall_target,
            "balanced_accuracy": base.get("balanced_accuracy"), "majority_baseline": base.get("majority_baseline"),
            "majority_class": base.get("majority_class"),
            "summary": _summary(verdict, acc, split, target, recall_target, findings, blockers, base),
            "findings": [asdict(f) for f in findings], "next_step": next_step}


def _summary(verdict: str, acc: float | None, split: str, target: float | None, recall_target: float | None,
             findings: list[Finding], blockers: list[Finding], base: dict | None = None) -> str:
    score = f"{split.capitalize()} accuracy is {_pct(acc)}" if acc is not None else "No accuracy was recorded"
    if acc is not None and base:
        score += (f" (balanced {_pct(base['balanced_accuracy'])}, majority baseline {_pct(base['majority_baseline'])}"
                  f" for always {base['majority_class']!r})")
    top = findings[0].title[0].lower() + findings[0].title[1:] if findings else ""
    if verdict in ("ready to deploy", "ready with a caveat"):
        extra = f" and every class reaches recall {recall_target:.2f}" if recall_target else ""
        goal = f", meeting the target of {_pct(target)}" if target is not None else ""
        caveat = next((f for f in findings if f.kind == "miscalibrated"), None)
        if caveat is not None:
            return f"{score}{goal}{extra}: ready to deploy, with a caveat: {caveat.title[0].lower()}{caveat.title[1:]}."
        return f"{score}{goal}{extra}: ready to deploy."
    if verdict == "no target given":
        tail = f"; the main finding: {top}." if top else ", and nothing stands out as wrong."
        return f"{score}{tail} Give --target-accuracy to get a verdict."
    if blockers:
        return f"{score}, but it cannot be trusted yet: {blockers[0].title[0].lower()}{blockers[0].title[1:]}."
    why = (f"below the target of {_pct(target)}" if acc is not None and target is not None and acc < target
           else "short of the per-class recall target" if recall_target else "not yet good enough")
    return f"{score}, {why}" + (f"; first fix: {top}." if top else ".")


# ---------------------------------------------------------------- output


def doctor_text(result: dict, width: int = 100) -> str:
    """Plain text for the terminal (no markup: class names may contain brackets)."""
    def wrap(text: str, first: str, rest: str | None = None) -> str:
        return textwrap.fill(text, width, initial_indent=first, subsequent_indent=rest or first)

    lines = [f"Verdict: {result['verdict'].upper()}", wrap(result["summary"], "  "), "",
             "Next step:", f"  $ {result['next_step']}"]
    findings = result.get("findings") or []
    lines += ["", f"Findings ({len(findings)})" if findings else "No findings: the curves and data look healthy."]
    for n, f in enumerate(findings, 1):
        lines += ["", f"{n}. {f['severity'].upper():8s} {f['title']}", wrap(f["evidence"], "   ")]
        lines += ["   Try:"] * bool(f["next_steps"]) + [f"     $ {s}" if s.startswith("picstory ")
                                                         else wrap(s, "     - ", "       ") for s in f["next_steps"]]
    return "\n".join(lines) + "\n"


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^\w.\- ]+", "_", str(name)).strip(" .")
    return cleaned or "_"


def _source_file(run: Mapping, path: str) -> Path | None:
    """The original image of a suspect, when it still exists: absolute, under the data folder, or cwd-relative."""
    spec = Path(data_spec(run))
    roots = [spec if spec.is_dir() else spec.parent, Path(".")]
    p = Path(path)
    for cand in [p] if p.is_absolute() else [r / p for r in roots]:
        if cand.is_file():
            return cand
    return None


def export_relabel(run_dir: str | Path, out_dir: str | Path, candidates: list[dict] | None = None) -> int:
    """Copy the likely mislabelled training images into OUT/<given label>/ for a person to check; returns the count.

    The candidates are confident learning's label issues when the run has out-of-fold probabilities (a
    cross-validation, ``--folds K``), else the top-loss suspects of eval.json. The original file is copied when it
    is on disk, an in-memory set's image is written as PNG, else the thumbnail from eval.json. A ``relabel.csv``
    lists each file with its label, the model's guess and the source path.
    """
    from .issues import oof_file, relabel_candidates

    run = load_run(run_dir)
    out = Path(out_dir)
    spec = Path(data_spec(run))
    if spec.is_dir() and out.resolve().is_relative_to(spec.resolve()):
        raise UserError(f"--export-relabel {out}: is inside the data folder {spec}; choose a folder outside it")
    try:  # made even when nothing is to check, so an unwritable folder is said now and not on a later run
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".picstory-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--export-relabel {out}: cannot write there ({e.strerror or e}); choose a writable "
                        "folder") from None
    if candidates is None:
        has_oof = oof_file(run["dir"]) is not None
        candidates = relabel_candidates(run["dir"]) if has_oof else (run.get("eval") or {}).get("suspects") or []
    arrays = None
    rows = []
    for n, s in enumerate(candidates):
        folder = out / _safe_name(s.get("label", "unknown"))
        folder.mkdir(parents=True, exist_ok=True)
        ref = str(s.get("ref", ""))
        src = Path(ref) if ref and Path(ref).is_file() else _source_file(run, str(s.get("path", "")))
        stem = f"{n:03d}_{_safe_name(Path(str(s.get('path', 'image'))).stem)}"
        if src is not None:
            dest = folder / f"{stem}{src.suffix.lower()}"
            shutil.copy2(src, dest)
        elif ref.isdigit():  # an image of an in-memory set (IDX files, builtin:): written as PNG
            arrays = arrays if arrays is not None else _arrays(data_spec(run))
            dest = folder / f"{stem}.png"
            _write_png(arrays[int(ref)], dest)
        else:
            m = re.match(r"data:image/(\w+);base64,(.*)$", str(s.get("thumb", "")), re.S)
            if not m:
                continue
            dest = folder / f"{stem}.{m.group(1)}"
            dest.write_bytes(base64.b64decode(m.group(2)))
        rows.append([str(dest.relative_to(out)), s.get("label"), s.get("pred"), s.get("confidence"),
                     s.get("path")])
    if rows:
        with (out / "relabel.csv").open("w", newline="") as f:
            csv.writer(f).writerows([["file", "label", "predicted", "confidence", "source"], *rows])
    return len(rows)


def _arrays(spec: str):
    from ..data.sources import resolve

    source = resolve(spec)
    if not source.in_memory:
        raise UserError(f"{spec}: the images of the label issues are no longer there; check the data path")
    return source.arrays


def _write_png(img, dest: Path) -> None:
    from PIL import Image

    Image.fromarray(img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img).save(dest)


__all__ = [
    "RULES",
    "Finding",
    "SEVERITIES",
    "cfg_value",
    "data_spec",
    "diagnose",
    "diagnose_loaded",
    "doctor_text",
    "export_relabel",
    "load_run",
    "plural",
    "run_classes",
    "run_confusion",
    "check_bad_files",
    "check_catch_all",
    "check_confused_pairs",
    "check_diverged",
    "check_few_images",
    "check_imbalance",
    "check_leaks",
    "check_lr_too_high",
    "check_mislabelled",
    "check_overfitting",
    "check_spikes",
    "check_underfitting",
    "check_weak_classes",
]
