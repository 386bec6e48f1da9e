"""DATA spec → records. One resolver behind every command: class folders, file-name labels, CSV, IDX, built-in."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path

from ..errors import DataError
from ..runs import RUN_MARKER
from . import labelfile as lf
from .builtin import load_builtin
from .idx import find_idx, from_idx, read_idx  # noqa: F401  (read_idx: part of this module's public face)
from .records import IGNORED_NAMES, IMAGE_EXTS, SPLIT_NAMES, Record, Source  # noqa: F401

PATH_COLS, LABEL_COLS = lf.PATH_COLS, lf.LABEL_COLS


def resolve(spec: str, path_col: str = "", label_col: str = "", allow_outside: bool = False, *,
            label_map: str = "", group_col: str = "", weight_col: str = "", label_cols: str = "",
            multi_label: bool = False) -> Source:
    """Turn a DATA spec (see DESIGN.md) into a Source; raises DataError naming the spec and what to do.

    The keyword options read label files (config.LABEL_FILE_KEYS: ``resolve(spec, **label_file_options(cfg))``);
    the other kinds of data carry no columns, so a column option there is an error rather than silently unused."""
    spec = str(spec)
    if spec.startswith("builtin:"):
        return load_builtin(spec.split(":", 1)[1])
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"data not found: {spec} (give a folder of class sub-folders, a CSV, IDX files, "
                        "or builtin:fashion-mnist / builtin:digits)")
    if path.is_file():
        if path.suffix.lower() == ".json":
            for flag, value in (("--path-col", path_col), ("--label-col", label_col), ("--group-col", group_col),
                                ("--weight-col", weight_col), ("--label-cols", label_cols)):
                if value:
                    raise DataError(f"{flag} {value}: {spec} is a JSON label file without columns; drop {flag}")
            return _from_json(path, allow_outside, label_map, multi_label)
        if path.suffix.lower() in lf.LABEL_FILE_EXTS:
            return _from_label_file(path, path_col, label_col, allow_outside, label_map, group_col, weight_col,
                                    label_cols, multi_label)
        raise DataError(f"{spec}: a single file is not a data set; give a folder or a label file "
                        f"({', '.join(lf.LABEL_FILE_EXTS)}) with path and label columns")
    for flag, value in (("--group-col", group_col), ("--weight-col", weight_col), ("--label-map", label_map),
                        ("--label-cols", label_cols), ("--multi-label", multi_label)):
        if value:
            if flag == "--multi-label":
                raise DataError(f"--multi-label: {spec} is a folder, and folders hold one label per image; give a "
                                "CSV (dog|outdoor cells or --label-cols) or a JSON file {\"path\": [labels]}")
            raise DataError(f"{flag} {value}: {spec} is not a label file; {flag} needs a .csv/.tsv/.txt with columns")
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


def _from_label_file(path: Path, path_col: str, label_col: str, allow_outside: bool = False, label_map: str = "",
                     group_col: str = "", weight_col: str = "", label_cols: str = "",
                     multi_label: bool = False) -> Source:
    table = lf.read_table(path)
    pi = lf.pick_column(table, path_col, lf.PATH_COLS, "path", "--path-col")
    one_hot = [(lf.pick_column(table, name.strip(), (), "label", "--label-cols"), name.strip())
               for name in label_cols.split(",") if name.strip()]
    if label_cols and label_col:
        raise DataError(f"{path}: --label-col and --label-cols both given; one-hot columns (--label-cols) replace "
                        "the label column")
    if one_hot:
        one_hot = [(i, table.columns[i]) for i, _ in one_hot]
        li = one_hot[0][0]
        if pi in [i for i, _ in one_hot]:
            raise DataError(f"{path}: --label-cols includes the path column '{table.columns[pi]}'")
    else:
        li = lf.pick_column(table, label_col, lf.LABEL_COLS, "label", "--label-col", avoid=(pi,))
    if li == pi:
        raise DataError(f"{path}: the path and the label column are both '{table.columns[pi]}'; choose another "
                        "with --label-col")
    gi = lf.pick_column(table, group_col, (), "group", "--group-col") if group_col else None
    wi = lf.pick_column(table, weight_col, (), "weight", "--weight-col") if weight_col else None
    cols = table.columns
    label_idx = {i for i, _ in one_hot} or {li}
    si = next((i for i, c in enumerate(cols) if c.strip().lower() == "split" and table.header), None)
    notes = [] if table.header or one_hot else [
        f"{path.name} has no header: column {pi} holds the paths and column {li} the labels (choose others with "
        "--path-col / --label-col)"]
    records, problems, raw = [], [], []
    base = path.parent.resolve()
    for line, cells in table.rows:
        where = f"{path}:{line}"
        rel = cells[pi] if pi < len(cells) else ""
        if one_hot:
            tags, label = lf.one_hot_labels(cells, one_hot, where), "-"
        else:
            label = lf.row_label(cells, li)
            tags = lf.split_labels(label, table.delimiter, where) if label else ()
        if not rel:
            problems.append((where, f"empty path (column '{cols[pi]}')"))
            continue
        if not label:
            problems.append((where, f"empty label (column '{cols[li]}') for {rel}"))
            continue
        file = _inside(path, rel, base, allow_outside, where, line, problems)
        if file is None:
            continue
        weight = 1.0
        if wi is not None:
            weight = lf.as_number(cells[wi]) if wi < len(cells) else None
            if weight is None or weight < 0:
                problems.append((where, f"weight '{cells[wi] if wi < len(cells) else ''}' (column '{cols[wi]}') is "
                                        f"not a number ≥ 0 for {rel}"))
                continue
        split = SPLIT_NAMES.get(cells[si].strip().lower()) if si is not None and si < len(cells) else None
        group = cells[gi] if gi is not None and gi < len(cells) and cells[gi] else None
        meta = tuple((c, cells[i]) for i, c in enumerate(cols) if i != pi and i not in label_idx and i < len(cells))
        records.append(Record(str(file), label, split, group=group, weight=weight, tags=tags, meta=meta))
        raw.extend(tags)
    if not records:
        example = problems[0][1] if problems else "no data rows"
        raise DataError(f"{path}: no usable rows ({len(problems)} problems, e.g. {example})")
    multilabel = bool(one_hot) or multi_label or any(len(r.tags) > 1 for r in records)
    return _labelled(path, records, raw, label_map, multilabel, kind="csv", problems=problems, columns=cols,
                     notes=notes, root=base)


def _inside(path: Path, rel: str, base: Path, allow_outside: bool, where: str, line: int,
            problems: list) -> Path | None:
    """The image file a label-file row names, or None (and a problem) when it leaves the folder or is missing."""
    file = (path.parent / rel).resolve()
    if not allow_outside and not file.is_relative_to(base):
        # not used and not looked at: the report must not reveal which files exist outside the data set
        problems.append((where, f"path {rel} leaves {base}; pass --allow-outside to use such rows"))
        return None
    if not file.is_file():
        problems.append((str(file), f"missing file (row {line} of {path.name})"))
        return None
    return file


def _from_json(path: Path, allow_outside: bool, label_map: str, multi_label: bool = False) -> Source:
    """``{"path": [labels]}``: a list makes the data set multi-label (an empty list: an image with no label)."""
    records, problems, raw, multilabel = [], [], [], multi_label
    base = path.parent.resolve()
    for n, (rel, value) in enumerate(lf.read_json_labels(path), start=1):
        where = f"{path}: entry {n} ({rel})"
        if isinstance(value, list):
            multilabel = True
            if any(not v for v in value):
                raise DataError(f"{where}: an empty label in {json.dumps(value)}; give label names")
            tags = tuple(dict.fromkeys(value))
        elif not value.strip():
            problems.append((where, f"empty label for {rel}"))
            continue
        else:
            tags = (value.strip(),)
        file = _inside(path, rel, base, allow_outside, where, n, problems) if rel else None
        if file is None:
            if not rel:
                problems.append((where, "empty path"))
            continue
        records.append(Record(str(file), "-", None, tags=tags))
        raw.extend(tags)
    if not records:
        example = problems[0][1] if problems else "no entries"
        raise DataError(f"{path}: no usable entries ({len(problems)} problems, e.g. {example})")
    return _labelled(path, records, raw, label_map, multilabel, kind="json", problems=problems, columns=[],
                     notes=[], root=base)


def _labelled(path: Path, records: list[Record], raw: list[str], label_map: str, multilabel: bool, **source) -> Source:
    """Apply --label-map to every label, then set each record's label: its one class, or (multi-label) its labels
    in class order joined by '|' ("" for an image with none)."""
    mapping, warnings = lf.apply_label_map(path, sorted(set(raw), key=lf.class_sort_key), lf.parse_label_map(label_map))
    out = []
    for r in records:
        tags = tuple(sorted({mapping[t] for t in r.tags}, key=lf.class_sort_key))
        out.append(replace(r, label="|".join(tags), tags=tags if multilabel else ()))
    source["notes"] = source["notes"] + warnings
    return Source(spec=str(path), records=out, label_map=mapping if label_map else {}, multilabel=multilabel,
                  **source)
