"""The plain model inside torch.compile / DistributedDataParallel wrappers, and state dicts without their prefixes.

The wrappers rename every parameter (``_orig_mod.``, ``module.``), so whatever is saved or evaluated goes through
here: a bundle stores the bare model's names, a checkpoint written through the wrappers still loads into it.
"""

from __future__ import annotations

from torch import nn

STRIP_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside any nesting of torch.compile and DistributedDataParallel."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def without_ddp(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (compiled or not); any other model as it is, compiled included."""
    inner = getattr(model, "_orig_mod", model)  # torch.compile(DDP(model))
    return inner.module if isinstance(inner, nn.parallel.DistributedDataParallel) else model


def strip_prefixes(key: str) -> str:
    """A parameter name without DDP's ``module.`` / torch.compile's ``_orig_mod.`` wrapper prefixes."""
    changed = True
    while changed:
        changed = False
        for p in STRIP_PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def plain_state_dict(state: dict) -> dict:
    """A state dict without the wrapper prefixes, loadable into the bare model."""
    return {strip_prefixes(key): value for key, value in state.items()}
