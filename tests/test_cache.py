"""Decode once: the cache reuses rows by content, re-decodes only what changed and never touches the data folder."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from imagegen import class_folders, jpeg_bytes, noise, save, snapshot
from picstory.data import cache
from picstory.data.cache import CachedImages, detect_channels, fit_image, load_images, prepare_image
from picstory.data.sources import Record, Source, resolve
from picstory.files import cache_root


@pytest.fixture
def decodes(monkeypatch):
    """Paths the cache hands to the decoder (by content: the decoder sees bytes), counted."""
    calls: list[int] = []
    real = cache.decode_pil

    def counting(src, *args, **kwargs):
        calls.append(1)
        return real(src, *args, **kwargs)

    monkeypatch.setattr(cache, "decode_pil", counting)
    return calls


def folder(tmp_path, n_per_class: int = 4):
    return resolve(str(class_folders(tmp_path / "data", {"cat": n_per_class, "dog": n_per_class})))


def load(src, tmp_path, indices=None, size=16, channels=3, fit="crop") -> CachedImages:
    idx = range(len(src.records)) if indices is None else indices
    return load_images(src, idx, size, channels, fit, workers=2, progress=False, cache_dir=tmp_path / "cache")


def views(tmp_path) -> list:
    return sorted((tmp_path / "cache").rglob("*.u8"))


def test_second_load_hits_the_cache(tmp_path, decodes):
    src = folder(tmp_path)
    first = load(src, tmp_path)
    assert len(decodes) == 8
    assert isinstance(first.images, np.memmap) and first.images.shape == (8, 16, 16, 3)
    assert first.ok.all() and first.bad == []
    again = load(src, tmp_path)
    assert len(decodes) == 8  # nothing decoded the second time
    assert np.array_equal(first.images, again.images)
    subset = load(src, tmp_path, indices=[5, 1, 2])  # another list of the same files: rows copied, not decoded
    assert len(decodes) == 8
    assert np.array_equal(subset.images, first.images[[5, 1, 2]])


def test_editing_one_file_redecodes_only_it(tmp_path, decodes):
    src = folder(tmp_path)
    before = np.array(load(src, tmp_path).images)
    edited = src.records[3].ref
    save(tmp_path / "x.png", Image.fromarray(noise(40, 48, seed=99)))
    (tmp_path / "x.png").replace(edited)
    decodes.clear()
    after = load(src, tmp_path).images
    assert len(decodes) == 1
    changed = np.flatnonzero((after != before).reshape(8, -1).any(axis=1))
    assert changed.tolist() == [3]
    assert len(views(tmp_path)) == 1  # the superseded view was removed: the cache stays one copy

    save(tmp_path / "data" / "dog" / "new.png", Image.fromarray(noise(40, 48, seed=7)))
    grown = resolve(str(tmp_path / "data"))
    decodes.clear()
    assert load(grown, tmp_path).images.shape[0] == 9
    assert len(decodes) == 1


def test_bad_files_reported_and_zeroed(tmp_path, decodes):
    root = class_folders(tmp_path / "data", {"a": 2, "b": 2})
    (root / "a" / "empty.png").write_bytes(b"")
    (root / "b" / "notes.jpg").write_text("not a photo")
    (root / "b" / "cut.jpg").write_bytes(jpeg_bytes(noise(50, 60))[:300])
    src = resolve(str(root))
    got = load(src, tmp_path)
    names = [src.display_path(r) for r in src.records]
    bad = dict(got.bad)
    assert bad == {"a/empty.png": "empty file", "b/cut.jpg": "truncated JPEG", "b/notes.jpg": "not an image"}
    for i, name in enumerate(names):
        assert got.ok[i] == (name not in bad)
        if name in bad:
            assert not got.images[i].any()
        else:
            assert got.images[i].any()
    n = len(decodes)
    assert load(src, tmp_path).bad == got.bad and len(decodes) == n  # known-bad content is not retried


def test_nothing_written_into_the_data_folder(tmp_path):
    src = folder(tmp_path)
    before = snapshot(tmp_path / "data")
    load(src, tmp_path)
    load(src, tmp_path, fit="pad", channels=1)
    assert snapshot(tmp_path / "data") == before


def test_picstory_cache_env_respected(tmp_path, monkeypatch):
    monkeypatch.setenv("PICSTORY_CACHE", str(tmp_path / "elsewhere"))
    assert cache_root() == tmp_path / "elsewhere"
    src = folder(tmp_path, 1)
    load_images(src, [0, 1], 8, 3, progress=False)
    assert list((tmp_path / "elsewhere").rglob("*.u8"))
    monkeypatch.delenv("PICSTORY_CACHE")
    assert cache_root().parts[-2:] == (".cache", "picstory")


def test_fit_modes_geometry():
    img = np.zeros((20, 40, 3), np.uint8)  # red | green | green | blue quarters
    img[:, :10] = (255, 0, 0)
    img[:, 10:30] = (0, 255, 0)
    img[:, 30:] = (0, 0, 255)
    crop = fit_image(img, 10, "crop")
    assert crop.shape == (10, 10, 3) and (crop[:, 2:8] == (0, 255, 0)).all()
    pad = fit_image(img, 10, "pad")  # 40×20 → 10×5, centred with black bands above and below
    assert pad.shape == (10, 10, 3)
    assert not pad[:2].any() and not pad[7:].any() and pad[2:7].any()
    stretch = fit_image(img, 10, "stretch")
    assert (stretch[:, 0] == (255, 0, 0)).all() and (stretch[:, -1] == (0, 0, 255)).all()
    square = noise(10, 10)
    assert fit_image(square, 10) is square
    gray = fit_image(noise(30, 12, c=1)[..., None], 8, "pad")
    assert gray.shape == (8, 8, 1)
    with pytest.raises(ValueError, match="fit"):
        fit_image(img, 10, "squash")


@pytest.mark.parametrize("fit", ["crop", "pad", "stretch"])
def test_cached_rows_equal_prepare_image(tmp_path, fit):
    """Predict and serve call prepare_image: they must see the pixels training saw."""
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    (root / "a" / "big.jpg").write_bytes(jpeg_bytes(noise(300, 420)))  # large enough for JPEG draft to act
    save(root / "b" / "wide.png", Image.fromarray(noise(30, 70)))
    src = resolve(str(root))
    got = load(src, tmp_path, size=24, fit=fit)
    for i, rec in enumerate(src.records):
        assert np.array_equal(got.images[i], prepare_image(rec.ref, 24, 3, fit))


def test_in_memory_sources():
    arrays = np.random.default_rng(0).integers(0, 256, (5, 12, 12), dtype=np.uint8)
    src = Source("mem", "builtin", [Record(str(i), "x") for i in range(5)], arrays=arrays)
    same = load_images(src, [3, 1], 12, 1, progress=False)
    assert same.images.shape == (2, 12, 12, 1) and same.ok.all()
    assert np.array_equal(same.images[..., 0], arrays[[3, 1]])
    bigger = load_images(src, [0, 4], 20, 3, fit="pad", progress=False)
    assert np.array_equal(bigger.images[1], fit_image(np.repeat(arrays[4][..., None], 3, -1), 20, "pad"))
    rgb = np.random.default_rng(1).integers(0, 256, (2, 6, 6, 3), dtype=np.uint8)
    src = Source("mem", "builtin", [Record("0", "x"), Record("1", "y")], arrays=rgb)
    as_gray = load_images(src, [1], 6, 1, progress=False).images[0, ..., 0]
    assert np.array_equal(as_gray, np.asarray(Image.fromarray(rgb[1]).convert("L")))
    assert detect_channels(src) == 3


def test_detect_channels(tmp_path):
    root = tmp_path / "data"
    for i in range(3):
        save(root / "g" / f"{i}.png", Image.fromarray(noise(8, 8, c=1, seed=i)))
    (root / "g" / "broken.png").write_bytes(b"")  # unreadable files say nothing about colour
    assert detect_channels(resolve(str(root))) == 1
    save(root / "h" / "c.jpg", Image.fromarray(noise(8, 8)))
    src = resolve(str(root))
    assert detect_channels(src) == 3
    gray_only = [i for i, r in enumerate(src.records) if "/g/" in r.ref]
    assert detect_channels(src, gray_only) == 1


def test_concurrent_loads_agree(tmp_path):
    src = folder(tmp_path, 6)
    results: list = [None, None]

    def run(k):
        results[k] = np.array(load(src, tmp_path).images)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert np.array_equal(results[0], results[1])
    assert np.array_equal(load(src, tmp_path).images, results[0])
    assert not list((tmp_path / "cache").rglob("*.tmp"))
