"""Atomic writes and resume state.

A checkpoint is a plain dict of tensors, numbers and strings, so ``torch.load(weights_only=True)`` reads it: no
pickled classes, nothing a crafted file could execute.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": repr(random.getstate()),
             "numpy": repr(_np_state())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _np_state():
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return (kind, keys.tolist(), pos, has_gauss, cached)


def set_rng_state(state: dict) -> None:
    import ast

    torch.set_rng_state(state["torch"])
    py = ast.literal_eval(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = ast.literal_eval(state["numpy"])
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}; was this run started with picstory train?")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which, never unpickle it
        raise UserError(f"{path}: not a readable picstory checkpoint ({type(e).__name__}: {e})") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
