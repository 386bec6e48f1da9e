"""Sweep figures: validation curves of every cell overlaid, and a heatmap of a two-axis grid.

Built on the report's Agg figures (no pyplot state) and returned as :class:`matplotlib.figure.Figure`.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib import colormaps
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from .figures import BEST, label, new_figure, placeholder_figure

DASHES = ["-", "--", ":", "-."]


def _styles(series: list[dict]) -> dict[str, tuple]:
    """group → (colour, line style). A two-axis grid reads best with a colour per value of the first axis and a
    dash per value of the second (adam = blue, lr 1e-3 = dashed); otherwise one colour per group."""
    groups = list(dict.fromkeys(s["group"] for s in series))
    keys = list(series[0].get("labels", {}))
    if len(keys) == 2:
        firsts = list(dict.fromkeys(s["labels"][keys[0]] for s in series))
        seconds = list(dict.fromkeys(s["labels"][keys[1]] for s in series))
        if len(seconds) <= len(DASHES) and len(firsts) <= 10:
            cmap = colormaps["tab10"]
            return {s["group"]: (cmap(firsts.index(s["labels"][keys[0]])),
                                 DASHES[seconds.index(s["labels"][keys[1]])]) for s in series}
    cmap = colormaps["tab10" if len(groups) <= 10 else "tab20"]
    return {g: (cmap(i % cmap.N), "-") for i, g in enumerate(groups)}


def curves_figure(series: list[dict], best_group: str | None = None):
    """``series``: ``{"group", "labels": {axis: value}, "metrics": [rows of metrics.csv]}`` per run. The repeats
    of one setting share a style; the best group is drawn thick and starred in the legend."""
    series = [s for s in series if s["metrics"]]
    if not series:
        return placeholder_figure("no finished epochs to plot yet")
    styles = _styles(series)
    fig = new_figure(12, 4.2 if len(styles) <= 8 else 5.5)
    acc_ax, loss_ax = fig.subplots(1, 2)
    labelled: set = set()
    for s in series:
        epochs = [float(r["epoch"]) for r in s["metrics"]]
        best = s["group"] == best_group
        legend = None
        if s["group"] not in labelled:
            labelled.add(s["group"])
            legend = ("★ " if best else "") + label(s["group"], 48)
        colour, dash = styles[s["group"]]
        style = {"color": colour, "linestyle": dash, "linewidth": 2.8 if best else 1.3, "alpha": 1.0 if best else 0.85,
                 "marker": "o" if len(epochs) <= 30 else None, "markersize": 4 if best else 2.5,
                 "zorder": 3 if best else 2}
        acc_ax.plot(epochs, [_num(r.get("val_acc")) for r in s["metrics"]], label=legend, **style)
        loss_ax.plot(epochs, [_num(r.get("val_loss")) for r in s["metrics"]], **style)
    last = max(float(s["metrics"][-1]["epoch"]) for s in series)
    acc_ax.set_title("validation accuracy")
    loss_ax.set_title("validation loss")
    for ax in (acc_ax, loss_ax):
        ax.set_xlabel("epoch")
        ax.set_xlim(0.5, last + 0.5)  # a 1-epoch sweep would otherwise get fractional epoch ticks
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _clip_loss_axis(loss_ax, series)
    fig.legend(loc="outside right upper", fontsize=8, frameon=False, handlelength=3)
    return fig


def _clip_loss_axis(ax, series: list[dict]) -> None:
    """A diverging cell's loss would flatten every other curve to a line: cap the axis at 3× the best
    first-epoch loss."""
    finite = [_num(r.get("val_loss")) for s in series for r in s["metrics"]]
    finite = [v for v in finite if math.isfinite(v)]
    firsts = [_num(s["metrics"][0].get("val_loss")) for s in series]
    firsts = [v for v in firsts if math.isfinite(v)]
    if finite and firsts and max(finite) > 3 * min(firsts):
        ax.set_ylim(min(finite) * 0.95, 3 * min(firsts))


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def heatmap_figure(row_key: str, row_labels: list[str], col_key: str, col_labels: list[str], values: np.ndarray,
                   best: tuple[int, int] | None, title: str = "best validation accuracy"):
    """``values[i, j]``: the metric of (row i, column j); NaN = failed or not run. The best cell is outlined."""
    fig = new_figure(max(4.0, 1.1 * len(col_labels) + 2.2), max(2.6, 0.55 * len(row_labels) + 1.6))
    ax = fig.subplots()
    shown = np.ma.masked_invalid(values)
    finite = values[np.isfinite(values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax - vmin < 1e-3:  # one finished cell (or all equal): a readable colour bar instead of a 1e-6 offset
        vmin, vmax = vmin - 0.01, vmax + 0.01
    cmap = colormaps["viridis"].with_extremes(bad="#dddddd")  # failed cells in gray
    image = ax.imshow(shown, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            bright = math.isfinite(v) and (v - vmin) > 0.6 * (vmax - vmin)
            ax.text(j, i, f"{v:.4f}" if math.isfinite(v) else "failed", ha="center", va="center", fontsize=9,
                    color="black" if bright or not math.isfinite(v) else "white")
    if best is not None:
        ax.add_patch(Rectangle((best[1] - 0.5, best[0] - 0.5), 1, 1, fill=False, edgecolor=BEST, linewidth=3))
    ax.set_xticks(range(len(col_labels)), [label(c) for c in col_labels])
    ax.set_yticks(range(len(row_labels)), [label(r) for r in row_labels])
    ax.set_xlabel(col_key)
    ax.set_ylabel(row_key)
    ax.set_title(title + (" (best outlined)" if best is not None else ""), fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.85)
    return fig


__all__ = ["curves_figure", "heatmap_figure"]
