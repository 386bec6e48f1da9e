"""Many runs → one table and overlaid curves: grid sweeps, the learning-rate finder, run listings.

Imports are lazy so that `picstory runs` (a table) does not pay for importing torch.
"""

from __future__ import annotations

import importlib

_HOME = {"sweep": "sweep", "lr_find": "lr_find", "suggest_lr": "lr_find", "format_runs": "table"}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_HOME)
