"""Calibrated confidence and "unknown": temperature scaling, ECE, OOD scores and thresholds, and where they show
(predict, serve, export, eval figures, doctor, monitor, bundles from before calibration)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from conftest import pattern
from picstory.deploy.log import Entry, PredictionLog, read_rows
from picstory.deploy.predict import load
from picstory.errors import ConfigError
from picstory.evaluation import calibration as cal
from picstory.evaluation import ood
from picstory.models.bundle import OOD_BANK_FILE, load_bundle, read_meta, save_bundle
from picstory.models.registry import create_model
from picstory.monitor.report import unknown_trend
from picstory.pipeline.confidence_run import calibrate_bundle, split_confidence
from picstory.training.setup import Split

CLASSES = ["horizontal", "vertical", "blob"]
FIXTURE_RUN = Path(__file__).parent / "fixtures" / "run-0.1.0"


def overconfident_digits():
    """Logits of a logistic regression fitted without regularisation on a small split, ×5: far too sure."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    clf = LogisticRegression(C=1e4, max_iter=300).fit(x[:300], y[:300])
    return clf.decision_function(x[300:1000]) * 5, y[300:1000], clf.decision_function(x[1000:]) * 5, y[1000:]


def test_temperature_scaling_lowers_ece_on_an_overconfident_model():
    val_logits, val_y, test_logits, test_y = overconfident_digits()
    record = cal.calibrate(val_logits, val_y)
    assert record["temperature"] > 1.5  # over-confident: the logits must be cooled
    before, after = cal.softmax(test_logits), cal.softmax(test_logits, record["temperature"])
    assert cal.ece(after, test_y) <= cal.ece(before, test_y)
    assert cal.nll(after, test_y) < cal.nll(before, test_y)
    assert (after.argmax(1) == before.argmax(1)).all()  # accuracy is untouched


def test_temperature_recovers_a_known_scale():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (4000, 5))
    labels = np.array([rng.choice(5, p=p) for p in cal.softmax(logits)])  # calibrated at T = 1 by construction
    assert cal.fit_temperature(logits * 3, labels) == pytest.approx(3.0, rel=0.1)


def test_ece_reference_values():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = np.array([0, 1, 0, 0])  # bin 0.9: accuracy 0.5; bin 0.6: accuracy 1.0
    assert cal.ece(probs, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    assert cal.brier(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(2.0)


def test_tiny_validation_split_says_it_cannot_calibrate():
    record = cal.calibrate(np.zeros((10, 3)), np.arange(10) % 3)
    assert record["temperature"] == 1.0 and "fewer than" in record["skipped"]
    perfect = np.eye(3)[np.arange(90) % 3] * 2  # every answer right: the NLL would push T towards 0
    record = cal.calibrate(perfect, np.arange(90) % 3)
    assert record["temperature"] == 1.0 and "nothing to calibrate against" in record["skipped"]


def test_risk_coverage_and_accepted_accuracy():
    conf = np.array([0.9, 0.8, 0.7, 0.6])
    correct = np.array([1, 1, 0, 0])
    cov, acc = cal.risk_coverage(conf, correct)
    assert cov.tolist() == [0.25, 0.5, 0.75, 1.0] and acc.tolist() == [1.0, 1.0, 2 / 3, 0.5]
    assert cal.accepted_accuracy(conf, correct, (0.5, 1.0)) == {"0.50": 1.0, "1.00": 0.5}


def test_ood_scores_threshold_and_auroc():
    rng = np.random.default_rng(0)
    bank = ood.sample_bank(rng.normal(0, 1, (200, 8)) + 5)
    near = rng.normal(0, 1, (100, 8)) + 5
    far = -near
    s_in, s_out = ood.knn_score(near, bank, 5), ood.knn_score(far, bank, 5)
    assert s_out.min() > s_in.max()
    assert ood.auroc_fpr95(s_in, s_out) == {"auroc": 1.0, "fpr95": 0.0}
    assert (s_in <= ood.threshold(s_in, 0.95)).mean() == pytest.approx(0.95, abs=0.01)
    logits = np.array([[10.0, 0, 0], [0.1, 0, 0]])
    assert ood.energy_score(logits)[0] < ood.energy_score(logits)[1]
    assert ood.msp_score(logits)[0] < ood.msp_score(logits)[1]


def test_min_confidence_values():
    assert ood.parse_min_confidence("0.8", CLASSES) == dict.fromkeys(CLASSES, 0.8)
    assert ood.parse_min_confidence("0.5,blob=0.9", CLASSES) == {"horizontal": 0.5, "vertical": 0.5, "blob": 0.9}
    assert ood.parse_min_confidence("", CLASSES) == {}
    for bad, words in (("1.5", "not a probability"), ("cat=0.5", "no class 'cat'"), ("high", "not a number")):
        with pytest.raises(ConfigError, match=words):
            ood.parse_min_confidence(bad, CLASSES)


# ---- a bundle made over-confident on purpose, through the pipeline ------------------------------------------------


def split(n_per_class: int, seed: int, flip: float = 0.0) -> Split:
    """Pattern images; ``flip`` of the labels moved to the next class (a model cannot be right on those)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n_per_class)
    images = np.stack([pattern(k, 28, rng, False) for k in labels])[:, None]
    labels = np.where(rng.random(len(labels)) < flip, (labels + 1) % 3, labels)
    return Split(torch.from_numpy(images), torch.from_numpy(labels), [f"{i}.png" for i in range(len(labels))])


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A seed CNN fitted a few steps on the patterns, head ×5, calibrated on a val split with 30 % wrong labels:
    sure of every answer and wrong on a third of them, i.e. over-confident."""
    torch.manual_seed(0)
    model = create_model("seed-mnist-cnn", 3, 1, img_size=28)
    train, val = split(60, 0), split(40, 1, flip=0.3)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    x = (train.images.float() / 255 - 0.5) / 0.25
    for _ in range(15):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), train.labels).backward()
        opt.step()
    with torch.no_grad():
        model.fc2.weight.mul_(5)
        model.fc2.bias.mul_(5)
    run = tmp_path_factory.mktemp("cal") / "run"
    bundle = save_bundle(run / "model", model, {
        "arch": "seed-mnist-cnn", "model_kwargs": {}, "num_classes": 3, "classes": CLASSES, "in_chans": 1,
        "img_size": 28, "fit": "crop", "mean": [0.5], "std": [0.25], "data": "patterns", "data_fingerprint": "x"})
    fields = calibrate_bundle(bundle, val, train, progress=False)
    return run, fields


