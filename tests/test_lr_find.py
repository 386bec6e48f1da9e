"""The LR range test: the suggestion rule on known curves, a real test on digits that leaves the model and the
random state alone, the lr-find files, and train(lr="auto")."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import yaml

import picstory
from picstory.pipeline.lr_find_run import lr_find
from picstory.pipeline.training_run import prepare
from picstory.training.lr_find import lr_schedule, steepest, suggest, suggest_lr, valley

DIGITS = dict(model="seed-mnist-cnn", batch_size=32)


def test_valley_by_hand():
    # longest decreasing run: indices 1..7 (3 → 0.5), 7 points counted as in fastai (start = end - length = 1);
    # the pick is start + length/3 + length/6 = 1 + 2 + 1 = 4
    losses = [3, 3, 3, 2.5, 2, 1, 0.8, 0.5, 2, 9]
    lrs = list(np.geomspace(1e-6, 1, len(losses)))
    assert valley(lrs, losses) == 4
    assert steepest(lrs, losses) == 4  # 2 → 1 is the largest drop per log-step


def test_suggestion_lies_on_the_descent_of_a_synthetic_curve():
    lrs = list(np.geomspace(1e-7, 10, 100))
    # flat until 1e-4, a straight descent in log-LR down to 1e-1, then an explosion
    losses = [2.3 if lr < 1e-4 else 2.3 - 0.6 * math.log10(lr / 1e-4) if lr < 1e-1 else 0.5 + 40 * (lr - 0.1)
              for lr in lrs]
    found = suggest(lrs, losses)
    assert 1e-4 < found["suggested_lr"] < 1e-1
    assert 1e-4 < found["steep_lr"] < 1e-1
    assert 5e-2 < found["min_loss_lr"] <= 1.5e-1


def test_schedule_spans_the_range():
    assert lr_schedule(0) == pytest.approx(1e-7)
    assert lr_schedule(99) == pytest.approx(10.0)
    assert lr_schedule(50, steps=101) == pytest.approx(math.sqrt(1e-7 * 10))


def test_range_test_on_digits_leaves_model_and_rng_untouched():
    cfg, td, device, autocast = prepare("builtin:digits", **DIGITS)
    weights = {k: v.clone() for k, v in td.model.state_dict().items()}
    rng = torch.get_rng_state()
    found = suggest_lr(cfg, td, device, autocast)
    assert math.isfinite(found["suggested_lr"]) and 1e-7 <= found["suggested_lr"] <= 10
    assert found["method"] == "valley"
    lrs, losses = found["lrs"], found["losses"]
    assert len(lrs) == len(losses) == found["steps"] and 20 <= len(lrs) <= 100
    assert all(a < b for a, b in zip(lrs, lrs[1:])) and all(math.isfinite(v) for v in losses)
    assert min(losses) < losses[0]  # the loss did come down somewhere: the copy really trained
    assert all(torch.equal(v, td.model.state_dict()[k]) for k, v in weights.items())
    assert torch.equal(torch.get_rng_state(), rng)
    json.dumps(found, allow_nan=False)  # lr_find.json is strict JSON


def test_lr_find_writes_json_and_plot(tmp_path):
    r = lr_find("builtin:digits", out=str(tmp_path / "lf"), **DIGITS)
    saved = json.loads((tmp_path / "lf" / "lr_find.json").read_text())
    assert saved["suggested_lr"] == r["suggested_lr"] and saved["model"] == "seed-mnist-cnn"
    assert (tmp_path / "lf" / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert r["plot"] == str(tmp_path / "lf" / "lr_find.png")


def metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_train_lr_auto_records_the_found_lr_and_trains_as_if_given(tmp_path):
    opts = dict(**DIGITS, epochs=1, out=str(tmp_path), progress=False, schedule="constant")
    auto = picstory.train("builtin:digits", lr="auto", name="auto", **opts)
    found = json.loads((auto.path / "lr_find.json").read_text())["suggested_lr"]
    lr = yaml.safe_load((auto.path / "config.yaml").read_text())["train"]["lr"]
    assert lr == f"{found:.3g}"
    assert auto.summary["lr"] == pytest.approx(float(lr))
    # the range test ran on a copy with the random state put back: the same run as one given that LR
    given = picstory.train("builtin:digits", lr=lr, name="given", **opts)
    assert metrics(auto.path) == metrics(given.path)
