"""What every data source resolves to: records (one image each) in a Source, and the file-name vocabulary.

A record is one image: a file path (folders, file-name labels, CSV) or an index into an in-memory uint8 array
(IDX files, built-in sets), with its label and the split the data itself declares (or None).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
IGNORED_NAMES = {".ds_store", "thumbs.db", "desktop.ini", "__macosx"}
SPLIT_NAMES = {"train": "train", "training": "train", "training_set": "train", "trainset": "train",
               "val": "val", "valid": "val", "validation": "val", "dev": "val",
               "test": "test", "testing": "test", "test_set": "test", "testset": "test"}


def as_number(value: str) -> float | None:
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def class_sort_key(name: str) -> tuple:
    """Numeric labels sort by value ("0.333" before "1", "10" after "9"); names alphabetically after them."""
    x = as_number(name)
    return (0, x, name) if x is not None else (1, 0.0, name)


@dataclass(frozen=True)
class Record:
    ref: str  # absolute file path, or the decimal index into Source.arrays
    label: str
    split: str | None = None  # train | val | test, when the data declares it
    group: str | None = None  # --group-col value: no group straddles train/val/test
    weight: float = 1.0  # --weight-col value: scales the loss and the metrics' support
    tags: tuple[str, ...] = ()  # multi-label: every label of the image (label is then "|".join(tags), "" for none)
    meta: tuple[tuple[str, str], ...] = ()  # other label-file columns (--report-by, --stratify-col), (name, value)


@dataclass
class Source:
    spec: str
    kind: str  # folder | filenames | csv | idx | builtin
    records: list[Record]
    root: Path | None = None
    arrays: np.ndarray | None = None  # N×H×W[×C] uint8 for idx / builtin
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): missing, unlabelled
    ignored: int = 0  # non-image files skipped (hidden, .DS_Store, other extensions)
    columns: list[str] = field(default_factory=list)  # a label file's columns (names, or "0", "1", … without header)
    notes: list[str] = field(default_factory=list)  # what the reader decided or doubts (shown by data check, train)
    label_map: dict[str, str] = field(default_factory=dict)  # --label-map as applied: label value → class
    multilabel: bool = False  # every record's tags are its labels (any number, none included)

    @property
    def classes(self) -> list[str]:
        labels = {t for r in self.records for t in r.tags} if self.multilabel else {r.label for r in self.records}
        # numeric labels (IDX files, CSVs of digits or grades) sort by value: "10" follows "9", "0.333" precedes "1"
        return sorted(labels, key=class_sort_key)

    @property
    def in_memory(self) -> bool:
        return self.arrays is not None

    def class_counts(self) -> dict[str, int]:
        counts = {c: 0 for c in self.classes}
        for r in self.records:
            for label in (r.tags if self.multilabel else (r.label,)):
                counts[label] += 1
        return counts

    def targets(self, records: list[Record], classes: list[str]) -> np.ndarray:
        """The multi-hot float32 (N, K) rows of ``records`` over ``classes`` (unknown labels dropped); a single-label
        source's record has its one label (a multi-label model scored on a class folder)."""
        index = {c: i for i, c in enumerate(classes)}
        out = np.zeros((len(records), len(classes)), dtype=np.float32)
        for row, r in enumerate(records):
            for t in r.tags if self.multilabel else (r.label,):
                if t in index:
                    out[row, index[t]] = 1.0
        return out

    def display_path(self, rec: Record) -> str:
        if self.in_memory:
            return f"{self.spec}[{rec.ref}]"
        if self.root is not None:
            try:
                return os.path.relpath(rec.ref, self.root)
            except ValueError:
                pass
        return rec.ref

    def fingerprint(self) -> str:
        """Cheap identity of the data set: names, sizes and mtimes (content hashes live in the cache)."""
        h = hashlib.sha256(self.spec.encode())
        if self.in_memory:
            h.update(hashlib.sha256(np.ascontiguousarray(self.arrays).data).digest())
        for r in self.records:
            h.update(f"{r.ref}\0{r.label}\0{r.split}\0".encode())
            if not self.in_memory:
                try:
                    st = os.stat(r.ref)
                    h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
                except OSError:
                    pass
        return h.hexdigest()[:16]
