"""Stratified train / val / test assignment from a seed, written as a ``split.csv`` manifest (nothing copied)."""

from __future__ import annotations

import csv
import io
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import DataError
from .records import Record, Source


def assign_splits(records: list[Record], val_fraction: float = 0.1, test_fraction: float = 0.1,
                  seed: int = 0) -> list[str]:
    """One split name per record.

    The data's own split is kept. Records without one are divided per class: a test share only when the data
    declares no test split at all, and a val share only when it declares no val split (so the ``training_set/
    test_set/`` layout gets val carved from train, 90/10 by default).
    """
    declared = {r.split for r in records if r.split}
    need_test = "test" not in declared and test_fraction > 0
    need_val = "val" not in declared and val_fraction > 0
    out = [r.split or "train" for r in records]
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        if r.split in (None, "train"):
            by_class[r.label].append(i)
    rng = np.random.default_rng(seed)
    for label in sorted(by_class):
        idx = np.array(by_class[label])
        idx = idx[rng.permutation(len(idx))]
        n = len(idx)
        n_test = _share(n, test_fraction) if need_test else 0
        n_val = _share(n, val_fraction) if need_val else 0
        if n - n_test - n_val < 1:
            raise DataError(f"class '{label}' has {n} image(s): too few to split into train"
                            f"{'/val' if n_val else ''}{'/test' if n_test else ''}; add images to it "
                            "or remove the class folder")
        for i in idx[:n_test]:
            out[i] = "test"
        for i in idx[n_test:n_test + n_val]:
            out[i] = "val"
    return out


def _share(n: int, fraction: float) -> int:
    """round(n·fraction), but at least one image when the fraction is non-zero and the class has ≥ 3."""
    if fraction <= 0:
        return 0
    k = int(round(n * fraction))
    return max(k, 1) if n >= 3 else k


def split_source(source: Source, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[int]]:
    """Indices into ``source.records`` per split; checks every class of val/test exists in train."""
    splits = assign_splits(source.records, val_fraction, test_fraction, seed)
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for i, s in enumerate(splits):
        out[s].append(i)
    train_classes = {source.records[i].label for i in out["train"]}
    for name in ("val", "test"):
        extra = sorted({source.records[i].label for i in out[name]} - train_classes)
        if extra:
            raise DataError(f"class(es) {', '.join(extra)} appear only in the {name} split of {source.spec}; "
                            "a model cannot learn a class it never sees in training: add training images")
    return out


def manifest_csv(source: Source, splits: dict[str, list[int]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path_or_index", "label", "split"])
    split_of = {i: s for s, idx in splits.items() for i in idx}
    for i, rec in enumerate(source.records):
        if i in split_of:
            ref = rec.ref if source.in_memory else os.path.relpath(rec.ref, source.root) if source.root else rec.ref
            w.writerow([ref, rec.label, split_of[i]])
    return buf.getvalue()


def read_manifest(path: str | Path, source: Source) -> dict[str, list[int]]:
    """Splits from an earlier run's split.csv, matched against the current source (resume, eval)."""
    index = {}
    for i, rec in enumerate(source.records):
        ref = rec.ref if source.in_memory else os.path.relpath(rec.ref, source.root) if source.root else rec.ref
        index[ref] = i
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    missing = 0
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            i = index.get(row["path_or_index"])
            if i is None:
                missing += 1
                continue
            out[row["split"]].append(i)
    if missing and not any(out.values()):
        raise DataError(f"{path}: none of its {missing} images are in {source.spec}; is this the same data set?")
    return out


def fold_assignment(records: list[Record], folds: int, test_fraction: float = 0.1, seed: int = 0) -> np.ndarray:
    """k-fold cross-validation: for each record its fold (0 … folds-1), or -1 for the held-out test split.

    The test split is the data's own (or the usual test fraction, drawn as :func:`assign_splits` draws it) and is
    the same for every fold; the rest (train and any declared val) is divided into ``folds`` stratified folds —
    StratifiedGroupKFold when records carry a group, so that no group is on both sides of a fold, else
    StratifiedKFold.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if folds < 2:
        raise DataError(f"--folds {folds}: cross-validation needs at least 2 folds (0 = no cross-validation)")
    held = assign_splits(records, 0.0, test_fraction, seed)
    pool = np.array([i for i, s in enumerate(held) if s != "test"])
    labels = np.array([records[i].label for i in pool])
    counts: dict[str, int] = defaultdict(int)
    for label in labels:
        counts[label] += 1
    small = sorted((n, c) for c, n in counts.items() if n < folds)
    if small:
        listed = ", ".join(f"'{c}' ({n})" for n, c in small[:5]) + (" …" if len(small) > 5 else "")
        raise DataError(f"--folds {folds}: every class needs at least {folds} training images (one per fold); "
                        f"too few in {listed}: use --folds {max(2, small[0][0])} or add images")
    out = np.full(len(records), -1, dtype=np.int64)
    groups = [records[i].group for i in pool]
    if any(g is not None for g in groups):
        # a record without a group is its own group: it may sit in any fold
        keys = np.array([f"g:{g}" if g is not None else f"r:{i}" for g, i in zip(groups, pool)])
        n_groups = len(set(keys))
        if n_groups < folds:
            raise DataError(f"--folds {folds}: the training data has only {n_groups} group(s) in --group-col; "
                            f"use --folds {max(2, n_groups)} or fewer, or no --group-col")
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        parts = splitter.split(np.zeros(len(pool)), labels, keys)
    else:
        parts = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(pool)), labels)
    for k, (_, held_out) in enumerate(parts):
        out[pool[held_out]] = k
    return out


def fold_splits(source: Source, folds: int, fold: int, test_fraction: float, seed: int) -> dict[str, list[int]]:
    """The train / val / test indices of fold ``fold`` (1-based) of ``folds``: val is that fold, train the others."""
    if not 1 <= fold <= folds:
        raise DataError(f"--fold {fold}: must be between 1 and --folds {folds}")
    assigned = fold_assignment(source.records, folds, test_fraction, seed)
    return {"train": [int(i) for i in np.flatnonzero((assigned >= 0) & (assigned != fold - 1))],
            "val": [int(i) for i in np.flatnonzero(assigned == fold - 1)],
            "test": [int(i) for i in np.flatnonzero(assigned < 0)]}
