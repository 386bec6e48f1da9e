"""The report's figures: training curves, confusion matrix, mistakes gallery, LR finder.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas — no pyplot, so no global figure
state and no GUI backend — and returned as PNG bytes for the report to write and embed.
"""

from __future__ import annotations

import base64
import io
import math
import re

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize, PowerNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter
from PIL import Image

TRAIN, VAL, BEST, SIZE = "#1f77b4", "#d62728", "#2ca02c", "#7f7f7f"
DATA_URI = re.compile(r"^data:image/(png|jpeg|gif|webp);base64,([A-Za-z0-9+/=\s]+)$")


def new_figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    # no Software metadata: keeps matplotlib's URL out of the files
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None}, bbox_inches="tight", pad_inches=0.15)
    return buf.getvalue()


def label(text: object, limit: int = 18) -> str:
    """A class name fit for a tick label: shortened, and ``$`` escaped so matplotlib does not read it as math."""
    s = str(text)
    s = s if len(s) <= limit else s[: limit - 1] + "…"
    return s.replace("$", r"\$")


def placeholder_figure(message: str) -> Figure:
    fig = new_figure(6, 1.2)
    fig.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, color=SIZE)
    return fig


def _series(metrics: list[dict], key: str) -> np.ndarray:
    return np.array([math.nan if r.get(key) is None else float(r[key]) for r in metrics], dtype=float)


def curves_figure(metrics: list[dict], best_epoch: int | None = None) -> Figure:
    """Loss, accuracy and learning rate per epoch; the best epoch and image-size changes marked on each panel."""
    epochs = _series(metrics, "epoch")
    fig = new_figure(13, 3.8)
    axes = fig.subplots(1, 3)
    style = {"marker": "o", "markersize": 3} if len(epochs) <= 40 else {}
    panels = (("Loss", ("train_loss", "val_loss")), ("Accuracy", ("train_acc", "val_acc")),
              ("Learning rate", ("lr",)))
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            colour = TRAIN if key.startswith("train") or key == "lr" else VAL
            name = {"lr": "learning rate"}.get(key, key.split("_")[0].replace("val", "validation"))
            ax.plot(epochs, _series(metrics, key), color=colour, label=name, **style)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].yaxis.set_major_formatter(PercentFormatter(1.0))
    lrs = _series(metrics, "lr")
    finite = lrs[np.isfinite(lrs) & (lrs > 0)]
    if finite.size and finite.max() / finite.min() > 20:
        axes[2].set_yscale("log")
    _mark_best(axes, metrics, epochs, best_epoch)
    _mark_sizes(axes, metrics, epochs)
    axes[0].legend(loc="upper right", fontsize=8)
    axes[1].legend(loc="lower right", fontsize=8)
    return fig


def _mark_best(axes, metrics: list[dict], epochs: np.ndarray, best_epoch: int | None) -> None:
    if not best_epoch or best_epoch not in epochs:
        return
    i = int(np.where(epochs == best_epoch)[0][0])
    for ax in axes:
        ax.axvline(best_epoch, color=BEST, linestyle="--", linewidth=1, label=f"best epoch ({best_epoch})")
    for ax, key in ((axes[0], "val_loss"), (axes[1], "val_acc")):
        y = metrics[i].get(key)
        if y is not None and math.isfinite(y):
            ax.plot([best_epoch], [y], marker="*", markersize=12, color=BEST, linestyle="none")


def _mark_sizes(axes, metrics: list[dict], epochs: np.ndarray) -> None:
    """Progressive resizing: a dotted line and the new size where the image size changes."""
    sizes = _series(metrics, "img_size")
    if not np.isfinite(sizes).any() or len(set(sizes[np.isfinite(sizes)])) < 2:
        return
    starts = [0] + [i for i in range(1, len(sizes)) if sizes[i] != sizes[i - 1] and math.isfinite(sizes[i])]
    ends = starts[1:] + [len(sizes)]
    for n, (a, b) in enumerate(zip(starts, ends)):
        for ax in axes:
            if n % 2:  # alternate shading shows each size's phase without covering the curves
                ax.axvspan(epochs[a] - 0.5, epochs[b - 1] + 0.5, color=SIZE, alpha=0.08, linewidth=0)
    # the sizes go on a top axis, outside the plot, where they cannot collide with curves or legends
    centres = [(epochs[a] + epochs[b - 1]) / 2 for a, b in zip(starts, ends)]
    for ax in axes:
        top = ax.secondary_xaxis("top")
        top.set_xticks(centres, [f"{sizes[a]:.0f} px" for a in starts], fontsize=7, color=SIZE)
        top.tick_params(length=0)


