"""tune.html: the trials table, the optimisation history and the parameter importances of a ``picstory tune``."""

from __future__ import annotations

import math

from matplotlib.ticker import MaxNLocator

from .figures import BEST, figure_png, label, new_figure, placeholder_figure
from .html import e, img, page

STATE_COLOURS = {"COMPLETE": "#1f77b4", "PRUNED": "#aaaaaa", "FAIL": "#d62728"}


def history_figure(trials: list[dict]):
    """Validation accuracy per trial (pruned trials at their last reported value, grey) and the best so far."""
    done = [t for t in trials if t.get("value") is not None and math.isfinite(t["value"])]
    if not done:
        return placeholder_figure("no finished trial yet")
    fig = new_figure(8, 3.6)
    ax = fig.subplots()
    for state, colour in STATE_COLOURS.items():
        pts = [(t["number"], t["value"]) for t in done if t["state"] == state]
        if pts:
            ax.scatter(*zip(*pts), color=colour, label=state.lower(), zorder=3, s=28)
    best, xs, ys = -math.inf, [], []
    for t in sorted((t for t in done if t["state"] == "COMPLETE"), key=lambda t: t["number"]):
        best = max(best, t["value"])
        xs.append(t["number"])
        ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color=BEST, linewidth=2, label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy")
    ax.set_title("optimisation history")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def importance_figure(importances: dict[str, float]):
    if not importances:
        return placeholder_figure("parameter importances need at least two finished trials that differ")
    names = list(importances)[::-1]
    fig = new_figure(7, 0.5 + 0.45 * len(names))
    ax = fig.subplots()
    ax.barh([label(n, 24) for n in names], [importances[n] for n in names], color="#1f77b4")
    ax.set_xlabel("importance for validation accuracy (Optuna's default evaluator, shares sum to 1)")
    ax.set_xlim(0, 1)
    ax.grid(axis="x", alpha=0.3)
    return fig


def render_html(name: str, data: str, space: dict[str, str], trials: list[dict], best: dict | None,
                importances: dict[str, float], command: str) -> str:
    """``trials``: ``{"number", "state", "params", "value", "test", "epochs", "seconds", "run", "note"}`` each."""
    keys = list(space)
    head = "".join(f"<th>{e(c)}</th>" for c in ["trial", "state", *keys, "val acc", "test acc", "epochs", "s",
                                                "run"])
    rows = []
    for t in trials:
        cls = ' class="best"' if best and t["number"] == best["number"] else ""
        cells = [str(t["number"]), t["state"].lower() + (f" ({t['note']})" if t.get("note") else "")]
        cells += [_fmt(t["params"].get(k)) for k in keys]
        cells += [_fmt(t.get("value")), _fmt(t.get("test")), _fmt(t.get("epochs")), _fmt(t.get("seconds"))]
        link = f'<a href="{e(t["run"])}/report.html">{e(t["run"])}</a>' if t.get("run") else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{e(c)}</td>" for c in cells) + f"<td>{link}</td></tr>")
    space_text = "; ".join(f"{k}: {v}" for k, v in space.items())
    best_line = (f"best trial {best['number']}: validation accuracy {best['value']:.4f} with "
                 + ", ".join(f"{k}={_fmt(v)}" for k, v in best["params"].items())) if best else "no finished trial"
    figs = (f"<section><h2>Optimisation history</h2>{img(figure_png(history_figure(trials)), 'history')}</section>"
            f"<section><h2>Parameter importances</h2>"
            f"{img(figure_png(importance_figure(importances)), 'importances')}</section>")
    return page(f"tune {name}", (
        f"<h1>Tune {e(name)}</h1><p>data <code>{e(data)}</code> · {len(trials)} trials · {e(best_line)}</p>"
        f"<p class='muted'>space: {e(space_text)}<br>command: <code>{e(command)}</code></p>"
        f"<section><table><tr>{head}</tr>{''.join(rows)}</table></section>{figs}"), "sweep")


def _fmt(v: object) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.4f}".rstrip("0").rstrip(".")
    return str(v)
