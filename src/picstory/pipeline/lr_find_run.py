"""``picstory lr-find``: the learning-rate range test on DATA, written as lr_find.json and lr_find.png."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..files import atomic_write
from ..pages.figures import figure_png, lr_find_figure
from ..runs import slug
from ..training.lr_find import suggest_lr
from .training_run import prepare


def lr_find(data: str, out: str | Path | None = None, progress: bool = False, **overrides) -> dict:
    """``picstory lr-find``: the range test on DATA with the train options given; writes lr_find.json and
    lr_find.png to ``out`` (default ``lr-find/NAME``) and returns the result with their paths."""
    name = overrides.pop("name", "") or ""
    cfg, td, device, autocast = prepare(data, progress=progress, **overrides)
    found = suggest_lr(cfg, td, device, autocast)
    folder = Path(out) if out else Path("lr-find") / (name or f"{slug(cfg.model.model)}-{slug(data)}")
    folder.mkdir(parents=True, exist_ok=True)
    record = {**found, "data": data, "model": cfg.model.model, "img_size": cfg.data.img_size}
    atomic_write(folder / "lr_find.json", json.dumps(record, indent=1))
    atomic_write(folder / "lr_find.png", figure_png(lr_find_figure(found)))
    print(f"lr-find: {found['steps']} steps, {found['stopped']}; suggested {found['suggested_lr']:.2e} "
          f"(steepest {_g(found['steep_lr'])}, minimum {_g(found['min_loss_lr'])})", file=sys.stderr)
    return {**record, "plot": str(folder / "lr_find.png"), "json": str(folder / "lr_find.json"), "dir": str(folder)}


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:.2e}"


__all__ = ["lr_find"]
