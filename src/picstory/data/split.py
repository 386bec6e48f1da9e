"""Stratified train / val / test assignment from a seed, written as a ``split.csv`` manifest (nothing copied)."""

from __future__ import annotations

import csv
import difflib
import io
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError
from .records import Record, Source


def assign_splits(records: list[Record], val_fraction: float = 0.1, test_fraction: float = 0.1,
                  seed: int = 0, stratify_col: str = "", notes: list[str] | None = None) -> list[str]:
    """One split name per record.

    The data's own split is kept. Records without one are divided per class (and per ``stratify_col`` value): a
    test share only when the data declares no test split at all, and a val share only when it declares no val split
    (so the ``training_set/ test_set/`` layout gets val carved from train, 90/10 by default). When records carry a
    group (--group-col), whole groups are assigned (:func:`group_split`); ``notes`` collects what it had to decide.
    """
    declared = {r.split for r in records if r.split}
    need_test = "test" not in declared and test_fraction > 0
    need_val = "val" not in declared and val_fraction > 0
    out = [r.split or "train" for r in records]
    free = [i for i, r in enumerate(records) if r.split in (None, "train")]
    keys = [stratum(records[i], stratify_col) for i in free]
    multilabel = any(r.tags for r in records)
    if multilabel:
        keys = _pool_rare(keys)
    if any(r.group is not None for r in records):
        fractions = {"test": test_fraction if need_test else 0.0, "val": val_fraction if need_val else 0.0}
        # a row without a group value is a group of its own (its path)
        groups = [records[i].group if records[i].group is not None else "\0" + records[i].ref for i in free]
        for i, name in zip(free, group_split(keys, groups, fractions, seed, notes)):
            out[i] = name
        return out
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, key in zip(free, keys):
        by_class[key].append(i)
    rng = np.random.default_rng(seed)
    for key in sorted(by_class):
        idx = np.array(by_class[key])
        idx = idx[rng.permutation(len(idx))]
        n = len(idx)
        n_test = _share(n, test_fraction) if need_test else 0
        n_val = _share(n, val_fraction) if need_val else 0
        if n - n_test - n_val < 1:
            if stratify_col or multilabel:  # a tiny stratum stays in train; the class as a whole is still split
                n_test = n_val = 0
            else:
                raise DataError(f"class '{key}' has {n} image(s): too few to split into train"
                                f"{'/val' if n_val else ''}{'/test' if n_test else ''}; add images to it "
                                "or remove the class folder")
        for i in idx[:n_test]:
            out[i] = "test"
        for i in idx[n_test:n_test + n_val]:
            out[i] = "val"
    return _labels_in_train(records, out) if multilabel else out


RARE = "\x1e"  # the stratum of every multi-label combination too rare to stratify on its own


def _pool_rare(keys: list[str], least: int = 3) -> list[str]:
    """Multi-label strata are label combinations; the many rare ones are split together as one stratum."""
    counts: dict[str, int] = defaultdict(int)
    for k in keys:
        counts[k] += 1
    return [k if counts[k] >= least else RARE for k in keys]


def _labels_in_train(records: list[Record], out: list[str]) -> list[str]:
    """A multi-label image whose label no training image has goes to train: a label must be learnt to be tested."""
    seen = {t for r, s in zip(records, out) if s == "train" for t in r.tags}
    for i, r in enumerate(records):
        if out[i] != "train" and not r.split and not set(r.tags) <= seen:
            out[i] = "train"
            seen.update(r.tags)
    return out


STRATUM_SEP = "\x1f"


def stratum(rec: Record, stratify_col: str = "") -> str:
    """The stratification key: the class, joined with the --stratify-col value when one is given."""
    if not stratify_col:
        return rec.label
    return rec.label + STRATUM_SEP + dict(rec.meta).get(stratify_col, "")


