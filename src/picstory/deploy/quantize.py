"""int8 ONNX: ONNX Runtime static quantization of the bundle's ``model.onnx``, kept only when a gate passes.

Static QDQ quantization with per-channel int8 weights and uint8 activations is what ONNX Runtime recommends for x86
CPUs. Its well-known failure modes are a model that is no faster (QDQ pairs the CPU kernels cannot fuse) and one whose
accuracy collapses (activation ranges calibrated on unrepresentative inputs). So the file is kept only when, on held-out
labelled images, its top-1 agrees with the fp32 model often enough, its accuracy does not drop too far, and its batch-1
latency beats the fp32 ONNX file measured here, side by side. Otherwise nothing is written and the error names the
failed condition with its numbers.

The gate's data comes from the caller (the pipeline re-opens the run's cache), so this module needs no data layer.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.batches import normalize
from ..errors import UserError
from ..files import fsync_dir, public_mode
from ..models.bundle import find_bundle, read_meta, update_meta
from ..options import EXPORT
from .export import FORMATS, OUTPUT_NAME, export, make_session, run_onnx

INT8 = "onnx-int8"
LATENCY_WARMUP, LATENCY_ROUNDS, LATENCY_SECONDS = 5, (20, 400), 2.0


class _Calibration:
    """ONNX Runtime's CalibrationDataReader protocol over a normalised float batch, one image at a time."""

    def __init__(self, x: np.ndarray, input_name: str):
        self._rows = iter([{input_name: x[i:i + 1]} for i in range(len(x))])

    def get_next(self) -> dict | None:
        return next(self._rows, None)

    def rewind(self) -> None:  # the minmax calibrator reads once; the protocol asks for it
        pass


def quantize_onnx(src: Path, dst: Path, calibration: np.ndarray) -> None:
    """Static QDQ quantization of ``src`` into ``dst``, activation ranges from ``calibration`` (normalised N×C×H×W)."""
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:  # pragma: no cover - onnxruntime ships the quantization tools
        raise UserError("int8 export needs onnxruntime with its quantization tools: pip install onnxruntime") from None
    import onnx

    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".quant.") as work:
        pre = Path(work) / "pre.onnx"
        # shape inference + graph optimisation first (BatchNorm folding) so the quantizer sees fused Conv nodes
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        graph = onnx.load(str(pre)).graph
        # the softmax output stays fp32: quantized probabilities would only cost precision at the very end
        keep_fp32 = [n.name for n in graph.node if n.op_type == "Softmax"]
        quantize_static(str(pre), str(dst), _Calibration(calibration.astype(np.float32), graph.input[0].name),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=keep_fp32)


def batch1_latency_ms(fp32: Any, int8: Any, x: np.ndarray) -> tuple[float, float]:
    """Median batch-1 latency of two sessions, interleaved so both see the same load on a shared machine."""
    one = np.ascontiguousarray(x[:1])
    name = fp32.get_inputs()[0].name
    for _ in range(LATENCY_WARMUP):
        fp32.run([OUTPUT_NAME], {name: one})
        int8.run([OUTPUT_NAME], {name: one})
    times: dict[int, list[float]] = {0: [], 1: []}
    start = time.perf_counter()
    for r in range(LATENCY_ROUNDS[1]):  # enough rounds for a stable median, bounded in time for big models
        if r >= LATENCY_ROUNDS[0] and time.perf_counter() - start > LATENCY_SECONDS:
            break
        for k, sess in ((0, fp32), (1, int8)):
            t = time.perf_counter()
            sess.run([OUTPUT_NAME], {name: one})
            times[k].append(time.perf_counter() - t)
    return float(np.median(times[0]) * 1e3), float(np.median(times[1]) * 1e3)


