"""``picstory export RUN --format onnx-int8``: re-open the run's data, calibrate on training images, gate on test.

Calibration uses a seeded sample of the run's own training images (the distribution the activation ranges must
cover), read from the decode cache at the bundle's size. The gate uses the test split; a run without one is gated on
its validation split, and the message says so.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..options import EXPORT
from ..runs import RunDir, find_run

CALIBRATION_SEED = 0


def export_int8_run(run: str | Path, calibration_images: int = EXPORT.calibration_images,
                    min_agreement: float = EXPORT.min_agreement, max_accuracy_drop: float = EXPORT.max_accuracy_drop,
                    require_faster: bool = EXPORT.require_faster, verbose: bool = True) -> dict:
    """Quantize the run's model to int8 and keep it only when the gate passes (see deploy/quantize.py)."""
    from ..deploy.quantize import export_int8
    from ..models.bundle import is_multilabel, read_meta

    run_dir = find_run(run)
    if is_multilabel(read_meta(RunDir(run_dir).bundle)):
        raise UserError(f"{run_dir}: the int8 export's gate compares top-1 classes, which a multi-label model does "
                        "not have; export it with --format onnx")
    calib, images, labels, split = run_images(run_dir, calibration_images)
    if split != "test" and verbose:
        print(f"{run_dir}: the run has no test split; the int8 gate uses its {len(labels)} validation images",
              file=sys.stderr)
    record = export_int8(run_dir, calib, images, labels, split=split, min_agreement=min_agreement,
                         max_accuracy_drop=max_accuracy_drop, require_faster=require_faster, verbose=verbose)
    _refresh_report(run_dir)
    return record


def _refresh_report(run_dir: Path) -> None:
    """The model card and report list the exported files: rewrite them (derived data; a failure only warns)."""
    try:
        from ..pages.run_report import write_report

        if RunDir(run_dir).summary.is_file():
            write_report(run_dir)
    except Exception as e:  # noqa: BLE001 — the int8 file is kept either way
        print(f"warning: could not refresh the report of {run_dir}: {type(e).__name__}: {e}", file=sys.stderr)


def run_images(run_dir: Path, n_calibration: int, seed: int = CALIBRATION_SEED
               ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, str]:
    """(calibration uint8 N×C×H×W from the train split, gate images, gate labels, gate split name)."""
    import yaml

    from ..data.sources import resolve
    from ..data.split import read_manifest
    from ..models.bundle import read_meta

    rd = RunDir(run_dir)
    if not rd.split.is_file():
        raise UserError(f"{run_dir}: no split.csv; the int8 export needs the run's data to calibrate and check on")
    meta = read_meta(rd.bundle)
    dcfg = (yaml.safe_load(rd.config.read_text()) or {}).get("data", {}) if rd.config.is_file() else {}
    spec = dcfg.get("data") or meta.get("data")
    source = resolve(spec, dcfg.get("path_col", ""), dcfg.get("label_col", ""), bool(dcfg.get("allow_outside")))
    splits = read_manifest(rd.split, source)
    split = "test" if splits["test"] else "val"
    if not splits[split]:
        raise UserError(f"{run_dir}: the run has neither a test nor a validation split to check the int8 model on")
    train = list(splits["train"])
    if not train:
        raise UserError(f"{run_dir}: the run has no training images to calibrate the int8 model on")
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(train), size=min(n_calibration, len(train)), replace=False).tolist())
    calib, _ = _load(source, [train[i] for i in pick], meta)
    images, labels = _load(source, splits[split], meta)
    return calib, images, labels, split


def _load(source, ids: list[int], meta: dict) -> tuple[torch.Tensor, np.ndarray]:
    from ..data.cache import load_images

    cached = load_images(source, ids, meta["img_size"], meta["in_chans"], meta.get("fit", "crop"), progress=False)
    ok = np.flatnonzero(cached.ok)
    if cached.bad:
        print(f"warning: skipped {len(cached.bad)} unreadable image(s)", file=sys.stderr)
    index = {c: i for i, c in enumerate(meta["classes"])}
    labels = np.array([index.get(source.records[ids[j]].label, -1) for j in ok], dtype=np.int64)
    arr = np.ascontiguousarray(cached.images[ok])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous(), labels