def test_pipeline_calibration_of_an_overconfident_bundle(calibrated):
    run, fields = calibrated
    record = fields["calibration"]
    assert record["temperature"] > 1.0
    assert record["after"]["ece"] <= record["before"]["ece"]
    meta = read_meta(run / "model")
    assert meta["calibration"]["temperature"] == record["temperature"]
    assert meta["ood"]["score"] == ood.DEFAULT_SCORE and set(meta["ood"]["thresholds"]) == set(ood.SCORES)
    assert (run / "model" / OOD_BANK_FILE).is_file() and meta["ood"]["bank"]["rows"] == 180
    model, meta = load_bundle(run)
    test = split(30, 2, flip=0.3)
    figures = split_confidence(model, meta, run / "model", test.images, test.labels.numpy())
    assert figures["ece"] <= figures["calibration"]["before"]["ece"]
    assert 0.0 <= figures["unknown_rate"] <= 1.0 and len(figures["risk_coverage"]["coverage"]) > 2


def test_predict_answers_unknown_for_noise_and_honours_min_confidence(calibrated, tmp_path, capsys):
    run, _ = calibrated
    predictor = load(run)
    assert "no calibration" not in capsys.readouterr().err
    rng = np.random.default_rng(3)
    known = [pattern(k % 3, 28, rng, False) for k in range(6)]
    noise = [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(6)]
    flat = [np.full((28, 28), v, np.uint8) for v in (0, 255)]
    results = predictor.predict(known + noise + flat, top_k=1)
    assert all(set(r) >= {"label", "unknown", "ood_score", "ood_threshold"} for r in results)
    assert sum(r["unknown"] for r in results[:6]) <= 1
    assert sum(r["unknown"] for r in results[6:]) >= 6
    assert all(r["label"] is None for r in results if r["unknown"])
    from picstory.deploy.predict import format_predictions

    csv_rows = format_predictions(results, "csv", top_k=1).splitlines()
    assert csv_rows[0].endswith(",unknown") and csv_rows[7].endswith(",1")  # the first noise image
    strict = predictor.predict(known, top_k=1, min_confidence="1.0")
    assert all(r["unknown"] and "confidence" in r["unknown_reason"] for r in strict)
    with pytest.raises(ConfigError, match="not a probability"):
        predictor.predict(known, min_confidence=1.5)


