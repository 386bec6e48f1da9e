"""``picstory export``: the bundle's model as ONNX or TorchScript, checked against the torch model before it is kept.

Contract of an exported file (also written to ``model.json`` under ``exports``):
- input ``input``: float32 N×C×H×W, already normalised — ``(uint8 / 255 - mean) / std`` of the pixels that
  :func:`picstory.deploy.preprocess.preprocess` produces;
- output ``probabilities``: float32 N×K calibrated softmax probabilities (the division by the bundle's temperature
  and the softmax are part of the exported graph); a multi-label bundle (``task: multilabel``) ends in a sigmoid per
  label instead, thresholds stay in model.json.

ONNX uses torch's TorchScript-based exporter (``dynamo=False``): it needs no extra packages (the dynamo exporter
needs onnxscript) and handles the conv/BatchNorm/activation graphs of picstory and timm models. BatchNorm is folded
into the convolutions by the exporter's constant folding and ONNX Runtime's graph optimisation.

The parity check runs up to 64 images through both models: max |Δ probability| must be ≤ ``PARITY_ATOL`` and the
top-1 class must agree (a disagreement between two classes whose torch probabilities are within the tolerance is a
numerical tie and is reported, not failed). A failed check raises :class:`UserError` and leaves no file behind.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..evaluation.calibration import bundle_temperature
from ..files import fsync_dir, public_mode
from ..models.bundle import find_bundle, is_multilabel, load_bundle, read_meta, update_meta
from ..options import EXPORT
from .preprocess import preprocess

FORMATS = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "onnx-int8": "model.int8.onnx",
           "openvino": "model.openvino.xml"}
PARITY_ATOL = 1e-4
PARITY_MAX_IMAGES = 64
PARITY_RANDOM_IMAGES = 16
INPUT_NAME, OUTPUT_NAME = "input", "probabilities"
FEATURES_NAME = "features"  # ONNX only: the penultimate features, for the nearest-neighbour unknown score


class WithSoftmax(nn.Module):
    """The exported graph: the classifier, its logits divided by the bundle's calibration temperature, softmax,
    in fp32 — so every runtime serves the same calibrated probabilities as the torch model (multi-label: a sigmoid
    per label, not temperature-scaled)."""

    def __init__(self, model: nn.Module, temperature: float = 1.0, multilabel: bool = False):
        super().__init__()
        self.model = model
        self.temperature = float(temperature)
        self.multilabel = multilabel

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits / self.temperature, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.probabilities(self.model(x))


class WithFeatures(WithSoftmax):
    """The ONNX graph: calibrated probabilities and, as a second output, the head's input features."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from ..models.features import features_and_logits

        features, logits = features_and_logits(self.model, x)
        return self.probabilities(logits), features


