""""Unknown" inputs: out-of-distribution scores, the threshold chosen on validation, AUROC / FPR@95 %TPR.

Every score here is *higher = more unusual*:

- ``msp``: 1 − the largest calibrated softmax probability (Hendrycks & Gimpel 2017);
- ``energy``: −logsumexp of the logits (Liu et al. 2020);
- ``knn``: the cosine distance to the k-th nearest L2-normalised penultimate feature of a capped sample of the
  training set (Sun et al. 2022), stored in the bundle so predict and serve need no training data.

The default is ``knn``: on Fashion-MNIST against digits, photo patches and noise it separates best of the three
(bench/ood.py, figures in bench/README.md); the softmax scores barely notice uniform noise. The threshold accepts
``TARGET_ACCEPT`` of the validation images, so about 5 % of in-distribution inputs are answered "unknown".
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.batches import normalize
from ..errors import ConfigError
from ..models.features import features_and_logits, normalised
from .calibration import softmax

SCORES = ("knn", "energy", "msp")
DEFAULT_SCORE = "knn"
TARGET_ACCEPT = 0.95
BANK_ROWS = 4096
KNN_K = 10
MIN_THRESHOLD_IMAGES = 20  # validation images needed to place a 95 % threshold at all


def msp_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return 1.0 - softmax(logits, temperature).max(1)


def energy_score(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    m = z.max(1)
    return -(m + np.log(np.exp(z - m[:, None]).sum(1)))


def knn_score(features: np.ndarray | torch.Tensor, bank: torch.Tensor, k: int = KNN_K,
              chunk: int = 1024) -> np.ndarray:
    """1 − cosine similarity to the k-th nearest row of ``bank`` (already L2-normalised)."""
    f = normalised(torch.as_tensor(np.asarray(features), dtype=torch.float32))
    k = max(1, min(int(k), len(bank)))
    out = [1.0 - (f[i:i + chunk] @ bank.T).topk(k, dim=1).values[:, -1] for i in range(0, len(f), chunk)]
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def all_scores(logits: np.ndarray, features: np.ndarray | None, bank: torch.Tensor | None,
               temperature: float = 1.0, k: int = KNN_K) -> dict[str, np.ndarray]:
    out = {"msp": msp_score(logits, temperature), "energy": energy_score(logits)}
    if features is not None and bank is not None and len(bank):
        out["knn"] = knn_score(features, bank, k)
    return out


@torch.inference_mode()
def logits_and_features(model: torch.nn.Module, images: torch.Tensor, mean, std, batch_size: int = 512,
                        device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(logits, penultimate features) for uint8 N×C×H×W images, in batches, fp32."""
    device = torch.device(device)
    model.eval()
    logits, feats = [], []
    for i in range(0, len(images), batch_size):
        x = normalize(images[i:i + batch_size].to(device), mean, std).contiguous(memory_format=torch.channels_last)
        f, z = features_and_logits(model, x)
        feats.append(f.cpu())
        logits.append(z.cpu())
    if not logits:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return torch.cat(logits).numpy(), torch.cat(feats).numpy()


def sample_bank(features: np.ndarray, rows: int = BANK_ROWS, seed: int = 0) -> torch.Tensor:
    """A seeded sample of at most ``rows`` training features, L2-normalised."""
    idx = np.arange(len(features))
    if len(idx) > rows:
        idx = np.sort(np.random.default_rng(seed).choice(len(idx), rows, replace=False))
    return normalised(torch.as_tensor(features[idx], dtype=torch.float32))


def threshold(scores: np.ndarray, accept: float = TARGET_ACCEPT) -> float:
    """The score below which ``accept`` of these (in-distribution) images fall."""
    return float(np.quantile(np.asarray(scores, dtype=np.float64), accept))