def confusion_figure(confusion: list[list[float]], classes: list[str], numbers_up_to: int = 20) -> Figure:
    """Counts and row-normalised matrices; cell numbers only while they fit (``numbers_up_to`` classes)."""
    cm = np.asarray(confusion, dtype=float)
    k = len(cm)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    # sized so that the figure is about 1100 px wide, the report's column, and the browser shows it unscaled;
    # above 12 classes the panels are stacked so that each keeps room for its labels
    stacked = k > 12
    cell = max(0.18, min(0.4, 8.2 / k)) if stacked else min(0.9, 3.0 / k)
    fig = (new_figure(k * cell + 3.0, 2 * (k * cell + 2.2)) if stacked
           else new_figure(2 * (k * cell + 2.8), k * cell + 2.2))
    axes = fig.subplots(2, 1) if stacked else fig.subplots(1, 2)
    font = 9 if k <= 6 else 8 if k <= 25 else 7
    num_font = max(5.0, min(9.0, 24 * cell))
    names = [label(c) for c in classes]
    for ax, mat, title, cnorm, fmt in (
            (axes[0], cm, "Counts", PowerNorm(0.5, vmin=0, vmax=max(cm.max(), 1)), "{:.0f}"),
            (axes[1], norm, "Row-normalised (diagonal = recall)", Normalize(0, 1), "{:.2f}")):
        im = ax.imshow(mat, cmap="Blues", norm=cnorm, interpolation="nearest")
        ax.set_title(title, fontsize=font + 2)
        ax.set_xticks(range(k), names, fontsize=font, rotation=0 if k <= 4 else 45 if k <= 12 else 90,
                      ha="center" if k <= 4 or k > 12 else "right", rotation_mode="anchor" if 4 < k <= 12 else None)
        ax.set_yticks(range(k), names, fontsize=font)
        ax.set_xlabel("predicted", fontsize=font + 1)
        ax.set_ylabel("true", fontsize=font + 1)
        fig.colorbar(im, ax=ax, shrink=0.8)
        if k <= numbers_up_to:
            cut = cnorm(mat.max()) * 0.6 if mat.max() > 0 else 1
            for (i, j), v in np.ndenumerate(mat):
                if cm[i, j]:  # empty cells stay blank: the eye finds the errors faster
                    ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=num_font,
                            color="white" if cnorm(v) > cut else "black")
    return fig


def decode_thumb(uri: str) -> np.ndarray | None:
    m = DATA_URI.match(uri or "")
    if not m:
        return None
    try:
        with Image.open(io.BytesIO(base64.b64decode(m.group(2)))) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError):
        return None


def errors_figure(mistakes: list[dict], cols: int = 6) -> Figure:
    """A grid of the most confident mistakes: thumbnail, true class, predicted class and confidence."""
    if not mistakes:
        return placeholder_figure("No mistakes on the evaluated split.")
    n = len(mistakes)
    cols = min(cols, n)
    nrows = math.ceil(n / cols)
    fig = new_figure(2.0 * cols, 2.35 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, cols)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, m in zip(axes, mistakes):
        img = decode_thumb(str(m.get("thumb", "")))
        if img is not None:
            ax.imshow(img, interpolation="nearest")
        else:
            ax.text(0.5, 0.5, "no thumbnail", ha="center", va="center", fontsize=8, color=SIZE)
        ax.set_title(f"true: {label(m.get('true'), 16)}\npred: {label(m.get('pred'), 16)} "
                     f"({float(m.get('confidence') or 0):.0%})", fontsize=8, color="#8b0000")
    return fig


def lr_find_figure(lr_find: dict) -> Figure:
    """Loss against LR on a log axis with the suggestion marked on the curve."""
    fig = new_figure(6, 3.2)
    ax = fig.subplots()
    lrs, losses, lr = lr_find.get("lrs") or [], lr_find.get("losses") or [], lr_find.get("suggested_lr")
    ax.plot(lrs, losses, color=TRAIN)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.set_title("Learning-rate finder")
    ax.grid(alpha=0.3)
    if lr:
        ax.axvline(lr, color=BEST, linestyle="--", label=f"suggested {lr:.2g}")
        ax.legend(fontsize=8)
    if lrs and losses and lr:
        i = min(range(len(lrs)), key=lambda k: abs(math.log(lrs[k]) - math.log(lr)))
        ax.plot([lrs[i]], [losses[i]], "o", color=BEST, markersize=8, zorder=5)
        # the last few points are the explosion, which would squash the useful part of the curve (fastai skips 5)
        top, low = max(losses[: max(1, len(losses) - 5)]), min(losses)
        if top > low:
            ax.set_ylim(low - 0.05 * (top - low), top + 0.05 * (top - low))
    return fig


def reliability_figure(before: list[dict], after: list[dict]) -> Figure:
    """Reliability diagram: accuracy per equal-width confidence bin before and after calibration, the diagonal
    being perfect calibration; bar width = the bin, so empty bins show as gaps."""
    fig = new_figure(6.4, 3.0)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, rows, title, colour in ((axes[0], before, "uncalibrated", VAL), (axes[1], after, "calibrated", BEST)):
        lo = np.array([r["lo"] for r in rows])
        width = np.array([r["hi"] - r["lo"] for r in rows])
        acc = np.array([r["accuracy"] if r["count"] else 0.0 for r in rows])
        conf = np.array([r["confidence"] for r in rows])
        ax.bar(lo, acc, width=width, align="edge", color=colour, alpha=0.75, edgecolor="white", label="accuracy")
        shown = np.array([r["count"] > 0 for r in rows])
        ax.plot(conf[shown], acc[shown], ".", color="black", markersize=4)
        ax.plot([0, 1], [0, 1], "--", color=SIZE, linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("confidence (top-1 probability)")
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes[0].set_ylabel("accuracy in the bin")
    return fig


def risk_coverage_figure(coverage: list[float], accuracy: list[float],
                         rule: tuple[float, float, str] | None = None) -> Figure:
    """Accuracy of the accepted images against the share accepted, most confident first; ``rule`` marks
    (coverage, accuracy, name) of the bundle's unknown rule, which ranks by its own score."""
    fig = new_figure(5.2, 3.0)
    ax = fig.subplots()
    ax.plot(coverage, accuracy, color=TRAIN, label="by calibrated confidence")
    if rule is not None and rule[1] is not None:
        ax.plot([rule[0]], [rule[1]], "o", color=BEST, markersize=7, label=f"unknown rule ({rule[2]})")
    ax.legend(fontsize=8, loc="lower left")
    ax.set_xlabel("coverage (share of test images answered)")
    ax.set_ylabel("accuracy of the answered")
    ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
    ax.set_xlim(0, 1.01)
    ax.grid(alpha=0.3)
    return fig
