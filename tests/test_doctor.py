"""doctor's rules on synthetic curves, confusion matrices and data summaries; verdicts; relabel export."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from picstory import doctor
from picstory.errors import UserError

HEALTHY_VAL = [1.2, 0.8, 0.6, 0.5, 0.45, 0.42, 0.40, 0.39, 0.39, 0.385, 0.39, 0.392]
OVERFIT_VAL = [1.0, 0.7, 0.5, 0.4, 0.34, 0.31, 0.33, 0.36, 0.39, 0.41, 0.43, 0.45]


def curve(val_loss: list[float], train_acc: float | list[float] = 0.97, val_acc: float | list[float] = 0.95,
          lr: float = 0.01) -> list[dict]:
    n = len(val_loss)
    ta = train_acc if isinstance(train_acc, list) else [train_acc - 0.3 / (e + 1) for e in range(n)]
    va = val_acc if isinstance(val_acc, list) else [val_acc - 0.3 / (e + 1) for e in range(n)]
    return [{"epoch": e + 1, "img_size": 32, "lr": lr, "train_loss": 1.5 / (e + 1), "train_acc": ta[e],
             "val_loss": v, "val_acc": va[e], "seconds": 1.0} for e, v in enumerate(val_loss)]


def kinds(run: dict) -> list[str]:
    return [f["kind"] for f in doctor.diagnose_loaded(run)["findings"]]


def test_overfitting_is_flagged_with_the_epoch_it_began() -> None:
    run = {"metrics": curve(OVERFIT_VAL, train_acc=0.995, val_acc=0.9), "summary": {"stop_reason": "max epochs"}}
    f = doctor.check_overfitting(run)
    assert f is not None and f.facts["since_epoch"] == 6
    assert "from 0.31 at epoch 6 to 0.45 at epoch 12" in f.evidence
    assert f.title == "Overfitting since epoch 6"
    assert any("--erase 0.25" in s for s in f.next_steps) and any("--weight-decay" in s for s in f.next_steps)
    assert "underfitting" not in kinds(run)


def test_healthy_run_has_no_findings() -> None:
    run = {"metrics": curve(HEALTHY_VAL), "summary": {"stop_reason": "early stopping: val_loss did not improve for 5"
                                                                     " epochs", "test_accuracy": 0.95}}
    assert doctor.check_overfitting(run) is None
    assert doctor.diagnose_loaded(run)["findings"] == []


def test_underfitting_is_flagged() -> None:
    falling = [2.0, 1.7, 1.5, 1.35, 1.25, 1.17, 1.1, 1.05, 1.0, 0.96]
    run = {"metrics": curve(falling, train_acc=0.62, val_acc=0.6, lr=0.001),
           "summary": {"stop_reason": "max epochs", "epochs_run": 10, "model": "picnet-s"}}
    f = doctor.check_underfitting(run)
    assert f is not None and f.kind == "underfitting" and f.severity == "problem"
    assert "still falling" in f.evidence and "only" in f.evidence
    steps = " | ".join(f.next_steps)
    assert "--epochs 20" in steps and "--lr 0.003" in steps and "--model picnet-m" in steps
    # the same curve stopped by early stopping is not "still learning"
    run["metrics"] = curve(falling, train_acc=0.99, val_acc=0.97)
    assert doctor.check_underfitting(run) is not None
    run["summary"]["stop_reason"] = "early stopping: val_loss did not improve for 5 epochs"
    assert doctor.check_underfitting(run) is None


def test_nan_stop_is_a_problem_with_a_lower_lr() -> None:
    rows = curve([1.0, 0.8, float("nan")], lr=0.5)
    run = {"metrics": rows, "summary": {"stop_reason": "nan loss at epoch 3"}}
    f = doctor.check_diverged(run)
    assert f is not None and f.severity == "problem" and f.facts["epoch"] == 3
    assert "--lr 0.05" in f.next_steps[0] and any("picstory lr-find" in s for s in f.next_steps)
    assert kinds(run)[0] == "diverged"
    assert doctor.check_spikes(run) is None  # the NaN is reported once, as divergence


def test_loss_spike_is_flagged() -> None:
    run = {"metrics": curve([0.9, 0.6, 0.5, 1.2, 0.45, 0.4, 0.38, 0.37])}
    f = doctor.check_spikes(run)
    assert f is not None and f.kind == "unstable" and f.facts["epoch"] == 4
    assert "from 0.50 at epoch 3 to 1.20 at epoch 4" in f.evidence
    assert doctor.check_spikes({"metrics": curve(HEALTHY_VAL)}) is None


def test_lr_far_above_the_finder_suggestion() -> None:
    run = {"metrics": curve(HEALTHY_VAL, lr=0.1), "lr_find": {"suggested_lr": 0.003}}
    f = doctor.check_lr_too_high(run)
    assert f is not None and "--lr 0.003" in f.next_steps[0]
    assert doctor.check_lr_too_high({**run, "lr_find": {"suggested_lr": 0.05}}) is None


def test_confused_pair_and_its_share_of_errors() -> None:
    classes = ["cat", "dog", "fox", "owl"]
    cm = [[40, 6, 1, 0], [4, 38, 0, 1], [1, 0, 45, 1], [0, 1, 0, 44]]  # 15 errors, 10 between cat and dog
    f = doctor.check_confused_pairs({"eval": {"confusion": cm, "classes": classes, "split": "test"}})
    assert f is not None and f.facts["pair"] == ["cat", "dog"]
    assert f.facts["share"] == pytest.approx(10 / 15)
    assert "67% of all 15 errors" in f.evidence and "6 'cat' taken for 'dog', 4 the other way round" in f.evidence
    even = [[40, 1, 1, 1], [1, 40, 1, 1], [1, 1, 40, 1], [1, 1, 1, 40]]
    assert doctor.check_confused_pairs({"eval": {"confusion": even, "classes": classes}}) is None


def test_a_catch_all_class_is_reported_instead_of_its_pairs() -> None:
    classes = ["a", "b", "c", "d"]
    cm = [[10, 8, 0, 0], [0, 18, 0, 0], [0, 7, 11, 1], [0, 9, 0, 9]]  # 24 of 25 errors are predictions of "b"
    run = {"eval": {"confusion": cm, "classes": classes}, "summary": {"epochs_run": 6}}
    f = doctor.check_catch_all(run)
    assert f is not None and f.facts["class"] == "b" and f.facts["share"] == pytest.approx(24 / 25)
    assert "--epochs 12" in f.next_steps[0]
    assert doctor.check_confused_pairs(run) is None


def test_imbalance_with_a_weak_rare_class() -> None:
    per_class = [{"class": "common", "recall": 0.95, "support": 50}, {"class": "other", "recall": 0.93, "support": 50},
                 {"class": "rare", "recall": 0.40, "support": 5}]
    run = {"data": {"class_counts": {"train": {"common": 500, "other": 480, "rare": 20}}},
           "eval": {"per_class": per_class}, "config": {"train": {"class_weights": "none"}}}
    f = doctor.check_imbalance(run)
    assert f is not None and f.facts["classes"] == ["rare"] and f.severity == "problem"
    assert "--class-weights auto" in f.next_steps[0] and "--balanced-sampling" in f.next_steps[1]
    per_class[2]["recall"] = 0.9  # rare but recognised: nothing to fix
    assert doctor.check_imbalance(run) is None


def test_train_test_leak_is_reported_and_blocks_the_verdict() -> None:
    run = {"data": {"leaks": [{"paths": ["train/a/1.png", "test/a/9.png"], "splits": ["train", "test"]}]},
           "summary": {"test_accuracy": 0.97}, "metrics": curve(HEALTHY_VAL)}
    f = doctor.check_leaks(run)
    assert f is not None and f.severity == "problem" and "97.0% is inflated" in f.evidence
    assert "picstory data check" in f.next_steps[0]
    result = doctor.diagnose_loaded(run, target_accuracy=0.9)
    assert result["verdict"] == "not yet" and "cannot be trusted" in result["summary"]


def test_few_images_and_bad_files() -> None:
    run = {"data": {"class_counts": {"train": {"a": 300, "b": 4}}, "bad_files": [{"path": "x.jpg", "reason": "bad"}]}}
    assert doctor.check_few_images(run).facts["classes"] == ["b"]
    assert doctor.check_bad_files(run).title == "1 file could not be read (skipped)"


def test_suspects_of_a_weak_model_are_downgraded() -> None:
    suspects = [{"path": f"{i}.png", "label": "cat", "pred": "dog", "confidence": 0.9} for i in range(10)]
    strong = doctor.check_mislabelled({"eval": {"suspects": suspects, "accuracy": 0.95}})
    weak = doctor.check_mislabelled({"eval": {"suspects": suspects, "accuracy": 0.55}})
    assert strong.severity == "warning" and "Wrong labels" in strong.evidence
    assert weak.severity == "info" and "still weak" in weak.evidence


def _png_uri(colour: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (colour, 0, 0)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def make_run(tmp_path: Path, val_loss: list[float], test_acc: float, **eval_extra) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    rows = curve(val_loss)
    with (run / "metrics.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    data = tmp_path / "data"
    (run / "summary.json").write_text(json.dumps({
        "test_accuracy": test_acc, "best_epoch": 10, "epochs_run": len(rows), "classes": ["cat", "dog"],
        "stop_reason": "early stopping: val_loss did not improve for 5 epochs", "data": str(data),
        "model": "picnet-m", "img_size": 32}))
    (run / "config.yaml").write_text(f"data:\n  data: {data}\ntrain:\n  lr: auto\n")
    ev = {"split": "test", "accuracy": test_acc, "classes": ["cat", "dog"], "confusion": [[48, 2], [3, 47]],
          "per_class": [{"class": "cat", "precision": .94, "recall": .96, "f1": .95, "support": 50},
                        {"class": "dog", "precision": .96, "recall": .94, "f1": .95, "support": 50}], **eval_extra}
    (run / "eval.json").write_text(json.dumps(ev))
    return run


def test_clean_run_above_target_is_ready(tmp_path: Path) -> None:
    run = make_run(tmp_path, HEALTHY_VAL, 0.95)
    result = doctor.diagnose(run, target_accuracy=0.9, class_recall_target=0.9)
    assert result["verdict"] == "ready to deploy" and result["findings"] == []
    assert result["next_step"].startswith("picstory export")
    assert doctor.diagnose(run, target_accuracy=90)["verdict"] == "ready to deploy"  # percent works too
    assert doctor.diagnose(run)["verdict"] == "no target given"
    json.dumps(result)  # the engine stores it in summary.json


def test_run_below_target_is_not_yet_with_a_next_step(tmp_path: Path) -> None:
    run = make_run(tmp_path, OVERFIT_VAL, 0.88)
    result = doctor.diagnose(run, target_accuracy=0.9)
    assert result["verdict"] == "not yet" and "below the target of 90.0%" in result["summary"]
    assert result["findings"][0]["kind"] == "overfitting"
    assert result["next_step"] == result["findings"][0]["next_steps"][0]
    assert result["next_step"].startswith(f"picstory train {tmp_path / 'data'} --config {run / 'config.yaml'}")
    text = doctor.doctor_text(result)
    assert "Verdict: NOT YET" in text and result["next_step"] in text and "Overfitting since epoch 6" in text
    weak = doctor.diagnose(run, target_accuracy=0.5, class_recall_target=0.95)
    by_kind = {f["kind"]: f for f in weak["findings"]}
    assert weak["verdict"] == "not yet" and by_kind["weak_classes"]["facts"]["classes"] == ["dog"]
    assert "short of the per-class recall target" in weak["summary"]


def test_findings_are_ordered_by_severity_then_gain() -> None:
    run = {"metrics": curve([1.0, 0.8, float("nan")]), "summary": {"stop_reason": "nan loss at epoch 3"},
           "data": {"bad_files": [{"path": "x.jpg", "reason": "bad"}],
                    "leaks": [{"paths": ["a", "b"], "splits": ["train", "val"]}]}}
    assert kinds(run) == ["diverged", "leak", "bad_files"]


def test_suspects_give_a_mislabel_finding_and_export(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "cat").mkdir(parents=True)
    original = data / "cat" / "7.png"
    Image.new("RGB", (20, 20), (1, 2, 3)).save(original)
    suspects = [{"path": "cat/7.png", "label": "cat", "pred": "dog", "confidence": 0.98, "loss": 4.0,
                 "thumb": _png_uri(9)},
                {"path": "builtin:digits[12]", "label": "dog/../x", "pred": "cat", "confidence": 0.95, "loss": 3.0,
                 "thumb": _png_uri(200)}]
    run = make_run(tmp_path, HEALTHY_VAL, 0.95, suspects=suspects)
    f = doctor.check_mislabelled(doctor.load_run(run))
    assert f is not None and "'cat/7.png' is labelled 'cat' but looks like 'dog'" in f.evidence
    assert "--export-relabel" in f.next_steps[0]
    out = tmp_path / "relabel"
    assert doctor.export_relabel(run, out) == 2
    copied = list((out / "cat").iterdir())
    assert len(copied) == 1 and copied[0].read_bytes() == original.read_bytes()
    thumb_files = [p for p in out.rglob("*.png") if p.parent.name != "cat"]
    assert len(thumb_files) == 1 and thumb_files[0].parent.parent == out  # no escape through "../" in a label
    assert np.asarray(Image.open(thumb_files[0]))[0, 0, 0] == 200
    assert (out / "relabel.csv").read_text().count("\n") == 3
    with pytest.raises(UserError, match="inside the data folder"):
        doctor.export_relabel(run, data / "relabel")


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a (picstory )?run directory"):
        doctor.diagnose(tmp_path)