def export(run_or_bundle: str | Path, fmt: str = EXPORT.format, opset: int = EXPORT.opset,
           dynamic_batch: bool = EXPORT.dynamic_batch,
           parity_images: Sequence | torch.Tensor | None = None, verbose: bool = True) -> dict:
    """Export the bundle's model to ``<bundle>/model.onnx`` or ``model.torchscript.pt``; returns the export record
    (file, sha256, input/output description, parity figures) that is also stored in model.json."""
    if fmt not in FORMATS:
        raise UserError(f"export format {fmt!r}: choose {' or '.join(FORMATS)}")
    if fmt == "onnx-int8":  # quantization needs the run's images: deploy.quantize.export_int8 or the CLI
        raise UserError(f"{run_or_bundle}: the int8 export calibrates on the run's images; run "
                        f"`picstory export {run_or_bundle} --format onnx-int8`")
    bundle = find_bundle(run_or_bundle)
    if fmt == "openvino":
        return _export_openvino(bundle, opset, dynamic_batch, parity_images, verbose)
    model, meta = load_bundle(bundle, "cpu")
    model = model.to(memory_format=torch.contiguous_format)
    images = parity_batch(meta, parity_images)
    final = bundle / FORMATS[fmt]
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=bundle)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        example = torch.zeros(1 if not dynamic_batch else 2, meta["in_chans"], meta["img_size"], meta["img_size"])
        wrapper = WithFeatures if fmt == "onnx" else WithSoftmax
        _write_export(wrapper(model, bundle_temperature(meta) or 1.0, is_multilabel(meta)).eval(), example, tmp,
                      fmt, opset, dynamic_batch)
        parity = check_parity(model, meta, tmp, fmt, images, dynamic_batch)
        if not parity["passed"]:
            raise UserError(f"{final}: parity check failed (max |Δp| {parity['max_abs_diff']:.2e} > "
                            f"{PARITY_ATOL:.0e} or top-1 agreement {parity['top1_agreement']:.2%} on "
                            f"{parity['images']} images); nothing was written")
        data = tmp.read_bytes()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        public_mode(tmp)
        os.replace(tmp, final)
        fsync_dir(bundle)
    finally:
        tmp.unlink(missing_ok=True)
    record = _record(meta, final, hashlib.sha256(data).hexdigest(), fmt, opset, dynamic_batch, parity)
    update_meta(bundle, exports={**meta.get("exports", {}), fmt: record})
    if verbose:
        print(f"exported {final} ({len(data) / 1e6:.1f} MB): parity on {parity['images']} images, max |Δp| "
              f"{parity['max_abs_diff']:.1e}, top-1 agreement {parity['top1_agreement']:.0%}")
    return record


def _export_openvino(bundle: Path, opset: int, dynamic_batch: bool, parity_images, verbose: bool) -> dict:
    """IR converted from the parity-checked ONNX file, then checked against the torch model in its own right."""
    from . import openvino_ir

    meta = read_meta(bundle)
    if "onnx" not in meta.get("exports", {}) or not (bundle / FORMATS["onnx"]).is_file():
        export(bundle, "onnx", opset, dynamic_batch, parity_images, verbose=False)
        meta = read_meta(bundle)
    model, _ = load_bundle(bundle, "cpu")
    images = parity_batch(meta, parity_images)
    dyn = meta["exports"]["onnx"].get("dynamic_batch", True)
    work = Path(tempfile.mkdtemp(prefix=".openvino.", dir=bundle))
    try:
        openvino_ir.write_ir(bundle / FORMATS["onnx"], work / openvino_ir.XML)
        parity = check_parity(model, meta, work / openvino_ir.XML, "openvino", images, dyn)
        if not parity["passed"]:
            raise UserError(f"{bundle / openvino_ir.XML}: parity check failed (max |Δp| {parity['max_abs_diff']:.2e}"
                            f" > {PARITY_ATOL:.0e} or top-1 agreement {parity['top1_agreement']:.2%}); nothing "
                            "was written")
        data = (work / openvino_ir.XML).read_bytes() + (work / openvino_ir.BIN).read_bytes()
        for name in (openvino_ir.BIN, openvino_ir.XML):  # the .xml last: it is what marks the export present
            public_mode(work / name)
            os.replace(work / name, bundle / name)
        fsync_dir(bundle)
    finally:
        for left in work.iterdir():
            left.unlink()
        work.rmdir()
    import openvino

    record = {**_record(meta, bundle / openvino_ir.XML, hashlib.sha256(data).hexdigest(), "openvino", opset, dyn,
                        parity), "weights_file": openvino_ir.BIN, "precision": "fp32",
              "openvino_version": openvino.__version__, "converted_from": FORMATS["onnx"]}
    update_meta(bundle, exports={**meta.get("exports", {}), "openvino": record})
    if verbose:
        print(f"exported {bundle / openvino_ir.XML} + {openvino_ir.BIN} ({len(data) / 1e6:.1f} MB): parity on "
              f"{parity['images']} images, max |Δp| {parity['max_abs_diff']:.1e}, top-1 agreement "
              f"{parity['top1_agreement']:.0%}")
    return record


