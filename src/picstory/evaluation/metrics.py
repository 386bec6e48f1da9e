"""Metrics on a split: accuracy, top-k, per-class precision / recall / F1, confusion, confident mistakes."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, precision_recall_fscore_support

from ..data.batches import normalize
from ..files import data_uri
from .label_issues import top_loss
from .tta import predict_proba


def predict_images(model: torch.nn.Module, images: torch.Tensor, mean, std, batch_size: int = 512,
                   tta: str = "none", device: torch.device | str = "cpu",
                   autocast_dtype: torch.dtype | None = None, multilabel: bool = False,
                   temperature: float = 1.0) -> np.ndarray:
    """Probabilities (N, K) for uint8 N×C×H×W images; the same normalisation as training and predict
    (``multilabel``: independent sigmoids; otherwise the softmax of logits / ``temperature``)."""
    device = torch.device(device)
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = normalize(images[i:i + batch_size].to(device), mean, std)
        ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
        with ctx:
            out.append(predict_proba(model, x, tta, multilabel, temperature).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


def summarize(probs: np.ndarray, labels: np.ndarray, classes: list[str], weights: np.ndarray | None = None) -> dict:
    """Accuracy, top-k, loss, confusion, per-class metrics; with sample ``weights`` also their weighted forms
    (each image counts by its weight in the accuracy and the per-class support, as sklearn's sample_weight)."""
    k = len(classes)
    pred = probs.argmax(1)
    eps = 1e-12
    loss = float(-np.log(probs[np.arange(len(labels)), labels] + eps).mean()) if len(labels) else float("nan")
    topk = min(5, k)
    top = np.argsort(-probs, axis=1)[:, :topk]
    p, r, f, s = precision_recall_fscore_support(labels, pred, labels=list(range(k)), zero_division=0)
    out = {
        "accuracy": float((pred == labels).mean()) if len(labels) else float("nan"),
        f"top{topk}_accuracy" if topk != 5 else "top5_accuracy": float((top == labels[:, None]).any(1).mean()),
        "loss": loss, "n": int(len(labels)), "classes": classes, **baselines(labels, pred, classes),
        "confusion": confusion_matrix(labels, pred, labels=list(range(k))).tolist(),
        "per_class": [{"class": c, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                       "support": int(s[i])} for i, c in enumerate(classes)],
    }
    if weights is not None and len(labels):
        w = np.asarray(weights, dtype=np.float64)
        out["weighted_accuracy"] = float((w * (pred == labels)).sum() / max(w.sum(), 1e-12))
        out["weight_total"] = float(w.sum())
        wp, wr, wf, _ = precision_recall_fscore_support(labels, pred, labels=list(range(k)), sample_weight=w,
                                                        zero_division=0)
        support = np.bincount(labels, weights=w, minlength=k)
        for i, row in enumerate(out["per_class"]):
            row.update({"weighted_precision": float(wp[i]), "weighted_recall": float(wr[i]),
                        "weighted_f1": float(wf[i]), "weighted_support": float(support[i])})
    return out


def baselines(labels: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict:
    """Balanced accuracy (mean recall over the classes present) and the majority-class baseline: the accuracy of
    always answering this split's most common class — what accuracy must be read against on imbalanced data."""
    if not len(labels):
        return {"balanced_accuracy": float("nan"), "majority_baseline": float("nan"), "majority_class": None}
    counts = np.bincount(labels, minlength=len(classes))
    with warnings.catch_warnings():  # sklearn warns when a predicted class is absent from the labels
        warnings.simplefilter("ignore")
        balanced = float(balanced_accuracy_score(labels, pred))
    return {"balanced_accuracy": balanced, "majority_baseline": float(counts.max() / counts.sum()),
            "majority_class": classes[int(counts.argmax())]}


def group_metrics(probs: np.ndarray, labels: np.ndarray, classes: list[str], values: list[str], column: str,
                  weights: np.ndarray | None = None) -> dict:
    """Accuracy and per-class recall for each value of a label-file column (a camera, a line, a patient):
    a model can be good on average and poor on one source."""
    pred = probs.argmax(1)
    rows = []
    values = np.asarray(values, dtype=object)
    for v in sorted(set(values.tolist()), key=lambda x: (x == "", x)):
        m = values == v
        y, p = labels[m], pred[m]
        row = {"value": v, "n": int(m.sum()), "accuracy": float((y == p).mean()),
               "recall": {classes[c]: float((p[y == c] == c).mean()) for c in sorted(set(y.tolist()))}}
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)[m]
            row["weighted_accuracy"] = float((w * (y == p)).sum() / max(w.sum(), 1e-12))
        rows.append(row)
    accs = [r["accuracy"] for r in rows]
    worst = min(rows, key=lambda r: r["accuracy"])["value"] if rows else None
    spread = [min(accs), max(accs)] if accs else None
    return {"column": column, "groups": rows, "worst": worst, "accuracy_range": spread}


def thumb(img: np.ndarray, size: int = 96) -> str:
    """A PNG data URI of an H×W×C uint8 image, upscaled with nearest for tiny images so pixels stay visible."""
    from PIL import Image

    im = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
    if max(im.size) < size:
        im = im.resize((size, size), Image.NEAREST)
    else:
        im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return data_uri(buf.getvalue())


def confident_mistake_indices(probs: np.ndarray, labels: np.ndarray, n: int = 24) -> np.ndarray:
    """Indices of the ``n`` wrong predictions with the highest confidence, most confident first."""
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != labels)
    return wrong[np.argsort(-probs[wrong, pred[wrong]])][:n]


def confident_mistakes(probs: np.ndarray, labels: np.ndarray, images: torch.Tensor, paths: list[str],
                       classes: list[str], n: int = 24) -> list[dict]:
    pred = probs.argmax(1)
    order = confident_mistake_indices(probs, labels, n)
    return [{"path": paths[i], "true": classes[labels[i]], "pred": classes[pred[i]],
             "confidence": float(probs[i, pred[i]]), "thumb": thumb(images[i].permute(1, 2, 0).numpy())}
            for i in order]


def suspects(probs: np.ndarray, labels: np.ndarray, images: torch.Tensor, paths: list[str], classes: list[str],
             n: int = 24, min_confidence: float = 0.8) -> list[dict]:
    """Training images the model confidently assigns to another class: the likeliest label errors."""
    pred = probs.argmax(1)
    loss = -np.log(probs[np.arange(len(labels)), labels] + 1e-12)
    order = top_loss(probs, labels, min_confidence)[:n]
    return [{"path": paths[i], "label": classes[labels[i]], "pred": classes[pred[i]],
             "confidence": float(probs[i, pred[i]]), "loss": float(loss[i]),
             "thumb": thumb(images[i].permute(1, 2, 0).numpy())} for i in order]
