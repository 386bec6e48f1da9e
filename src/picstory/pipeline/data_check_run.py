"""``picstory data check DATA``: look at every image, then write report.json and the page report.html."""

from __future__ import annotations

import json
from pathlib import Path

from ..data.audit import audit
from ..files import atomic_write
from ..options import DATA_CHECK
from ..pages.data_check import render_html


def check(spec: str, out: str | Path | None = None, path_col: str = "", label_col: str = "",
          max_bad_fraction: float = DATA_CHECK.max_bad_fraction, workers: int = 0, progress: bool = True,
          allow_outside: bool = False, label_map: str = DATA_CHECK.label_map, group_col: str = DATA_CHECK.group_col,
          weight_col: str = DATA_CHECK.weight_col, stratify_col: str = DATA_CHECK.stratify_col,
          label_cols: str = DATA_CHECK.label_cols, multi_label: bool = DATA_CHECK.multi_label) -> dict:
    """Audit the data set ``spec``; returns the report and writes report.json / report.html into ``out``."""
    found, report = audit(spec, out, path_col, label_col, max_bad_fraction, workers, progress, allow_outside,
                          label_map=label_map, group_col=group_col, weight_col=weight_col, stratify_col=stratify_col,
                          label_cols=label_cols, multi_label=multi_label)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        atomic_write(out / "report.html", render_html(found, report))
    return report
