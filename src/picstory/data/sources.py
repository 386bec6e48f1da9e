"""DATA spec → records. One resolver behind every command.

A record is one image: a file path (folders, file-name labels, CSV) or an index into an in-memory uint8 array
(IDX files, built-in sets), with its label and the split the data itself declares (or None).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
IGNORED_NAMES = {".ds_store", "thumbs.db", "desktop.ini", "__macosx"}
SPLIT_NAMES = {"train": "train", "training": "train", "training_set": "train", "trainset": "train",
               "val": "val", "valid": "val", "validation": "val", "dev": "val",
               "test": "test", "testing": "test", "test_set": "test", "testset": "test"}
PATH_COLS = ("path", "filepath", "file_path", "image_path", "file", "filename", "image", "img", "image_id", "id")
LABEL_COLS = ("label", "class", "category", "target", "class_name", "y", "labels")


@dataclass(frozen=True)
class Record:
    ref: str  # absolute file path, or the decimal index into Source.arrays
    label: str
    split: str | None = None  # train | val | test, when the data declares it


@dataclass
class Source:
    spec: str
    kind: str  # folder | filenames | csv | idx | builtin
    records: list[Record]
    root: Path | None = None
    arrays: np.ndarray | None = None  # N×H×W[×C] uint8 for idx / builtin
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): missing, unlabelled
    ignored: int = 0  # non-image files skipped (hidden, .DS_Store, other extensions)

    @property
    def classes(self) -> list[str]:
        labels = {r.label for r in self.records}
        # numeric labels (IDX files, CSVs of digits) sort by value so that "10" follows "9"
        return sorted(labels, key=lambda c: (0, int(c), "") if c.isdigit() else (1, 0, c))

    @property
    def in_memory(self) -> bool:
        return self.arrays is not None

    def class_counts(self) -> dict[str, int]:
        counts = {c: 0 for c in self.classes}
        for r in self.records:
            counts[r.label] += 1
        return counts

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


def resolve(spec: str, path_col: str = "", label_col: str = "") -> Source:
    """Turn a DATA spec (see DESIGN.md) into a Source; raises DataError naming the spec and what to do."""
    spec = str(spec)
    if spec.startswith("builtin:"):
        from .builtin import load_builtin

        return load_builtin(spec.split(":", 1)[1])
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"data not found: {spec} (give a folder of class sub-folders, a CSV, IDX files, "
                        "or builtin:fashion-mnist / builtin:digits)")
    if path.is_file():
        if path.suffix.lower() in (".csv", ".tsv"):
            return _from_csv(path, path_col, label_col)
        raise DataError(f"{spec}: a single file is not a data set; give a folder or a CSV with path and label "
                        "columns")
    path = path.resolve()
    idx = _find_idx(path)
    if idx:
        return _from_idx(path, idx)
    return _from_folder(path)


def _is_ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def _walk_images(root: Path, boundary: Path | None = None) -> tuple[list[Path], int]:
    """Image files under root, sorted, following symlinks without looping; returns (images, ignored count).

    A linked folder that resolves elsewhere inside ``boundary`` (the data set's root: e.g. ``cat/up -> ..``)
    is skipped, so a link can never pull another class's images into this one."""
    images, ignored, seen = [], 0, set()
    root_real = os.path.realpath(root)
    fence = os.path.realpath(boundary) if boundary else None
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        inside_root = real == root_real or real.startswith(root_real + os.sep)
        inside_fence = fence is not None and (real == fence or real.startswith(fence + os.sep))
        if real in seen or (inside_fence and not inside_root):
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not _is_ignored(d))
        for name in sorted(filenames):
            if _is_ignored(name) or Path(name).suffix.lower() not in IMAGE_EXTS:
                ignored += 1
                continue
            images.append(Path(dirpath) / name)
    return images, ignored


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not _is_ignored(p.name))


def _from_folder(root: Path) -> Source:
    subdirs = _subdirs(root)
    # Kaggle's archives often nest the split twice: training_set/training_set/cats/…
    subdirs = [_undouble(d) for d in subdirs]
    split_dirs = {d: SPLIT_NAMES[d.name.lower()] for d in subdirs if d.name.lower() in SPLIT_NAMES}
    records: list[Record] = []
    problems: list[tuple[str, str]] = []
    ignored = 0
    if split_dirs and len(split_dirs) == len(subdirs):
        kind = "folder"
        for d, split in split_dirs.items():
            if _subdirs(d):
                recs, ign = _class_folders(d, split)
            else:  # train/ holding cat.1.jpg … (Kaggle dogs-vs-cats)
                kind = "filenames"
                recs, ign, probs = _file_name_labels(d, split)
                problems += probs
            records += recs
            ignored += ign
    elif subdirs:
        kind = "folder"
        records, ignored = _class_folders(root, None)
        loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS]
        problems += [(str(p), "image outside any class folder; ignored") for p in sorted(loose)]
    else:
        kind = "filenames"
        records, ignored, problems = _file_name_labels(root, None)
    if not records and not problems:
        raise DataError(f"{root}: no images found (looked for {', '.join(sorted(IMAGE_EXTS))} in class "
                        "sub-folders or with the label in the file name)")
    return Source(spec=str(root), kind=kind, records=records, root=root, problems=problems, ignored=ignored)


def _undouble(d: Path) -> Path:
    inner = _subdirs(d)
    if d.name.lower() in SPLIT_NAMES and len(inner) == 1 and inner[0].name.lower() == d.name.lower():
        return inner[0]
    return d


