"""Nearest training images in the model's own feature space, and the per-run cache of those features.

An image's neighbours are the training images whose penultimate features (the classifier head's input,
``models.features``) have the highest cosine similarity with its own. Next to a mistake they show at a glance
whether the training set holds a mislabelled or ambiguous twin of it. The features of a run's training split are
computed once and kept in the run directory (``RunDir.embeddings``), keyed by the bundle's weights sha256 and the
split manifest: retraining, resuming or re-splitting the run invalidates them.

Exact search (one matrix product) is used on purpose: a run's training split is at most a few hundred thousand
rows, which a float32 matmul answers in milliseconds, and an approximate index would add a dependency and a
second source of error for no gain at this size.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..data.batches import normalize
from ..files import atomic_write
from ..models.features import features_and_logits, normalised


def embed(model: torch.nn.Module, images: torch.Tensor, mean, std, batch_size: int = 512,
          device: str | torch.device = "cpu") -> np.ndarray:
    """Unit-length penultimate features (N, D) float32 for uint8 N×C×H×W images."""
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            feats, _ = features_and_logits(model, normalize(images[i:i + batch_size].to(device), mean, std))
            out.append(normalised(feats).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def nearest(query: np.ndarray, bank: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, cosine similarities), each (Q, k), best first, of the ``k`` rows of ``bank`` nearest each query."""
    k = max(0, min(int(k), len(bank)))
    if k == 0 or not len(query):
        return np.zeros((len(query), 0), np.int64), np.zeros((len(query), 0), np.float32)
    sims = query @ bank.T
    idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(-sims, idx, 1).argsort(1, kind="stable")
    idx = np.take_along_axis(idx, order, 1)
    return idx, np.take_along_axis(sims, idx, 1).astype(np.float32)


def cached(path: Path, key: dict, compute: Callable[[], dict], paths: list[str] | None = None) -> dict:
    """``{"features", "labels", "paths"}`` from ``path`` when it was written for ``key`` (and, given ``paths``, for
    exactly those images in that order), else ``compute()``d and stored there (atomically) for the next call."""
    key_text = json.dumps(key, sort_keys=True)
    try:
        with np.load(path, allow_pickle=False) as f:
            hit = {"features": f["features"].astype(np.float32), "labels": [str(x) for x in f["labels"]],
                   "paths": [str(x) for x in f["paths"]]} if str(f["key"]) == key_text else None
        if hit is not None and (paths is None or hit["paths"] == list(paths)):
            return hit
    except (OSError, KeyError, ValueError):  # absent, torn or from another version: computed again
        pass
    result = compute()
    buf = io.BytesIO()
    # float16 halves the file (fashion-mnist × 1280 features: 123 MB, not 246); cosines move by about 1e-3
    np.savez(buf, key=np.array(key_text), features=np.asarray(result["features"], np.float16),
             labels=np.array(result["labels"], dtype=str), paths=np.array(result["paths"], dtype=str))
    atomic_write(path, buf.getvalue())
    return result