def auroc_fpr95(in_scores: np.ndarray, out_scores: np.ndarray) -> dict[str, float]:
    """AUROC of telling out-of-distribution (positive) from in-distribution images by the score, and the share of
    out-of-distribution images still accepted when 95 % of in-distribution ones are (FPR at 95 % TPR)."""
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    s = np.r_[in_scores, out_scores]
    cut = threshold(in_scores, 0.95)
    return {"auroc": float(roc_auc_score(y, s)), "fpr95": float((np.asarray(out_scores) <= cut).mean())}


def parse_min_confidence(value: str | float | dict | None, classes: list[str]) -> dict[str, float]:
    """``--min-confidence``: ``0.8`` (every class), ``shirt=0.9,coat=0.7`` or both (``0.6,shirt=0.9``) →
    {class: threshold}; "" / None → {} (only the bundle's unknown threshold applies)."""
    if value is None or value == "" or value == {}:
        return {}
    if isinstance(value, dict):
        parts = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, (int, float)):
        parts = [("", value)]
    else:
        parts = [tuple(p.split("=", 1)) if "=" in p else ("", p) for p in str(value).split(",") if p.strip()]
    out: dict[str, float] = {}
    for name, raw in parts:
        name = name.strip()
        try:
            x = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"--min-confidence {value}: {raw!r} is not a number; give a probability in [0, 1], "
                              "e.g. 0.8 or shirt=0.9") from None
        if not 0.0 <= x <= 1.0:
            raise ConfigError(f"--min-confidence {value}: {x:g} is not a probability; give a value in [0, 1]")
        if name and name not in classes:
            raise ConfigError(f"--min-confidence {value}: the model has no class {name!r} (classes: "
                              f"{', '.join(classes[:10])}{' …' if len(classes) > 10 else ''})")
        if name:
            out[name] = x
        else:
            out.update({c: x for c in classes if c not in out})
    return out


class Unknown:
    """A bundle's unknown-input rule: the stored score and its threshold, plus the user's minimum confidences."""

    def __init__(self, record: dict | None, bank: torch.Tensor | None, temperature: float,
                 features_available: bool = True):
        record = record or {}
        self.thresholds = dict(record.get("thresholds") or {})
        self.score = record.get("score") if record.get("score") in self.thresholds else None
        if self.score == "knn" and (bank is None or not features_available):
            # a backend without penultimate features (ONNX, OpenVINO): the softmax score and its own threshold
            self.score = "msp" if "msp" in self.thresholds else None
        self.k = int(record.get("k", KNN_K))
        self.bank = bank
        self.temperature = temperature

    def scores(self, logits: np.ndarray | None, features: np.ndarray | None, probs: np.ndarray) -> np.ndarray | None:
        if self.score is None:
            return None
        if self.score == "msp":
            return 1.0 - probs.max(1)
        if self.score == "energy":
            return energy_score(logits)
        return knn_score(features, self.bank, self.k)

    def verdicts(self, probs: np.ndarray, classes: list[str], scores: np.ndarray | None,
                 min_confidence: dict[str, float] | None = None) -> list[dict]:
        """Per image: ``label`` (None when unknown), ``unknown``, and the score with its threshold."""
        min_confidence = min_confidence or {}
        out = []
        for i, p in enumerate(probs):
            top = int(p.argmax())
            why = []
            row: dict = {}
            if scores is not None:
                limit = self.thresholds[self.score]
                row.update(ood_score=float(scores[i]), ood_threshold=float(limit), ood_method=self.score)
                if scores[i] > limit:
                    why.append(f"{self.score} score {scores[i]:.3g} > {limit:.3g}")
            need = min_confidence.get(classes[top])
            if need is not None and p[top] < need:
                why.append(f"confidence {p[top]:.3f} < {need:g}")
            unknown = bool(why)
            out.append({"label": None if unknown else classes[top], "unknown": unknown, **row,
                        **({"unknown_reason": "; ".join(why)} if why else {})})
        return out


__all__ = ["SCORES", "DEFAULT_SCORE", "TARGET_ACCEPT", "msp_score", "energy_score", "knn_score", "all_scores",
           "logits_and_features", "sample_bank", "threshold", "auroc_fpr95", "parse_min_confidence", "Unknown"]
