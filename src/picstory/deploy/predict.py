"""Predict with a run, a bundle or a pretrained model name — on the torch or the ONNX Runtime backend.

Every image goes through :func:`preprocess`, the same decode → fit path the training cache stores, so a file gets
the same pixels in train, eval, predict and serve. A file that cannot be decoded becomes a result with ``error``
set; one bad file never stops a batch.

Pretrained model names (``picstory predict efficientnet_lite0 cat.jpg``) use the ImageNet classes and the
weights' own mean/std, framed the way ImageNet models are evaluated: the shorter side is fitted to
``img_size / crop_pct`` (256 px for 224 px and crop_pct 0.875), then the centre ``img_size`` square is kept.
Bundles from training have no ``crop_pct`` (1.0): their pixels are exactly what training saw.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..config import BACKENDS, TTA_MODES
from ..data.batches import normalize
from ..data.decode import DecodeError
from ..data.sources import IMAGE_EXTS
from ..errors import UserError
from ..evaluation.calibration import bundle_temperature
from ..models.bundle import PREPROCESSING, find_bundle, is_multilabel, load_bundle, thresholds
from ..options import PREDICT
from .export import onnx_session, run_onnx
from .preprocess import preprocess
from .unknown import note_uncalibrated, parse_min_confidence, scored_predictions, unknown_rule

PRETRAINED_CROP_PCT = 0.875


def _input_name(src: Any, i: int) -> str:
    if isinstance(src, (str, Path)):
        return str(src)
    if isinstance(src, Image.Image) and getattr(src, "filename", ""):
        return str(src.filename)
    return f"<{type(src).__name__} #{i}>"


class Predictor:
    """Class probabilities for images. ``backend`` is ``torch`` (``model`` set) or ``onnx`` (``session`` set)."""

    def __init__(self, meta: dict, model: torch.nn.Module | None = None, session: Any = None,
                 device: str = "cpu", source: str = "", bundle_dir: Path | None = None, backend: str | None = None):
        if (model is None) == (session is None):
            raise ValueError("Predictor needs exactly one of model, session")
        self.meta = meta
        self.classes: list[str] = list(meta["classes"])
        self.model = model
        self.session = session
        self.backend = backend or ("torch" if model is not None else "onnx")
        self.device = torch.device(device if model is not None else "cpu")
        self.source = source
        self.bundle_dir = bundle_dir
        self._mean = tuple(meta["mean"])
        self._std = tuple(meta["std"])
        self._explainer = None
        self.multilabel = is_multilabel(meta)  # sigmoid per label; a label is predicted at its tuned threshold
        self.thresholds = thresholds(meta) if self.multilabel else []
        self.temperature = bundle_temperature(meta)  # None: a bundle from before calibration (uncalibrated)
        self.unknown = unknown_rule(self)

    def __repr__(self) -> str:
        return f"Predictor({self.source!r}, backend={self.backend}, classes={len(self.classes)})"

    def predict_proba(self, x_uint8: torch.Tensor, tta: str = "none") -> np.ndarray:
        """N×C×H×W uint8, already fitted to the model's size → N×K float32 probabilities (multi-label: one
        sigmoid per label; an exported graph ends in the same activation)."""
        from ..evaluation import tta as tta_mod

        x = normalize(x_uint8.to(self.device), self._mean, self._std)
        if self.model is not None:  # an exported graph has the temperature baked in; the torch model does not
            return tta_mod.predict_proba(self.model, x, tta, self.multilabel, self.temperature or 1.0).cpu().numpy()
        views = tta_mod.views(x, tta)
        probs = sum(self._run_session(v) for v in views)
        return (probs / len(views)).astype(np.float32)

    def explain_tensors(self, x_uint8: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Grad-CAM (heat maps N×H×W in [0, 1], explained top-1 class) for uint8 images fitted to the model."""
        from ..evaluation.explain import Explainer

        if self.model is None:
            raise UserError(f"explanations need the torch backend, not {self.backend}; leave out --backend")
        if self._explainer is None:
            self._explainer = Explainer(self.model, int(self.meta["in_chans"]), int(self.meta["img_size"]),
                                        self.meta.get("arch", ""))
        return self._explainer.heatmaps(normalize(x_uint8.to(self.device), self._mean, self._std))

    @property
    def explainer_layer(self) -> str | None:
        """The layer Grad-CAM explains (chosen at the first explanation)."""
        return self._explainer.layer_name if self._explainer is not None else None

    def _run_session(self, x: torch.Tensor) -> np.ndarray:
        fixed = not self.meta.get("exports", {}).get(self.backend, {}).get("dynamic_batch", True)
        if fixed and x.shape[0] != 1:
            return np.concatenate([run_onnx(self.session, x[i:i + 1]) for i in range(x.shape[0])])
        return run_onnx(self.session, x)

    def predict_scored(self, x_uint8: torch.Tensor, tta: str = "none", min_confidence=None) -> list[tuple]:
        """(probabilities, verdict) per image: the verdict's ``label`` is None and ``unknown`` True when the
        out-of-distribution score passes the bundle's threshold or the confidence is below ``min_confidence``."""
        return scored_predictions(self, x_uint8, tta, min_confidence)

    def predict(self, inputs: Sequence[Any], top_k: int = PREDICT.top_k, tta: str = PREDICT.tta,
                batch_size: int = 64, min_confidence: Any = PREDICT.min_confidence) -> list[dict]:
        """One result per input, in order: ``{"input", "label", "unknown", "predictions": [{"label",
        "probability"}], "error"}`` (with ``ood_score`` when the bundle has an unknown threshold); a multi-label
        model adds ``"labels": [{"label", "prob"}]`` (every label at or above its threshold) and ``"probs":
        {label: probability}``."""
        if tta not in TTA_MODES:
            raise UserError(f"tta {tta!r}: choose {', '.join(TTA_MODES)}")
        thresholds = parse_min_confidence(min_confidence, self.classes)  # a bad value fails before any image
        if isinstance(inputs, (str, Path, bytes, Image.Image, np.ndarray)):
            inputs = [inputs]
        k = max(1, min(int(top_k), len(self.classes)))
        results: list[dict] = []
        for start in range(0, len(inputs), max(1, batch_size)):
            chunk = inputs[start:start + batch_size]
            results.extend(self._predict_chunk(chunk, start, k, tta, thresholds))
        return results

    def _predict_chunk(self, chunk: Sequence[Any], offset: int, k: int, tta: str,
                       min_confidence: dict | None = None) -> list[dict]:
        out, tensors, slots = [], [], []
        for i, src in enumerate(chunk):
            entry = {"input": _input_name(src, offset + i), "predictions": [], "error": None}
            try:
                tensors.append(preprocess(src, self.meta))
                slots.append(entry)
            except DecodeError as e:
                entry["error"] = getattr(e, "reason", None) or str(e)
            except OSError as e:  # unreadable path: a permission or I/O problem is that input's error too
                entry["error"] = e.strerror or str(e)
            out.append(entry)
        if tensors:
            scored = self.predict_scored(torch.stack(tensors), tta, min_confidence)
            for entry, (p, verdict) in zip(slots, scored):
                idx = np.argsort(-p, kind="stable")[:k]
                entry["predictions"] = [{"label": self.classes[j], "probability": float(p[j])} for j in idx]
                entry.update(verdict)
            if self.multilabel:
                self.add_label_sets(slots, np.stack([p for p, _ in scored]))
        return out

    def add_label_sets(self, entries: list[dict], probs: np.ndarray) -> None:
        """Multi-label: each entry's ``labels`` (at or above their thresholds) and ``probs`` of every label."""
        from ..evaluation.multilabel import label_sets

        for entry, p, chosen in zip(entries, probs, label_sets(probs, self.classes, self.thresholds)):
            entry["labels"] = chosen
            entry["probs"] = {c: round(float(v), 6) for c, v in zip(self.classes, p)}


