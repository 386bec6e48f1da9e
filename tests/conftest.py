"""Shared fixtures: tiny, learnable image folders generated on the fly (seconds, no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own decode cache, so no test sees another's cached pixels."""
    monkeypatch.setenv("PICSTORY_CACHE", str(tmp_path_factory.mktemp("cache")))


def pattern(kind: int, size: int, rng: np.random.Generator, rgb: bool) -> np.ndarray:
    """Class 0: horizontal stripes, 1: vertical stripes, 2: a bright centre blob — plus noise and shifts."""
    y, x = np.mgrid[0:size, 0:size]
    shift = rng.integers(0, 4)
    if kind == 0:
        img = ((y + shift) // 3 % 2) * 200
    elif kind == 1:
        img = ((x + shift) // 3 % 2) * 200
    else:
        c = size / 2 + rng.normal(0, 1.5, 2)
        img = (np.hypot(y - c[0], x - c[1]) < size / 4) * 220
    img = np.clip(img + rng.normal(0, 25, img.shape), 0, 255).astype(np.uint8)
    if rgb:
        tint = rng.uniform(0.7, 1.0, 3)
        img = (img[..., None] * tint).astype(np.uint8)
    return img


def make_folder(root: Path, n_per_class: int = 24, classes=("horizontal", "vertical", "blob"), size: int = 20,
                rgb: bool = False, seed: int = 0, splits: tuple = ()) -> Path:
    rng = np.random.default_rng(seed)
    for split in splits or ("",):
        for k, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n_per_class):
                Image.fromarray(pattern(k % 3, size, rng, rgb)).save(d / f"{name}_{i:03d}.png")
    return root


@pytest.fixture
def gray_folder(tmp_path) -> Path:
    return make_folder(tmp_path / "gray")


@pytest.fixture
def rgb_folder(tmp_path) -> Path:
    return make_folder(tmp_path / "rgb", rgb=True, size=24)


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    return tmp_path / "runs"


def snapshot(root: Path) -> dict:
    """path → bytes of every file under root: proves a command wrote nothing into the user's data."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


