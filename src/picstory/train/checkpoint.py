"""Atomic writes and resume state.

A checkpoint is a plain dict of tensors, numbers and strings, so ``torch.load(weights_only=True)`` reads it: no
pickled classes, nothing a crafted file could execute.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write to a temp file in the same directory, fsync, then os.replace: readers never see half a file."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide reports and bundles from other users
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            _unlink(tmp)
            raise
    except OSError as e:
        raise UserError(f"could not write {path}: {e.strerror or e}; the previous file is intact") from None


def atomic_torch_save(path: str | Path, obj: dict) -> None:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


def _unlink(p: str) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


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