def load(target: str | Path, device: str = "cpu", backend: str = PREDICT.backend) -> Predictor:
    """A Predictor for a run directory, a bundle directory or a model name with offline pretrained weights.

    ``backend="onnx"`` runs ``model.onnx`` from the bundle with ONNX Runtime on the CPU, exporting it first
    (with the parity check) when the bundle has none.
    """
    if backend not in BACKENDS:
        raise UserError(f"backend {backend!r}: choose {', '.join(BACKENDS)}")
    device = _resolve_device(device)
    path = Path(target).expanduser()
    if path.exists():
        bundle = find_bundle(path)
    else:
        name = str(target)
        if not _is_pretrained_name(name):
            raise UserError(f"{target}: not a run directory, a model bundle, or a model name with offline "
                            "pretrained weights (see `picstory models`)")
        if backend == "torch":
            model, meta = pretrained_model(name, device)
            return Predictor(meta, model=model, device=device, source=name)
        bundle = _pretrained_bundle(name)
    if backend in ("onnx", "onnx-int8", "openvino"):
        session, meta = onnx_session(bundle, fmt=backend)
        return note_uncalibrated(Predictor(meta, session=session, source=str(target), bundle_dir=bundle,
                                           backend=backend))
    model, meta = load_bundle(bundle, device)
    return note_uncalibrated(Predictor(meta, model=model, device=device, source=str(target), bundle_dir=bundle))


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r}: no CUDA device is available; use --device cpu")
    return device


