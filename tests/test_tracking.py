"""Experiment tracking: TensorBoard event files read back, an MLflow run in a local file store, failures that warn."""

from __future__ import annotations

import csv
import importlib.util

import pytest

import picstory
from picstory.errors import ConfigError, UserError

FAST = dict(model="seed-mnist-cnn", epochs=3, batch_size=16, img_size=20, lr="3e-3", hflip=0.0, progress=False)


def val_acc_column(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [float(r["val_acc"]) for r in csv.DictReader(f)]


def test_tensorboard_event_file_holds_scalars_images_and_hparams(gray_folder, runs_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = picstory.train(str(gray_folder), out=str(runs_dir), log="tensorboard", log_every=1, **FAST)
    ea = EventAccumulator(str(run.path / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    tags = ea.Tags()
    val = [e.value for e in ea.Scalars("epoch/val_acc")]
    assert [e.step for e in ea.Scalars("epoch/val_acc")] == [1, 2, 3]
    assert val == pytest.approx(val_acc_column(run.path), abs=1e-5)
    steps = ea.Scalars("step/train_loss")
    assert [e.step for e in steps] == list(range(1, len(steps) + 1)) and len(steps) % 3 == 0  # every step, 3 epochs
    assert all(e.value > 0 for e in ea.Scalars("step/lr"))
    assert {"figures/confusion_matrix", "figures/mistakes"} <= set(tags["images"])
    img = ea.Images("figures/confusion_matrix")[0]
    assert img.width > 50 and img.encoded_image_string[:4] == b"\x89PNG"
    hp = EventAccumulator(str(run.path / "tensorboard" / "hparams"))
    hp.Reload()
    final = hp.Scalars("final/test_accuracy")[0].value
    assert final == pytest.approx(run.summary["test_accuracy"])
    assert "_hparams_/session_start_info" in hp.PluginTagToContent("hparams")


def test_mlflow_run_in_the_default_local_store(gray_folder, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    run = picstory.train(str(gray_folder), out=str(tmp_path / "runs"), log="mlflow", **FAST)
    assert (tmp_path / "mlruns").is_dir()
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    exp = client.get_experiment_by_name("picstory")
    (found,) = client.search_runs([exp.experiment_id])
    assert found.info.run_name == run.path.name and found.info.status == "FINISHED"
    assert found.data.params["model"] == "seed-mnist-cnn" and float(found.data.params["lr"]) == 3e-3
    history = client.get_metric_history(found.info.run_id, "val_acc")
    assert [m.step for m in history] == [1, 2, 3]
    assert [m.value for m in history] == pytest.approx(val_acc_column(run.path), abs=1e-5)
    assert found.data.metrics["final_test_accuracy"] == pytest.approx(run.summary["test_accuracy"])
    names = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"report.html", "summary.json", "model"} <= names
    assert "model/model.json" in {a.path for a in client.list_artifacts(found.info.run_id, "model")}


def test_unreachable_mlflow_server_warns_and_training_continues(gray_folder, runs_dir, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    run = picstory.train(str(gray_folder), out=str(runs_dir), log="mlflow", **FAST)
    err = capsys.readouterr().err
    assert err.count("warning: MLflow logging failed") == 1 and "the run directory has everything" in err
    assert run.summary["epochs_run"] == 3 and (run.path / "report.html").is_file()
    assert (run.path / "model" / "model.safetensors").is_file()


def test_missing_extra_and_unknown_tracker_fail_before_a_run_exists(gray_folder, runs_dir, monkeypatch):
    with pytest.raises(ConfigError, match=r"'log' must be tensorboard, mlflow.*'tensorbord'.*did you mean tensorboard"):
        picstory.train(str(gray_folder), out=str(runs_dir), log="tensorbord", **FAST)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(UserError, match=r"--log mlflow needs the mlflow package: pip install 'picstory\[mlflow\]'"):
        picstory.train(str(gray_folder), out=str(runs_dir), log="mlflow", **FAST)
    assert not runs_dir.exists() or not any(runs_dir.iterdir())
