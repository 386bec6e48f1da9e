"""Calibrated confidence: temperature scaling (Guo et al., ICML 2017), its figures, and risk–coverage.

Temperature scaling divides every logit by one scalar ``T`` fitted on the validation split (LBFGS on the negative
log-likelihood, optimised over ``log T`` so ``T`` stays positive). It never changes the argmax, so accuracy is
untouched; it only makes "90 %" mean about 90 %. ECE uses 15 equal-width confidence bins, as in Guo et al.
"""

from __future__ import annotations

import numpy as np
import torch

ECE_BINS = 15
MIN_CALIBRATION_IMAGES = 50  # fewer validation images fit a temperature to noise
COVERAGES = (0.90, 0.95, 0.99)
T_RANGE = (0.05, 20.0)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def cannot_calibrate(labels: np.ndarray) -> str | None:
    """Why a validation split cannot calibrate, or None when it can."""
    n = len(labels)
    if n < MIN_CALIBRATION_IMAGES:
        return f"the validation split has {n} images (fewer than {MIN_CALIBRATION_IMAGES}); probabilities left " \
               "uncalibrated — raise --val-fraction or add val/ images"
    if len(np.unique(labels)) < 2:
        return "the validation split holds one class only; probabilities left uncalibrated"
    return None


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 100) -> float:
    """The T that minimises the NLL of softmax(logits / T) on (logits, labels)."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    return float(np.clip(t, *T_RANGE)) if np.isfinite(t) else 1.0


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error over equal-width confidence bins: Σ (n_b / N) |acc_b − conf_b|."""
    rows = reliability(probs, labels, bins)
    n = max(1, len(labels))
    return float(sum(r["count"] / n * abs(r["accuracy"] - r["confidence"]) for r in rows if r["count"]))


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Per equal-width bin of top-1 confidence: its edges, mean confidence, accuracy and image count."""
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        m = which == b
        rows.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": int(m.sum()),
                     "confidence": float(conf[m].mean()) if m.any() else 0.0,
                     "accuracy": float(correct[m].mean()) if m.any() else 0.0})
    return rows


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.log(probs[np.arange(len(labels)), labels] + 1e-12).mean())


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score: mean over images of Σ_k (p_k − 1[k = y])²."""
    onehot = np.eye(probs.shape[1], dtype=np.float64)[labels]
    return float(((probs - onehot) ** 2).sum(1).mean())


def calibration_metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
    return {"ece": ece(probs, labels), "nll": nll(probs, labels), "brier": brier(probs, labels)}


def calibrate(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Fit T on validation logits; the record model.json keeps (before / after figures, or why not)."""
    labels = np.asarray(labels)
    record = {"method": "temperature scaling (LBFGS on validation NLL)", "ece_bins": f"{ECE_BINS} equal-width",
              "images": int(len(labels)), "before": calibration_metrics(softmax(logits), labels)}
    reason = cannot_calibrate(labels)
    if reason is None and (np.asarray(logits).argmax(1) == labels).all():
        # with no mistake the NLL keeps falling as T → 0: the fit would make the model as sure as it can be
        reason = "every validation image is classified right, so there is nothing to calibrate against; " \
                 "probabilities left uncalibrated — a larger validation split would have mistakes to measure"
    if reason:
        return {**record, "temperature": 1.0, "skipped": reason}
    t = fit_temperature(logits, labels)
    after = calibration_metrics(softmax(logits, t), labels)
    if after["nll"] > record["before"]["nll"]:  # LBFGS cannot do worse than T=1 unless it failed: keep T=1
        t, after = 1.0, record["before"]
    return {**record, "temperature": t, "after": after}


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, accuracy of the accepted) when the most confident fraction is accepted, for every fraction."""
    order = np.argsort(-np.asarray(confidence), kind="stable")
    hits = np.cumsum(np.asarray(correct, dtype=np.float64)[order])
    n = np.arange(1, len(order) + 1)
    return n / max(1, len(order)), hits / n


def accepted_accuracy(confidence: np.ndarray, correct: np.ndarray, coverages=COVERAGES) -> dict[str, float]:
    """Accuracy of the accepted images when only the most confident ``coverage`` share is answered."""
    cov, acc = risk_coverage(confidence, correct)
    if not len(cov):
        return {}
    return {f"{c:.2f}": float(acc[min(len(acc) - 1, max(0, int(np.ceil(c * len(acc))) - 1))]) for c in coverages}


def bundle_temperature(meta: dict) -> float | None:
    """The temperature a bundle's model.json stores, or None for a bundle made before calibration existed."""
    t = (meta.get("calibration") or {}).get("temperature")
    return float(t) if isinstance(t, (int, float)) and t > 0 else None


__all__ = ["ECE_BINS", "softmax", "fit_temperature", "ece", "reliability", "nll", "brier", "calibration_metrics",
           "calibrate", "risk_coverage", "accepted_accuracy", "cannot_calibrate", "bundle_temperature"]
