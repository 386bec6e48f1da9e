"""OpenVINO: the bundle's ONNX model converted to OpenVINO IR (``model.openvino.xml`` + ``.bin``) and run on the CPU.

Inference runs at fp32 (``INFERENCE_PRECISION_HINT=f32``). On CPUs with AMX or AVX512-BF16, OpenVINO otherwise
switches to bf16 by itself, which is faster but moves probabilities by ~5e-4 — beyond the export's parity tolerance,
so picstory would be serving a different model from the one it checked.

``export.py`` drives the export (temp files, parity check, model.json); this module only converts and runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError

XML, BIN = "model.openvino.xml", "model.openvino.bin"


def _ov():
    try:
        import openvino
    except ImportError:
        raise UserError("the OpenVINO format and backend need OpenVINO: pip install 'picstory[openvino]'") from None
    return openvino


def write_ir(onnx_path: Path, xml_path: Path) -> None:
    """Convert ``onnx_path`` to IR at ``xml_path`` (its weights go to the .bin beside it), weights kept in fp32."""
    ov = _ov()
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)


class OpenVINOSession:
    """A compiled OpenVINO model behind ONNX Runtime's ``run(outputs, feeds)`` call, so the predictor, the server and
    the parity check treat both engines alike."""

    def __init__(self, xml_path: str | Path, threads: int | None = None):
        ov = _ov()
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = ov.Core().compile_model(str(xml_path), "CPU", config)
        except RuntimeError as e:
            raise UserError(f"{xml_path}: OpenVINO cannot load it ({str(e).splitlines()[0][:120]}); export again "
                            "with --format openvino") from None
        self.request = self.compiled.create_infer_request()
        self.version = ov.__version__

    def run(self, outputs: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        (x,) = feeds.values()
        result = self.request.infer({0: np.ascontiguousarray(x)})
        return [np.asarray(result[self.compiled.output(0)]).copy()]
