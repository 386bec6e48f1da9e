"""Majority-class baseline and balanced accuracy: in the metrics, in the doctor's verdict and rule."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from picstory import doctor
from picstory.evaluation.metrics import summarize


def probs_for(pred: np.ndarray, k: int) -> np.ndarray:
    p = np.full((len(pred), k), 0.1 / (k - 1))
    p[np.arange(len(pred)), pred] = 0.9
    return p


def test_summarize_reports_baseline_and_balanced_accuracy():
    labels = np.array([0] * 90 + [1] * 8 + [2] * 2)
    pred = labels.copy()
    pred[90:] = 0  # every rare image called the majority class
    m = summarize(probs_for(pred, 3), labels, ["ok", "scratch", "dent"])
    assert m["accuracy"] == pytest.approx(0.90)
    assert m["majority_baseline"] == pytest.approx(0.90) and m["majority_class"] == "ok"
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, pred)) == pytest.approx(1 / 3)


def near_baseline_run(correct_rare: int) -> dict:
    # 90 'ok', 10 'defect'; the model finds `correct_rare` of the defects and never misses an 'ok'
    cm = [[90, 0], [10 - correct_rare, correct_rare]]
    return {"eval": {"confusion": cm, "classes": ["ok", "defect"]},
            "summary": {"test_accuracy": (90 + correct_rare) / 100, "epochs_run": 5}}


def test_doctor_names_accuracy_barely_above_the_majority_baseline():
    run = near_baseline_run(correct_rare=1)
    f = doctor.check_near_baseline(run)
    assert f is not None and f.severity == "problem" and "barely above the majority baseline" in f.title
    assert "91.0%" in f.evidence and "90.0%" in f.evidence and "'ok'" in f.evidence
    assert f.facts["balanced_accuracy"] == pytest.approx(0.55)
    assert any("--class-weights auto" in s for s in f.next_steps)
    result = doctor.diagnose_loaded(run)
    assert result["findings"][0]["kind"] == "near_baseline"
    assert result["majority_baseline"] == pytest.approx(0.9) and result["balanced_accuracy"] == pytest.approx(0.55)
    assert "majority baseline 90.0%" in result["summary"] and "balanced 55.0%" in result["summary"]
    assert doctor.check_near_baseline(near_baseline_run(correct_rare=2)).severity == "warning"  # 92 %: a little


def test_a_model_well_above_the_baseline_is_not_flagged():
    assert doctor.check_near_baseline(near_baseline_run(correct_rare=8)) is None  # 98 %: 80 % of the gap closed
    balanced = {"eval": {"confusion": [[45, 5], [5, 45]], "classes": ["a", "b"]}, "summary": {"test_accuracy": 0.9}}
    assert doctor.check_near_baseline(balanced) is None
