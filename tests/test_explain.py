"""Explanations: Grad-CAM points at what decides the class (pointing game), and not for a randomised model; the
layer is found for seed CNNs, PicNet and timm convnets, and a model without one is a one-line error; overlays from
predict --explain; nearest training images and their cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from picstory.cli import main
from picstory.data.batches import normalize
from picstory.evaluation.explain import Explainer, ExplainError, explain_images, find_layer, overlay_png, pointing_hit
from picstory.evaluation.neighbours import cached, nearest
from picstory.models import create_model

MEAN, STD = (0.5,) * 3, (0.25,) * 3
SIZE, SQUARE = 32, 6


def squares(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int, int, int]]]:
    """Noise (0–170) with one 6×6 square at a random place: bright red, green or blue — the class."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 170, (n, 3, SIZE, SIZE)).astype(np.uint8)
    y = rng.integers(0, 3, n)
    boxes = []
    for i in range(n):
        top, left = rng.integers(0, SIZE - SQUARE, 2)
        x[i, :, top:top + SQUARE, left:left + SQUARE] = 40
        x[i, y[i], top:top + SQUARE, left:left + SQUARE] = 255
        boxes.append((int(top), int(left), SQUARE, SQUARE))
    return torch.from_numpy(x), torch.from_numpy(y), boxes


def hit_rate(model: nn.Module, x: torch.Tensor, boxes) -> float:
    heat, _ = explain_images(model, x, MEAN, STD)
    assert heat.shape == (len(x), SIZE, SIZE) and heat.min() >= 0 and heat.max() <= 1
    return float(np.mean([pointing_hit(h, b) for h, b in zip(heat, boxes)]))


@pytest.mark.parametrize("name", ["seed-cifar-cnn", "picnet-s"])
def test_pointing_game_trained_model_points_at_the_square_shuffled_does_not(name):
    torch.manual_seed(0)
    x_train, y_train, _ = squares(800, seed=1)
    x_test, y_test, boxes = squares(100, seed=2)
    model = create_model(name, 3, 3, img_size=SIZE)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    xn = normalize(x_train, MEAN, STD)
    for _ in range(4):
        model.train()
        for idx in torch.randperm(len(xn)).split(64):
            loss = nn.functional.cross_entropy(model(xn[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(normalize(x_test, MEAN, STD)).argmax(1) == y_test).float().mean().item()
    assert accuracy > 0.9
    trained = hit_rate(model, x_test, boxes)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the model-randomisation test: the same weights, each tensor's values shuffled
        for p in model.parameters():
            p.copy_(p.flatten()[torch.randperm(p.numel(), generator=g)].view_as(p))
    shuffled = hit_rate(model, x_test, boxes)
    assert trained >= 0.9, f"trained model points inside the square for {trained:.0%} of test images"
    assert shuffled < 0.5, f"shuffled model still points inside for {shuffled:.0%}"


@pytest.mark.parametrize("name, in_chans, size, layer", [
    ("seed-mnist-cnn", 1, 28, "conv2"),
    ("picnet-s", 3, 32, None),
    ("test_resnet", 3, 224, "layer4"),  # timm: the last stage named in feature_info
    ("test_efficientnet", 3, 224, "blocks.4"),
    ("test_convnext", 3, 224, "stages.3"),
    ("test_resnet", 3, 64, "layer2"),  # layer4 is 2×2 at 64 px: the deepest map at least 7 wide instead
])
def test_the_deepest_feature_map_is_explained(name, in_chans, size, layer):
    model = create_model(name, 4, in_chans, img_size=size).eval()
    chosen, module = find_layer(model, in_chans, size, name)
    if layer:
        assert chosen == layer
    heat, cls = Explainer(model, in_chans, size, name).heatmaps(torch.randn(2, in_chans, size, size))
    assert heat.shape == (2, size, size) and cls.shape == (2,)


def test_a_model_without_convolutions_is_a_one_line_error():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 3))
    with pytest.raises(ExplainError, match="model my-mlp has no convolution layers") as e:
        Explainer(mlp, 3, 8, "my-mlp")
    assert "\n" not in str(e.value)
    vit = create_model("test_vit", 3, 3, img_size=160)
    with pytest.raises(ExplainError, match="test_vit has no convolutional feature map"):
        find_layer(vit, 3, 160, "test_vit")


