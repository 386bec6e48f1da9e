"""Decode once: images → one (N, size, size, C) uint8 array, on disk as a memmap for file sources.

Layout under :func:`cache_root` (never inside the user's data folder)::

    fingerprints.sqlite                      (path, size, mtime, ctime, inode) → blake2b of the file's bytes
    images/d{decoder}-{size}px-c{C}-{fit}/   one store per pixel recipe
        {view}.u8    rows of one requested image list, in request order (read back with np.memmap: zero copy)
        {view}.json  keys (content hashes), paths and bad-file reasons; written last, so it marks a complete view

A view is named by the hash of its list of content keys, so a run that asks for the same images finds its array by
name after a stat per file. When the list changed (files added, edited, removed), a new view is assembled: rows of
unchanged content are copied from older views (a memcpy), only new content is decoded. Older views whose rows are all
superseded (same content, an edited path, or a deleted file) are removed, so the cache stays about one copy in size.
Files are written under temporary names and published with ``os.replace``: concurrent runs never see half a view.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import FITS
from ..device import cores
from ..files import DISK_FULL, atomic_write, cache_root, disk_full, reserve
from .decode import DECODER_VERSION, MAX_PIXELS, DecodeError, decode_pil, is_gray_mode, probe

# Bilinear in PIL is antialiased (its support widens with the reduction), matches torchvision's default Resize used
# by pretrained recipes, has no Lanczos ringing when small images are upscaled, and is 2.2× cheaper than Lanczos
# (0.9 vs 2.1 ms for 500×375 → 224 px). reducing_gap=3 first box-reduces by whole factors, which Pillow documents as
# indistinguishable from a full resample: 8.4 instead of 13.5 ms for an undrafted 3000×2000 → 224 px.
RESAMPLE = Image.Resampling.BILINEAR
REDUCING_GAP = 3.0


# ---- the one resize --------------------------------------------------------------------------------------------


def fit_pil(im: Image.Image, size: int, fit: str = "crop") -> Image.Image:
    """:func:`fit_image` on a PIL image (L or RGB)."""
    w, h = im.size
    if (w, h) == (size, size):
        return im
    if fit == "stretch":
        return im.resize((size, size), RESAMPLE, reducing_gap=REDUCING_GAP)
    if fit == "crop":  # resampling only the centred square is resize-shorter-side + centre-crop in one pass
        side = min(w, h)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        return im.resize((size, size), RESAMPLE, box=box, reducing_gap=REDUCING_GAP)
    if fit == "pad":
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = Image.new(im.mode, (size, size), 0)
        canvas.paste(im.resize((nw, nh), RESAMPLE, reducing_gap=REDUCING_GAP), ((size - nw) // 2, (size - nh) // 2))
        return canvas
    raise ValueError(f"fit must be one of {', '.join(FITS)}, not {fit!r}")


def fit_image(img: np.ndarray, size: int, fit: str = "crop") -> np.ndarray:
    """H×W×C uint8 → size×size×C uint8: crop (shorter side to size, centre crop), pad (longer side, black border),
    stretch. The one resize behind the cache, predict and serve; returns ``img`` itself when already size×size."""
    if img.shape[0] == size and img.shape[1] == size and fit in FITS:
        return img
    return _hwc(np.asarray(fit_pil(Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img), size, fit)))


def prepare_image(src: str | Path | bytes, size: int, channels: int, fit: str = "crop",
                  max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode (JPEG draft at the target size) and fit one image: what the cache stores, and what predict and serve
    must use to see the pixels training saw. Raises DecodeError."""
    return _hwc(np.asarray(fit_pil(decode_pil(src, channels, max_pixels, draft=(size, size)), size, fit)))


def _hwc(arr: np.ndarray) -> np.ndarray:
    return arr[:, :, None] if arr.ndim == 2 else arr


def detect_channels(source, indices: Sequence[int] | None = None, sample: int = 200) -> int:
    """1 when every sampled image is gray (file headers, or in-memory arrays without colour), else 3."""
    if source.in_memory:
        a = source.arrays
        return 1 if a.ndim == 3 or a.shape[-1] == 1 else 3
    idx = np.arange(len(source.records)) if indices is None else np.asarray(indices)
    if len(idx) == 0:
        return 3
    picks = np.unique(np.linspace(0, len(idx) - 1, min(sample, len(idx))).round().astype(int))
    modes = []
    for i in idx[picks]:
        try:
            modes.append(probe(source.records[int(i)].ref).mode)
        except DecodeError:
            continue  # bad files are reported by load_images; they say nothing about colour
    return 1 if modes and all(is_gray_mode(m) for m in modes) else 3


