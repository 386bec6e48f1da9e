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

import hashlib
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_write
from ..models.features import normalised
from ..runs import RunDir
from .ood import logits_and_features


def embed(model: torch.nn.Module, images: torch.Tensor, mean, std, batch_size: int = 512,
          device: str | torch.device = "cpu") -> np.ndarray:
    """Unit-length penultimate features (N, D) float32 for uint8 N×C×H×W images."""
    return embed_with_logits(model, images, mean, std, batch_size, device)[0]


def embed_with_logits(model: torch.nn.Module, images: torch.Tensor, mean, std, batch_size: int = 512,
                      device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(unit-length penultimate features (N, D), raw logits (N, K)), float32, from one forward pass."""
    logits, feats = logits_and_features(model, images, mean, std, batch_size, device)
    return (normalised(torch.from_numpy(feats)).numpy() if len(feats) else feats), logits


def bank_key(run_dir: Path, meta: dict) -> dict:
    """What a run's cached training features depend on: the weights, the image size and the split."""
    split_file = RunDir(run_dir).split
    return {"weights_sha256": meta.get("sha256"), "img_size": meta["img_size"],
            "split_sha256": hashlib.sha256(split_file.read_bytes()).hexdigest() if split_file.is_file() else ""}


def training_features(run_dir: Path, model: torch.nn.Module, meta: dict, split, device="cpu") -> dict:
    """``{"features", "logits", "labels", "paths"}`` of a run's training ``split`` (a Split, or a function returning
    one, called only when the cache cannot answer), computed in one pass and cached in RUN/embeddings.npz: the
    unknown bank, the nearest-neighbour gallery and the label-error scan all read them, so the training set goes
    through the network once after training, not three times."""
    def compute() -> dict:
        part = split() if callable(split) else split
        features, logits = embed_with_logits(model, part.images, meta["mean"], meta["std"], device=device)
        return {"features": features, "logits": logits, "paths": list(part.paths),
                "labels": [meta["classes"][i] for i in part.labels.tolist()]}

    paths = None if callable(split) else list(split.paths)
    return cached(RunDir(run_dir).embeddings, bank_key(run_dir, meta), compute, paths)


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
    """``{"features", "logits", "labels", "paths"}`` from ``path`` when it was written for ``key`` (and, given
    ``paths``, for exactly those images in that order), else ``compute()``d and stored there (atomically) for the
    next call."""
    key_text = json.dumps(key, sort_keys=True)
    try:
        with np.load(path, allow_pickle=False) as f:
            hit = {"features": f["features"].astype(np.float32), "logits": f["logits"].astype(np.float32),
                   "labels": [str(x) for x in f["labels"]],
                   "paths": [str(x) for x in f["paths"]]} if str(f["key"]) == key_text else None
        if hit is not None and (paths is None or hit["paths"] == list(paths)):
            return hit
    except (OSError, KeyError, ValueError):  # absent, torn or from another version: computed again
        pass
    result = compute()
    buf = io.BytesIO()
    # float16 halves the file (fashion-mnist × 1280 features: 123 MB, not 246); cosines move by about 1e-3
    np.savez(buf, key=np.array(key_text), features=np.asarray(result["features"], np.float16),
             logits=np.asarray(result["logits"], np.float32), labels=np.array(result["labels"], dtype=str),
             paths=np.array(result["paths"], dtype=str))
    try:  # derived data: a run folder that cannot take it costs the next call time, never this one its result
        atomic_write(path, buf.getvalue(), user_error=False)
    except OSError as e:
        print(f"note: training features not cached in {path}: {e.strerror or e}", file=sys.stderr)
    return result