def test_cli_rejects_min_confidence_above_one(calibrated, tmp_path):
    from PIL import Image

    run, _ = calibrated
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "a.png")
    out = subprocess.run([sys.executable, "-m", "picstory", "predict", str(run), str(tmp_path / "a.png"),
                          "--min-confidence", "1.5"], capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: --min-confidence 1.5")


def test_bundle_from_before_calibration_predicts_and_says_so_once(capsys):
    predictor = load(FIXTURE_RUN)
    results = predictor.predict([np.zeros((8, 8), np.uint8)] * 3, top_k=2)
    err = capsys.readouterr().err
    assert err.count("has no calibration") == 1
    assert all(r["unknown"] is False and r["label"] for r in results)
    assert predictor.temperature is None


def test_onnx_export_bakes_in_the_temperature(calibrated):
    from picstory.deploy.export import export

    run, fields = calibrated
    record = export(run, "onnx", verbose=False)
    assert record["parity"]["passed"] and record["temperature"] == pytest.approx(fields["calibration"]["temperature"])
    x = split(4, 5).images
    torch_p, onnx_p = load(run).predict_proba(x), load(run, backend="onnx").predict_proba(x)
    np.testing.assert_allclose(onnx_p, torch_p, atol=1e-5)
    # the graph's second output carries the features, so the ONNX backend scores unknown inputs the same way
    by_torch, by_onnx = load(run).predict_scored(x), load(run, backend="onnx").predict_scored(x)
    assert [v["ood_method"] for _, v in by_onnx] == ["knn"] * len(x)
    np.testing.assert_allclose([v["ood_score"] for _, v in by_onnx], [v["ood_score"] for _, v in by_torch], atol=1e-4)
    model, meta = load_bundle(run)
    with torch.inference_mode():
        raw = torch.softmax(model((x.float() / 255 - 0.5) / 0.25), 1).numpy()
    assert np.abs(raw - torch_p).max() > 1e-3  # the calibrated probabilities are not the raw softmax


def test_serve_answers_unknown_and_logs_it(calibrated, tmp_path):
    from PIL import Image

    from imagegen import png_bytes
    from picstory.deploy.serve import create_app

    run, _ = calibrated
    noise = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)))
    with TestClient(create_app(run, log_path=tmp_path / "log.sqlite")) as c:
        body = c.post("/predict", content=noise, headers={"content-type": "image/png"}).json()
        assert body["unknown"] is True and body["label"] is None and body["ood_score"] > body["ood_threshold"]
        bad = c.post("/predict?min_confidence=1.5", content=noise, headers={"content-type": "image/png"})
        assert bad.status_code == 422 and "not a probability" in bad.json()["error"]["message"]
    rows = read_rows(tmp_path / "log.sqlite")
    assert [r["unknown"] for r in rows] == [1]


def test_an_old_log_without_the_unknown_column_is_read_and_upgraded(tmp_path):
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE predictions (id INTEGER PRIMARY KEY, time REAL NOT NULL, model_sha256 TEXT, "
                "input_sha256 TEXT NOT NULL, width INTEGER, height INTEGER, top1_label TEXT, top1_prob REAL, "
                "topk_json TEXT, latency_ms REAL, stored_path TEXT)")
    con.execute("INSERT INTO predictions (time, input_sha256, top1_label, top1_prob, topk_json) "
                "VALUES (1, 'a', 'blob', 0.9, ?)", (json.dumps([{"label": "blob", "probability": 0.9}]),))
    con.commit()
    con.close()
    assert read_rows(path)[0]["unknown"] is None
    log = PredictionLog(path)
    log.record(Entry("m", "b", 1, 1, [{"label": "blob", "probability": 0.2}], 1.0, unknown=True))
    log.close()
    assert [r["unknown"] for r in read_rows(path)] == [None, 1]


def test_monitor_sees_a_rising_share_of_unknown_answers():
    meta = {"ood": {"target_accept": 0.95}}
    steady = [{"time": 3600.0 * i, "unknown": int(i % 20 == 0)} for i in range(100)]
    rising = [{"time": 3600.0 * i, "unknown": int(i >= 50 and i % 2 == 0)} for i in range(100)]
    assert not unknown_trend(steady, meta)["rising"]
    trend = unknown_trend(rising, meta)
    assert trend["rising"] and trend["late_share"] == pytest.approx(0.5) and trend["expected_share"] == 0.05
    assert unknown_trend([{"time": 0.0, "unknown": None}], meta)["decided"] == 0


def test_doctor_gives_a_caveat_for_an_accurate_but_miscalibrated_model(tmp_path):
    from picstory.doctor import diagnose_loaded

    ev = {"split": "test", "accuracy": 0.97, "ece": 0.12, "temperature": 2.0,
          "calibration": {"before": {"ece": 0.2}, "after": {"ece": 0.12}}}
    run = {"dir": tmp_path, "summary": {"test_accuracy": 0.97}, "eval": ev, "metrics": [], "config": {}}
    d = diagnose_loaded(run, target_accuracy=0.9)
    assert d["verdict"] == "ready with a caveat" and "ECE 0.120" in d["summary"]
    ev.update(ece=0.01, calibration={"before": {"ece": 0.2}, "after": {"ece": 0.01}})
    d = diagnose_loaded(run, target_accuracy=0.9)
    assert d["verdict"] == "ready to deploy"
    assert any(f["title"].startswith("Over-confident: ECE 0.200 → 0.010") for f in d["findings"])


def test_small_validation_split_skips_calibration_but_keeps_the_unknown_threshold(calibrated, tmp_path, capsys):
    import shutil

    run, _ = calibrated
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    fields = calibrate_bundle(copy / "model", split(10, 7), split(20, 8))  # 30 validation images
    assert "fewer than 50" in fields["calibration"]["skipped"] and fields["calibration"]["temperature"] == 1.0
    assert "fewer than 50" in capsys.readouterr().err
    assert fields["ood"]["thresholds"] and load(copy).temperature == 1.0
    fields = calibrate_bundle(copy / "model", split(3, 7), split(20, 8), progress=False)  # 9: no threshold either
    assert "ood" not in fields and read_meta(copy / "model")["ood"] is None
