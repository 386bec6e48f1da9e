"""The model card: MODEL_CARD.md in every bundle and the same facts as a section of report.html."""

from __future__ import annotations

import json
import shutil

import picstory
from conftest import make_folder

FAST = dict(model="seed-mnist-cnn", epochs=2, batch_size=16, img_size=20, lr="3e-3", hflip=0.0, progress=False)


def read(run, name):
    return (run.path / name).read_text()


def test_card_holds_intended_use_data_recipe_metrics_weaknesses_and_licence(gray_folder, runs_dir):
    run = picstory.train(str(gray_folder), out=str(runs_dir), description="Sorts <stripes> & blobs; not for photos.",
                         licence="CC-BY-4.0", **FAST)
    card = read(run, "model/MODEL_CARD.md")
    sections = [line[3:] for line in card.splitlines() if line.startswith("## ")]
    assert sections == ["Model", "Intended use", "Data", "Training recipe", "Metrics", "Calibration and unknown inputs",
                        "Known weaknesses", "Licence"]
    assert "Sorts <stripes> & blobs; not for photos." in card and "\n\nCC-BY-4.0" in card
    data, env, ev = (json.loads(read(run, f)) for f in ("data.json", "env.json", "eval.json"))
    assert f"fingerprint: `{env['data_fingerprint']}`" in card
    counts = data["class_counts"]
    for c in ("blob", "horizontal", "vertical"):  # one row per class: train, val, test, total
        row = [counts[k][c] for k in ("train", "val", "test")]
        assert f"| {c} | {row[0]} | {row[1]} | {row[2]} | {sum(row)} |" in card
        pc = next(r for r in ev["per_class"] if r["class"] == c)
        assert f"| {c} | {pc['precision']:.3f} | {pc['recall']:.3f} | {pc['f1']:.3f} | {pc['support']} |" in card
    assert f"test accuracy {100 * ev['accuracy']:.1f}% on {ev['n']} images" in card
    assert "weakest classes: " in card and "Doctor's verdict: " in card
    assert "optimizer sgd-momentum, peak LR 0.003" in card and "started from random initialisation" in card
    assert f"picstory train --config {run.path / 'config.yaml'}" in card
    html = read(run, "report.html")
    assert '<section id="model-card">' in html and "Sorts &lt;stripes&gt; &amp; blobs" in html
    assert "<h3>Known weaknesses</h3>" in html and "<code>" + env["data_fingerprint"] + "</code>" in html


def test_card_says_how_to_fill_what_is_missing_and_shows_leaks(tmp_path, runs_dir):
    data = make_folder(tmp_path / "split", n_per_class=20, splits=("train", "test"))
    leaked = sorted((data / "train" / "blob").glob("*.png"))[0]
    shutil.copy(leaked, data / "test" / "blob" / "copy_of_train.png")
    run = picstory.train(str(data), out=str(runs_dir), **FAST)
    card = read(run, "model/MODEL_CARD.md")
    assert "Not stated. Train with `--description" in card and "Not stated (train with `--licence NAME`)" in card
    assert "images shared between splits (leaks): 1 — test accuracy may be optimistic" in card
    assert "copy_of_train.png" in card and leaked.name in card