# ---- loading ---------------------------------------------------------------------------------------------------


@dataclass
class CachedImages:
    images: np.ndarray  # (N, size, size, C) uint8; np.memmap for file sources; rows of bad files are zero
    ok: np.ndarray  # (N,) bool
    bad: list[tuple[str, str]] = field(default_factory=list)  # (display path, reason)


def load_images(source, indices: Sequence[int], size: int, channels: int, fit: str = "crop", workers: int = 0,
                progress: bool = True, cache_dir: Path | None = None) -> CachedImages:
    """The (N, size, size, channels) uint8 images of ``source.records[indices]``, decoding only what is not cached.

    Bad files become zero rows with ``ok`` False and their reason in ``bad``; the caller decides what is too many.
    """
    if fit not in FITS or channels not in (1, 3):
        raise ValueError(f"need fit in {', '.join(FITS)} and channels 1 or 3, got {fit!r} and {channels!r}")
    indices = [int(i) for i in indices]
    if source.in_memory:
        return CachedImages(_from_arrays(source.arrays, indices, size, channels, fit), np.ones(len(indices), bool))
    if not indices:
        return CachedImages(np.zeros((0, size, size, channels), np.uint8), np.zeros(0, bool))
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    store = _Store(root / "images" / f"d{DECODER_VERSION}-{size}px-c{channels}-{fit}", size, channels)
    paths = [source.records[i].ref for i in indices]
    memo = _Fingerprints(root / "fingerprints.sqlite")
    stats = [_stat(p) for p in paths]
    keys = memo.lookup(paths, stats)
    view = store.open(_list_name(keys)) if all(keys) else None
    if view is None:
        view = _build(store, memo, paths, stats, keys, size, channels, fit, workers, progress)
    images, bad_rows = view
    ok = np.ones(len(paths), bool)
    ok[list(bad_rows)] = False
    bad = [(source.display_path(source.records[indices[r]]), reason) for r, reason in sorted(bad_rows.items())]
    return CachedImages(images, ok, bad)


def _build(store: "_Store", memo: "_Fingerprints", paths: list[str], stats: list, keys: list[str | None],
           size: int, channels: int, fit: str, workers: int, progress: bool) -> tuple[np.ndarray, dict[int, str]]:
    """Assemble a new view: copy rows of known content, decode the rest in parallel, publish atomically."""
    workers = workers or cores()
    index = store.index()
    if index:  # content we have not fingerprinted may still be cached under another path or list
        todo = [r for r, k in enumerate(keys) if k is None]
        with ThreadPoolExecutor(workers) as pool, _bar(progress, len(todo), "fingerprinting") as advance:
            for r, k in zip(todo, pool.map(_hash_file, [paths[r] for r in todo])):
                keys[r], _ = k, advance()
        view = store.open(_list_name(keys)) if all(keys) else None
        if view is not None:  # same images as a cached view; only the fingerprints were unknown
            memo.update(paths, stats, keys)
            return view
    rows, tmp = store.create(len(paths))
    try:
        return _fill(store, memo, paths, stats, keys, size, channels, fit, workers, progress, index, rows)
    finally:
        tmp.unlink(missing_ok=True)  # published under its name by then, or a leftover of a failed fill


def _fill(store: "_Store", memo: "_Fingerprints", paths: list[str], stats: list, keys: list[str | None], size: int,
          channels: int, fit: str, workers: int, progress: bool, index: dict,
          rows: np.memmap) -> tuple[np.ndarray, dict[int, str]]:
    tmp = Path(rows.filename)
    bad: dict[int, str] = {}
    cached = {r: index[k] for r, k in enumerate(keys) if k in index}
    bad.update((r, reason) for r, (_, _, reason) in cached.items() if reason)  # known-bad content: zero rows
    lost = store.copy_rows(rows, cached)  # rows whose source view vanished under us are decoded after all
    for r in lost:
        bad.pop(r, None)
    todo = sorted(set(range(len(paths))) - set(cached) | lost)
    jobs = [(paths[r], size, channels, fit) for r in todo]
    with ThreadPoolExecutor(workers) as pool, _bar(progress, len(jobs), "decoding images") as advance:
        for r, (key, arr, reason) in zip(todo, pool.map(_decode_row, jobs)):
            keys[r] = key
            if arr is None:
                bad[r] = reason
            else:
                rows[r] = arr
            advance()
    name = _list_name(keys)
    store.publish(rows, tmp, name, keys, paths, bad)
    memo.update(paths, stats, keys)
    store.collect(name)
    return store.open(name) or (rows, bad)


