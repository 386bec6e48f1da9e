"""Tiny generated images for the decode and cache tests: every one written with PIL (or by hand) into tmp_path."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def save(path: Path, im: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kwargs)
    return path


def noise(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (h, w) if c == 1 else (h, w, c)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def jpeg_bytes(arr: np.ndarray, quality: int = 90, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality, **kwargs)
    return buf.getvalue()


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data))


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR claiming width×height, one tiny IDAT and IEND: nothing near that size exists."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + _chunk(b"IEND", b""))


def flip_png_crc(data: bytes, ctype: bytes = b"IDAT") -> bytes:
    """Corrupt the stored CRC of the first ``ctype`` chunk, leaving its data intact."""
    out = bytearray(data)
    i = out.index(ctype)
    length = int.from_bytes(out[i - 4:i], "big")
    out[i + 4 + length] ^= 0xFF
    return bytes(out)


def half_white(w: int = 40, h: int = 20) -> np.ndarray:
    """Top half white, bottom half black (RGB): orientation tests look at where the white went."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2] = 255
    return a


def with_orientation(arr: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg_bytes(arr, quality=95, exif=exif.tobytes())


def class_folders(root: Path, classes: dict[str, int], size: tuple[int, int] = (48, 40), seed: int = 0) -> Path:
    """root/CLASS/NNN.png with random colour images; returns root."""
    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        for i in range(count):
            arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            save(root / name / f"{i:03d}.png", Image.fromarray(arr))
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes: compare before and after to prove nothing was written."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