def gate(fp32_probs: np.ndarray, int8_probs: np.ndarray, labels: np.ndarray, latency: tuple[float, float],
         min_agreement: float, max_drop_points: float, require_faster: bool) -> dict:
    """The gate's figures and verdict; ``failed`` lists each failed condition as a sentence with its numbers."""
    agreement = float((fp32_probs.argmax(1) == int8_probs.argmax(1)).mean())
    acc32 = float((fp32_probs.argmax(1) == labels).mean())
    acc8 = float((int8_probs.argmax(1) == labels).mean())
    drop = (acc32 - acc8) * 100
    failed = []
    if agreement < min_agreement:
        failed.append(f"top-1 agreement with fp32 {agreement:.2%} < {min_agreement:.2%}")
    if drop > max_drop_points:
        failed.append(f"accuracy drop {drop:.2f} points ({acc32:.2%} → {acc8:.2%}) > {max_drop_points:g}")
    if require_faster and latency[1] >= latency[0]:
        failed.append(f"batch-1 latency {latency[1]:.3f} ms int8 is not below {latency[0]:.3f} ms fp32")
    return {"images": int(len(labels)), "top1_agreement": agreement, "fp32_accuracy": acc32, "int8_accuracy": acc8,
            "accuracy_drop_points": drop, "fp32_latency_ms": latency[0], "int8_latency_ms": latency[1],
            "speedup": latency[0] / latency[1] if latency[1] else float("nan"),
            "min_agreement": min_agreement, "max_accuracy_drop": max_drop_points, "require_faster": require_faster,
            "failed": failed, "passed": not failed}


def export_int8(run_or_bundle: str | Path, calibration: torch.Tensor, images: torch.Tensor, labels: np.ndarray,
                split: str = "test", min_agreement: float = EXPORT.min_agreement,
                max_accuracy_drop: float = EXPORT.max_accuracy_drop, require_faster: bool = EXPORT.require_faster,
                verbose: bool = True) -> dict:
    """Quantize the bundle's ONNX model to ``model.int8.onnx`` calibrated on ``calibration`` (uint8 N×C×H×W), gated
    on ``images``/``labels`` of ``split``; returns the record stored in model.json under ``exports["onnx-int8"]``."""
    bundle = find_bundle(run_or_bundle)
    meta = read_meta(bundle)
    if not len(calibration):
        raise UserError(f"{bundle}: no calibration images for the int8 export")
    if not len(labels):
        raise UserError(f"{bundle}: no labelled images to check the int8 model on")
    fp32_path = bundle / FORMATS["onnx"]
    if "onnx" not in meta.get("exports", {}) or not fp32_path.is_file():
        export(bundle, "onnx", verbose=verbose)
        meta = read_meta(bundle)
    mean, std = tuple(meta["mean"]), tuple(meta["std"])
    calib = normalize(calibration, mean, std).float().numpy()
    x = normalize(images, mean, std).float()
    final = bundle / FORMATS[INT8]
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=bundle)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        quantize_onnx(fp32_path, tmp, calib)
        fp32, int8 = make_session(fp32_path.read_bytes()), make_session(tmp.read_bytes())
        step = 256 if meta["exports"]["onnx"].get("dynamic_batch", True) else 1
        p32, p8 = _probs(fp32, x, step), _probs(int8, x, step)
        verdict = gate(p32, p8, np.asarray(labels), batch1_latency_ms(fp32, int8, x.numpy()), min_agreement,
                       max_accuracy_drop, require_faster)
        verdict.update(split=split, calibration_images=int(len(calib)))
        if not verdict["passed"]:
            raise UserError(f"{final}: int8 gate failed on {verdict['images']} {split} images: "
                            f"{'; '.join(verdict['failed'])}; nothing was written")
        data = tmp.read_bytes()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        public_mode(tmp)
        os.replace(tmp, final)
        fsync_dir(bundle)
    finally:
        tmp.unlink(missing_ok=True)
    record = {**meta["exports"]["onnx"], "file": final.name, "sha256": hashlib.sha256(data).hexdigest(),
              "quantization": {"format": "QDQ", "weights": "int8 per-channel", "activations": "uint8",
                               "calibration": "minmax"}, "gate": verdict}
    record.pop("parity", None)
    update_meta(bundle, exports={**meta.get("exports", {}), INT8: record})
    if verbose:
        print(f"exported {final} ({len(data) / 1e6:.2f} MB, fp32 {fp32_path.stat().st_size / 1e6:.2f} MB): "
              f"{verdict['images']} {split} images, top-1 agreement {verdict['top1_agreement']:.2%}, accuracy "
              f"{verdict['fp32_accuracy']:.2%} → {verdict['int8_accuracy']:.2%}, batch-1 "
              f"{verdict['fp32_latency_ms']:.2f} → {verdict['int8_latency_ms']:.2f} ms ({verdict['speedup']:.2f}×)")
    return record


def _probs(session: Any, x: torch.Tensor, batch: int = 256) -> np.ndarray:
    return np.concatenate([run_onnx(session, x[i:i + batch]) for i in range(0, len(x), batch)])
