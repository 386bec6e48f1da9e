"""int8 export: static QDQ quantization gated on agreement, accuracy and latency; nothing kept when the gate fails."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

import picstory
from conftest import make_folder
from picstory import cli
from picstory.deploy import quantize
from picstory.deploy.predict import load
from picstory.deploy.quantize import export_int8, gate
from picstory.errors import UserError
from picstory.pipeline.int8_run import export_int8_run, run_images

pytest.importorskip("onnxruntime.quantization")
torch.set_num_threads(1)
FAST = dict(model="seed-mnist-cnn", epochs=6, batch_size=16, img_size=20, lr="3e-3", hflip=0.0, progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    data = make_folder(root / "data", n_per_class=40)
    return picstory.train(str(data), out=str(root / "runs"), name="r", **FAST).path


def meta_of(run):
    return json.loads((run / "model" / "model.json").read_text())


def test_int8_export_passes_the_gate_and_serves_predictions(trained, capsys):
    record = export_int8_run(trained, require_faster=False)  # tiny models are not faster in int8; no timing here
    g = record["gate"]
    assert (trained / "model" / "model.int8.onnx").is_file() and g["passed"] and g["split"] == "test"
    assert g["top1_agreement"] >= 0.99 and g["accuracy_drop_points"] <= 0.5 and g["calibration_images"] > 0
    assert meta_of(trained)["exports"]["onnx-int8"]["quantization"]["weights"] == "int8 per-channel"
    # the QDQ graph really is quantized: int8 weights and QuantizeLinear nodes
    import onnx

    graph = onnx.load(str(trained / "model" / "model.int8.onnx")).graph
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)
    assert "top-1 agreement 100.00%" in capsys.readouterr().out
    card = (trained / "model" / "MODEL_CARD.md").read_text()  # the card lists the kept file and its gate
    assert "`model.int8.onnx` (onnx-int8)" in card and "int8 gate on 12 test images: agreement 100.0%" in card

    images = sorted((trained.parent.parent / "data").rglob("*.png"))[::20]
    ref, q = load(trained).predict(images), load(trained, backend="onnx-int8")
    assert q.backend == "onnx-int8"
    got = q.predict(images)
    assert [r["predictions"][0]["label"] for r in got] == [r["predictions"][0]["label"] for r in ref]

    from fastapi.testclient import TestClient

    from picstory.deploy.serve import create_app

    buf = io.BytesIO()
    Image.open(images[0]).save(buf, format="PNG")
    with TestClient(create_app(trained, backend="onnx-int8", log_path=trained / "int8-log.sqlite")) as c:
        r = c.post("/predict", files={"file": ("a.png", buf.getvalue(), "image/png")})
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][0]["label"] == ref[0]["predictions"][0]["label"]
        assert c.get("/model").json()["backend"] == "onnx-int8"


def test_gate_refuses_a_broken_calibration_and_keeps_nothing(trained):
    calib, images, labels, split = run_images(trained, 300)
    before = meta_of(trained).get("exports", {}).get("onnx-int8")
    target = trained / "model" / "model.int8.onnx"
    target.unlink(missing_ok=True)
    # all-black calibration images: every activation range collapses to what a black image produces, so real
    # inputs saturate — the "accuracy collapsed" failure of a careless static quantization
    with pytest.raises(UserError, match=r"int8 gate failed .*top-1 agreement with fp32 \d+\.\d+% < 99\.00%"):
        export_int8(trained, torch.zeros_like(calib[:50]), images, labels, split, require_faster=False)
    assert not target.exists()
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no temp files left
    assert meta_of(trained).get("exports", {}).get("onnx-int8") == before


def test_gate_names_each_failed_condition_with_its_numbers():
    labels = np.array([0, 1, 2, 0])
    p32 = np.eye(3)[labels]
    p8 = np.eye(3)[[0, 1, 2, 1]]
    v = gate(p32, p8, labels, (1.0, 2.0), min_agreement=0.99, max_drop_points=0.5, require_faster=True)
    assert not v["passed"] and len(v["failed"]) == 3
    assert "75.00% < 99.00%" in v["failed"][0] and "25.00 points" in v["failed"][1]
    assert "2.000 ms int8 is not below 1.000 ms fp32" in v["failed"][2]
    ok = gate(p32, p32, labels, (2.0, 1.0), 0.99, 0.5, True)
    assert ok["passed"] and ok["speedup"] == 2.0
    # the limits are the user's: a looser agreement floor and drop allowance accept the same model
    assert gate(p32, p8, labels, (2.0, 1.0), 0.7, 30.0, True)["passed"]


def test_cli_refusal_is_one_line_and_a_run_without_test_split_gates_on_val(tmp_path, capsys, monkeypatch):
    data = make_folder(tmp_path / "data", n_per_class=30)
    run = picstory.train(str(data), out=str(tmp_path / "runs"), name="v", test_fraction=0.0, **FAST).path
    assert cli.main(["predict", str(run), str(next(data.rglob("*.png"))), "--backend", "onnx-int8"]) == 1
    assert "no int8 model; run `picstory export" in capsys.readouterr().err
    # a machine where int8 is slower (as it is for a model this small): the latency condition refuses it
    monkeypatch.setattr(quantize, "batch1_latency_ms", lambda fp32, int8, x: (0.5, 0.75))
    assert cli.main(["export", str(run), "--format", "onnx-int8"]) != 0
    err = capsys.readouterr().err
    assert "no test split; the int8 gate uses its" in err and "validation images" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "0.750 ms int8 is not below 0.500 ms fp32" in last
    assert "nothing was written" in last and not (run / "model" / "model.int8.onnx").exists()
    assert cli.main(["export", str(run), "--format", "onnx-int8", "--no-require-faster"]) == 0
    assert meta_of(run)["exports"]["onnx-int8"]["gate"]["split"] == "val"


def test_openvino_export_is_parity_checked_and_serves_the_same_probabilities(trained):
    pytest.importorskip("openvino")
    from picstory.deploy.export import export

    record = export(trained, "openvino", verbose=False)
    bundle = trained / "model"
    assert (bundle / "model.openvino.xml").is_file() and (bundle / "model.openvino.bin").is_file()
    assert record["parity"]["passed"] and record["precision"] == "fp32"
    assert meta_of(trained)["exports"]["openvino"]["weights_file"] == "model.openvino.bin"
    images = sorted((trained.parent.parent / "data").rglob("*.png"))[::15]
    ref, ov = load(trained).predict(images, top_k=3), load(trained, backend="openvino")
    assert ov.backend == "openvino"
    for a, b in zip(ref, ov.predict(images, top_k=3)):
        assert [p["label"] for p in a["predictions"]] == [p["label"] for p in b["predictions"]]
        assert np.allclose([p["probability"] for p in a["predictions"]],
                           [p["probability"] for p in b["predictions"]], atol=1e-4)
    weights = bundle / "model.openvino.bin"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")  # a changed weight file is refused, not served
    with pytest.raises(UserError, match="sha256 does not match model.json"):
        load(trained, backend="openvino")
