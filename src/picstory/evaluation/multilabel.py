"""Multi-label metrics: per-label thresholds tuned on validation, per-label P/R/F1/AP, micro/macro F1, mAP,
exact match, and the most confident false positives and negatives.

``probs`` are N×K sigmoid probabilities and ``targets`` N×K 0/1; a label is predicted when its probability
reaches its threshold.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_recall_curve,
    precision_recall_fscore_support,
)

from .metrics import thumb

DEFAULT_THRESHOLD = 0.5


def tune_thresholds(probs: np.ndarray, targets: np.ndarray) -> list[float]:
    """Per label, the threshold with the best F1 on these (validation) images; 0.5 for a label with no positive.

    The cut sits halfway between the lowest score kept and the next lower score, not on a validation score
    itself, so an unseen image scoring like the borderline one falls on the side the tuning chose."""
    out = []
    for j in range(targets.shape[1]):
        y, p = targets[:, j] > 0.5, probs[:, j]
        if not y.any():
            out.append(DEFAULT_THRESHOLD)
            continue
        precision, recall, cuts = precision_recall_curve(y, p)
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
        cut = float(cuts[int(np.argmax(f1))])
        below = p[p < cut]
        out.append(round((cut + float(below.max())) / 2 if len(below) else cut, 6))
    return out


def summarize_multilabel(probs: np.ndarray, targets: np.ndarray, classes: list[str], thresholds: list[float],
                         weights: np.ndarray | None = None) -> dict:
    """eval.json's metrics for multi-label data; ``accuracy`` is the exact-match ratio (every label right)."""
    y = (targets > 0.5).astype(np.int64)
    pred = (probs >= np.asarray(thresholds)[None, :]).astype(np.int64)
    p, r, f, s = precision_recall_fscore_support(y, pred, average=None, zero_division=0, sample_weight=weights)
    ap = [float(average_precision_score(y[:, j], probs[:, j], sample_weight=weights)) if y[:, j].any() else None
          for j in range(len(classes))]
    defined = [a for a in ap if a is not None]
    eps = 1e-7
    clipped = np.clip(probs, eps, 1 - eps)
    loss = float(-(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)).mean()) if len(y) else float("nan")
    exact = float(accuracy_score(y, pred, sample_weight=weights)) if len(y) else float("nan")
    return {
        "task": "multilabel", "accuracy": exact, "exact_match": exact,
        "micro_f1": float(f1_score(y, pred, average="micro", zero_division=0, sample_weight=weights)),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0, sample_weight=weights)),
        "mAP": float(np.mean(defined)) if defined else None,
        "hamming_accuracy": float((y == pred).mean()) if len(y) else float("nan"),
        "loss": loss, "n": int(len(y)), "classes": classes,
        "per_label": [{"label": c, "precision": float(p[j]), "recall": float(r[j]), "f1": float(f[j]), "ap": ap[j],
                       "support": int(y[:, j].sum()), "threshold": float(thresholds[j])}
                      for j, c in enumerate(classes)],
    }


def confident_errors(probs: np.ndarray, targets: np.ndarray, images, paths: list[str], classes: list[str],
                     thresholds: list[float], n: int = 24) -> dict[str, list[dict]]:
    """The false positives with the highest probability and the false negatives with the lowest, one entry per
    (image, label) pair, with the image's true and predicted label sets."""
    y = targets > 0.5
    thr = np.asarray(thresholds)[None, :]
    pred = probs >= thr
    out = {}
    for key, wrong, order in (("false_positives", pred & ~y, -1), ("false_negatives", ~pred & y, 1)):
        rows, cols = np.nonzero(wrong)
        keep = np.argsort(order * probs[rows, cols], kind="stable")[:n]
        out[key] = [{"path": paths[i], "label": classes[j], "prob": float(probs[i, j]),
                     "threshold": float(thresholds[j]),
                     "true": [classes[k] for k in np.flatnonzero(y[i])],
                     "pred": [classes[k] for k in np.flatnonzero(pred[i])],
                     "thumb": thumb(images[i].permute(1, 2, 0).numpy())}
                    for i, j in zip(rows[keep], cols[keep])]
    return out


def label_sets(probs: np.ndarray, classes: list[str], thresholds: list[float]) -> list[list[dict]]:
    """Per image, every label at or above its threshold with its probability, most probable first."""
    out = []
    for p in probs:
        idx = [j for j in np.argsort(-p, kind="stable") if p[j] >= thresholds[j]]
        out.append([{"label": classes[j], "prob": round(float(p[j]), 6)} for j in idx])
    return out
