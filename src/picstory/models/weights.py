"""Loading weights safely: safetensors or weights-only torch state dicts, never pickled objects.

Mismatches are user errors that list what does not fit (first few keys and counts), because "Error(s) in loading
state_dict" with 300 keys is not something a user can act on.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from .parts import head_name
from .wrappers import strip_prefixes

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema")
SHOW = 5


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a weights-only torch file, unwrapped and with wrapper prefixes removed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refusals, truncated files, foreign formats
        raise ConfigError(f"{path}: cannot read weights ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                          "give a .safetensors file or a weights-only torch state dict") from e
    for key in WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"{path}: not a state dict of tensors (expected name → tensor, optionally under "
                          f"'state_dict' or 'model')")
    return {strip_prefixes(k): v for k, v in obj.items()}


def first_conv_name(model: nn.Module) -> str | None:
    """Name of the input convolution: the first Conv2d in module order (timm's ``first_conv`` when present)."""
    pcfg = getattr(model, "pretrained_cfg", None) or {}
    named = dict(model.named_modules())
    if isinstance(pcfg.get("first_conv"), str) and isinstance(named.get(pcfg["first_conv"]), nn.Conv2d):
        return pcfg["first_conv"]
    return next((n for n, m in named.items() if isinstance(m, nn.Conv2d)), None)


def adapt_first_conv(state_dict: dict[str, torch.Tensor], model: nn.Module) -> tuple[dict[str, torch.Tensor], bool]:
    """Make a pretrained first conv fit the model's input channels; 3 → 1 sums the RGB filters, so a grey image
    (R = G = B) gives the same response as before. Returns (state dict, whether it was adapted)."""
    from timm.models._manipulate import adapt_input_conv

    name = first_conv_name(model)
    key = f"{name}.weight"
    if name is None or key not in state_dict:
        return state_dict, False
    conv = model.get_submodule(name)
    weight = state_dict[key]
    if weight.ndim != 4 or weight.shape[1] == conv.in_channels:
        return state_dict, False
    if weight.shape[0] != conv.out_channels or weight.shape[2:] != conv.weight.shape[2:]:
        return state_dict, False  # a different layer entirely; the shape check reports it
    adapted = adapt_input_conv(conv.in_channels, weight.float()).to(weight.dtype)
    return {**state_dict, key: adapted}, True


def _listing(title: str, keys: list[str]) -> str:
    more = f" … (+{len(keys) - SHOW} more)" if len(keys) > SHOW else ""
    return f"{len(keys)} {title}: {', '.join(keys[:SHOW])}{more}"


def apply_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], strict_head: bool = False,
                     source: str = "weights") -> dict:
    """Load ``state_dict`` into ``model``; see :func:`load_weights` for the rules and the report."""
    state_dict, adapted = adapt_first_conv(state_dict, model)
    own = model.state_dict()
    head = head_name(model)
    is_head = lambda k: k.startswith(head + ".")  # noqa: E731
    mis_shaped = [k for k in state_dict if k in own and state_dict[k].shape != own[k].shape]
    head_mismatch = [k for k in mis_shaped if is_head(k)]
    skip_head = bool(head_mismatch) and not strict_head
    if skip_head:  # new classes: the head keeps its fresh initialisation
        state_dict = {k: v for k, v in state_dict.items() if not is_head(k)}
        mis_shaped = [k for k in mis_shaped if not is_head(k)]
    unexpected = [k for k in state_dict if k not in own]
    # BN step counters are bookkeeping; files from other tools often omit them
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")
               and not (skip_head and is_head(k))]
    if missing or unexpected or mis_shaped:
        parts = [_listing("missing", missing)] if missing else []
        parts += [_listing("unexpected", unexpected)] if unexpected else []
        parts += [_listing("mis-shaped", [f"{k} {tuple(state_dict[k].shape)}≠{tuple(own[k].shape)}"
                                          for k in mis_shaped])] if mis_shaped else []
        raise ConfigError(f"{source} do not fit model '{getattr(model, 'picstory_cfg', {}).get('arch', '?')}': "
                          + "; ".join(parts))
    merged = {**own, **{k: v.to(own[k].dtype) for k, v in state_dict.items()}}
    model.load_state_dict(merged, strict=True)
    return {"loaded": len(state_dict), "skipped_head": skip_head, "adapted_first_conv": adapted}


def load_weights(model: nn.Module, path: str | Path, strict_head: bool = False) -> dict:
    """Load a .safetensors or weights-only torch state dict into ``model``.

    ``{"state_dict": …}`` / ``{"model": …}`` wrappers and ``module.`` prefixes are accepted. A 3-channel first conv
    adapts to a 1-channel model. When only the classifier's shapes differ (other classes) it is skipped unless
    ``strict_head``. Anything else that does not fit raises ConfigError listing the keys.
    Returns ``{"loaded": n_tensors, "skipped_head": bool, "adapted_first_conv": bool}``.
    """
    return apply_state_dict(model, read_state_dict(path), strict_head=strict_head, source=str(path))
