"""Confident learning on out-of-fold probabilities (Northcutt et al. 2021): the method, the command, the doctor."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from picstory.cli import main
from picstory.doctor import diagnose
from picstory.evaluation.label_issues import (
    calibrate,
    class_thresholds,
    confident_joint,
    find_label_issues,
    top_loss,
)


def noisy_probs(n_per_class=200, k=3, flip=0.1, seed=0):
    """A decent model's probabilities around the TRUE labels, and given labels with a share flipped."""
    rng = np.random.default_rng(seed)
    true = np.repeat(np.arange(k), n_per_class)
    logits = rng.normal(0, 1, (len(true), k))
    logits[np.arange(len(true)), true] += 3.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    given = true.copy()
    flipped = rng.random(len(true)) < flip
    given[flipped] = (true[flipped] + 1 + rng.integers(0, k - 1, flipped.sum())) % k
    return probs, given, given != true


def test_thresholds_and_confident_joint_by_hand():
    probs = np.array([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
    labels = np.array([0, 0, 0, 1, 1])
    t = class_thresholds(probs, labels)
    assert t == pytest.approx([(0.9 + 0.7 + 0.2) / 3, (0.4 + 0.9) / 2])
    # row 2 is labelled 0 but p1 = 0.8 ≥ t1 = 0.65 → counted in (0, 1); row 3 passes only t0 = 0.6 → (1, 0)
    assert confident_joint(probs, labels, t).tolist() == [[2, 1], [1, 1]]
    q = calibrate(np.array([[2, 1], [1, 1]]), np.array([3, 2]))
    assert q.sum() == pytest.approx(1) and (q.sum(1) * 5).tolist() == pytest.approx([3, 2])


def test_flags_the_flipped_labels_far_better_than_chance():
    probs, given, flipped = noisy_probs()
    found = find_label_issues(probs, given)
    hit = flipped[found.flagged]
    precision, recall = hit.mean(), hit.sum() / flipped.sum()
    assert precision > 0.8 and recall > 0.8
    # ranked by self-confidence, lowest first; the suggestion is never the given label
    sc = probs[found.flagged, given[found.flagged]]
    assert (np.diff(sc) >= 0).all() and (found.suggested != given[found.flagged]).all()


def test_clean_labels_flag_little_and_every_class_keeps_members():
    probs, given, _ = noisy_probs(flip=0.0)
    assert len(find_label_issues(probs, given).flagged) < 0.05 * len(given)
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.1, 0.9], [0.1, 0.9], [0.9, 0.1], [0.9, 0.1]])
    flagged = find_label_issues(probs, labels).flagged
    assert all((labels[np.setdiff1d(np.arange(4), flagged)] == c).any() for c in (0, 1))


def test_top_loss_is_the_old_rule():
    probs = np.array([[0.95, 0.05], [0.3, 0.7], [0.1, 0.9], [0.85, 0.15]])
    assert top_loss(probs, np.array([1, 0, 0, 1])).tolist() == [0, 2, 3]


def cv_parent(tmp_path, n_per_class=30):
    """A cross-validation folder as `train --folds` leaves it (oof.npz, config, summary) over real image files."""
    probs, given, flipped = noisy_probs(n_per_class, k=2, flip=0.1, seed=3)
    data = tmp_path / "data"
    refs, paths = [], []
    for i, y in enumerate(given):
        p = data / "ab"[y] / f"{i:03d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), i % 256, np.uint8)).save(p)
        refs.append(str(p))
        paths.append(f"{'ab'[y]}/{i:03d}.png")
    parent = tmp_path / "runs" / "cv"
    parent.mkdir(parents=True)
    buf = io.BytesIO()
    np.savez(buf, refs=np.array(refs), paths=np.array(paths), labels=given, probs=probs.astype(np.float32),
             fold=np.arange(len(given)) % 3 + 1, classes=np.array(["a", "b"]))
    (parent / "oof.npz").write_bytes(buf.getvalue())
    (parent / "config.yaml").write_text(f"data:\n  data: {data}\n")
    (parent / "summary.json").write_text(json.dumps({"test_accuracy": 0.95, "classes": ["a", "b"],
                                                     "data": str(data)}))
    (parent / "folds.json").write_text('{"folds": 3}')
    return parent, flipped


def test_data_issues_command_writes_the_list_and_exports(tmp_path, capsys):
    parent, flipped = cv_parent(tmp_path)
    out = tmp_path / "relabel"
    assert main(["data", "issues", str(parent), "--export-relabel", str(out)]) == 0
    text = capsys.readouterr().out
    assert "likely mislabelled (confident learning" in text and "issues.csv" in text
    rows = list(csv.DictReader((parent / "issues.csv").open()))
    assert rows and rows[0]["rank"] == "1" and {r["label"] for r in rows} <= {"a", "b"}
    assert np.mean([flipped[int(r["path"][2:5])] for r in rows]) > 0.7
    relabel = list(csv.DictReader((out / "relabel.csv").open()))
    assert len(relabel) == len(rows) and all((out / r["file"]).is_file() for r in relabel)
    # a fold of the cross-validation finds its parent's probabilities
    (parent / "fold-1").mkdir()
    (parent / "fold-1" / "config.yaml").write_text("data: {}\n")
    assert main(["data", "issues", str(parent / "fold-1")]) == 0


def test_data_issues_without_out_of_fold_probabilities(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    assert main(["data", "issues", str(run)]) != 0
    err = capsys.readouterr().err
    assert "no out-of-fold probabilities (oof.npz); train with --folds K" in err and "Traceback" not in err


def test_the_doctor_uses_out_of_fold_probabilities(tmp_path):
    parent, _ = cv_parent(tmp_path)
    found = [f for f in diagnose(parent)["findings"] if f["kind"] == "mislabelled"]
    assert found and "Confident learning on the out-of-fold probabilities" in found[0]["evidence"]
    assert found[0]["next_steps"][0].startswith("picstory data issues")