def _write_export(wrapped: nn.Module, example: torch.Tensor, path: Path, fmt: str, opset: int,
                  dynamic_batch: bool) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript-based paths warn that they are superseded; they are the ones that work offline here
        warnings.simplefilter("ignore")
        if fmt == "onnx":
            outputs = [OUTPUT_NAME, FEATURES_NAME] if isinstance(wrapped, WithFeatures) else [OUTPUT_NAME]
            axes = {name: {0: "batch"} for name in [INPUT_NAME, *outputs]} if dynamic_batch else None
            torch.onnx.export(wrapped, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=outputs, dynamic_axes=axes,
                              do_constant_folding=True)
        else:
            traced = torch.jit.trace(wrapped, example, check_trace=False)
            torch.jit.save(traced, str(path))


def _record(meta: dict, final: Path, sha: str, fmt: str, opset: int, dynamic_batch: bool, parity: dict) -> dict:
    c, s = meta["in_chans"], meta["img_size"]
    record = {
        "file": final.name, "sha256": sha, "dynamic_batch": dynamic_batch,
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": ["N" if dynamic_batch else 1, c, s, s],
                  "layout": "NCHW", "values": "(pixel / 255 - mean) / std, pixels from the bundle's preprocessing"},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["N" if dynamic_batch else 1,
                                                                      meta["num_classes"]],
                   "values": "sigmoid probabilities per label (sigmoid is part of the graph; a label is predicted "
                             "at its threshold in model.json)" if is_multilabel(meta) else
                             "softmax probabilities of logits / temperature (both are part of the graph)"},
        "temperature": bundle_temperature(meta) or 1.0,
        "parity": parity, "torch_version": torch.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if fmt == "onnx":
        record.update(opset=opset, exporter="torch.onnx.export (TorchScript-based, dynamo=False)",
                      features={"name": FEATURES_NAME, "dtype": "float32", "shape": ["N" if dynamic_batch else 1, "D"],
                                "values": "penultimate features (the head's input), for the kNN unknown score"})
    return record