def _is_pretrained_name(name: str) -> bool:
    from ..models import has_pretrained

    if os.sep in name or name.startswith("."):
        return False
    try:
        return bool(has_pretrained(name))
    except UserError:
        return False


def pretrained_model(name: str, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """An ImageNet model with offline weights and the bundle-style meta that describes its input."""
    from ..models import create_model, imagenet_classes

    model = create_model(name, 1000, 3, pretrained=True)
    cfg = model.picstory_cfg
    crop_pct = float(cfg.get("crop_pct") or PRETRAINED_CROP_PCT)
    meta = {"arch": name, "model_kwargs": {}, "num_classes": 1000, "classes": list(imagenet_classes()),
            "in_chans": 3, "img_size": int(cfg["input_size"][-1]), "fit": "crop",
            "crop_pct": crop_pct, "mean": list(cfg["mean"]), "std": list(cfg["std"]),
            "preprocessing": PREPROCESSING + f"; pretrained framing: fit to img_size/{crop_pct}, centre crop "
                                             "img_size", "metrics": {}, "pretrained": True}
    model = model.to(device).to(memory_format=torch.channels_last).eval()
    return model, meta


def _pretrained_bundle(name: str) -> Path:
    """A bundle of a pretrained model in the picstory cache, so the ONNX backend has a directory to export into."""
    from ..models.bundle import save_bundle

    root = Path(os.environ.get("PICSTORY_CACHE") or Path.home() / ".cache" / "picstory")
    directory = root / "pretrained" / name
    try:
        return find_bundle(directory)
    except UserError:
        model, meta = pretrained_model(name)
        return save_bundle(directory, model, meta)


def write_explanations(predictor: Predictor, inputs: Sequence[Any], out_dir: str | Path) -> list[str | None]:
    """A Grad-CAM overlay of each input for its top-1 class, ``out_dir/NAME.gradcam.png``; None for an input that
    could not be decoded (its prediction carries the reason)."""
    from ..evaluation.explain import overlay_png
    from ..files import atomic_write

    out = Path(out_dir).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--explain {out_dir}: cannot create the folder ({e.strerror}); choose another") from None
    written: list[str | None] = []
    used: set[str] = set()
    for i, src in enumerate(inputs):
        try:
            x = preprocess(src, predictor.meta)
        except (DecodeError, OSError):
            written.append(None)
            continue
        heat, _ = predictor.explain_tensors(x[None])
        stem = Path(_input_name(src, i)).stem or f"image-{i}"
        name, n = f"{stem}.gradcam.png", 2
        while name in used:
            name, n = f"{stem}-{n}.gradcam.png", n + 1
        used.add(name)
        atomic_write(out / name, overlay_png(x.permute(1, 2, 0).numpy(), heat[0]))
        written.append(str(out / name))
    return written


def expand_inputs(args: Sequence[str]) -> list[Path]:
    """IMAGE | DIR | GLOB arguments → image paths. A directory gives its image files (not sub-folders; use a glob
    such as ``'dir/**/*.jpg'`` for those), hidden files skipped, sorted; a file named directly is always kept."""
    out: list[Path] = []
    for arg in args:
        path = Path(arg).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS)
            if not found:
                raise UserError(f"{arg}: no image files in this folder (looked for "
                                f"{', '.join(sorted(IMAGE_EXTS))})")
        elif path.is_file():
            found = [path]
        elif glob.has_magic(arg):
            found = sorted(Path(p) for p in glob.glob(os.path.expanduser(arg), recursive=True)
                           if os.path.isfile(p) and not Path(p).name.startswith(".")
                           and Path(p).suffix.lower() in IMAGE_EXTS)
            if not found:
                raise UserError(f"{arg}: the pattern matches no image files")
        else:
            raise UserError(f"{arg}: no such file or folder")
        out.extend(found)
    return out


