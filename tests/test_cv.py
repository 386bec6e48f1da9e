"""k-fold cross-validation: fold assignment, the parent directory, out-of-fold probabilities, bad input, sweeps."""

from __future__ import annotations

import json

import numpy as np
import pytest

import picstory
from conftest import make_folder
from picstory.cli import main
from picstory.data.records import Record
from picstory.data.split import fold_assignment
from picstory.errors import ConfigError, DataError

FAST = dict(model="seed-mnist-cnn", epochs=1, batch_size=16, img_size=20, progress=False)


def records(n_per_class: int, classes=("a", "b", "c"), groups: int = 0) -> list[Record]:
    return [Record(f"{c}{i}", c, group=f"g{i % groups}" if groups else None)
            for c in classes for i in range(n_per_class)]


def test_folds_are_stratified_and_cover_the_training_pool_once():
    recs = records(20)
    folds = fold_assignment(recs, 4, test_fraction=0.1, seed=0)
    assert (folds == -1).sum() == 6  # the usual 10 % test share per class, held out of every fold
    pool = folds[folds >= 0]
    assert sorted(set(pool.tolist())) == [0, 1, 2, 3]
    for k in range(4):  # each class spread evenly: 18 per class over 4 folds → 4 or 5 each
        per_class = [sum(1 for r, f in zip(recs, folds) if f == k and r.label == c) for c in "abc"]
        assert all(4 <= n <= 5 for n in per_class)
    assert (fold_assignment(recs, 4, 0.1, seed=0) == folds).all()


def test_a_declared_test_split_stays_untouched():
    recs = records(10) + [Record(f"t{i}", "abc"[i % 3], split="test") for i in range(6)]
    folds = fold_assignment(recs, 3, test_fraction=0.1, seed=1)
    assert (folds[-6:] == -1).all() and (folds[:-6] >= 0).all()


def test_groups_never_straddle_folds():
    recs = records(12, groups=6)
    folds = fold_assignment(recs, 3, test_fraction=0.0, seed=0)
    by_group = {}
    for r, f in zip(recs, folds):
        by_group.setdefault(r.group, set()).add(int(f))
    assert all(len(v) == 1 for v in by_group.values())


@pytest.mark.parametrize("folds, message", [(1, "at least 2 folds"), (7, r"'c' \(6\): use --folds 6")])
def test_too_few_folds_or_images(folds, message):
    recs = records(8, ("a", "b")) + records(6, ("c",))
    with pytest.raises(DataError, match=message):
        fold_assignment(recs, folds, test_fraction=0.0)


def test_too_few_groups_for_the_folds():
    with pytest.raises(DataError, match="only 2 group"):
        fold_assignment(records(6, groups=2), 3, test_fraction=0.0)


def test_folds_one_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="'folds'.*got 1"):
        picstory.Config().updated(folds=1)
    with pytest.raises(ConfigError, match="'fold' 3 needs 'folds'"):
        picstory.Config().updated(folds=2, fold=3)


def test_cross_validation_end_to_end(tmp_path, capsys):
    data = make_folder(tmp_path / "data", n_per_class=12)
    run = picstory.train(str(data), out=str(tmp_path / "runs"), folds=3, **FAST)
    parent = run.path
    for name in ("config.yaml", "cv.json", "cv.html", "oof.npz", "oof.csv", "summary.json", "folds.json"):
        assert (parent / name).is_file(), name
    assert sorted(p.name for p in parent.glob("fold-*")) == ["fold-1", "fold-2", "fold-3"]
    cv = json.loads((parent / "cv.json").read_text())
    assert cv["folds"] == 3 and len(cv["per_fold"]) == 3
    accs = [f["val_accuracy"] for f in cv["per_fold"]]
    assert cv["metrics"]["val_accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert cv["metrics"]["val_accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))
    assert "test_accuracy" in cv["metrics"] and "val_f1[blob]" in cv["metrics"]
    # every training image has exactly one out-of-fold row, from the fold that held it out; test images none
    with np.load(parent / "oof.npz") as z:
        probs, fold, paths = z["probs"], z["fold"], list(z["paths"])
    splits = {k: (parent / f"fold-{k}" / "split.csv").read_text().splitlines()[1:] for k in (1, 2, 3)}
    val = {k: {ln.split(",")[0] for ln in rows if ln.endswith(",val")} for k, rows in splits.items()}
    test = {ln.split(",")[0] for ln in splits[1] if ln.endswith(",test")}
    assert len(paths) == len(set(paths)) == 36 - len(test) and not set(paths) & test
    assert all(p in val[int(f)] for p, f in zip(paths, fold))
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    assert all({ln for ln in rows if ln.endswith(",test")} == {ln for ln in splits[1] if ln.endswith(",test")}
               for rows in splits.values())
    page = (parent / "cv.html").read_text()
    assert "3-fold cross-validation" in page and "<style>" in page and " ± " in page
    # a fold's own config replays that fold
    again = picstory.train(config=str(parent / "fold-2" / "config.yaml"), out=str(tmp_path / "again"),
                           progress=False)
    assert (again.path / "split.csv").read_text() == (parent / "fold-2" / "split.csv").read_text()


def test_cli_folds_and_bad_input(tmp_path, capsys):
    data = make_folder(tmp_path / "data", n_per_class=6)
    assert main(["train", str(data), "--folds", "1", "--out", str(tmp_path / "r")]) != 0
    assert "'folds' must be 0 (off) or at least 2" in capsys.readouterr().err
    assert main(["train", str(data), "--folds", "9", "--out", str(tmp_path / "r"), "--model", "seed-mnist-cnn"]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: --folds 9: every class needs at least 9") and "Traceback" not in err
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())  # nothing half-made


def test_a_sweep_cell_is_a_k_fold_mean(tmp_path):
    from picstory.compare.sweep import sweep

    data = make_folder(tmp_path / "data", n_per_class=9)
    result = sweep(str(data), ["lr=0.1"], out=str(tmp_path / "runs"), name="sw", folds=2, progress=False,
                   **{k: v for k, v in FAST.items() if k != "progress"})
    for cell in ("lr=0.1",):
        cv = json.loads((tmp_path / "runs" / "sw" / cell / "cv.json").read_text())
        summary = json.loads((tmp_path / "runs" / "sw" / cell / "summary.json").read_text())
        assert summary["val_accuracy"] == pytest.approx(cv["metrics"]["val_accuracy"]["mean"])
    assert len(result["rows"]) == 1
