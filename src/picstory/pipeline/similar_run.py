"""``picstory similar RUN IMAGE...``: the training images nearest to any image, in the run's own feature space.

The training split's features are computed on the first call and cached in the run directory
(``evaluation_run.training_bank``); later calls decode only the query images.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from ..data.decode import DecodeError
from ..errors import UserError
from ..models.bundle import load_bundle
from ..options import SIMILAR
from ..runs import RunDir, find_run
from .evaluation_run import training_bank


def similar(run: str | Path, images: Sequence, k: int = SIMILAR.k, device: str = "cpu",
            progress: bool = False) -> list[dict]:
    """One result per image: ``{"input", "neighbours": [{"rank", "label", "path", "similarity"}], "error"}``."""
    from ..deploy.preprocess import preprocess
    from ..evaluation.neighbours import embed, nearest

    run_dir = find_run(run)
    if not RunDir(run_dir).split.is_file():
        raise UserError(f"{run_dir}: no split.csv, so no training images to compare with (give a training run)")
    model, meta = load_bundle(RunDir(run_dir).bundle, device=device)
    results, tensors, slots = [], [], []
    for src in images:
        entry = {"input": str(src), "neighbours": [], "error": None}
        try:
            tensors.append(preprocess(src, meta))
            slots.append(entry)
        except DecodeError as e:
            entry["error"] = getattr(e, "reason", None) or str(e)
        except OSError as e:
            entry["error"] = e.strerror or str(e)
        results.append(entry)
    if not tensors:
        return results
    bank = training_bank(run_dir, model, meta, device=device, progress=progress)
    query = embed(model, torch.stack(tensors), meta["mean"], meta["std"], device=device)
    idx, sims = nearest(query, bank["features"], k)
    for entry, row, sim in zip(slots, idx, sims):
        entry["neighbours"] = [{"rank": r, "label": bank["labels"][j], "path": bank["paths"][j],
                                "similarity": round(float(s), 4)} for r, (j, s) in enumerate(zip(row, sim), 1)]
    return results


def format_similar(results: Sequence[dict], fmt: str = SIMILAR.format) -> str:
    """``table`` (aligned text), ``json`` (the result dicts) or ``csv`` (``input,rank,label,path,similarity,error``)."""
    if fmt == "json":
        return json.dumps(list(results), indent=2, ensure_ascii=False)
    rows = []
    for r in results:
        if r.get("error"):
            rows.append((r["input"], "", "", "", "", r["error"]))
        rows.extend((r["input"], str(n["rank"]), n["label"], n["path"], f"{n['similarity']:.4f}", "")
                    for n in r["neighbours"])
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["input", "rank", "label", "path", "similarity", "error"])
        writer.writerows(rows)
        return buf.getvalue().rstrip("\n")
    if fmt != "table":
        raise UserError(f"format {fmt!r}: choose table, json or csv")
    header = ("input", "rank", "label", "training image", "similarity")
    shown = [(i, rk, lb, p, s) if not err else (i, "-", f"error: {err}", "", "") for i, rk, lb, p, s, err in rows]
    widths = [max(len(row[c]) for row in [header, *shown]) for c in range(5)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in [header, *shown])