def _class_folders(root: Path, split: str | None) -> tuple[list[Record], int]:
    records, ignored = [], 0
    for d in _subdirs(root):
        images, ign = _walk_images(d, boundary=root)
        ignored += ign
        records += [Record(str(p), d.name, split) for p in images]
    return records, ignored


# default names of cameras, phones and screenshots: letters then a number, but not a label
CAMERA_PREFIXES = {"img", "dsc", "dscn", "dscf", "pxl", "mvimg", "vid", "screenshot", "image", "photo", "pic",
                   "p", "dcim", "gopr", "sam", "wp"}
_NAME_LABEL = re.compile(r"^(?P<label>[^\W\d_](?:[^\W\d_]|[ ])*?)[\s._\-]*\(?\d+\)?$")


def label_from_name(path: str | Path) -> str | None:
    """``cat.123.jpg`` → cat, ``dog_7.png`` → dog, ``Cat-01.jpeg`` → cat; no letters-then-number → None."""
    m = _NAME_LABEL.match(Path(path).stem.strip())
    if not m or m.group("label").strip().lower() in CAMERA_PREFIXES:
        return None
    return m.group("label").strip().lower()


def _file_name_labels(root: Path, split: str | None) -> tuple[list[Record], int, list[tuple[str, str]]]:
    images, ignored = _walk_images(root)
    records, problems = [], []
    for p in images:
        label = label_from_name(p)
        if label is None:
            problems.append((str(p), "no label in the file name (expected e.g. cat.123.jpg or dog_7.png)"))
        else:
            records.append(Record(str(p), label, split))
    return records, ignored, problems


def _from_csv(path: Path, path_col: str, label_col: str) -> Source:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the CSV ({e})") from None
    dialect = csv.excel_tab if path.suffix.lower() == ".tsv" else csv.excel
    rows = list(csv.DictReader(text.splitlines(), dialect=dialect))
    columns = list(rows[0].keys()) if rows else (text.splitlines()[0].split(",") if text.strip() else [])
    pcol = _pick_column(path, columns, path_col, PATH_COLS, "path", "--path-col")
    lcol = _pick_column(path, columns, label_col, LABEL_COLS, "label", "--label-col")
    scol = next((c for c in columns if c.strip().lower() == "split"), None)
    records, problems = [], []
    for i, row in enumerate(rows, start=2):
        rel, label = (row.get(pcol) or "").strip(), (row.get(lcol) or "").strip()
        if not rel:
            problems.append((f"{path}:{i}", f"empty '{pcol}'"))
            continue
        if not label:
            problems.append((f"{path}:{i}", f"empty '{lcol}' for {rel}"))
            continue
        file = (path.parent / rel).resolve()
        if not file.is_file():
            problems.append((str(file), f"missing file (row {i} of {path.name})"))
            continue
        split = SPLIT_NAMES.get((row.get(scol) or "").strip().lower()) if scol else None
        records.append(Record(str(file), label, split))
    if not records:
        raise DataError(f"{path}: no usable rows ({len(problems)} problems, e.g. {problems[0][1] if problems else 'empty file'})")
    return Source(spec=str(path), kind="csv", records=records, root=path.parent.resolve(), problems=problems)


def _pick_column(path: Path, columns: list[str], chosen: str, candidates: tuple, what: str, flag: str) -> str:
    if chosen:
        if chosen not in columns:
            raise DataError(f"{path}: no column '{chosen}' (columns: {', '.join(columns)})")
        return chosen
    lower = {c.strip().lower(): c for c in columns}
    for name in candidates:
        if name in lower:
            return lower[name]
    raise DataError(f"{path}: cannot find the {what} column among {', '.join(columns) or 'no columns'}; "
                    f"name it with {flag}")


# ---- IDX (MNIST-style) files -------------------------------------------------------------------------------------

_IDX_IMAGES = re.compile(r"^(?P<prefix>.*?)[-_.]?images?[-_.]idx3[-_.]ubyte(\.gz)?$", re.I)


def _find_idx(root: Path) -> list[tuple[Path, Path, str | None]]:
    """(images file, labels file, split) pairs in a folder of IDX files."""
    found = []
    for p in sorted(root.iterdir()):
        m = _IDX_IMAGES.match(p.name)
        if not m:
            continue
        labels = [q for q in root.iterdir() if q.name.startswith(m.group("prefix")) and "idx1" in q.name]
        if not labels:
            raise DataError(f"{p}: no matching labels file ({m.group('prefix')}-labels-idx1-ubyte[.gz])")
        prefix = m.group("prefix").lower()
        split = "test" if prefix.startswith(("t10k", "test")) else "train" if prefix.startswith("train") else None
        found.append((p, sorted(labels)[0], split))
    return found


def read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
        arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        return arr[: int(np.prod(shape))].reshape(shape)
    except (OSError, EOFError, ValueError, struct.error) as e:
        raise DataError(f"{path}: not a readable IDX file ({e})") from None


def _from_idx(root: Path, pairs, class_names: list[str] | None = None, spec: str | None = None) -> Source:
    arrays, records = [], []
    offset = 0
    for images_path, labels_path, split in pairs:
        images, labels = read_idx(images_path), read_idx(labels_path)
        if len(images) != len(labels):
            raise DataError(f"{images_path}: {len(images)} images but {len(labels)} labels in {labels_path.name}")
        arrays.append(images)
        names = class_names or [str(i) for i in range(int(labels.max()) + 1)]
        records += [Record(str(offset + i), names[int(y)], split) for i, y in enumerate(labels)]
        offset += len(images)
    return Source(spec=spec or str(root), kind="idx", records=records, root=root, arrays=np.concatenate(arrays))
