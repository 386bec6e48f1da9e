"""IDX files (MNIST-style): find image/label pairs in a folder and read them into an in-memory Source."""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np

from ..errors import DataError
from .records import Record, Source

_IDX_IMAGES = re.compile(r"^(?P<prefix>.*?)[-_.]?images?[-_.]idx3[-_.]ubyte(\.gz)?$", re.I)


def find_idx(root: Path) -> list[tuple[Path, Path, str | None]]:
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


def from_idx(root: Path, pairs, class_names: list[str] | None = None, spec: str | None = None) -> Source:
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
