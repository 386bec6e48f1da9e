"""Test-time augmentation: average the softmax (multi-label: the sigmoids) over a few deterministic views."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import TTA_MODES


def views(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """Deterministic views of a normalised N×C×H×W batch."""
    if mode not in TTA_MODES:
        raise ValueError(f"unknown TTA mode {mode!r}; choose from {', '.join(TTA_MODES)}")
    out = [x]
    if mode in ("flip", "flip+crops"):
        out.append(torch.flip(x, dims=[3]))
    if mode == "flip+crops":
        # four corner crops of 7/8 of the side, scaled back: small shifts the model saw as translate augmentation
        h, w = x.shape[-2:]
        ch, cw = max(1, round(h * 7 / 8)), max(1, round(w * 7 / 8))
        for top, left in ((0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw)):
            crop = x[..., top:top + ch, left:left + cw]
            out.append(F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False))
    return out


@torch.inference_mode()
def predict_proba(model: torch.nn.Module, x: torch.Tensor, tta: str = "none", multilabel: bool = False,
                  temperature: float = 1.0) -> torch.Tensor:
    """Softmax probabilities (N, K) of logits / ``temperature`` (the bundle's calibration), averaged over the TTA
    views, in fp32: each view is calibrated before the average, as the exported graph does. ``multilabel``: each
    label's sigmoid (not temperature-scaled)."""
    probs = None
    vs = views(x, tta)
    for v in vs:
        logits = model(v.contiguous(memory_format=torch.channels_last)).float()
        p = torch.sigmoid(logits) if multilabel else torch.softmax(logits / temperature, dim=1)
        probs = p if probs is None else probs + p
    return probs / len(vs)
