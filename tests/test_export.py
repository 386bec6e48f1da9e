"""Export to ONNX / TorchScript: parity with the torch model, the ORT predictor, and no file after a failed check."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from picstory.deploy import export as export_mod
from picstory.deploy.export import export, parity_batch
from picstory.deploy.predict import load
from picstory.errors import UserError
from picstory.models import create_model
from picstory.models.bundle import load_bundle, save_bundle

pytest.importorskip("onnxruntime")
torch.set_num_threads(1)
CLASSES = [f"c{i}" for i in range(10)]


def make_bundle(directory, arch="seed-mnist-cnn", seed=0):
    torch.manual_seed(seed)
    model = create_model(arch, len(CLASSES), 1, img_size=28).eval()
    with torch.no_grad():
        for m in model.modules():  # BatchNorm with real statistics, so folding it must be right
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    meta = {"arch": arch, "num_classes": 10, "classes": CLASSES, "in_chans": 1, "img_size": 28, "fit": "crop",
            "mean": [0.286], "std": [0.353], "metrics": {}}
    return save_bundle(directory / "model", model, meta)


@pytest.fixture
def bundle(tmp_path):
    return make_bundle(tmp_path)


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        arr = (rng.random((28, 28)) * 40 + np.linspace(0, 200, 28)[None, :] * (i % 2)).astype(np.uint8)
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(arr).save(paths[-1])
    return paths


@pytest.mark.parametrize("arch", ["seed-mnist-cnn", "picnet-s"])
def test_onnx_export_passes_parity_and_records_it(tmp_path, arch, capsys):
    bundle = make_bundle(tmp_path, arch)
    record = export(bundle.parent, "onnx")
    assert (bundle / "model.onnx").is_file()
    parity = record["parity"]
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-4 and parity["top1_agreement"] == 1.0
    assert parity["images"] == 32
    assert "parity" in capsys.readouterr().out
    meta = json.loads((bundle / "model.json").read_text())
    assert meta["exports"]["onnx"]["output"]["name"] == "probabilities"
    assert meta["exports"]["onnx"]["input"]["shape"] == ["N", 1, 28, 28]
    assert not list(bundle.glob(".*"))


def test_onnx_predictor_agrees_with_torch(bundle, images):
    torch_p = load(bundle.parent)
    ort_p = load(bundle.parent, backend="onnx")  # exports on first use
    assert ort_p.backend == "onnx" and (bundle / "model.onnx").is_file()
    a = torch_p.predict(images, top_k=3)
    b = ort_p.predict(images, top_k=3, batch_size=3)
    for ra, rb in zip(a, b):
        assert [p["label"] for p in ra["predictions"]] == [p["label"] for p in rb["predictions"]]
        for p, q in zip(ra["predictions"], rb["predictions"]):
            assert abs(p["probability"] - q["probability"]) < 1e-4
    x = torch.stack([torch.from_numpy(np.array(Image.open(p)))[None] for p in images])
    np.testing.assert_allclose(ort_p.predict_proba(x, tta="flip"), torch_p.predict_proba(x, tta="flip"),
                               atol=1e-4, rtol=0)


def test_fixed_batch_export_and_caller_images(bundle, images):
    record = export(bundle, "onnx", opset=13, dynamic_batch=False, parity_images=images, verbose=False)
    assert record["input"]["shape"][0] == 1 and record["opset"] == 13
    assert record["parity"]["images"] == len(images) + export_mod.PARITY_RANDOM_IMAGES
    predictor = load(bundle, backend="onnx")
    assert all(r["error"] is None for r in predictor.predict(images, batch_size=4))


def test_torchscript_export_passes_parity(bundle, images):
    record = export(bundle, "torchscript", parity_images=images, verbose=False)
    assert record["parity"]["passed"] and record["file"] == "model.torchscript.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated but still loads
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(bundle / "model.torchscript.pt"))
    model, meta = load_bundle(bundle)
    x = torch.randn(7, 1, 28, 28)
    with torch.inference_mode():
        np.testing.assert_allclose(module(x).numpy(), torch.softmax(model(x), 1).numpy(), atol=1e-5, rtol=0)


def test_failed_parity_raises_and_leaves_no_file(bundle, monkeypatch):
    real = export_mod._run_exported

    def perturbed(path, fmt, x):
        out = real(path, fmt, x)
        out[:, 0] += 1e-3  # a broken export: probabilities off by more than the tolerance
        return out

    monkeypatch.setattr(export_mod, "_run_exported", perturbed)
    with pytest.raises(UserError, match="parity check failed"):
        export(bundle, "onnx", verbose=False)
    assert sorted(p.name for p in bundle.iterdir()) == ["model.json", "model.safetensors"]
    assert "exports" not in json.loads((bundle / "model.json").read_text())


def test_compare_counts_top1_and_ties():
    ref = np.array([[0.6, 0.4, 0.0], [0.50004, 0.49996, 0.0], [0.2, 0.3, 0.5]])
    same = export_mod.compare(ref, ref.copy())
    assert same["passed"] and same["max_abs_diff"] == 0 and same["top1_agreement"] == 1.0
    tie = ref.copy()
    tie[1] = [0.49997, 0.50003, 0.0]  # within 1e-4 and a numerical tie: reported, not failed
    r = export_mod.compare(ref, tie)
    assert r["passed"] and r["ties"] == 1 and r["top1_agreement"] == pytest.approx(2 / 3)
    flipped = ref.copy()
    flipped[0] = [0.47, 0.53, 0.0]  # torch margin 0.2 > atol: a real disagreement although every Δp ≤ atol
    r = export_mod.compare(ref, flipped, atol=0.15)
    assert r["max_abs_diff"] <= 0.15  # so only the top-1 rule can fail it
    assert not r["passed"] and r["ties"] == 0
    off = ref + np.array([2e-4, -2e-4, 0.0])
    assert not export_mod.compare(ref, off)["passed"]


def test_tampered_onnx_is_refused(bundle):
    export(bundle, "onnx", verbose=False)
    (bundle / "model.onnx").write_bytes((bundle / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(UserError, match="model.onnx.*sha256"):
        load(bundle, backend="onnx")


def test_parity_batch_is_seeded_and_shaped(bundle):
    meta = json.loads((bundle / "model.json").read_text())
    a, b = parity_batch(meta), parity_batch(meta)
    assert a.dtype == torch.uint8 and a.shape == (32, 1, 28, 28) and torch.equal(a, b)
    with pytest.raises(ValueError, match="uint8"):
        parity_batch(meta, torch.zeros(2, 3, 28, 28))


def test_unknown_format_is_a_user_error(bundle):
    with pytest.raises(UserError, match="tflite"):
        export(bundle, "tflite")
