"""picstory tune: the declared space and its bad input, pruning through the engine's events, a resumable study."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import pytest

from picstory import cli
from picstory.compare import tune as tune_mod
from picstory.compare.tune import OptunaPruning, parse_space, tune
from picstory.errors import ConfigError, UserError
from picstory.training.engine import StopTraining

optuna = pytest.importorskip("optuna")
FAST = dict(model="seed-mnist-cnn", epochs=2, batch_size=16, img_size=20, hflip=0.0)


def test_space_kinds_and_defaults():
    dims = parse_space(["lr=1e-4..1e-1", "img_size=16..32", "model=seed-mnist-cnn,picnet-s", "drop_rate=0..0.5"])
    assert dims["lr"] == {"kind": "float", "low": 1e-4, "high": 0.1, "log": True, "text": "0.0001..0.1 (log)"}
    assert dims["img_size"]["kind"] == "int" and not dims["img_size"]["log"]
    assert dims["model"] == {"kind": "choice", "choices": ["seed-mnist-cnn", "picnet-s"],
                             "text": "seed-mnist-cnn,picnet-s"}
    assert parse_space(["drop_rate=0.01..0.5:log"])["drop_rate"]["log"]
    assert set(parse_space(None)) == {"lr", "optimizer", "weight_decay"}


@pytest.mark.parametrize("space, message", [
    (["lrr=1e-4..1e-1"], r"unknown config key 'lrr' \(did you mean lr\?\)"),
    (["lr=1e-2..1e-3"], r"lr=1e-2..1e-3: empty range"),
    (["weight_decay=0.1..0.1"], r"empty range"),
    (["weight_decay=0..0.1"], r"log-uniform range needs LOW > 0"),
    (["optimizer=adam..sgd"], r"'optimizer' is not a number; list its choices"),
    (["optimizer=adam,adamm"], r"'optimizer' must be one of .*did you mean adam"),
    (["optimizer=adam"], r"one choice is not a search"),
    (["optimizer="], r"empty choice"),
    (["seed=0..5"], r"cannot vary 'seed'"),
    (["drop_rate=0..2"], r"'drop_rate' must be ≤ 0.9"),
    (["lr=1e-3..1e-2:cubic"], r"scale must be :log or :linear"),
    (["nonsense"], r"expected KEY=LOW..HIGH, KEY=A,B or a YAML space file"),
])
def test_bad_space_is_one_clear_error(space, message):
    with pytest.raises(ConfigError, match=message):
        parse_space(space)


def test_bad_trials_and_budget_fail_before_anything_is_written(gray_folder, runs_dir, capsys):
    assert cli.main(["tune", str(gray_folder), "--trials", "0", "--out", str(runs_dir)]) != 0
    assert capsys.readouterr().err.strip() == "error: --trials must be ≥ 1, got 0"
    with pytest.raises(ConfigError, match="--budget-minutes must be > 0"):
        tune(str(gray_folder), 2, budget_minutes=0, out=str(runs_dir))
    with pytest.raises(ConfigError, match="'lr' is both in --space and a fixed option"):
        tune(str(gray_folder), 2, space=["lr=1e-3..1e-2"], out=str(runs_dir), lr="1e-3")
    assert not runs_dir.exists()


def _learner(epoch, val_acc, epochs=5, history=()):
    return SimpleNamespace(epoch=epoch, epochs=epochs, metrics={"val_acc": val_acc}, history=list(history))


def test_median_pruning_stops_a_trial_behind_the_earlier_ones():
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    good = study.ask()
    for epoch in range(1, 4):
        OptunaPruning(good).on_epoch_end(_learner(epoch, 0.9))
    study.tell(good, 0.9)
    bad, cb = study.ask(), None
    cb = OptunaPruning(bad)
    cb.on_fit_start(_learner(1, 0.2, history=[{"epoch": 1, "val_acc": 0.2}]))  # a resumed trial's past epochs
    with pytest.raises(StopTraining, match=r"pruned at epoch 2: validation accuracy 0\.1000 behind"):
        cb.on_epoch_end(_learner(2, 0.1))
    assert cb.pruned_at == 2 and bad.storage.get_trial(bad._trial_id).intermediate_values == {1: 0.2, 2: 0.1}


def test_study_writes_runs_and_report_and_resumes_an_interrupted_trial(gray_folder, tmp_path, monkeypatch):
    out = tmp_path / "tunes"
    real = OptunaPruning.on_epoch_end
    calls = {"n": 0}

    def interrupt_second_trial(self, L):  # Ctrl-C during trial 1's second epoch, after its first checkpoint
        calls["n"] += 1
        if self.trial.number == 1 and L.epoch == 2 and calls.setdefault("once", True):
            calls["once"] = False
            raise KeyboardInterrupt
        return real(self, L)

    monkeypatch.setattr(OptunaPruning, "on_epoch_end", interrupt_second_trial)
    space = ["lr=1e-3..1e-2", "optimizer=adamw,sgd-momentum"]
    with pytest.raises(KeyboardInterrupt):
        tune(str(gray_folder), 3, space=space, out=str(out), name="t", progress=False, **FAST)
    study_dir = out / "t"
    assert (study_dir / "trial-000" / "summary.json").is_file() and (study_dir / "tune.html").is_file()
    assert (study_dir / "trial-001" / "checkpoints" / "last.pt").is_file()

    result = tune(str(gray_folder), 3, space=space, out=str(out), name="t", progress=False, **FAST)
    rows = result["trials"]
    assert [r["run"] for r in rows] == ["trial-000", "trial-001", "trial-003"]  # 1 continued in its own folder
    assert all(r["state"] == "COMPLETE" and r["epochs"] == 2 for r in rows)
    resumed = json.loads((study_dir / "trial-001" / "summary.json").read_text())
    assert resumed["epochs_run"] == 2 and not (study_dir / "trial-001-2").exists()
    best = max(rows, key=lambda r: r["value"])
    assert result["best"]["value"] == best["value"]
    with open(study_dir / "trials.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["run"] for t in table] == ["trial-000", "trial-001", "trial-003"] and set(table[0]) >= {"lr", "optimizer"}
    html = (study_dir / "tune.html").read_text()
    assert "Optimisation history" in html and "Parameter importances" in html and 'class="best"' in html
    assert set(result["importances"]) == {"lr", "optimizer"}

    again = tune(str(gray_folder), 3, space=space, out=str(out), name="t", progress=False, **FAST)
    assert len(again["trials"]) == 3  # nothing left to run
    with pytest.raises(UserError, match="holds a different study"):
        tune(str(gray_folder), 3, space=["lr=1e-3..1e-1"], out=str(out), name="t", progress=False, **FAST)


def test_missing_optuna_names_the_extra(monkeypatch, gray_folder, runs_dir):
    import builtins

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "optuna" else real_import(name, *a, **k))
    with pytest.raises(UserError, match=r"pip install 'picstory\[tune\]'"):
        tune_mod.tune(str(gray_folder), 2, out=str(runs_dir))
