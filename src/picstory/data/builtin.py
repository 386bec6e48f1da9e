"""Built-in data sets that need no network: Fashion-MNIST (Debian's IDX files) and scikit-learn's digits."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from .idx import find_idx, from_idx
from .records import Record, Source
from .split import assign_splits

FASHION_CLASSES = ["T-shirt-top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
FASHION_DIRS = ["/usr/share/datasets/fashion-mnist"]
BUILTINS = ("fashion-mnist", "digits")


def fashion_mnist_dir() -> Path | None:
    env = os.environ.get("PICSTORY_DATA")
    candidates = ([Path(env) / "fashion-mnist", Path(env)] if env else []) + [Path(d) for d in FASHION_DIRS]
    for d in candidates:
        if d.is_dir() and find_idx(d):
            return d
    return None


def load_builtin(name: str) -> Source:
    name = name.strip().lower()
    if name in ("fashion-mnist", "fashion_mnist", "fashionmnist"):
        d = fashion_mnist_dir()
        if d is None:
            raise DataError("builtin:fashion-mnist: IDX files not found; install them with "
                            "`apt-get install dataset-fashion-mnist`, or put the four *-ubyte.gz files in a folder "
                            "and set PICSTORY_DATA to it")
        src = from_idx(d, find_idx(d), class_names=FASHION_CLASSES, spec="builtin:fashion-mnist")
        return src
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        # 0..16 grey levels → 0..255 so the images look like every other uint8 image
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
        records = [Record(str(i), str(int(y))) for i, y in enumerate(digits.target)]
        return Source(spec="builtin:digits", kind="builtin", records=records, arrays=images)
    raise DataError(f"unknown built-in data set '{name}' (choose from {', '.join(BUILTINS)})")


def export_folder(source: Source, out: str | Path, test_fraction: float = 0.2, seed: int = 0) -> dict[str, int]:
    """Write an in-memory source as PNG class folders ``out/train/CLASS/*.png`` and ``out/test/...``.

    The data set's own split is kept; without one a stratified test share is drawn from ``seed``.
    """
    from PIL import Image

    if not source.in_memory:
        raise DataError(f"{source.spec}: export writes built-in or IDX data sets; this one is already files")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: folder exists and is not empty; choose a new folder")
    splits = assign_splits(source.records, val_fraction=0.0, test_fraction=test_fraction, seed=seed)
    counts: dict[str, int] = {}
    for rec, split in zip(source.records, splits):
        split = "test" if split == "test" else "train"
        d = out / split / rec.label
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(source.arrays[int(rec.ref)]).save(d / f"{int(rec.ref):05d}.png")
        counts[split] = counts.get(split, 0) + 1
    return counts
