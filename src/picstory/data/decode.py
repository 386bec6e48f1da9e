"""The one image decoder behind train, eval, predict and serve: the same pixels everywhere.

``decode_image`` turns a file or bytes into an H×W×C uint8 array (C = 1 or 3): EXIF orientation applied, alpha
composited on white, 16-bit and float images scaled by their range (never clipped), animations reduced to their first
frame, and the pixel count checked from the header before any pixel data is decoded. Every failure is a
:class:`DecodeError` whose ``reason`` is short enough for a bad-files table ("truncated JPEG", "too large: W×H").

PIL state: we never set ``ImageFile.LOAD_TRUNCATED_IMAGES`` (PIL's default ``False`` is what makes truncated files
errors here; a host application that turns it on would get PIL's lenient behaviour). The one process-wide change is a
``warnings`` filter that silences ``DecompressionBombWarning`` (ensured before each open): :func:`probe` and
:func:`decode_image` enforce their own ``max_pixels`` from the header and raise ``DecodeError("too large: W×H")``, so
PIL's warning for the same images is noise, and a per-call ``warnings.catch_warnings`` is not thread-safe (the cache
decodes in threads). PIL's own hard limit (2 × ``Image.MAX_IMAGE_PIXELS``) still applies above a larger ``max_pixels``.
"""

from __future__ import annotations

import io
import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS: int = 89_478_485  # PIL's own default limit (a 0.25 GiB RGBA image)
DECODER_VERSION = 1  # bump when decoded pixels change, so caches keyed on it refill
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_ORIENTATION = 0x0112
_ROTATES_AXES = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_IGNORE_BOMB_WARNING = ("ignore", None, Image.DecompressionBombWarning, None, 0)

Source = str | Path | bytes


