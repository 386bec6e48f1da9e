"""Head / backbone split for fine-tuning, backbone freezing, and FLOP counting."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import ConfigError

_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def get_submodule(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError as e:
        raise ConfigError(f"model has no layer '{path}' (picstory_cfg['head'] is wrong)") from e


def head_name(model: nn.Module) -> str:
    cfg = getattr(model, "picstory_cfg", None)
    if cfg and cfg.get("head"):
        return cfg["head"]
    pcfg = getattr(model, "pretrained_cfg", None) or {}
    if pcfg.get("classifier"):
        return pcfg["classifier"]
    last = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ConfigError("cannot find the classifier of this model (no Linear layer and no picstory_cfg)")
    return last[-1]


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the classifier layer named by ``model.picstory_cfg['head']``."""
    return list(get_submodule(model, head_name(model)).parameters())


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter that is not in the classifier head."""
    head_ids = {id(p) for p in head_parameters(model)}
    return [p for p in model.parameters() if id(p) not in head_ids]


def _backbone_norms(model: nn.Module) -> list[nn.Module]:
    head = head_name(model)
    return [m for n, m in model.named_modules()
            if isinstance(m, _NORM_TYPES) and not (n == head or n.startswith(head + "."))]


def _frozen_norms_hook(model: nn.Module, args) -> None:
    # reads the flag and finds the layers through ``model`` (not a closure) so that deep copies (EMA) behave alike
    if getattr(model, "picstory_backbone_frozen", False) and model.training:
        for m in _backbone_norms(model):
            m.training = False


def set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    """Switch the backbone's ``requires_grad`` off (``frozen``) or on; the head always trains.

    While frozen, the backbone's BatchNorm layers stay in eval mode, even after ``model.train()``: their running
    statistics are part of the pretrained features. In train mode they would normalise with the statistics of each
    small batch of new data and drift their running averages, so the frozen features the head learns on would
    shift under it (and differ between training and evaluation). A forward pre-hook re-applies eval mode because
    training loops call ``model.train()`` every epoch.
    """
    for p in backbone_parameters(model):
        p.requires_grad_(not frozen)
    model.picstory_backbone_frozen = frozen
    if frozen and not getattr(model, "_picstory_norm_hook", False):
        model.register_forward_pre_hook(_frozen_norms_hook)
        model._picstory_norm_hook = True
    for m in _backbone_norms(model):
        m.train(model.training and not frozen)


def is_backbone_frozen(model: nn.Module) -> bool:
    return bool(getattr(model, "picstory_backbone_frozen", False))


def count_flops(model: nn.Module, input_shape: tuple) -> int:
    """Forward FLOPs (2 × multiply-accumulates of convs and matmuls) for one image of ``input_shape`` (C, H, W)."""
    shape = tuple(input_shape)
    if len(shape) == 4:
        shape = shape[1:]
    param = next(model.parameters(), None)
    x = torch.zeros((1, *shape), dtype=param.dtype if param is not None else torch.float32,
                    device=param.device if param is not None else "cpu")
    was_training = model.training
    model.eval()  # batch 1 must not update BN statistics nor hit BN's batch-size check
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
