"""Sweeps on scikit-learn's digits (seed-mnist-cnn, 1 epoch): outputs, skip and resume, refusals, failing cells,
repeats and parallel cells."""

from __future__ import annotations

import csv
import json

import pytest

from picstory.compare.cells import cell_command, outcome
from picstory.compare.sweep import make_cells, parse_grid, sweep, validate_grid
from picstory.compare.table import format_runs
from picstory.errors import ConfigError, UserError
from picstory.runs import list_runs
from picstory.training.engine import Callback

CELL = dict(model="seed-mnist-cnn", epochs=1, batch_size=32, progress=False)
GRID = ["optimizer=adam,sgd", "lr=1e-2,1e-3"]
NAMES = ["optimizer=adam,lr=1e-2", "optimizer=adam,lr=1e-3", "optimizer=sgd,lr=1e-2", "optimizer=sgd,lr=1e-3"]
COLUMNS = ["cell", "optimizer", "lr", "best_val_acc", "test_acc", "best_epoch", "epochs_run", "seconds", "stop_reason",
           "status"]


class Count(Callback):
    """Counts train() calls (every fit starts, even one with no epoch left) and epochs trained."""

    def __init__(self):
        self.fits, self.epochs = 0, 0

    def on_fit_start(self, learner):
        self.fits += 1

    def on_epoch_end(self, learner):
        self.epochs += 1


class InterruptOnce(Callback):
    def __init__(self, at_epoch: int):
        self.at_epoch, self.done = at_epoch, False

    def on_epoch_start(self, learner):
        if learner.epoch == self.at_epoch and not self.done:
            self.done = True
            raise KeyboardInterrupt


