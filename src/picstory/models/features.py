"""Penultimate features: the input of a model's classifier head, next to its logits, in one forward pass.

Shared by everything that compares images in the model's own space — nearest training images (``similar``, the
report's mistake gallery) and the k-nearest-neighbour out-of-distribution score. The head is found the way
fine-tuning finds it (``parts.head_name``), so seed CNNs, PicNet and timm models all work.
"""

from __future__ import annotations

import torch
from torch import nn

from .parts import get_submodule, head_name
from .wrappers import unwrap


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features, logits)`` for a normalised float batch: features are the head's flattened input, (N, D) fp32."""
    captured: list[torch.Tensor] = []
    head = get_submodule(unwrap(model), head_name(unwrap(model)))
    handle = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return captured[-1].flatten(1).float(), logits.float()


def normalised(features: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length (cosine similarity becomes a dot product)."""
    return torch.nn.functional.normalize(features.float(), dim=1)
