"""--time-budget: duration parsing, the plan, the deadline callback, and one digits run inside a generous bound."""

from __future__ import annotations

import json
import time

import pytest
import torch
import yaml

import picstory
from picstory.config import parse_duration
from picstory.errors import ConfigError
from picstory.training.budget import MIN_FRACTION, REPORT_SECONDS, Costs, TimeBudget, enough, plan_for
from picstory.training.engine import StopTraining


def test_parse_duration():
    assert parse_duration("90s") == 90 and parse_duration("10m") == 600 and parse_duration("1h") == 3600
    assert parse_duration("600") == 600 and parse_duration("1.5m") == 90
    for bad in ("soon", "10q", "0s", "-1m", "m"):
        with pytest.raises(ConfigError, match="time_budget"):
            parse_duration(bad)


def test_bad_budget_is_a_config_error(runs_dir):
    with pytest.raises(ConfigError, match="time_budget.*soon"):
        picstory.train("builtin:digits", time_budget="soon", out=str(runs_dir), progress=False)


def test_budget_with_folds_is_refused(runs_dir):
    with pytest.raises(ConfigError, match="--folds"):
        picstory.train("builtin:digits", time_budget="1m", folds=3, out=str(runs_dir), progress=False)


def costs(epoch_train_s: float = 9.0, final_images: int = 100) -> Costs:
    # 90 steps of 0.1 s + 100 validation images of 0.01 s = 10 s an epoch; test: 100 × 0.01 s + report
    return Costs("m", step_s=epoch_train_s / 90, eval_image_s=0.01, steps_per_epoch=90, n_val=100,
                 n_test=final_images)


def test_plan_fits_the_budget():
    c = costs()
    plan = plan_for(200.0, 10.0, c, max_epochs=100)
    assert plan.epochs == int((200 * 0.96 - 10 - c.final_s) // 10)
    assert plan.predicted_s <= 200 and enough(plan, 100)
    assert plan_for(200.0, 10.0, c, max_epochs=5).epochs == 5  # the user's --epochs is a ceiling
    short = plan_for(34.0, 10.0, c, max_epochs=100)  # 11.6 s left: one epoch of 10 s fits
    assert short.epochs == 1 and short.fraction == 1 and not enough(short, 100)  # the pipeline tries a smaller model


def test_a_budget_below_one_epoch_plans_part_of_an_epoch():
    c = costs()  # an epoch: 9 s of steps + 1 s of validation; after it: val, 2 × test (3 s) + REPORT_SECONDS
    assert c.final_s == pytest.approx(3 + REPORT_SECONDS)
    plan = plan_for(25.0, 10.0, c, max_epochs=100)  # 25 × 0.96 − 10 − 11 = 3 s left, 2 s of it for steps
    assert plan.epochs == 1 and plan.fraction == pytest.approx(2 / 9, abs=1e-3)
    assert plan.predicted_s <= 25.0 * 0.96 + 1e-6 and not enough(plan, 100)
    assert "1 epoch over 22% of the training set" in plan.line("25s")
    floor = plan_for(5.0, 10.0, c, max_epochs=100)  # over already: the smallest share, said so
    assert floor.fraction == MIN_FRACTION and "(over:" in floor.line("5s")


def test_epoch_fraction_draws_a_fresh_subset_each_epoch():
    from picstory.data.batches import BatchIterator

    images = torch.zeros(100, 1, 4, 4, dtype=torch.uint8)
    it = BatchIterator(images, torch.arange(100), 10, [0.0], [1.0])
    it.limit(0.25)
    assert len(it) == 3  # ceil(10 batches × 0.25)
    seen = []
    for epoch in range(2):
        it.set_epoch(epoch)
        seen.append(it.epoch_indices()[:30].tolist())
        assert sum(len(y) for _, y in it) == 30
    assert seen[0] != seen[1]
    it.limit(1.0)
    assert len(it) == 10


def test_epoch_fraction_trains_fewer_steps(runs_dir):
    from picstory.training.engine import Callback

    class Steps(Callback):
        n = 0

        def on_batch_end(self, L):
            Steps.n += 1

    run = picstory.train("builtin:digits", model="seed-mnist-cnn", epochs=2, epoch_fraction=0.25, batch_size=64,
                         out=str(runs_dir), progress=False, callbacks=[Steps()])
    n_train = sum(run.summary["class_counts"]["train"].values())
    assert run.summary["epochs_run"] == 2 and Steps.n == 2 * -(-(n_train // 64) // 4)  # drop_last, then a quarter
    cfg = yaml.safe_load((run.path / "config.yaml").read_text())
    assert cfg["train"]["epoch_fraction"] == 0.25


class FakeLearner:
    def __init__(self, epoch, epochs, seconds):
        self.epoch, self.epochs, self.metrics = epoch, epochs, {"seconds": seconds}


def test_deadline_callback():
    soon = TimeBudget(time.perf_counter() + 5.0, epoch_s=1.0)
    soon.on_epoch_end(FakeLearner(1, 10, seconds=1.0))  # 5 s left, epochs take 1 s: go on
    with pytest.raises(StopTraining, match="time budget"):
        soon.on_epoch_end(FakeLearner(2, 10, seconds=8.0))  # the last epoch took 8 s: the next would overrun
    past = TimeBudget(time.perf_counter() - 1.0, epoch_s=1.0)
    past.on_batch_end(FakeLearner(0, 10, 1.0))  # never stops before one epoch is done: nothing to keep yet
    with pytest.raises(StopTraining, match="deadline"):
        past.on_batch_end(FakeLearner(1, 10, 1.0))


def test_digits_run_keeps_its_budget(runs_dir, capsys):
    budget = 30.0
    start = time.perf_counter()
    run = picstory.train("builtin:digits", time_budget="30s", out=str(runs_dir), name="budget")
    wall = time.perf_counter() - start
    tb = run.summary["time_budget"]
    assert tb["budget_s"] == budget and 1 <= tb["epochs"] <= 30  # picnet-m's 10 preset epochs, ×3 at most
    assert "time budget 30s:" in capsys.readouterr().err  # the plan, in one line
    cfg = yaml.safe_load((run.path / "config.yaml").read_text())
    assert cfg["train"]["epochs"] == tb["epochs"] and cfg["train"]["time_budget"] == "30s"
    assert cfg["model"]["model"] == tb["model"]
    saved = json.loads((run.path / "summary.json").read_text())
    assert saved["time_budget"]["actual_s"] == pytest.approx(wall, abs=2.0)
    # generous: on a shared 2-core machine the steps alone can overrun the budget (then one epoch is planned), and
    # the load can change after the steps were timed; without the plan and the deadline this run trains 30 epochs
    assert wall < max(3 * budget, 1.5 * tb["predicted_s"] + 10)
    assert run.summary["epochs_run"] <= tb["epochs"] and run.summary["test_accuracy"] is not None


def test_user_model_and_epochs_are_kept(runs_dir):
    run = picstory.train("builtin:digits", time_budget="3s", model="seed-mnist-cnn", epochs=2, out=str(runs_dir),
                         progress=False)
    tb = run.summary["time_budget"]
    assert tb["model"] == "seed-mnist-cnn" and 1 <= tb["epochs"] <= 2
