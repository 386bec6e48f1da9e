"""Likely label errors from out-of-fold probabilities: confident learning, written from the paper.

Northcutt, Jiang & Chuang, "Confident Learning: Estimating Uncertainty in Dataset Labels", JAIR 70 (2021):
1. per-class thresholds t_j = the mean probability of class j over the images labelled j (self-confidence);
2. the confident joint C[i, j]: images labelled i whose probability of j reaches t_j (the largest such j when
   several do), i.e. the counts of "given i, probably truly j";
3. calibrate C so that each row sums to the number of images labelled i and the whole to n, an estimate of the
   joint distribution of given and true labels, Q;
4. prune by noise rate: for each off-diagonal cell (i, j), flag the n·Q[i, j] images labelled i with the largest
   margin p_j − p_i;
5. rank the flagged images by self-confidence p_i (lowest first).

The probabilities must be out-of-sample (cross-validation's oof.npz): a model's own training images carry
memorised labels and hide their errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LabelIssues:
    flagged: np.ndarray  # indices of likely label errors, most likely first
    suggested: np.ndarray  # per flagged index, the class the probabilities point to
    self_confidence: np.ndarray  # p[given label] of every image
    thresholds: np.ndarray  # t_j per class
    confident_joint: np.ndarray  # K×K counts, rows = given label, columns = likely true label
    joint: np.ndarray  # calibrated estimate of the joint distribution (sums to 1)


def class_thresholds(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """t_j: mean p_j over the images labelled j (a class nobody carries gets 1, so nothing is assigned to it)."""
    k = probs.shape[1]
    out = np.ones(k)
    for j in range(k):
        mask = labels == j
        if mask.any():
            out[j] = probs[mask, j].mean()
    return out


def confident_joint(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """C[i, j]: images labelled i confidently in class j (p_j ≥ t_j, the largest p_j among those that pass)."""
    k = probs.shape[1]
    above = probs >= thresholds[None, :] - 1e-12
    has = above.any(1)
    true = np.where(above, probs, -np.inf).argmax(1)
    joint = np.zeros((k, k), dtype=np.int64)
    np.add.at(joint, (labels[has], true[has]), 1)
    return joint


def calibrate(joint: np.ndarray, label_counts: np.ndarray) -> np.ndarray:
    """Rows scaled to the given label counts, then normalised to a distribution (eq. 3 of the paper)."""
    rows = joint.sum(1, keepdims=True).astype(float)
    scaled = np.where(rows > 0, joint / np.maximum(rows, 1) * label_counts[:, None], 0.0)
    total = scaled.sum()
    return scaled / total if total > 0 else scaled


def find_label_issues(probs: np.ndarray, labels: np.ndarray, min_per_class: int = 1) -> LabelIssues:
    """Confident learning with prune-by-noise-rate; ``min_per_class`` images of each given label always stay."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n, k = probs.shape
    counts = np.bincount(labels, minlength=k)
    t = class_thresholds(probs, labels)
    cj = confident_joint(probs, labels, t)
    q = calibrate(cj, counts)
    flagged = np.zeros(n, dtype=bool)
    for i in range(k):
        members = np.flatnonzero(labels == i)
        budget = max(0, len(members) - min_per_class)
        for j in range(k):
            m = int(round(q[i, j] * n)) if i != j else 0
            m = min(m, budget)
            if m <= 0:
                continue
            margin = probs[members, j] - probs[members, i]
            flagged[members[np.argsort(-margin, kind="stable")[:m]]] = True
    self_conf = probs[np.arange(n), labels]
    idx = np.flatnonzero(flagged)
    idx = idx[np.argsort(self_conf[idx], kind="stable")]
    other = probs[idx].copy()
    other[np.arange(len(idx)), labels[idx]] = -1.0
    return LabelIssues(idx, other.argmax(1) if len(idx) else np.zeros(0, np.int64), self_conf, t, cj, q)


def top_loss(probs: np.ndarray, labels: np.ndarray, min_confidence: float = 0.8) -> np.ndarray:
    """The doctor's earlier rule: images whose top class is not their label at ≥ min_confidence, largest loss
    first (the baseline confident learning is compared with)."""
    probs = np.asarray(probs)
    pred = probs.argmax(1)
    loss = -np.log(probs[np.arange(len(labels)), labels] + 1e-12)
    cand = np.flatnonzero((pred != labels) & (probs[np.arange(len(labels)), pred] >= min_confidence))
    return cand[np.argsort(-loss[cand], kind="stable")]