def group_split(keys: Sequence[str], groups: Sequence[str], fractions: dict[str, float], seed: int = 0,
                notes: list[str] | None = None) -> list[str]:
    """Assign whole groups to splits ("train" and the names in ``fractions``, e.g. {"val": .1, "test": .1}),
    keeping each split's share of every key (class or stratum) as close to its fraction as the groups allow.

    sklearn's StratifiedGroupKFold does this for K equal folds; a split needs unequal shares, so the same greedy
    idea runs here with targets: groups go largest first (ties in seeded random order) to the split where they
    reduce the squared distance to the target counts the most, each key weighted by 1/its total so that small
    classes count as much as large ones. A group larger than a split's share never goes there (it would make that
    split too large); such groups stay in train and ``notes`` names them.
    """
    keys, groups = list(keys), list(groups)
    names = ["train"] + [s for s, f in fractions.items() if f > 0]
    share = {s: fractions.get(s, 0.0) for s in names}
    share["train"] = 1.0 - sum(share[s] for s in names[1:])
    key_index = {k: j for j, k in enumerate(sorted(set(keys)))}
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    order = sorted(members)
    counts = np.zeros((len(order), len(key_index)))
    for gi, g in enumerate(order):
        for i in members[g]:
            counts[gi, key_index[keys[i]]] += 1
    n, totals = len(keys), counts.sum(0)
    target = np.array([[share[s] * t for t in totals] for s in names])
    target_size = np.array([share[s] * n for s in names])
    have = np.zeros_like(target)
    size = np.zeros(len(names))
    scale = 1.0 / np.maximum(totals, 1)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(order))
    sizes = counts.sum(1)
    too_big: dict[str, list[int]] = defaultdict(list)
    where = {}
    for gi in sorted(perm, key=lambda g: -sizes[g]):
        g = counts[gi]
        best, best_cost = 0, None
        for si, s in enumerate(names):
            if si and sizes[gi] > max(target_size[si], 1.0):
                too_big[s].append(gi)
                continue
            cost = (((have[si] + g - target[si]) * scale) ** 2 - ((have[si] - target[si]) * scale) ** 2).sum()
            cost += ((size[si] + sizes[gi] - target_size[si]) / n) ** 2 - ((size[si] - target_size[si]) / n) ** 2
            if best_cost is None or cost < best_cost:
                best, best_cost = si, cost
        have[best] += g
        size[best] += sizes[gi]
        where[order[gi]] = names[best]
    for si, s in enumerate(names[1:], start=1):
        if size[si] == 0:  # every group is larger than this split's share: the smallest goes there, and we say so
            in_train = [gi for gi in perm if where[order[gi]] == "train"]
            if len(in_train) < 2:
                raise DataError(f"only {len(order)} group(s): a group-aware split into {'/'.join(names)} needs at "
                                f"least {len(names)}; use a finer --group-col or set --{s}-fraction 0")
            # the group closest to the split's target counts: small and with the data's class balance
            gi = min(in_train, key=lambda g: (((counts[g] - target[si]) * scale) ** 2).sum()
                     + ((sizes[g] - target_size[si]) / n) ** 2)
            where[order[gi]], size[si] = s, sizes[gi]
            have[0] -= counts[gi]
            have[si] += counts[gi]
            too_big.pop(s, None)
            if notes is not None:
                notes.append(f"every group is larger than the {s} share ({share[s]:.0%}); {s} holds one, "
                             f"'{_name(order[gi])}' ({int(sizes[gi])} images, {sizes[gi] / n:.0%}), the group "
                             "closest to the data's class balance")
    at = np.array([names.index(where[g]) for g in order])
    cap = np.array([np.inf] + [max(t, 1.0) for t in target_size[1:]])
    _improve_by_swaps(at, np.c_[counts, sizes], np.c_[target, target_size], np.r_[scale, 1.0 / n], cap)
    where = {g: names[at[gi]] for gi, g in enumerate(order)}
    if notes is not None:
        for s, big in too_big.items():
            shown = ", ".join(f"'{_name(order[g])}' ({int(sizes[g])})" for g in big[:5])
            more = f" and {len(big) - 5} more" if len(big) > 5 else ""
            notes.append(f"group(s) {shown}{more} hold more than the {s} share ({share[s]:.0%} of {n} images) "
                         f"and stay out of {s}")
    return [where[g] for g in groups]


def _improve_by_swaps(at: np.ndarray, counts: np.ndarray, target: np.ndarray, scale: np.ndarray, cap: np.ndarray,
                      rounds: int = 200, max_pairs: int = 4_000_000) -> None:
    """Greedy placement, then the best improving swap of two groups between two splits until none improves
    (the cost: squared, scaled distance of each split's counts to its target). Swaps keep each split's number of
    groups, so no split empties; a swap that puts a group above a split's size cap is not taken."""
    w = scale ** 2
    for _ in range(rounds):
        have = np.stack([counts[at == s].sum(0) for s in range(len(target))])
        err = have - target
        best = (0.0, None)
        for a in range(len(target)):
            for b in range(a + 1, len(target)):
                ia, ib = np.flatnonzero(at == a), np.flatnonzero(at == b)
                if not len(ia) or not len(ib) or len(ia) * len(ib) * counts.shape[1] > max_pairs:
                    continue
                d = counts[ib][None, :, :] - counts[ia][:, None, :]  # a gains group j, loses group i
                delta = (w * (2 * d * (err[a] - err[b]) + 2 * d * d)).sum(-1)
                sizes_a, sizes_b = counts[ia, -1][:, None], counts[ib, -1][None, :]
                delta[(sizes_b > cap[a]) | (sizes_a > cap[b])] = np.inf
                k = np.unravel_index(np.argmin(delta), delta.shape)
                if delta[k] < best[0] - 1e-12:
                    best = (delta[k], (ia[k[0]], ib[k[1]], a, b))
        if best[1] is None:
            return
        i, j, a, b = best[1]
        at[i], at[j] = b, a


