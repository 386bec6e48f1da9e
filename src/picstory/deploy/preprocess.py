"""One image, whatever form it comes in, → the uint8 pixels the model saw in training."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.cache import prepare_image
from ..data.decode import DecodeError


def preprocess(src: Any, meta: dict) -> torch.Tensor:
    """One image (path, bytes, PIL image or H×W[×C] uint8 array) → uint8 C×H×W tensor as the model sees it."""
    size = int(meta["img_size"])
    crop_pct = float(meta.get("crop_pct", 1.0))
    frame = round(size / crop_pct) if crop_pct < 1.0 else size
    # the cache's own decode → draft → fit step, so predict sees exactly the pixels training stored
    img = prepare_image(_as_source(src), frame, int(meta["in_chans"]), meta.get("fit", "crop"))
    if frame != size:
        top = (frame - size) // 2
        img = img[top:top + size, top:top + size]
    return torch.from_numpy(np.require(img, np.uint8, ["C", "W"])).permute(2, 0, 1)


def _as_source(src: Any) -> str | Path | bytes:
    """Paths and encoded bytes go to the decoder as they are; in-memory images are re-encoded losslessly (PNG) so
    they too pass through the one decoder (mode conversion, 16-bit scaling, pixel limits)."""
    if isinstance(src, (str, Path, bytes)):
        return src
    if isinstance(src, (bytearray, memoryview)):
        return bytes(src)
    if isinstance(src, np.ndarray):
        if src.dtype != np.uint8 or src.ndim not in (2, 3) or (src.ndim == 3 and src.shape[2] not in (1, 3, 4)):
            raise DecodeError(f"array must be uint8 H×W or H×W×(1|3|4), got {src.dtype} {src.shape}")
        src = Image.fromarray(src[..., 0] if src.ndim == 3 and src.shape[2] == 1 else src)
    if isinstance(src, Image.Image):
        if src.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
            src = src.convert("RGB")  # e.g. CMYK, YCbCr: PNG cannot hold them
        buf = io.BytesIO()
        src.save(buf, format="PNG", compress_level=0)
        return buf.getvalue()
    raise DecodeError(f"unsupported input type {type(src).__name__}")
