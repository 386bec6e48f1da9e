"""DATA spec → records. One resolver behind every command: class folders, file-name labels, CSV, IDX, built-in."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from ..errors import DataError
from ..runs import RUN_MARKER
from .builtin import load_builtin
from .idx import find_idx, from_idx, read_idx  # noqa: F401  (read_idx: part of this module's public face)
from .records import IGNORED_NAMES, IMAGE_EXTS, SPLIT_NAMES, Record, Source  # noqa: F401

PATH_COLS = ("path", "filepath", "file_path", "image_path", "file", "filename", "image", "img", "image_id", "id")
LABEL_COLS = ("label", "class", "category", "target", "class_name", "y", "labels")


def resolve(spec: str, path_col: str = "", label_col: str = "", allow_outside: bool = False) -> Source:
    """Turn a DATA spec (see DESIGN.md) into a Source; raises DataError naming the spec and what to do."""
    spec = str(spec)
    if spec.startswith("builtin:"):
        return load_builtin(spec.split(":", 1)[1])
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"data not found: {spec} (give a folder of class sub-folders, a CSV, IDX files, "
                        "or builtin:fashion-mnist / builtin:digits)")
    if path.is_file():
        if path.suffix.lower() in (".csv", ".tsv"):
            return _from_csv(path, path_col, label_col, allow_outside)
        raise DataError(f"{spec}: a single file is not a data set; give a folder or a CSV with path and label "
                        "columns")
    path = path.resolve()
    idx = find_idx(path)
    if idx:
        return from_idx(path, idx)
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
        # a run directory inside the data (marked by RUN_MARKER) is picstory output: no extra listing needed
        if real in seen or (inside_fence and not inside_root) or RUN_MARKER in filenames:
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
    return sorted(p for p in path.iterdir() if p.is_dir() and not _is_ignored(p.name) and not _is_picstory_dir(p))


def _is_picstory_dir(path: str | Path) -> bool:
    """A run directory (or a folder of them) among a data folder's sub-folders is picstory output, never a class
    or a split (the walk below skips marked folders from its own listing)."""
    path = Path(path)
    return (path / RUN_MARKER).is_file() or any((p / RUN_MARKER).is_file() for p in _children(path))


def _children(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_dir()]
    except OSError:
        return []


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


def _from_csv(path: Path, path_col: str, label_col: str, allow_outside: bool = False) -> Source:
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
    base = path.parent.resolve()
    for i, row in enumerate(rows, start=2):
        rel, label = (row.get(pcol) or "").strip(), (row.get(lcol) or "").strip()
        if not rel:
            problems.append((f"{path}:{i}", f"empty '{pcol}'"))
            continue
        if not label:
            problems.append((f"{path}:{i}", f"empty '{lcol}' for {rel}"))
            continue
        file = (path.parent / rel).resolve()
        if not allow_outside and not file.is_relative_to(base):
            # not used and not looked at: the report must not reveal which files exist outside the data set
            problems.append((f"{path}:{i}", f"path {rel} leaves {base}; pass --allow-outside to use such rows"))
            continue
        if not file.is_file():
            problems.append((str(file), f"missing file (row {i} of {path.name})"))
            continue
        split = SPLIT_NAMES.get((row.get(scol) or "").strip().lower()) if scol else None
        records.append(Record(str(file), label, split))
    if not records:
        example = problems[0][1] if problems else "empty file"
        raise DataError(f"{path}: no usable rows ({len(problems)} problems, e.g. {example})")
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