def _decode_row(job: tuple[str, int, int, str]) -> tuple[str, np.ndarray | None, str]:
    """Read once, fingerprint the bytes, decode them: (content key, size×size×C array or None, reason)."""
    path, size, channels, fit = job
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        reason = f"cannot read: {e.strerror or e}"
        return "unreadable:" + _digest(f"{path}\0{reason}".encode()), None, reason
    key = _digest(data)
    try:
        return key, prepare_image(data, size, channels, fit), ""
    except DecodeError as e:
        return key, None, e.reason


def _hash_file(path: str) -> str | None:
    with suppress(OSError):
        return _digest(Path(path).read_bytes())
    return None


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _list_name(keys: Sequence[str | None]) -> str:  # a view's name: the hash of its rows' content keys
    return _digest("\n".join(k or "" for k in keys).encode())


def _stat(path: str) -> tuple[int, int, int, int] | None:
    with suppress(OSError):
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino
    return None


@contextmanager
def _bar(enabled: bool, total: int, what: str):
    """A rich progress bar on a terminal; a no-op callable otherwise."""
    if not (enabled and total and sys.stderr.isatty()):
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import Progress
    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(what, total=total)
        yield lambda: bar.advance(task)


def _from_arrays(arrays: np.ndarray, indices: list[int], size: int, channels: int, fit: str) -> np.ndarray:
    """In-memory sets: channel conversion as decode does it, then the same fit as files get."""
    sel = arrays[indices] if indices else arrays[:0]
    if sel.ndim == 3:
        sel = sel[..., None]
    c = sel.shape[-1]
    if c == 4:  # composite on white, as decode does for alpha
        rgb, a = sel[..., :3].astype(np.uint32), sel[..., 3:].astype(np.uint32)
        sel, c = ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8), 3
    if c == 1 and channels == 3:
        sel = np.repeat(sel, 3, axis=-1)
    elif c == 3 and channels == 1:  # PIL's RGB → L weights and rounding, so the pixels equal decode's
        w = sel.astype(np.uint32)
        sel = ((w[..., 0] * 19595 + w[..., 1] * 38470 + w[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)[..., None]
    if sel.shape[1:3] == (size, size):
        return np.ascontiguousarray(sel)
    out = np.empty((len(sel), size, size, channels), np.uint8)
    for i, img in enumerate(sel):
        out[i] = fit_image(img, size, fit)
    return out


# ---- on-disk store ---------------------------------------------------------------------------------------------


class _Store:
    """Views of one pixel recipe: ``{name}.u8`` rows + ``{name}.json`` metadata, published atomically."""

    def __init__(self, path: Path, size: int, channels: int):
        self.path, self.row_shape = path, (size, size, channels)
        self.row_bytes = size * size * channels

    def _meta(self, name: str) -> dict | None:
        try:
            return json.loads((self.path / f"{name}.json").read_text())
        except (OSError, ValueError):
            return None

    def open(self, name: str) -> tuple[np.ndarray, dict[int, str]] | None:
        """A complete view as a copy-on-write memmap (writable for torch, never writes back), or None."""
        meta = self._meta(name)
        data = self.path / f"{name}.u8"
        try:
            n = len(meta["keys"])
            if data.stat().st_size != n * self.row_bytes:
                return None
            images = np.memmap(data, np.uint8, mode="c", shape=(n, *self.row_shape))
        except (OSError, ValueError, TypeError, KeyError):
            return None
        return images, {int(r): reason for r, reason in meta["bad"].items()}

    def index(self) -> dict[str, tuple[str, int, str]]:
        """content key → (view, row, bad reason or "") over every complete view."""
        index: dict[str, tuple[str, int, str]] = {}
        for meta_path in sorted(self.path.glob("*.json")):
            meta = self._meta(meta_path.stem) or {"keys": []}
            index.update((k, (meta_path.stem, r, meta["bad"].get(str(r), ""))) for r, k in enumerate(meta["keys"]))
        return index

    def create(self, n: int) -> tuple[np.memmap, Path]:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".{os.getpid()}-{os.urandom(6).hex()}.u8.tmp"
        try:
            with open(tmp, "wb") as f:
                f.truncate(n * self.row_bytes)
                # blocks reserved now: on a full disk a sparse file fails later, as SIGBUS on a memmap page write
                reserve(f.fileno(), n * self.row_bytes)
            return np.memmap(tmp, np.uint8, mode="r+", shape=(n, *self.row_shape)), tmp
        except BaseException as e:
            tmp.unlink(missing_ok=True)  # a partial file would keep the disk full
            if isinstance(e, OSError) and e.errno in DISK_FULL:
                raise disk_full(self.path / f"{n} cached images", n * self.row_bytes) from None
            raise

    def copy_rows(self, rows: np.memmap, cached: dict[int, tuple[str, int, str]]) -> set[int]:
        """Copy cached rows view by view; returns the rows whose source view could not be read."""
        by_view: dict[str, list[tuple[int, int]]] = {}
        for dst, (view, src, _) in cached.items():
            by_view.setdefault(view, []).append((dst, src))
        lost: set[int] = set()
        for view, pairs in by_view.items():
            dst, src = np.array(sorted(pairs, key=lambda p: p[1])).T  # read each source sequentially
            opened = self.open(view)
            if opened is None:
                lost.update(dst.tolist())
                continue
            for i in range(0, len(dst), 256):  # chunks: never a second copy of the whole set in memory
                rows[dst[i:i + 256]] = opened[0][src[i:i + 256]]
        return lost

    def publish(self, rows: np.memmap, tmp: Path, name: str, keys: list[str], paths: list[str],
                bad: dict[int, str]) -> None:
        rows.flush()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.path / f"{name}.u8")
        meta = {"decoder": DECODER_VERSION, "shape": list(self.row_shape), "keys": keys, "paths": paths,
                "bad": {str(r): reason for r, reason in sorted(bad.items())}}
        try:
            atomic_write(self.path / f"{name}.json", json.dumps(meta).encode(), user_error=False)
        except OSError as e:  # rows without metadata are invisible: drop them rather than fill the disk
            (self.path / f"{name}.u8").unlink(missing_ok=True)
            if e.errno in DISK_FULL:
                raise disk_full(self.path / f"{name}.json") from None
            raise

    def collect(self, keep: str) -> None:
        """Remove views the new one supersedes: each row's content is in it, its path was edited, or it is gone."""
        new = self._meta(keep)
        if new is None:
            return
        keys, paths = set(new["keys"]), set(new["paths"])
        for meta_path in self.path.glob("*.json"):
            meta = self._meta(meta_path.stem)
            if meta_path.stem == keep or meta is None:
                continue
            if all(k in keys or p in paths or not os.path.exists(p) for k, p in zip(meta["keys"], meta["paths"])):
                meta_path.unlink(missing_ok=True)  # metadata first: a view without it is invisible
                (self.path / f"{meta_path.stem}.u8").unlink(missing_ok=True)
        for tmp in self.path.glob(".*.tmp"):  # left by killed runs; a day is far longer than any fill
            with suppress(OSError):
                if time.time() - tmp.stat().st_mtime > 86400:
                    tmp.unlink()


class _Fingerprints:
    """(path, size, mtime, ctime, inode) → content key, so unchanged files are not re-read on every run.

    A cache, not a record: any SQLite failure (read-only disk, lock timeout) just means re-hashing.
    """

    def __init__(self, path: Path):
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=60)
        con.execute("CREATE TABLE IF NOT EXISTS fp (path TEXT PRIMARY KEY, stat TEXT NOT NULL, key TEXT NOT NULL)")
        return con

    def lookup(self, paths: list[str], stats: list) -> list[str | None]:
        found: dict[str, tuple[str, str]] = {}
        unique = sorted(set(paths))
        try:
            with closing(self._connect()) as con:
                for i in range(0, len(unique), 500):
                    chunk = unique[i:i + 500]
                    sql = f"SELECT path, stat, key FROM fp WHERE path IN ({','.join('?' * len(chunk))})"
                    found.update((p, (st, k)) for p, st, k in con.execute(sql, chunk))
        except (sqlite3.Error, OSError):
            return [None] * len(paths)
        return [found[p][1] if s is not None and p in found and found[p][0] == _stat_text(s) else None
                for p, s in zip(paths, stats)]

    def update(self, paths: list[str], stats: list, keys: list[str | None]) -> None:
        rows = [(p, _stat_text(s), k) for p, s, k in zip(paths, stats, keys)
                if s is not None and k and not k.startswith("unreadable:")]
        with suppress(sqlite3.Error, OSError), closing(self._connect()) as con, con:
            con.executemany("INSERT OR REPLACE INTO fp VALUES (?, ?, ?)", rows)


def _stat_text(st: tuple[int, int, int, int]) -> str:
    return ":".join(map(str, st))
