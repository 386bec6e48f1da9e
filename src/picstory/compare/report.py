"""A sweep's comparison: one row per cell (plus mean ± std over repeats) → comparison.csv, comparison.md,
comparison.html (self-contained, figures embedded) and the table printed at the end.

The best cell is chosen on validation accuracy, never on test accuracy: picking by test would make the test
number of the winner an optimistic, selected figure.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path

import numpy as np

from ..pages import sweep_page
from .cells import Cell, inspect_cell, outcome, read_metrics
from .table import cell_text, render

METRICS = ["best_val_acc", "test_acc", "best_epoch", "epochs_run", "seconds"]  # epochs_run: "epochs" may be an axis
TAIL = METRICS + ["stop_reason", "status"]


def cell_rows(path: Path, cells: list[Cell], record: dict, repeats: int) -> list[dict]:
    rows = []
    for cell in cells:
        state, summary = inspect_cell(path / cell.name)
        row: dict = {"cell": cell.name, **cell.labels}
        if repeats > 1:
            row["seed"] = cell.seed
        if state == "done":
            status, reason = outcome(summary, path / cell.name)
            row.update(best_val_acc=summary.get("val_accuracy"), test_acc=summary.get("test_accuracy"),
                       best_epoch=summary.get("best_epoch"), epochs_run=summary.get("epochs_run"),
                       seconds=summary.get("train_seconds"), stop_reason=reason, status=status)
        else:
            recorded = record.get("results", {}).get(cell.name, {})
            status = {"resume": "interrupted"}.get(state, "failed" if recorded.get("status") == "failed" else "pending")
            row.update({m: None for m in METRICS}, stop_reason=recorded.get("reason", ""), status=status)
        rows.append(row)
    return rows


def aggregate(rows: list[dict], cells: list[Cell]) -> list[dict]:
    """Per setting: a ``mean`` and a ``std`` row over its repeats that finished ok (sample std, n-1)."""
    out = []
    groups: dict[str, list[tuple[Cell, dict]]] = {}
    for cell, row in zip(cells, rows):
        groups.setdefault(cell.group, []).append((cell, row))
    for group, members in groups.items():
        ok = [r for _, r in members if r["status"] == "ok"]
        base = {"cell": group, **members[0][0].labels, "stop_reason": "", "status": f"{len(ok)}/{len(members)} ok"}
        mean, std = {**base, "seed": "mean"}, {**base, "seed": "std"}
        for m in METRICS:
            values = [float(r[m]) for r in ok if r.get(m) is not None]
            mean[m] = statistics.fmean(values) if values else None
            std[m] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
        out += [mean, std]
    return out


def best_group(rows: list[dict], cells: list[Cell]) -> str | None:
    """The setting with the highest (mean) best validation accuracy among finished ones."""
    scores: dict[str, list[float]] = {}
    for cell, row in zip(cells, rows):
        if row["status"] == "ok" and row.get("best_val_acc") is not None:
            scores.setdefault(cell.group, []).append(float(row["best_val_acc"]))
    if not scores:
        return None
    return max(scores, key=lambda g: statistics.fmean(scores[g]))


def _csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: "" if r.get(c) is None else (f"{r[c]:.6g}" if isinstance(r[c], float) else r[c])
                    for c in columns})
    return buf.getvalue()


def _pm(column: str, mean: dict, std: dict) -> str:
    if mean.get(column) is None:
        return "-"
    return f"{cell_text(column, mean[column])} ± {cell_text(column, std[column])}"


def display_rows(rows: list[dict], aggregates: list[dict], cells: list[Cell], best: str | None,
                 axes: list[str]) -> tuple[list[dict], list[str]]:
    """What a reader compares: one row per setting (mean ± std over repeats when there are repeats), best starred."""
    if not aggregates:
        shown = [{**r, "best": "★" if c.group == best else ""} for c, r in zip(cells, rows)]
        return shown, ["best", *axes, "best_val_acc", "test_acc", "epochs_run", "seconds", "status"]
    shown = []
    for mean, std in zip(aggregates[::2], aggregates[1::2]):
        shown.append({"best": "★" if mean["cell"] == best else "", **{a: mean[a] for a in axes},
                      **{m: _pm(m, mean, std) for m in ("best_val_acc", "test_acc", "epochs_run", "seconds")},
                      "status": mean["status"]})
    return shown, ["best", *axes, "best_val_acc", "test_acc", "epochs_run", "seconds", "status"]


def _markdown(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(cell_text(c, r.get(c)).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines)


def _figures(path: Path, cells: list[Cell], rows: list[dict], axes: dict, best: str | None) -> dict[str, bytes]:
    from ..pages.figures import figure_png
    from ..pages.sweep_figures import curves_figure, heatmap_figure

    series = [{"group": c.group, "labels": c.labels, "metrics": read_metrics(path / c.name)} for c in cells]
    pngs = {"curves": figure_png(curves_figure(series, best))}
    keys = list(axes)
    if len(keys) == 2 and all(len(v) > 1 for v in axes.values()):
        r_labels, c_labels = axes[keys[0]], axes[keys[1]]
        scores: dict[tuple[str, str], list[float]] = {}
        for c, row in zip(cells, rows):
            if row["status"] == "ok" and row.get("best_val_acc") is not None:
                scores.setdefault((c.labels[keys[0]], c.labels[keys[1]]), []).append(float(row["best_val_acc"]))
        grid = np.full((len(r_labels), len(c_labels)), np.nan)
        for (a, b), v in scores.items():
            grid[r_labels.index(a), c_labels.index(b)] = statistics.fmean(v)
        at = None
        if best is not None:
            cell = next(c for c in cells if c.group == best)
            at = (r_labels.index(cell.labels[keys[0]]), c_labels.index(cell.labels[keys[1]]))
        pngs["heatmap"] = figure_png(heatmap_figure(keys[0], r_labels, keys[1], c_labels, grid, at))
    return pngs


def write_comparison(path: Path, cells: list[Cell], record: dict, repeats: int) -> dict:
    from ..files import atomic_write

    axes = {k: list(v) for k, v in record["grid"].items()}
    rows = cell_rows(path, cells, record, repeats)
    aggregates = aggregate(rows, cells) if repeats > 1 else []
    best = best_group(rows, cells)
    columns = ["cell", *axes, *(["seed"] if repeats > 1 else []), *TAIL]
    atomic_write(path / "comparison.csv", _csv(rows + aggregates, columns))
    shown, shown_columns = display_rows(rows, aggregates, cells, best, list(axes))
    failed = [r for r in rows if r["status"] != "ok"]
    md = [f"# Sweep {path.name}", "", f"data: `{record['data']}`; fixed options: {_options(record)}", "",
          _markdown(shown, shown_columns)]
    if aggregates:
        md += ["", "## Every run", "", _markdown(rows, ["cell", *TAIL])]
    if failed:
        md += ["", "## Not finished", ""] + [f"- `{r['cell']}`: {_why(r)}" for r in failed]
    atomic_write(path / "comparison.md", "\n".join(md) + "\n")
    pngs = _figures(path, cells, rows, axes, best)
    for key, png in pngs.items():
        atomic_write(path / f"comparison_{key}.png", png)
    atomic_write(path / "comparison.html", _html(path, record, shown, shown_columns, rows, pngs, best, failed))
    table = render(shown, shown_columns, "table", title=f"sweep {path}")
    if failed:
        table += "\n" + "\n".join(f"  {r['cell']}: {_why(r)}" for r in failed)
    return {"table": table, "dir": str(path), "rows": rows + aggregates, "best": best,
            "csv": str(path / "comparison.csv"), "html": str(path / "comparison.html")}


def _why(row: dict) -> str:
    return row["status"] + (f" — {row['stop_reason']}" if row.get("stop_reason") else "")


def _options(record: dict) -> str:
    o = record.get("overrides", {})
    return ", ".join(f"{k}={v}" for k, v in o.items()) or "defaults"


def _html(path: Path, record: dict, shown: list[dict], columns: list[str], rows: list[dict],
          pngs: dict[str, bytes], best: str | None, failed: list[dict]) -> str:
    table = [(bool(r.get("best")), [(cell_text(c, r.get(c)), _numberish(r.get(c))) for c in columns]) for r in shown]
    return sweep_page.render_html(path.name, record["data"], len(rows), best, _options(record),
                                  record.get("command") or "", columns, table,
                                  [(r["cell"], _why(r)) for r in failed], pngs)


def _numberish(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v)) \
        or (isinstance(v, str) and "±" in v)


__all__ = ["write_comparison", "cell_rows", "aggregate", "best_group"]