def read_csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One 2×2 sweep shared by the tests that read or re-run it (training is the slow part)."""
    root = tmp_path_factory.mktemp("sweep")
    count = Count()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PICSTORY_CACHE", str(root / "cache"))
        result = sweep("builtin:digits", GRID, out=str(root / "runs"), name="s", callbacks=[count], **CELL)
    return root / "runs" / "s", result, count


def again(path, **kw):
    count = Count()
    result = sweep("builtin:digits", GRID, out=str(path.parent), name=path.name, callbacks=[count], **CELL, **kw)
    return result, count


def mtimes(path):
    return {n: (path / n / "summary.json").stat().st_mtime_ns for n in NAMES}


def test_grid_writes_comparison(swept):
    path, result, count = swept
    assert count.fits == 4 and count.epochs == 4
    columns, rows = read_csv(path / "comparison.csv")
    assert columns == COLUMNS
    assert [r["cell"] for r in rows] == NAMES
    assert [(r["optimizer"], r["lr"]) for r in rows] == [("adam", "1e-2"), ("adam", "1e-3"), ("sgd", "1e-2"),
                                                         ("sgd", "1e-3")]
    for r in rows:
        assert r["status"] == "ok" and r["epochs_run"] == "1" and r["stop_reason"] == "max epochs"
        assert 0 <= float(r["best_val_acc"]) <= 1 and 0 <= float(r["test_acc"]) <= 1
        assert (path / r["cell"] / "config.yaml").is_file() and (path / r["cell"] / "model").is_dir()
    assert result["best"] == max(rows, key=lambda r: float(r["best_val_acc"]))["cell"]
    page = (path / "comparison.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # overlaid curves + the 2-D heatmap
    md = (path / "comparison.md").read_text()
    assert sum(line.startswith("| ") for line in md.splitlines()) == 1 + 4  # header + one row per cell
    assert "★" in result["table"] and "adam" in result["table"]
    record = json.loads((path / "sweep.json").read_text())
    assert record["grid"] == {"optimizer": ["adam", "sgd"], "lr": ["1e-2", "1e-3"]} and record["cells"] == NAMES
    # the cells are ordinary runs: `picstory runs` lists them
    listed = json.loads(format_runs(list_runs(path), "json", "test"))
    assert sorted(r["name"] for r in listed) == NAMES


def test_rerun_skips_finished_cells(swept):
    path, first, _ = swept
    before = mtimes(path)
    result, count = again(path)
    assert count.fits == 0 and count.epochs == 0
    assert mtimes(path) == before
    assert [r["best_val_acc"] for r in result["rows"]] == [r["best_val_acc"] for r in first["rows"]]


def test_rerun_resumes_or_restarts_only_unfinished_cells(swept):
    path, _, _ = swept
    before = mtimes(path)
    (path / NAMES[2] / "summary.json").unlink()  # as if stopped after its last checkpoint
    (path / NAMES[3] / "summary.json").unlink()  # as if it died before its first checkpoint
    for f in (path / NAMES[3] / "checkpoints").iterdir():
        f.unlink()
    result, count = again(path)
    assert count.fits == 2
    assert count.epochs == 1  # the resumed cell had no epoch left; the restarted one trained its one epoch
    after = mtimes(path)
    assert [after[n] == before[n] for n in NAMES] == [True, True, False, False]
    # restarted in its own folder, not beside it in a "-2" one
    assert sorted(d.name for d in path.iterdir() if d.is_dir()) == sorted(NAMES)
    assert [r["status"] for r in result["rows"]] == ["ok"] * 4


def test_interrupted_sweep_resumes_where_it_stopped(tmp_path):
    opts = {**CELL, "epochs": 2, "patience": 0}
    with pytest.raises(KeyboardInterrupt):
        sweep("builtin:digits", ["lr=1e-2,1e-3"], out=str(tmp_path), name="cut", callbacks=[InterruptOnce(1)], **opts)
    path = tmp_path / "cut"
    assert json.loads((path / "sweep.json").read_text())["results"]["lr=1e-2"]["status"] == "interrupted"
    assert not (path / "lr=1e-3").exists()
    count = Count()
    result = sweep("builtin:digits", ["lr=1e-2,1e-3"], out=str(tmp_path), name="cut", callbacks=[count], **opts)
    assert count.fits == 2 and count.epochs == 1 + 2  # the cut cell's second epoch, the other cell's two
    _, rows = read_csv(path / "comparison.csv")
    assert [(r["cell"], r["epochs_run"], r["status"]) for r in rows] == [("lr=1e-2", "2", "ok"), ("lr=1e-3", "2", "ok")]
    assert len(read_csv(path / "lr=1e-2" / "metrics.csv")[1]) == 2
    assert result["best"] in ("lr=1e-2", "lr=1e-3")


def test_different_sweep_in_the_same_folder_is_refused(swept):
    path, _, _ = swept
    with pytest.raises(UserError, match=r"grid lr: 1e-2,1e-3 → 1e-2,1e-4"):
        sweep("builtin:digits", ["optimizer=adam,sgd", "lr=1e-2,1e-4"], out=str(path.parent), name=path.name, **CELL)
    with pytest.raises(UserError, match=r"--epochs 1 → 2"):
        sweep("builtin:digits", GRID, out=str(path.parent), name=path.name, **{**CELL, "epochs": 2})
    with pytest.raises(UserError, match=r"grid hflip: \(not an axis\) → 0,0.5"):
        sweep("builtin:digits", GRID + ["hflip=0,0.5"], out=str(path.parent), name=path.name, **CELL)


@pytest.mark.parametrize("grid, message", [
    (["optimiser=adam,sgd"], r"unknown config key 'optimiser' \(did you mean optimizer"),
    (["epochs=1,two"], r"'epochs' must be int, got 'two'"),
    (["optimizer=adam,nadam"], r"'optimizer' must be one of .*got 'nadam'"),
    ([], r"empty grid"),
    (["lr="], r"--grid lr: empty value"),
    (["lr=1e-3,"], r"--grid lr: empty value"),
    (["data=builtin:digits,builtin:fashion-mnist"], r"cannot vary 'data'"),
    (["lr=1e-3,1e-3"], r"listed twice"),
    (["optimizer=adam", "optimizer=sgd"], r"'optimizer' is given twice"),
    (["lr"], r"expected KEY=V1,V2"),
    (["missing-grid.yaml"], r"grid file not found"),
])
def test_bad_grid_is_refused_before_any_training(tmp_path, grid, message):
    with pytest.raises(ConfigError, match=message):
        sweep("builtin:digits", grid, out=str(tmp_path / "runs"), **CELL)
    assert not (tmp_path / "runs").exists()


def test_grid_axis_and_fixed_option_clash(tmp_path):
    with pytest.raises(ConfigError, match=r"'lr' is both a grid axis and a fixed option"):
        sweep("builtin:digits", ["lr=1e-2,1e-3"], out=str(tmp_path), lr="1e-3", **CELL)
    with pytest.raises(ConfigError, match=r"unknown config key 'epoch'"):
        sweep("builtin:digits", ["lr=1e-2"], out=str(tmp_path), epoch=3)


def test_yaml_grid_names_and_seeds(tmp_path):
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text("optimizer: [adam, sgd-momentum]\nlr: [1e-2, 0.001]\nhflip: 0\n")
    axes = parse_grid(str(grid_file))
    assert axes == {"optimizer": ["adam", "sgd-momentum"], "lr": ["1e-2", 0.001], "hflip": [0]}
    cells = make_cells(validate_grid(axes, {}, 1), repeats=1, base_seed=0)
    assert [c.name for c in cells] == ["optimizer=adam,lr=1e-2,hflip=0", "optimizer=adam,lr=0.001,hflip=0",
                                       "optimizer=sgd-momentum,lr=1e-2,hflip=0",
                                       "optimizer=sgd-momentum,lr=0.001,hflip=0"]
    assert cells[1].values == {"optimizer": "adam", "lr": "0.001", "hflip": 0.0}
    repeated = make_cells(validate_grid(parse_grid(["batch-size=16,32"]), {}, 2), repeats=2, base_seed=5)
    assert [(c.name, c.seed, c.group) for c in repeated] == [
        ("batch_size=16,seed=5", 5, "batch_size=16"), ("batch_size=16,seed=6", 6, "batch_size=16"),
        ("batch_size=32,seed=5", 5, "batch_size=32"), ("batch_size=32,seed=6", 6, "batch_size=32")]
    with pytest.raises(ConfigError, match="--repeats varies the seed"):
        validate_grid({"seed": ["1", "2"]}, {}, 2)


def test_cell_command_line():
    task = {"data": "builtin:digits", "out": "runs/s", "name": "lr=1e-3", "resume": None,
            "overrides": {"lr": "1e-3", "pretrained": False, "hflip": 0.0, "threads": 1}}
    args = cell_command(task)
    assert args[1:5] == ["-m", "picstory", "train", "--quiet"]
    assert args[5:] == ["builtin:digits", "--out=runs/s", "--name=lr=1e-3", "--lr=1e-3", "--no-pretrained",
                        "--hflip=0.0", "--threads=1"]
    assert cell_command({**task, "resume": "runs/s/lr=1e-3"})[-2:] == ["--resume", "runs/s/lr=1e-3"]


def test_failing_cells_are_recorded_and_the_sweep_goes_on(tmp_path):
    # img_size 2 cannot build the CNN (ConfigError); lr 1e6 with plain SGD turns the loss into NaN; one cell
    # works. Two jobs: the cells train in child processes.
    result = sweep("builtin:digits", ["img_size=2,16", "lr=1e6,1e-2"], out=str(tmp_path), name="bad", jobs=2,
                   optimizer="sgd", **CELL)
    path = tmp_path / "bad"
    columns, rows = read_csv(path / "comparison.csv")
    assert columns == ["cell", "img_size", "lr", *COLUMNS[3:]]
    by_cell = {r["cell"]: r for r in rows}
    for name in ("img_size=2,lr=1e6", "img_size=2,lr=1e-2"):
        assert by_cell[name]["status"] == "failed"
        reason = by_cell[name]["stop_reason"]  # the ConfigError's one line, naming the model and the size
        assert "seed-mnist-cnn" in reason and " 2" in reason and "px" in reason
    assert by_cell["img_size=16,lr=1e6"]["status"] == "failed"
    assert by_cell["img_size=16,lr=1e6"]["stop_reason"].startswith("nan loss")
    assert by_cell["img_size=16,lr=1e-2"]["status"] == "ok" and by_cell["img_size=16,lr=1e-2"]["epochs_run"] == "1"
    assert result["best"] == "img_size=16,lr=1e-2"
    assert f"img_size=2,lr=1e6: failed — {by_cell['img_size=2,lr=1e6']['stop_reason']}" in result["table"]
    assert (path / "comparison.html").is_file() and len(list((path / "logs").glob("*.log"))) == 4
    assert json.loads((path / "img_size=16,lr=1e-2" / "env.json").read_text())["threads"] == 1  # 2 cores / 2 jobs


def test_repeats_add_mean_and_std_rows(tmp_path):
    result = sweep("builtin:digits", ["lr=1e-2"], repeats=2, out=str(tmp_path), name="rep", seed=3, **CELL)
    columns, rows = read_csv(tmp_path / "rep" / "comparison.csv")
    assert "seed" in columns
    assert [(r["cell"], r["seed"]) for r in rows] == [("lr=1e-2,seed=3", "3"), ("lr=1e-2,seed=4", "4"),
                                                      ("lr=1e-2", "mean"), ("lr=1e-2", "std")]
    vals = [float(r["best_val_acc"]) for r in rows[:2]]
    assert float(rows[2]["best_val_acc"]) == pytest.approx(sum(vals) / 2, abs=1e-5)
    assert float(rows[3]["best_val_acc"]) == pytest.approx(abs(vals[0] - vals[1]) / 2 ** 0.5, abs=1e-5)
    assert rows[2]["status"] == "2/2 ok"
    assert "±" in result["table"]


def test_comparison_of_an_epochs_axis_keeps_axis_and_result_apart(tmp_path):
    # written by hand, no training: the axis value and the epochs a run really trained are different columns
    from picstory.compare.report import write_comparison

    cells = make_cells(validate_grid(parse_grid(["epochs=3,5"]), {}, 1), repeats=1, base_seed=0)
    for cell, (val, ran) in zip(cells, [(0.8, 3), (0.9, 4)]):
        (tmp_path / cell.name).mkdir()
        (tmp_path / cell.name / "summary.json").write_text(json.dumps({
            "val_accuracy": val, "test_accuracy": val - 0.05, "best_epoch": ran, "epochs_run": ran,
            "train_seconds": 2.0, "stop_reason": "max epochs" if ran == 3 else "early stopping"}))
        (tmp_path / cell.name / "metrics.csv").write_text(
            "epoch,val_loss,val_acc\n" + "".join(f"{e},{1 / e},{val * e / ran}\n" for e in range(1, ran + 1)))
    result = write_comparison(tmp_path, cells, {"data": "builtin:digits", "grid": {"epochs": ["3", "5"]},
                                                "overrides": {}}, repeats=1)
    _, rows = read_csv(tmp_path / "comparison.csv")
    assert [(r["epochs"], r["epochs_run"], r["status"]) for r in rows] == [("3", "3", "ok"), ("5", "4", "ok")]
    assert result["best"] == "epochs=5"
    assert (tmp_path / "comparison.html").read_text().count("data:image/png;base64,") == 1  # 1-D: curves only


@pytest.mark.parametrize("losses, val, expected", [
    ([6.75, 2.36, 2.31], 0.1006, "failed"),  # blew up, then stuck at a constant guess: diverged
    ([3.02, 2.31, 2.31], 0.1, "failed"),  # the same, diluted over a long first epoch
    ([2.31, 2.31, 2.30], 0.1, "ok"),  # barely learning is slow, not diverged
    ([6.75, 1.2, 0.4], 0.93, "ok"),  # a spike it recovered from
])
def test_divergence_that_stays_finite_is_a_failure(tmp_path, losses, val, expected):
    (tmp_path / "metrics.csv").write_text("epoch,train_loss\n" + "".join(f"{i},{v}\n" for i, v in enumerate(losses)))
    summary = {"val_accuracy": val, "stop_reason": "max epochs", "classes": [str(i) for i in range(10)]}
    status, reason = outcome(summary, tmp_path)
    assert status == expected
    assert reason.startswith(f"diverged: train loss rose to {max(losses):.3g}") if expected == "failed" \
        else reason == "max epochs"
    assert outcome({**summary, "stop_reason": "nan loss at epoch 1, step 3"}, tmp_path)[0] == "failed"
