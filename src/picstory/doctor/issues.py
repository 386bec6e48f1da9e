"""`picstory data issues RUN`: likely label errors of a cross-validation, from its out-of-fold probabilities.

RUN is a cross-validation parent (``train --folds K``) or one of its folds; the method is confident learning
(evaluation/label_issues.py). The list goes to ``PARENT/issues.csv``; ``--export-relabel DIR`` copies the images
into ``DIR/<given label>/`` with a relabel.csv, as ``picstory doctor --export-relabel`` does.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..evaluation.label_issues import find_label_issues
from ..files import atomic_write
from ..runs import RunDir


def oof_file(run: str | Path) -> Path | None:
    """oof.npz of a cross-validation parent, or of the parent of one of its folds."""
    path = Path(run)
    for cand in (path, path.parent):
        if RunDir(cand).oof.is_file():
            return RunDir(cand).oof
    return None


def load_oof(run: str | Path) -> dict:
    path = oof_file(run)
    if path is None:
        if not Path(run).is_dir():
            raise UserError(f"run not found: {run} (give a cross-validation folder such as runs/NAME-cv5)")
        raise UserError(f"{run}: no out-of-fold probabilities (oof.npz); train with --folds K "
                        "(e.g. picstory train DATA --folds 5) and pass that run")
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read ({e}); train the cross-validation again") from None
    out["classes"] = [str(c) for c in out["classes"]]
    out["parent"] = path.parent
    return out


def label_issues(run: str | Path) -> dict:
    """The ranked likely label errors: ``rows`` (most likely first), ``n`` images, the thresholds."""
    oof = load_oof(run)
    probs, labels, classes = oof["probs"], oof["labels"].astype(np.int64), oof["classes"]
    found = find_label_issues(probs, labels)
    rows = []
    for rank, (i, s) in enumerate(zip(found.flagged, found.suggested), 1):
        rows.append({"rank": rank, "path": str(oof["paths"][i]), "ref": str(oof["refs"][i]),
                     "label": classes[labels[i]], "suggested": classes[s],
                     "self_confidence": float(found.self_confidence[i]), "p_suggested": float(probs[i, s]),
                     "fold": int(oof["fold"][i])})
    return {"parent": oof["parent"], "n": int(len(labels)), "classes": classes, "rows": rows,
            "thresholds": {c: float(t) for c, t in zip(classes, found.thresholds)},
            "confident_joint": found.confident_joint.tolist()}


def write_issues_csv(result: dict) -> Path:
    buf = io.StringIO()
    keys = ["rank", "path", "label", "suggested", "self_confidence", "p_suggested", "fold"]
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(keys)
    for r in result["rows"]:
        w.writerow([f"{r[k]:.6g}" if isinstance(r[k], float) else r[k] for k in keys])
    out = RunDir(result["parent"]).issues
    atomic_write(out, buf.getvalue())
    return out


def issues_table(result: dict, limit: int = 20) -> str:
    rows = result["rows"]
    n, flagged = result["n"], len(rows)
    lines = [f"{flagged} of {n} training images ({flagged / max(n, 1):.1%}) are likely mislabelled "
             "(confident learning on out-of-fold probabilities)"]
    if rows:
        width = min(60, max(len(r["path"]) for r in rows[:limit]))
        lines.append(f"{'rank':>4}  {'path':<{width}}  {'label':<14} {'suggested':<14} {'p(label)':>8} "
                     f"{'p(sugg.)':>8}")
        for r in rows[:limit]:
            lines.append(f"{r['rank']:>4}  {r['path'][-width:]:<{width}}  {r['label'][:14]:<14} "
                         f"{r['suggested'][:14]:<14} {r['self_confidence']:>8.3f} {r['p_suggested']:>8.3f}")
        if flagged > limit:
            lines.append(f"… {flagged - limit} more in issues.csv")
    return "\n".join(lines)


def relabel_candidates(run: str | Path) -> list[dict]:
    """The issues in the shape the doctor's export uses (label, pred, confidence, path, ref)."""
    return [{"path": r["path"], "ref": r["ref"], "label": r["label"], "pred": r["suggested"],
             "confidence": r["p_suggested"]} for r in label_issues(run)["rows"]]
