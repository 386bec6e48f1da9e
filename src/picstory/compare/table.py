"""Tables of runs and sweep cells: a rich table on a terminal, aligned plain text in a pipe or a log, JSON, CSV.

One renderer serves `picstory runs` and the sweep's printed comparison, so a column reads the same everywhere.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import sys
from typing import Any, Iterable

from ..config import TABLE_FORMATS, suggest
from ..errors import UserError

FORMATS = TABLE_FORMATS
RUN_COLUMNS = ["name", "model", "data", "optimizer", "lr", "best_val", "test", "epochs", "seconds", "status", "date"]
# higher is better for these, so sorting by them puts the best first
DESCENDING = ("best_val", "test", "val_accuracy", "test_accuracy", "best_val_acc", "test_acc", "accuracy")


def _missing(v: Any) -> bool:
    return v is None or v == "" or (isinstance(v, float) and math.isnan(v))


def cell_text(column: str, v: Any) -> str:
    """A value as a table shows it: accuracies with 4 decimals, seconds with 1, the rest as written."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if column in DESCENDING or "acc" in column:
            return f"{v:.4f}"
        if column == "seconds":
            return f"{v:.1f}"
        return f"{v:.3g}"
    return str(v)


def sort_rows(rows: list[dict], sort: str) -> list[dict]:
    """Sort by one column: accuracies descending, everything else ascending, missing values last. A leading
    ``-`` reverses the direction (``-seconds``: slowest first)."""
    if not sort:
        return list(rows)
    flip = sort.startswith("-")
    column = sort.lstrip("-")
    known = list(dict.fromkeys(k for r in rows for k in r)) or RUN_COLUMNS
    if column not in known:
        raise UserError(f"cannot sort by '{column}': no such column{suggest(column, known)} "
                        f"(columns: {', '.join(known)})")
    descending = (column in DESCENDING or "acc" in column) != flip
    present = [r for r in rows if not _missing(r.get(column))]
    absent = [r for r in rows if _missing(r.get(column))]
    numeric = all(isinstance(r[column], (int, float)) or _is_number(r[column]) for r in present)
    key = (lambda r: float(r[column])) if numeric else (lambda r: str(r[column]))
    return sorted(present, key=key, reverse=descending) + absent


def _is_number(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def render(rows: list[dict], columns: list[str], fmt: str = "table", tty: bool | None = None,
           title: str = "") -> str:
    """``rows`` as a table, JSON (a list of objects) or CSV, with ``columns`` in that order."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format '{fmt}' (choose from {', '.join(FORMATS)}){suggest(fmt, FORMATS)}")
    if fmt == "json":
        return json.dumps([{c: _json_value(r.get(c)) for c in columns} for r in rows], indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({c: "" if _missing(r.get(c)) else r.get(c) for c in columns})
        return buf.getvalue().rstrip("\n")
    cells = [[cell_text(c, r.get(c)) for c in columns] for r in rows]
    if tty if tty is not None else sys.stdout.isatty():
        return _rich(columns, cells, title)
    return _plain(columns, cells, title)


def _json_value(v: Any) -> Any:
    # NaN is not JSON; a missing number is null
    return None if isinstance(v, float) and math.isnan(v) else v


def _numeric_column(cells: Iterable[str]) -> bool:
    values = [c for c in cells if c not in ("-", "")]
    return bool(values) and all(_is_number(c.replace("±", "").split()[0]) for c in values)


def _plain(columns: list[str], cells: list[list[str]], title: str) -> str:
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    right = [_numeric_column(row[i] for row in cells) for i in range(len(columns))]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)).rstrip()

    out = ([title] if title else []) + [line(columns), line(["-" * w for w in widths])]
    return "\n".join(out + [line(row) for row in cells])


def _rich(columns: list[str], cells: list[list[str]], title: str) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title or None, header_style="bold")
    for i, c in enumerate(columns):
        table.add_column(c, justify="right" if _numeric_column(row[i] for row in cells) else "left")
    for row in cells:
        table.add_row(*row)
    buf = io.StringIO()
    Console(file=buf, force_terminal=True, width=shutil.get_terminal_size((120, 24)).columns).print(table)
    return buf.getvalue().rstrip("\n")


def format_runs(rows: list[dict], fmt: str = "table", sort: str = "") -> str:
    """The `picstory runs` listing (rows from :func:`picstory.runs.list_runs`), sorted by ``sort``."""
    rows = sort_rows(rows, sort)
    if not rows and fmt == "table":
        return "no runs found"
    extra = [k for r in rows for k in r if k not in RUN_COLUMNS]
    columns = RUN_COLUMNS + list(dict.fromkeys(extra))
    if fmt == "table":
        # the date is for JSON/CSV consumers; on screen it costs a column the accuracies need
        columns = [c for c in columns if c != "date"]
    return render(rows, columns, fmt)


__all__ = ["format_runs", "render", "sort_rows", "cell_text", "FORMATS"]
