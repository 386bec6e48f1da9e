"""Model names → modules: picstory's own models by registry name (timm-style ``@register_model``), else timm.

Every model leaves :func:`create_model` with ``model.picstory_cfg`` — the timm ``pretrained_cfg`` idea: the
normalisation, input size and classifier attribute travel with the model, so training, export and serving never
guess them.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import re
from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..errors import ConfigError
from .pretrained import load_pretrained, require_pretrained

# Scratch models see data scaled to [-1, 1]; pretrained ones get their own statistics from the weights' config.
SCRATCH_MEAN, SCRATCH_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
SMALL_IMAGE_PX = 64


@dataclass(frozen=True)
class ModelEntry:
    name: str
    fn: Callable[..., nn.Module]
    head: str  # attribute path of the classifier layer
    mean: tuple[float, ...] = SCRATCH_MEAN
    std: tuple[float, ...] = SCRATCH_STD


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, head: str, mean: tuple = SCRATCH_MEAN, std: tuple = SCRATCH_STD):
    """Decorator: ``fn(num_classes, in_chans, img_size, drop_rate, **kwargs) -> nn.Module`` under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = ModelEntry(name, fn, head, tuple(mean), tuple(std))
        return fn

    return deco


def picstory_names() -> list[str]:
    return sorted(_REGISTRY)


def _timm_names() -> list[str]:
    import timm

    return timm.list_models()


def _is_timm(name: str) -> bool:
    import timm

    # "resnet18.a1_in1k" names a weight tag; the architecture is what counts offline
    return timm.is_model(name.split(".", 1)[0])


def list_models(pattern: str = "") -> list[str]:
    """picstory models, then timm architectures; ``pattern`` is a glob (``*net*``) or a plain substring."""
    names = picstory_names() + _timm_names()
    if not pattern:
        return names
    if any(ch in pattern for ch in "*?["):
        return [n for n in names if fnmatch.fnmatch(n, pattern)]
    return [n for n in names if pattern.lower() in n.lower()]


def unknown_model_error(name: str) -> ConfigError:
    close = difflib.get_close_matches(name, picstory_names() + _timm_names(), n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "see `picstory models` for the list"
    return ConfigError(f"unknown model '{name}': {hint}")


def _channel_stats(values: tuple[float, ...], in_chans: int) -> tuple[float, ...]:
    if len(values) == in_chans:
        return tuple(values)
    if in_chans == 1:  # grey input to an RGB recipe: the average statistic, as timm's data config does
        return (round(sum(values) / len(values), 4),)
    return tuple(values[:1]) * in_chans


def _create_timm(name: str, num_classes: int, in_chans: int, img_size: int, drop_rate: float,
                 kwargs: dict) -> tuple[nn.Module, dict]:
    import timm

    arch = name.split(".", 1)[0]
    base_cfg = timm.models.get_pretrained_cfg(arch)
    if base_cfg is not None and base_cfg.fixed_input_size and "img_size" not in kwargs:
        kwargs = {**kwargs, "img_size": img_size}  # ViT-style models bake the size into position embeddings
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                                  drop_rate=drop_rate, **kwargs)
    except TypeError as e:
        raise ConfigError(f"model '{name}': unsupported option ({e}); remove it or choose another model") from e
    pcfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    info = {"mean": pcfg.get("mean", SCRATCH_MEAN), "std": pcfg.get("std", SCRATCH_STD),
            "head": pcfg.get("classifier") or "classifier"}
    return model, info


# What a bundle's model.json (or any other file) may pass to a model constructor: architecture hyper-parameters of
# plain JSON types. Anything else — timm's checkpoint_path, pretrained_cfg(_overlay), file names — could make the
# constructor load (and unpickle) a file the bundle names, so a bundle stays data, never code.
SAFE_MODEL_KWARGS = {"drop_rate": float, "drop_path_rate": float, "drop_block_rate": float, "attn_drop_rate": float,
                     "proj_drop_rate": float, "img_size": int, "global_pool": str}
_SAFE_WORD = re.compile(r"^[a-z]{0,16}$")


def check_model_kwargs(kwargs: dict, where: str) -> dict:
    """``kwargs`` when every key is a known hyper-parameter with a plain value; ConfigError naming ``where``."""
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{where}: model_kwargs must be a mapping, got {type(kwargs).__name__}")
    for key, value in kwargs.items():
        kind = SAFE_MODEL_KWARGS.get(key)
        if kind is None:
            raise ConfigError(f"{where}: model_kwargs key {key!r} is not allowed (a bundle may set only "
                              f"{', '.join(sorted(SAFE_MODEL_KWARGS))}); the file was not loaded")
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
              if kind in (int, float) else isinstance(value, str) and bool(_SAFE_WORD.match(value)))
        if not ok or (kind is int and not float(value).is_integer()):
            raise ConfigError(f"{where}: model_kwargs {key}={value!r} is not a plain {kind.__name__}")
    return dict(kwargs)


def create_model(name: str, num_classes: int, in_chans: int = 3, pretrained: bool = False, img_size: int = 224,
                 drop_rate: float = 0.0, **kwargs) -> nn.Module:
    """A model by picstory registry name, else any timm architecture; unknown names suggest close matches.

    ``pretrained=True`` loads offline weights (see :func:`has_pretrained`); the classifier is re-initialised
    when ``num_classes`` differs from the weights, and a 1-channel input sums the RGB filters of the first conv.
    """
    kwargs = check_model_kwargs(kwargs, f"model '{name}'")
    if num_classes < 1:
        raise ConfigError(f"model '{name}': num_classes must be ≥ 1, got {num_classes}")
    if in_chans < 1:
        raise ConfigError(f"model '{name}': in_chans must be ≥ 1, got {in_chans}")
    if pretrained:
        require_pretrained(name)
    entry = _REGISTRY.get(name)
    if entry is not None:
        try:
            model = entry.fn(num_classes=num_classes, in_chans=in_chans, img_size=img_size, drop_rate=drop_rate,
                             **kwargs)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model '{name}': {e}") from e
        info = {"mean": entry.mean, "std": entry.std, "head": entry.head}
    elif _is_timm(name):
        model, info = _create_timm(name, num_classes, in_chans, img_size, drop_rate, kwargs)
    else:
        raise unknown_model_error(name)
    model.picstory_cfg = {"arch": name, "mean": _channel_stats(tuple(info["mean"]), in_chans),
                          "std": _channel_stats(tuple(info["std"]), in_chans),
                          "input_size": (in_chans, img_size, img_size), "pretrained": False, "head": info["head"],
                          "num_classes": num_classes}
    if pretrained:
        load_pretrained(model, name)
    return model


def default_model(img_size: int, num_images: int, in_chans: int) -> str:
    """The ``--model auto`` choice: small images train a PicNet from scratch (sized by the amount of data, since
    a larger net only pays off with enough images to fit it); photos fine-tune pretrained EfficientNet-Lite0."""
    if img_size <= SMALL_IMAGE_PX:
        if num_images < 10_000:
            return "picnet-s"
        return "picnet-m" if num_images < 100_000 else "picnet-l"
    return "efficientnet_lite0"