def _name(group: str) -> str:
    return group.lstrip("\0")


def balance(source: Source, splits: dict[str, list[int]]) -> dict:
    """How far each split's class shares moved from the whole data's: the split report of a group-aware split."""
    labels = source.classes
    everything = [i for idx in splits.values() for i in idx]
    multilabel = getattr(source, "multilabel", False)

    def of(ids: list[int]) -> list[str]:  # a multi-label image counts once for each of its labels
        return [t for i in ids for t in (source.records[i].tags if multilabel else (source.records[i].label,))]

    whole = _shares(of(everything), labels)
    out = {"n": {s: len(idx) for s, idx in splits.items()}, "max_shift_points": 0.0, "worst": None, "per_split": {}}
    for s, idx in splits.items():
        if not idx:
            continue
        part = _shares(of(idx), labels)
        shift = {c: round(100 * (part[c] - whole[c]), 2) for c in labels}
        out["per_split"][s] = shift
        c = max(shift, key=lambda c: abs(shift[c]))
        if out["worst"] is None or abs(shift[c]) > abs(out["max_shift_points"]):
            out["max_shift_points"], out["worst"] = shift[c], {"split": s, "class": c}
    groups = defaultdict(set)
    for s, idx in splits.items():
        for i in idx:
            if source.records[i].group is not None:
                groups[source.records[i].group].add(s)
    out["groups"] = len(groups)
    out["groups_straddling"] = sorted(g for g, ss in groups.items() if len(ss) > 1)
    return out


def _shares(labels: list[str], classes: list[str]) -> dict[str, float]:
    n = max(len(labels), 1)
    return {c: labels.count(c) / n for c in classes}


def describe_balance(b: dict) -> str:
    """One line: the split sizes and the largest move of a class share, in percentage points."""
    total = max(sum(b["n"].values()), 1)
    sizes = " / ".join(f"{s} {k} ({k / total:.0%})" for s, k in b["n"].items() if k)
    line = f"split: {sizes}"
    if b.get("groups"):
        line += f"; {b['groups']} groups, none split" if not b["groups_straddling"] else \
            f"; {b['groups']} groups, {len(b['groups_straddling'])} declared in more than one split"
    if b["worst"]:
        w = b["worst"]
        line += (f"; class balance moved at most {abs(b['max_shift_points']):.1f} points "
                 f"('{w['class']}' in {w['split']}: {b['max_shift_points']:+.1f})")
    return line


def _share(n: int, fraction: float) -> int:
    """round(n·fraction), but at least one image when the fraction is non-zero and the class has ≥ 3."""
    if fraction <= 0:
        return 0
    k = int(round(n * fraction))
    return max(k, 1) if n >= 3 else k


def split_source(source: Source, val_fraction: float, test_fraction: float, seed: int, stratify_col: str = "",
                 notes: list[str] | None = None) -> dict[str, list[int]]:
    """Indices into ``source.records`` per split; checks every class of val/test exists in train."""
    if stratify_col:
        check_column(source, "--stratify-col", stratify_col)
    splits = assign_splits(source.records, val_fraction, test_fraction, seed, stratify_col, notes)
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for i, s in enumerate(splits):
        out[s].append(i)
    def labels(i: int) -> tuple[str, ...]:
        return source.records[i].tags if getattr(source, "multilabel", False) else (source.records[i].label,)

    train_classes = {t for i in out["train"] for t in labels(i)}
    for name in ("val", "test"):
        extra = sorted({t for i in out[name] for t in labels(i)} - train_classes)
        if extra:
            raise DataError(f"class(es) {', '.join(extra)} appear only in the {name} split of {source.spec}; "
                            "a model cannot learn a class it never sees in training: add training images")
    return out


def check_column(source: Source, flag: str, name: str) -> None:
    """A column option must name a column of the label file; the error lists the columns and close matches."""
    if name in source.columns:
        return
    if not source.columns:
        raise DataError(f"{flag} {name}: {source.spec} is not a label file; only label files have columns")
    close = difflib.get_close_matches(name, source.columns, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise DataError(f"{flag} {name}: {source.spec} has no such column (columns: {', '.join(source.columns)}){hint}")


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