def format_predictions(results: Sequence[dict], fmt: str = PREDICT.format, top_k: int = PREDICT.top_k,
                       color: bool | None = None) -> str:
    """Results as ``table`` (rich on a terminal, aligned plain text otherwise), ``json`` or ``csv``, without a
    trailing newline (``print`` adds it).

    json: a list of result dicts (top_k predictions each). csv: ``input,rank,label,probability,error,unknown`` with
    one row per prediction (``unknown`` 1 when the answer is unknown) and one row (rank empty) for an input that
    failed.
    """
    trimmed = [{**r, "predictions": list(r.get("predictions") or [])[:top_k]} for r in results]
    multilabel = any("labels" in r for r in results)
    if fmt == "json":
        return json.dumps(trimmed, indent=2, ensure_ascii=False)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        extra = ["predicted"] if multilabel else []
        writer.writerow(["input", "rank", "label", "probability", "error", "unknown"] + extra)
        for r in trimmed:
            if r.get("error"):
                writer.writerow([r["input"], "", "", "", r["error"], ""] + [""] * len(extra))
            unknown = "" if r.get("unknown") is None else int(bool(r["unknown"]))
            chosen = {x["label"] for x in r.get("labels") or []}
            for rank, p in enumerate(r["predictions"], 1):
                writer.writerow([r["input"], rank, p["label"], f"{p['probability']:.6f}", "", unknown]
                                + ([int(p["label"] in chosen)] if multilabel else []))
        return buf.getvalue().rstrip("\n")
    if fmt != "table":
        raise UserError(f"format {fmt!r}: choose table, json or csv")
    rows = _table_rows(trimmed)
    if color if color is not None else sys.stdout.isatty():
        return _rich_table(rows)
    header = ("input", "rank", "label", "probability")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(4)]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def _table_rows(results: Sequence[dict]) -> list[tuple[str, str, str, str]]:
    """One row per shown label; a multi-label result marks the labels at or above their thresholds with ✓."""
    rows = []
    for r in results:
        if r.get("error"):
            rows.append((r["input"], "-", f"error: {r['error']}", "-"))
        chosen = {x["label"] for x in r.get("labels") or []}
        if r.get("unknown"):
            rows.append((r["input"], "-", f"unknown: {r.get('unknown_reason', '')}", "-"))
        for rank, p in enumerate(r["predictions"], 1):
            mark = " ✓" if p["label"] in chosen else ""
            rows.append((r["input"], str(rank), p["label"] + mark, f"{p['probability']:.4f}"))
    return rows


def _rich_table(rows: list[tuple[str, str, str, str]]) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=True, header_style="bold")
    for col, justify in (("input", "left"), ("rank", "right"), ("label", "left"), ("probability", "right")):
        table.add_column(col, justify=justify)
    previous = None
    for inp, rank, label, prob in rows:
        style = "red" if label.startswith("error: ") else ("bold" if rank == "1" else "")
        table.add_row(inp if inp != previous else "", rank, label, prob, style=style)
        previous = inp
    console = Console(file=io.StringIO(), force_terminal=True, width=shutil.get_terminal_size((120, 24)).columns)
    console.print(table)
    return console.file.getvalue().rstrip("\n")