class DecodeError(ValueError):
    """An image that cannot be used; ``reason`` is a short human reason and ``str(e) == reason``."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageInfo:
    width: int  # as displayed, i.e. after EXIF orientation
    height: int
    mode: str  # PIL mode of the stored pixels (L, RGB, P, I;16, CMYK, …)
    format: str | None
    frames: int
    exif_rotated: bool


def is_gray_mode(mode: str) -> bool:
    """True for PIL modes that hold one intensity channel (with or without alpha)."""
    return mode in GRAY_MODES or mode.startswith("I;16")


def probe(src: Source, max_pixels: int = MAX_PIXELS) -> ImageInfo:
    """Read the header only: size, mode, format, frame count, orientation. Raises DecodeError."""
    with _open(src, max_pixels) as im:
        orientation = _orientation(im, header_only=True)
        w, h = im.size
        if orientation in _ROTATES_AXES:
            w, h = h, w
        try:
            frames = int(getattr(im, "n_frames", 1))
        except Exception:  # counting frames walks the file; a broken later frame still leaves frame 1 usable
            frames = 1
        return ImageInfo(w, h, im.mode, im.format, frames, orientation not in (None, 1))


def decode_image(src: Source, channels: int | None = None, max_pixels: int = MAX_PIXELS,
                 draft: tuple[int, int] | None = None) -> np.ndarray:
    """Decode to H×W×C uint8 with C = ``channels`` (None: 1 for gray modes, else 3). Raises DecodeError.

    ``draft=(w, h)`` lets JPEGs decode at a reduced DCT scale that is still at least w×h (after orientation), which is
    several times faster when a large photo is headed for a small training size.
    """
    arr = np.array(decode_pil(src, channels, max_pixels, draft))  # a writable copy, not a view of PIL's buffer
    return arr[:, :, None] if arr.ndim == 2 else arr


def decode_pil(src: Source, channels: int | None = None, max_pixels: int = MAX_PIXELS,
               draft: tuple[int, int] | None = None) -> Image.Image:
    """:func:`decode_image` as a PIL image in mode L or RGB (for callers that resize next)."""
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, not {channels!r}")
    opened = _open(src, max_pixels)
    with opened as im:
        gray = is_gray_mode(im.mode)
        out_c = channels or (1 if gray else 3)
        if im.format == "PNG" and not _png_crcs_ok(opened.data()):
            raise DecodeError("corrupt PNG (bad CRC)")
        orientation = _orientation(im, header_only=True)
        if draft is not None and im.format == "JPEG":
            dw, dh = draft
            if orientation in _ROTATES_AXES:
                dw, dh = dh, dw
            im.draft("L" if out_c == 1 else "RGB", (max(1, dw), max(1, dh)))
        _load(im)
        _upright(im)
        try:
            return _to_l_or_rgb(im, out_c)
        except (ValueError, OSError) as e:  # modes PIL cannot convert (e.g. LAB to RGB)
            raise DecodeError(f"unsupported image mode {im.mode}: {e}") from None


# ---- opening and error reasons ---------------------------------------------------------------------------------


class _open:
    """Context manager: open ``src`` lazily with PIL, check the header's pixel count, map errors to reasons."""

    def __init__(self, src: Source, max_pixels: int):
        self.src, self.max_pixels, self.fp = src, max_pixels, None

    def __enter__(self) -> Image.Image:
        src = self.src
        if isinstance(src, (bytes, bytearray, memoryview)):
            if len(src) == 0:
                raise DecodeError("empty file")
            self.fp = io.BytesIO(src)
        else:
            try:
                if os.stat(src).st_size == 0:
                    raise DecodeError("empty file")
                self.fp = open(src, "rb")
            except OSError as e:
                raise DecodeError(f"cannot read: {e.strerror or e}") from None
        if _IGNORE_BOMB_WARNING not in warnings.filters:  # re-added: a caller's catch_warnings may have dropped it
            warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        try:
            im = Image.open(self.fp)
            w, h = im.size
            if w * h > self.max_pixels:
                raise DecodeError(_too_large((w, h)))
            return im
        except DecodeError:
            self.fp.close()
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # the warning: when made an error
            self.fp.close()
            raise DecodeError(_too_large(_unchecked_size(src))) from None
        except Exception as e:
            fmt = _sniff(self.data(16))
            reason = _reason(e, fmt)
            if fmt == "PNG" and not _png_crcs_ok(self.data()):  # PIL reports a bad IHDR CRC as "cannot identify"
                reason = "corrupt PNG (bad CRC)"
            self.fp.close()
            raise DecodeError(reason) from None

    def data(self, limit: int = -1) -> bytes:
        """The file's bytes (the first ``limit``), leaving PIL's read position where it was."""
        if isinstance(self.src, (bytes, bytearray, memoryview)):
            return bytes(self.src[:limit] if limit >= 0 else self.src)
        pos = self.fp.tell()
        self.fp.seek(0)
        data = self.fp.read(limit)
        self.fp.seek(pos)
        return data

    def __exit__(self, *exc) -> None:
        # close the file, not the image: a loaded image no longer needs it and may be returned to the caller
        self.fp.close()


def _load(im: Image.Image) -> None:
    try:
        im.load()
    except DecodeError:
        raise
    except Exception as e:
        raise DecodeError(_reason(e, im.format)) from None


def _reason(e: Exception, fmt: str | None) -> str:
    """A short reason from PIL's many exception types and messages."""
    msg = str(e)
    low = msg.lower()
    if isinstance(e, UnidentifiedImageError):
        return f"corrupt {fmt}" if fmt else "not an image"
    if isinstance(e, Image.DecompressionBombError):
        return "too large"
    if "truncated" in low or "premature end" in low or isinstance(e, EOFError):
        return f"truncated {fmt}" if fmt else "truncated image"
    if "checksum" in low or "crc" in low:
        return f"corrupt {fmt or 'PNG'} (bad CRC)"
    if isinstance(e, MemoryError):
        return "too large: out of memory while decoding"
    if isinstance(e, OSError) and e.errno is not None:
        return f"cannot read: {e.strerror or msg}"
    detail = msg.splitlines()[0][:80] if msg else type(e).__name__
    return f"corrupt {fmt}: {detail}" if fmt else f"not a readable image: {detail}"