def parity_batch(meta: dict, images: Sequence | torch.Tensor | None = None) -> torch.Tensor:
    """uint8 N×C×H×W for the parity check: the caller's images (tensor or image sources) first, then seeded random
    ones — half smooth blobs (photo-like low frequencies), half noise — up to PARITY_MAX_IMAGES."""
    c, s = int(meta["in_chans"]), int(meta["img_size"])
    given = _given_images(images, meta)[:PARITY_MAX_IMAGES - PARITY_RANDOM_IMAGES]
    gen = torch.Generator().manual_seed(0)
    n_rand = PARITY_RANDOM_IMAGES if len(given) else PARITY_MAX_IMAGES // 2
    noise = torch.randint(0, 256, (n_rand // 2, c, s, s), generator=gen, dtype=torch.uint8)
    low = torch.rand(n_rand - n_rand // 2, c, 6, 6, generator=gen) * 255
    smooth = F.interpolate(low, size=(s, s), mode="bilinear", align_corners=False).round().clamp(0, 255)
    return torch.cat([given, noise, smooth.to(torch.uint8)])


def _given_images(images: Sequence | torch.Tensor | None, meta: dict) -> torch.Tensor:
    c, s = int(meta["in_chans"]), int(meta["img_size"])
    if images is None or len(images) == 0:
        return torch.zeros(0, c, s, s, dtype=torch.uint8)
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (c, s, s):
            raise ValueError(f"parity images must be uint8 N×{c}×{s}×{s}, got {images.dtype} {tuple(images.shape)}")
        return images
    return torch.stack([preprocess(src, meta) for src in images])


def check_parity(model: nn.Module, meta: dict, path: Path, fmt: str, images: torch.Tensor,
                 dynamic_batch: bool = True) -> dict:
    """Compare the torch model with the exported file on ``images`` (uint8 N×C×H×W)."""
    from ..data.batches import normalize
    from ..evaluation.tta import predict_proba

    x = normalize(images, tuple(meta["mean"]), tuple(meta["std"])).float()
    ref = predict_proba(model, x, "none", is_multilabel(meta), bundle_temperature(meta) or 1.0).numpy()
    if dynamic_batch:
        got = _run_exported(path, fmt, x)
    else:
        got = np.concatenate([_run_exported(path, fmt, x[i:i + 1]) for i in range(len(x))])
    out = compare(ref, got)
    if is_multilabel(meta):  # the label sets at the tuned thresholds must agree too, but for scores at a threshold
        from ..models.bundle import thresholds

        thr = np.asarray(thresholds(meta))[None, :]
        same = ((ref >= thr) == (got >= thr)) | (np.abs(ref - thr) <= out["atol"])
        out["label_set_agreement"] = float(same.all(1).mean()) if len(ref) else 1.0
        out["passed"] = out["passed"] and out["label_set_agreement"] == 1.0
    return out


def compare(ref: np.ndarray, got: np.ndarray, atol: float | None = None) -> dict:
    """Parity figures of exported probabilities ``got`` against the torch model's ``ref`` (both N×K)."""
    atol = PARITY_ATOL if atol is None else atol
    n = len(ref)
    diff = float(np.abs(ref - got).max()) if n else 0.0
    ref_top, got_top = ref.argmax(1), got.argmax(1)
    agree = ref_top == got_top
    # a different argmax between classes the torch model scores within the tolerance is a tie, not a defect
    ties = ~agree & (ref[np.arange(n), ref_top] - ref[np.arange(n), got_top] <= atol)
    return {"images": int(n), "max_abs_diff": diff, "atol": atol,
            "top1_agreement": float(agree.mean()) if n else 1.0, "ties": int(ties.sum()),
            "passed": bool(diff <= atol and (agree | ties).all())}


def _run_exported(path: Path, fmt: str, x: torch.Tensor) -> np.ndarray:
    """Probabilities from the exported file (the function tests replace to simulate a broken export)."""
    if fmt == "onnx":
        return run_onnx(make_session(path.read_bytes()), x)
    if fmt == "openvino":
        from .openvino_ir import OpenVINOSession

        return run_onnx(OpenVINOSession(path), x)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated; its loader still works
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path), map_location="cpu")
        return module(x.contiguous()).float().numpy()


def make_session(model: bytes | str, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session with full graph optimisation and ``threads`` intra-op threads (default: the
    threads torch uses, so both backends get the same share of a shared machine)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, x: torch.Tensor) -> np.ndarray:
    """Run a session on a normalised float batch → N×K probabilities."""
    arr = np.ascontiguousarray(x.detach().cpu().float().contiguous().numpy())
    return session.run([OUTPUT_NAME], {INPUT_NAME: arr})[0]


def onnx_session(run_or_bundle: str | Path, threads: int | None = None, fmt: str = "onnx") -> tuple[Any, dict]:
    """(session, meta) for the bundle's model.onnx (or ``fmt="onnx-int8"``: model.int8.onnx), exporting fp32 first
    when absent; the file must match the sha256 recorded at export."""
    bundle = find_bundle(run_or_bundle)
    meta = read_meta(bundle)
    path = bundle / FORMATS[fmt]
    record = meta.get("exports", {}).get(fmt)
    if fmt == "onnx-int8" and (record is None or not path.is_file()):
        raise UserError(f"{bundle}: no int8 model; run `picstory export {bundle.parent} --format onnx-int8` first")
    if record is None or not path.is_file():
        export(bundle, fmt, verbose=False)
        meta = read_meta(bundle)
        record = meta["exports"][fmt]
    data = path.read_bytes()
    if fmt == "openvino":
        data += (bundle / record.get("weights_file", "model.openvino.bin")).read_bytes()
    if hashlib.sha256(data).hexdigest() != record.get("sha256"):
        raise UserError(f"{path}: sha256 does not match model.json (modified or corrupt); run "
                        f"`picstory export {bundle} --format {fmt}` again")
    if fmt == "openvino":
        from .openvino_ir import OpenVINOSession

        return OpenVINOSession(path, threads or torch.get_num_threads()), meta
    try:
        return make_session(data, threads), meta
    except Exception as e:  # onnxruntime raises its own exception types for a malformed model
        raise UserError(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:120]}); export again") \
            from None
