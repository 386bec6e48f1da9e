"""A run written by picstory 0.1.0 before the package was re-layered (tests/fixtures/run-0.1.0: digits, picnet-s,
stopped after epoch 1 of 2) still loads, predicts, evaluates, resumes and is read by the doctor and `runs`."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import picstory

FIXTURE = Path(__file__).parent / "fixtures" / "run-0.1.0"


@pytest.fixture
def old_run(tmp_path) -> Path:
    run = tmp_path / "runs" / "old-run"
    shutil.copytree(FIXTURE, run)
    return run


def test_loads_and_predicts(old_run):
    predictor = picstory.load(old_run)
    assert predictor.meta["classes"] == [str(i) for i in range(10)]
    image = np.zeros((16, 16), np.uint8)
    image[4:12, 7:9] = 255
    (result,) = predictor.predict([image], top_k=3)
    assert result["error"] is None and len(result["predictions"]) == 3
    assert result["predictions"][0]["label"] in predictor.meta["classes"]


def test_evaluates_on_its_test_split(old_run):
    result = picstory.evaluate(old_run)
    assert result["split"] == "test" and 0.0 <= result["accuracy"] <= 1.0
    assert json.loads((old_run / "eval.json").read_text())["accuracy"] == result["accuracy"]


def test_resumes_to_the_end(old_run):
    run = picstory.train(resume=str(old_run), progress=False)
    assert run.summary["epochs_run"] == 2 and run.summary["stop_reason"] == "max epochs"
    assert len((old_run / "metrics.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs


def test_doctor_and_runs_table_read_it(old_run):
    cli = [sys.executable, "-m", "picstory"]
    doctor = subprocess.run([*cli, "doctor", str(old_run)], capture_output=True, text=True)
    assert doctor.returncode in (0, 1), doctor.stderr
    assert "Verdict" in doctor.stdout
    runs = subprocess.run([*cli, "runs", str(old_run.parent)], capture_output=True, text=True)
    assert runs.returncode == 0 and "old-run" in runs.stdout, runs.stderr