def _sniff(head: bytes) -> str | None:
    """The format a file claims by its signature, to name it when PIL cannot open it."""
    for fmt, magic in (("PNG", _PNG_SIGNATURE), ("JPEG", b"\xff\xd8\xff"), ("GIF", b"GIF8"), ("WEBP", b"RIFF")):
        if head.startswith(magic):
            return fmt
    return None


def _png_crcs_ok(data: bytes) -> bool:
    """Check the CRC of every critical PNG chunk, as libpng does; PIL does not check IDAT's.

    A truncated last chunk is left to the decoder, which reports truncation.
    """
    pos = 8
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        end = pos + 12 + length
        if end > len(data):
            return True
        ctype = data[pos + 4:pos + 8]
        if ctype[:1].isupper() and zlib.crc32(data[pos + 4:end - 4]) != int.from_bytes(data[end - 4:end], "big"):
            return False
        if ctype == b"IEND":
            return True
        pos = end
    return True


def _too_large(size: tuple[int, int] | None) -> str:
    return f"too large: {size[0]}×{size[1]}" if size else "too large"


def _unchecked_size(src: Source) -> tuple[int, int] | None:
    """The header size of an image PIL refused as a decompression bomb (PIL raises before exposing it).

    Goes through PIL's own plugin registry, reading only the header, so the reason can name W×H.
    """
    try:
        fp = io.BytesIO(src) if isinstance(src, (bytes, bytearray, memoryview)) else open(src, "rb")
    except OSError:
        return None
    with fp:
        Image.init()
        prefix = fp.read(16)
        for fmt in Image.ID:
            factory, accept = Image.OPEN[fmt]
            ok = accept(prefix) if accept else True
            if not ok or isinstance(ok, str):
                continue
            try:
                fp.seek(0)
                return tuple(factory(fp, "").size)
            except Exception:
                continue
    return None


# ---- orientation and modes -------------------------------------------------------------------------------------


def _orientation(im: Image.Image, header_only: bool) -> int | None:
    """EXIF orientation tag, or None. A malformed EXIF block must not reject an otherwise good image."""
    try:
        if header_only and im.format == "PNG" and "exif" not in im.info:
            return None  # PngImageFile.getexif() would decode the pixels to look for a trailing eXIf chunk
        value = im.getexif().get(_ORIENTATION)
        return int(value) if value is not None else None
    except Exception:
        return None


def _upright(im: Image.Image) -> None:
    """Apply the EXIF orientation in place; a malformed EXIF block must not reject an otherwise good image."""
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except Exception:
        pass


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info


def _to_l_or_rgb(im: Image.Image, out_c: int) -> Image.Image:
    """Any PIL mode → L (out_c 1) or RGB (out_c 3); alpha composited on white, wide modes scaled by range."""
    if im.mode == "F" or im.mode == "I" or im.mode.startswith("I;16"):
        im = Image.fromarray(_wide_to_u8(np.asarray(im)), "L")
    elif _has_alpha(im):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba).convert("RGB")
    want = "L" if out_c == 1 else "RGB"
    return im if im.mode == want else im.convert(want)


def _wide_to_u8(a: np.ndarray) -> np.ndarray:
    """16/32-bit integer or float pixels → uint8 by the value range, rounding (65535 → 255, 32768 → 128).

    Unsigned 16-bit data (also when PIL hands it over as 32-bit I) maps 0..65535 linearly; floats in 0..1 map
    to 0..255; anything else is stretched from its own min..max so that nothing saturates.
    """
    if a.dtype.kind == "f":
        a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo >= 0.0 and hi <= 1.0:
            return np.round(a * 255.0).astype(np.uint8)
        if lo >= 0.0 and hi <= 255.0:
            return np.round(a).astype(np.uint8)
        return _stretch(a, lo, hi)
    a = a.astype(np.int64)
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    if lo >= 0 and hi <= 65535:
        return ((a * 255 + 32767) // 65535).astype(np.uint8)
    return _stretch(a.astype(np.float64), lo, hi)


def _stretch(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)
