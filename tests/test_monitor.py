"""The prediction log and `picstory monitor`: drift (PSI), report files, relabel export, clear errors."""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from pathlib import Path

import pytest
from PIL import Image

from imagegen import noise, png_bytes
from picstory.deploy.log import Entry, InputStore, PredictionLog, default_log_path, read_rows
from picstory.errors import UserError
from picstory.models.bundle import read_meta
from picstory.monitor.report import copy_for_relabel, drift_level, monitor, psi
from test_serve import CLASSES, make_run

HOUR = 3600.0


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run = make_run(tmp_path_factory.mktemp("run"))
    (run / "summary.json").write_text(json.dumps({"class_counts": {"ant": 100, "bee": 100, "cat": 200}}))
    return run


def write_log(run: Path, labels: list[str], probs: list[float], store: Path | None = None,
              sha: str | None = None) -> Path:
    """One logged prediction per label, an hour apart, each with its own small PNG."""
    path = default_log_path(run)
    path.unlink(missing_ok=True)
    log = PredictionLog(path, store_inputs=store)
    sha = sha or read_meta(run / "model")["sha256"]
    t0 = time.time() - len(labels) * HOUR
    for i, (label, p) in enumerate(zip(labels, probs)):
        data = png_bytes(Image.fromarray(noise(12, 16, 1, seed=i)))
        rest = [c for c in CLASSES if c != label]
        preds = [{"label": label, "probability": p}] + [{"label": c, "probability": (1 - p) / 2} for c in rest]
        log.record(Entry(sha, hashlib.sha256(data).hexdigest(), 16, 12, preds, 3.0, data, "png", t0 + i * HOUR))
    log.close()
    return path


def test_psi_reference_values():
    assert psi({"a": 50, "b": 50}, {"a": 5, "b": 5}) == pytest.approx(0.0)
    want = (0.9 - 0.5) * math.log(0.9 / 0.5) + (0.1 - 0.5) * math.log(0.1 / 0.5)
    assert psi({"a": 1, "b": 1}, {"a": 9, "b": 1}) == pytest.approx(want)
    assert [drift_level(v) for v in (0.05, 0.2, 0.3)] == ["stable", "moderate", "significant"]


def test_matching_distribution_is_stable(run, tmp_path):
    labels = ["ant"] * 10 + ["bee"] * 10 + ["cat"] * 20  # the 1:1:2 of summary.json
    write_log(run, labels, [0.9] * 40)
    report = monitor(run, out=tmp_path / "out")
    assert report["drift"]["psi"] == pytest.approx(0.0, abs=1e-6) and report["drift"]["level"] == "stable"
    assert report["training_distribution_source"].endswith("summary.json class_counts")
    assert report["predictions"] == 40 and sum(report["over_time"]["counts"].values()) == 40
    assert report["over_time"]["unit"] == "hour"
    saved = json.loads((tmp_path / "out" / "monitor.json").read_text())
    assert saved["drift"] == report["drift"]
    page = (tmp_path / "out" / "monitor.html").read_text()
    assert re.findall(r"https?://", page) == [] and page.count("data:image/png;base64,") >= 3


def test_shifted_distribution_is_significant(run, tmp_path):
    write_log(run, ["ant"] * 36 + ["cat"] * 4, [0.8] * 40)
    report = monitor(run, out=tmp_path)
    assert report["drift"]["psi"] > 0.25 and report["drift"]["level"] == "significant"
    assert report["class_distribution"]["ant"]["predicted"] == pytest.approx(0.9)
    assert report["class_distribution"]["ant"]["training"] == pytest.approx(0.25)


def test_uniform_training_distribution_without_summary(tmp_path):
    run = make_run(tmp_path / "bare")
    write_log(run, ["ant", "bee", "cat"] * 3, [0.9] * 9)
    report = monitor(run, out=tmp_path / "out")
    assert report["training_distribution_source"].startswith("uniform")
    assert report["drift"]["psi"] == pytest.approx(0.0, abs=1e-6)


def test_relabel_export_copies_low_confidence_inputs(run, tmp_path):
    store = tmp_path / "inputs"
    write_log(run, ["ant", "bee", "cat", "cat", "ant"], [0.3, 0.95, 0.5, 0.59, 0.61], store=store)
    before = sorted(p.name for p in store.iterdir())
    report = monitor(run, out=tmp_path / "out", export_relabel=tmp_path / "queue", low_confidence=0.6)
    copied = sorted(str(p.relative_to(tmp_path / "queue")) for p in (tmp_path / "queue").rglob("*.png"))
    rows = read_rows(default_log_path(run))
    want = sorted(f"{r['top1_label']}/{Path(r['stored_path']).name}" for r in rows if r["top1_prob"] < 0.6)
    assert copied == want and len(copied) == 3
    assert report["relabel"]["copied"] == 3 and report["confidence"]["below_threshold"] == 3
    assert sorted(p.name for p in store.iterdir()) == before  # originals untouched
    again = monitor(run, out=tmp_path / "out", export_relabel=tmp_path / "queue", low_confidence=0.6)
    assert again["relabel"] == {**report["relabel"], "copied": 0, "already_there": 3}
    assert report["least_confident"][0]["probability"] == 0.3
    assert 'class="thumb"' in (tmp_path / "out" / "monitor.html").read_text()


def test_rows_of_other_models_are_left_out(run, tmp_path):
    write_log(run, ["ant"] * 4, [0.9] * 4, sha="0" * 64)
    with pytest.raises(UserError, match="none by this model"):
        monitor(run, out=tmp_path)


def test_empty_or_missing_log_is_a_user_error(run, tmp_path):
    default_log_path(run).unlink(missing_ok=True)
    with pytest.raises(UserError, match="no predictions logged yet at .*picstory serve"):
        monitor(run, out=tmp_path)
    PredictionLog(tmp_path / "empty.sqlite").close()
    with pytest.raises(UserError, match="no predictions logged yet"):
        monitor(run, log=tmp_path / "empty.sqlite", out=tmp_path)


def test_store_cap_deletes_only_its_oldest_files(tmp_path):
    store = InputStore(tmp_path, cap_mb=2500 / 2**20)  # room for two 1000-byte inputs
    (tmp_path / "notes.txt").write_bytes(b"x" * 5000)  # not ours: never deleted, never counted
    paths = []
    for i in range(3):
        paths.append(store.put(hashlib.sha256(bytes([i])).hexdigest(), "png", bytes([i]) * 1000))
        time.sleep(0.01)  # distinct mtimes, so "oldest" is well defined
    assert [p.exists() for p in paths] == [False, True, True]
    assert (tmp_path / "notes.txt").exists()


def test_relabel_folders_stay_inside_the_export_dir(tmp_path):
    src = tmp_path / ("a" * 64 + ".png")
    src.write_bytes(b"img")
    rows = [{"top1_prob": 0.1, "input_sha256": "a" * 64, "stored_path": str(src), "top1_label": "../../up"}]
    stats = copy_for_relabel(rows, tmp_path / "queue", 0.6)
    copied = list((tmp_path / "queue").rglob("*.png"))
    assert stats["copied"] == 1 and len(copied) == 1 and copied[0].parent.parent == tmp_path / "queue"
