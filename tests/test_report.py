"""report.html and its figures from synthetic run directories (2 and 20 classes, optional files missing)."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from picstory.config import Config
from picstory.pages.run_report import write_report

NASTY = "<b>&x"  # a class name that breaks HTML unless escaped


def thumb(seed: int, size: int = 32) -> str:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def make_run(root: Path, classes: list[str], epochs: int = 12, optional: bool = True) -> Path:
    """A run directory with every file the engine writes; ``optional=False`` leaves out the optional ones."""
    run = root / "picnet-m-pets"
    run.mkdir(parents=True)
    k, rng = len(classes), np.random.default_rng(0)
    cfg = Config().updated(data="data/pets", model="picnet-m", epochs=epochs, progressive="32,64").to_dict()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    rows = [{"epoch": e, "img_size": 32 if e <= epochs // 2 else 64, "lr": 0.01 * min(e, 3) / 3 / (1 + e / 4),
             "train_loss": 2.0 / e, "train_acc": 1 - 0.5 / e, "val_loss": 0.3 + 1.5 / e + 0.02 * max(0, e - 6),
             "val_acc": 0.9 - 0.4 / e, "seconds": 1.5} for e in range(1, epochs + 1)]
    with (run / "metrics.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cm = (np.eye(k) * 40 + rng.integers(0, 3, (k, k))).astype(int).tolist()
    counts = {s: {c: n * (3 if i == 0 else 1) for i, c in enumerate(classes)}
              for s, n in (("train", 60), ("val", 10), ("test", 10))}
    (run / "summary.json").write_text(json.dumps({
        "test_accuracy": 0.91, "val_accuracy": 0.89, "best_epoch": 6, "epochs_run": epochs, "train_seconds": 18.0,
        "classes": classes, "class_counts": counts, "stop_reason": "max epochs", "model": "picnet-m",
        "data": "data/pets", "img_size": 64, "params": 412345, "device": "cpu", "precision": "bf16"}))
    (run / "env.json").write_text(json.dumps({"picstory": "0.1.0", "torch": "2.14.1", "python": "3.11",
                                              "device": "cpu", "threads": 2, "seed": 0, "command": "picstory train"}))
    if optional:
        (run / "history.json").write_text(json.dumps({"confusion": [cm] * epochs}))
        items = [{"path": f"test/{classes[i % k]}/{i}.png", "true": classes[i % k], "pred": classes[(i + 1) % k],
                  "confidence": 0.99 - i / 100, "thumb": thumb(i)} for i in range(8)]
        suspects = [{"path": f"train/{classes[0]}/{i}.png", "label": classes[0], "pred": classes[1],
                     "confidence": 0.97, "loss": 4.2, "thumb": thumb(100 + i)} for i in range(3)]
        per_class = [{"class": c, "precision": 0.9, "recall": 0.5 if i == 1 else 0.92, "f1": 0.6 if i == 1 else 0.91,
                      "support": 10} for i, c in enumerate(classes)]
        (run / "eval.json").write_text(json.dumps({
            "split": "test", "data": "data/pets", "tta": "none", "accuracy": 0.91, "top5_accuracy": 0.99,
            "loss": 0.3, "classes": classes, "confusion": cm, "per_class": per_class, "mistakes": items,
            "suspects": suspects}))
        (run / "data.json").write_text(json.dumps({
            "spec": "data/pets", "kind": "folder", "class_counts": counts,
            "bad_files": [{"path": f"train/{NASTY}/broken.jpg", "reason": "truncated file"}],
            "leaks": [{"paths": ["train/a/1.png", "test/a/9.png"], "splits": ["train", "test"]}],
            "duplicates": 2, "imbalance_ratio": 3.0}))
        (run / "lr_find.json").write_text(json.dumps({"suggested_lr": 3e-3, "lrs": list(np.geomspace(1e-5, 1, 30)),
                                                      "losses": list(np.linspace(2.3, 1.0, 25)) + [2, 3, 5, 8, 9]}))
    return run


OUTPUTS = ("report.html", "curves.png", "confusion_matrix.png", "errors.png", "per_class.csv")


def _check_page(run: Path) -> str:
    for name in OUTPUTS:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    for name in OUTPUTS[1:4]:
        with Image.open(run / name) as im:
            assert im.format == "PNG" and im.width > 100
    assert not list(run.glob(".*.tmp")), "temp files left behind"
    page = (run / "report.html").read_text()
    assert not re.search(r"https?://", page), "the report must not reference any external URL"
    assert "<b>&x" not in page.replace("<b>Config</b>", "")
    return page


@pytest.mark.parametrize("k", [2, 20])
def test_report_full(tmp_path: Path, k: int) -> None:
    classes = [NASTY] + [f"class_{i}" for i in range(1, k)]
    run = make_run(tmp_path, classes)
    assert write_report(run) == run / "report.html"
    page = _check_page(run)
    assert "&lt;b&gt;&amp;x" in page
    for heading in ("Diagnosis", "Training curves", "Confusion matrix", "Per-class metrics",
                    "Most confident mistakes", "Likely mislabelled", "Data", "Config"):
        assert heading in page, heading
    assert page.count('<div class="tile"') == 8 + 3
    assert 'class="weak"' in page  # class_1 has F1 0.6 against ~0.9 for the rest
    with (run / "per_class.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == classes
    with Image.open(run / "confusion_matrix.png") as small, Image.open(run / "curves.png") as curves:
        assert curves.width >= 1000 and small.height > 200


def test_report_without_optional_files(tmp_path: Path) -> None:
    run = make_run(tmp_path, [NASTY, "dog", "cat"], optional=False)
    write_report(run)
    page = _check_page(run)
    assert "Diagnosis" in page and "Most confident mistakes" not in page
    assert (run / "per_class.csv").read_text().strip() == "class,precision,recall,f1,support"


def test_report_per_class_from_history_when_no_eval(tmp_path: Path) -> None:
    run = make_run(tmp_path, ["a", "b", "c"])
    (run / "eval.json").unlink()
    write_report(run)
    with (run / "per_class.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == ["a", "b", "c"]
    assert all(0.8 < float(r["recall"]) <= 1 for r in rows)
    assert "validation split" in _check_page(run)


def test_report_rejects_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    from picstory.errors import UserError

    with pytest.raises(UserError, match="not a (picstory )?run directory"):
        write_report(tmp_path)