def test_overlay_is_an_enlarged_png():
    from io import BytesIO

    from PIL import Image

    img = Image.open(BytesIO(overlay_png(np.zeros((28, 28, 1), np.uint8), np.linspace(0, 1, 784).reshape(28, 28))))
    assert img.format == "PNG" and img.size == (224, 224) and img.mode == "RGB"


def test_nearest_and_the_cache(tmp_path):
    bank = np.eye(4, dtype=np.float32)
    idx, sims = nearest(np.array([[0.9, 0.1, 0, 0]], np.float32), bank, 2)
    assert idx.tolist() == [[0, 1]] and sims[0, 0] == pytest.approx(0.9)
    calls = []

    def compute():
        calls.append(1)
        return {"features": bank, "logits": 2 * bank, "labels": list("abcd"), "paths": ["p0", "p1", "p2", "p3"]}

    path = tmp_path / "embeddings.npz"
    first = cached(path, {"weights_sha256": "x"}, compute)
    again = cached(path, {"weights_sha256": "x"}, compute)
    assert len(calls) == 1 and again["labels"] == list("abcd") and np.array_equal(again["features"], bank)
    assert np.array_equal(again["logits"], 2 * bank)
    cached(path, {"weights_sha256": "retrained"}, compute)  # another model: computed again
    cached(path, {"weights_sha256": "retrained"}, compute, paths=["p3", "p2", "p1", "p0"])  # other images
    assert len(calls) == 3 and first["paths"] == ["p0", "p1", "p2", "p3"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A seed CNN trained for 2 epochs on a generated folder (its eval writes the gallery's heat maps)."""
    import shutil

    from conftest import make_folder

    root = tmp_path_factory.mktemp("explain")
    data = make_folder(root / "data", n_per_class=16, size=28, splits=("train", "test"))
    for i, blob in enumerate(sorted((data / "test" / "blob").iterdir())[:3]):  # sure mistakes for the gallery
        shutil.copy(blob, data / "test" / "vertical" / f"mislabelled_{i}.png")
    assert main([
        "train", str(data), "--model", "seed-mnist-cnn", "--epochs", "2", "--img-size", "28", "--optimizer", "adam",
        "--lr", "0.003", "--out", str(root / "runs"), "--name", "r", "--quiet"]) == 0
    return root / "runs" / "r", data


def test_the_training_set_is_embedded_once_after_training(tmp_path, monkeypatch):
    """The unknown bank, the gallery's neighbours and the label-error scan share one pass over the training set."""
    import picstory
    from conftest import make_folder
    from picstory.evaluation import neighbours

    passes = []
    real = neighbours.embed_with_logits

    def counting(model, images, *args, **kwargs):
        passes.append(len(images))
        return real(model, images, *args, **kwargs)

    monkeypatch.setattr(neighbours, "embed_with_logits", counting)
    data = make_folder(tmp_path / "data", n_per_class=30, size=28)
    run = picstory.train(str(data), model="seed-mnist-cnn", epochs=1, img_size=28, out=str(tmp_path / "runs"),
                         progress=False)
    n_train = sum(run.summary["class_counts"]["train"].values())
    assert passes.count(n_train) == 1
    result = json.loads((run.path / "eval.json").read_text())
    assert "suspects" in result and "ood" in json.loads((run.path / "model" / "model.json").read_text())


def test_predict_explain_and_similar(trained_run, tmp_path, capsys):
    import json

    run, data = trained_run
    img = sorted((data / "train" / "blob").iterdir())[0]
    capsys.readouterr()
    assert main(["predict", str(run), str(img), str(img), "--explain", str(tmp_path / "why"), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["explanation"] for r in out] == [str(tmp_path / "why" / "blob_000.gradcam.png"),
                                               str(tmp_path / "why" / "blob_000-2.gradcam.png")]
    assert all((tmp_path / "why" / n).read_bytes()[:4] == b"\x89PNG" for n in ("blob_000.gradcam.png",))
    assert (run / "embeddings.npz").is_file()  # written by the run's own evaluation
    written = (run / "embeddings.npz").stat().st_mtime_ns
    assert main(["similar", str(run), str(img), "--k", "3", "--format", "json"]) == 0
    assert (run / "embeddings.npz").stat().st_mtime_ns == written  # computed once, read since
    nn_ = json.loads(capsys.readouterr().out)[0]["neighbours"]
    assert [n["rank"] for n in nn_] == [1, 2, 3] and nn_[0]["similarity"] >= nn_[-1]["similarity"]
    assert nn_[0]["path"] == "train/blob/blob_000.png" and nn_[0]["similarity"] > 0.99  # a training image: itself
    assert all(n["label"] in ("horizontal", "vertical", "blob") for n in nn_)
    assert main(["similar", str(run), str(img), "--format", "table"]) == 0
    assert capsys.readouterr().out.splitlines()[0].split() == ["input", "rank", "label", "training", "image",
                                                                "similarity"]


def test_report_gallery_shows_heat_maps_and_neighbours(trained_run):
    import json

    run, _ = trained_run
    mistakes = json.loads((run / "eval.json").read_text())["mistakes"]
    html = (run / "report.html").read_text()
    assert {m["path"] for m in mistakes} >= {f"test/vertical/mislabelled_{i}.png" for i in range(3)}
    for m in mistakes:
        assert m["heatmap"].startswith("data:image/png;base64,") and len(m["neighbours"]) == 3
        assert all(n["path"].startswith("train/") for n in m["neighbours"])
    assert html.count('alt="Grad-CAM heat map"') >= len(mistakes) and "nearest training images" in html


def test_serve_explain_returns_an_overlay_and_keeps_the_limits(tmp_path):
    import base64

    from fastapi.testclient import TestClient

    from imagegen import png_header_only
    from picstory.deploy.predict import Predictor
    from picstory.deploy.serve import create_app
    from test_serve import image, make_run

    run = make_run(tmp_path / "run")
    with TestClient(create_app(run, log_path=tmp_path / "log.sqlite")) as client:
        r = client.post("/predict?explain=1", content=image(1), headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        ex = r.json()["explanation"]
        assert ex["method"] == "Grad-CAM" and ex["layer"] == "conv2"
        assert ex["label"] == r.json()["predictions"][0]["label"]
        assert base64.b64decode(ex["png_base64"])[:4] == b"\x89PNG"
        assert "explanation" not in client.post("/predict", content=image(1),
                                                headers={"content-type": "image/png"}).json()
        big = client.post("/predict?explain=1", content=png_header_only(20000, 20000),
                          headers={"content-type": "image/png"})
        assert big.status_code == 413 and big.json()["error"]["code"] == "too_many_pixels"
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 3))
    meta = {"arch": "tiny-mlp", "classes": ["ant", "bee", "cat"], "in_chans": 1, "img_size": 28, "fit": "crop",
            "mean": [0.5], "std": [0.25]}
    with TestClient(create_app(Predictor(meta, model=mlp), log_path=tmp_path / "log2.sqlite")) as client:
        r = client.post("/predict?explain=1", content=image(2), headers={"content-type": "image/png"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "cannot_explain"
        assert "tiny-mlp has no convolution layers" in r.json()["error"]["message"]
        assert client.post("/predict", content=image(2), headers={"content-type": "image/png"}).status_code == 200
