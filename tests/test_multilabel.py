"""Multi-label data: label cells with several labels, one-hot columns, JSON label files → a sigmoid head with BCE,
per-label thresholds tuned on validation, multi-label metrics, predict / serve label sets, ONNX parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import picstory
from picstory import cli
from picstory.config import AugmentConfig
from picstory.data.batches import BatchIterator
from picstory.data.sources import resolve
from picstory.data.split import split_source
from picstory.deploy.serve import create_app
from picstory.errors import ConfigError, DataError
from picstory.evaluation.multilabel import summarize_multilabel, tune_thresholds

FAST = dict(model="seed-mnist-cnn", img_size=20, batch_size=32, optimizer="adam", lr="3e-3", label_smoothing=0.0,
            patience=0, threads=1, progress=False)


def squares(root: Path, n: int, seed: int = 0) -> list[tuple[str, bool, bool]]:
    """n 20×20 gray PNGs of noise; a bright square in the top-left corner ('tl') and / or bottom-right ('br'),
    each present with probability 1/2, independently: the labels are which squares an image shows."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        img = rng.integers(0, 90, (20, 20), dtype=np.uint8)
        tl, br = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
        if tl:
            img[2:8, 2:8] = 240
        if br:
            img[12:18, 12:18] = 240
        Image.fromarray(img).save(root / f"{i:03d}.png")
        rows.append((f"{i:03d}.png", tl, br))
    return rows


def one_hot_csv(root: Path, n: int = 200) -> Path:
    rows = squares(root, n)
    path = root / "labels.csv"
    path.write_text("path,tl,br\n" + "".join(f"{p},{int(a)},{int(b)}\n" for p, a, b in rows))
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---- parsing -----------------------------------------------------------------------------------------------------

def test_pipe_and_semicolon_cells_and_a_semicolon_file(tmp_path):
    squares(tmp_path, 4)
    src = resolve(str(write(tmp_path / "a.csv", "path,label\n000.png,dog|outdoor\n001.png,cat\n002.png,dog; cat\n"
                                                  "003.png,cat|cat\n")))
    assert src.multilabel and src.classes == ["cat", "dog", "outdoor"]
    assert [r.tags for r in src.records] == [("dog", "outdoor"), ("cat",), ("cat", "dog"), ("cat",)]
    assert src.class_counts() == {"cat": 3, "dog": 2, "outdoor": 1}
    # ';' separates the columns here, so only '|' separates labels
    src = resolve(str(write(tmp_path / "b.csv", "path;label\n000.png;dog|outdoor\n001.png;cat\n")))
    assert src.multilabel and [r.tags for r in src.records] == [("dog", "outdoor"), ("cat",)]
    single = resolve(str(write(tmp_path / "c.csv", "path,label\n000.png,dog\n001.png,cat\n")))
    assert not single.multilabel and [r.label for r in single.records] == ["dog", "cat"]
    forced = resolve(str(tmp_path / "c.csv"), multi_label=True)
    assert forced.multilabel and [r.tags for r in forced.records] == [("dog",), ("cat",)]


def test_one_hot_columns_and_json_file(tmp_path):
    squares(tmp_path, 4)
    path = write(tmp_path / "h.csv", "path,dog,cat,note\n000.png,1,0,x\n001.png,0,1,y\n002.png,1,1,z\n003.png,0,0,w\n")
    src = resolve(str(path), label_cols="dog,cat")
    assert src.multilabel and src.classes == ["cat", "dog"]
    assert [r.tags for r in src.records] == [("dog",), ("cat",), ("cat", "dog"), ()]
    assert dict(src.records[0].meta) == {"note": "x"}  # the label columns are not metadata
    js = tmp_path / "labels.json"
    js.write_text(json.dumps({"000.png": ["dog", "outdoor"], "001.png": ["cat"], "002.png": [], "003.png": "cat"}))
    src = resolve(str(js))
    assert src.multilabel and src.kind == "json" and src.classes == ["cat", "dog", "outdoor"]
    assert [r.tags for r in src.records] == [("dog", "outdoor"), ("cat",), (), ("cat",)]
    mapped = resolve(str(js), label_map="outdoor=outside,cat=cat,dog=dog")
    assert mapped.classes == ["cat", "dog", "outside"]


@pytest.mark.parametrize("text,kw,expected", [
    ("path,dog,cat\n000.png,1,0\n", {"label_cols": "dog,kat"}, "no column 'kat' for --label-cols"),
    ("path,label\n000.png,dog|\n", {}, "h.csv:2: empty label in the multi-label cell 'dog|'"),
    ("path,label\n000.png,dog||cat\n", {}, "empty label"),
    ("path,dog,cat\n000.png,1,2\n", {"label_cols": "dog,cat"}, "h.csv:2: column 'cat' holds '2'; --label-cols"),
    ("path,dog,cat\n000.png,yes,0\n", {"label_cols": "dog,cat"}, "0 or 1 only"),
])
def test_bad_multilabel_input_is_one_clear_line(tmp_path, text, kw, expected):
    squares(tmp_path, 1)
    with pytest.raises(DataError) as e:
        resolve(str(write(tmp_path / "h.csv", text)), **kw)
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_bad_json_and_folder_refusals(tmp_path):
    squares(tmp_path / "d", 1)
    js = tmp_path / "d" / "l.json"
    js.write_text(json.dumps({"000.png": ["dog", ""]}))
    with pytest.raises(DataError, match="an empty label"):
        resolve(str(js))
    js.write_text(json.dumps({"000.png": {"dog": 1}}))
    with pytest.raises(DataError, match="give a list of label names"):
        resolve(str(js))
    with pytest.raises(DataError, match="folders hold one label per image"):
        resolve(str(tmp_path / "d"), multi_label=True)


def test_cli_error_is_one_line_and_nonzero(tmp_path, capsys):
    squares(tmp_path, 2)
    path = write(tmp_path / "h.csv", "path,dog\n000.png,1\n001.png,3\n")
    rc = cli.main(["train", str(path), "--label-cols", "dog", "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "column 'dog' holds '3'" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_split_keeps_rare_combinations_and_every_label_in_train(tmp_path):
    squares(tmp_path, 40)
    lines = [f"{i:03d}.png,{'a|b' if i % 2 else 'a'}" for i in range(38)] + ["038.png,a|c", "039.png,b|c|d"]
    src = resolve(str(write(tmp_path / "l.csv", "path,label\n" + "\n".join(lines) + "\n")))
    splits = split_source(src, 0.2, 0.2, seed=0)
    assert sorted(i for s in splits.values() for i in s) == list(range(40))
    train_labels = {t for i in splits["train"] for t in src.records[i].tags}
    assert train_labels == {"a", "b", "c", "d"}
    assert splits["val"] and splits["test"]


# ---- metrics and batches -----------------------------------------------------------------------------------------

def test_thresholds_and_metrics_against_sklearn():
    from sklearn.metrics import average_precision_score, f1_score

    rng = np.random.default_rng(0)
    y = (rng.random((60, 3)) < 0.4).astype(np.float32)
    y[:, 2] = 0  # no positive: the threshold falls back to 0.5
    probs = np.clip(y * 0.5 + rng.random((60, 3)) * 0.5, 0, 1)
    thr = tune_thresholds(probs, y)
    assert thr[2] == 0.5 and all(0 < t < 1 for t in thr)
    pred = probs >= np.array(thr)
    for j in range(2):  # the tuned threshold is at least as good as 0.5 on the data it was tuned on
        assert f1_score(y[:, j], pred[:, j]) >= f1_score(y[:, j], probs[:, j] >= 0.5)
    m = summarize_multilabel(probs, y, ["a", "b", "c"], thr)
    assert m["micro_f1"] == pytest.approx(f1_score(y, pred, average="micro"))
    assert m["per_label"][0]["ap"] == pytest.approx(average_precision_score(y[:, 0], probs[:, 0]))
    assert m["per_label"][2]["ap"] is None and m["mAP"] == pytest.approx(np.mean([m["per_label"][j]["ap"]
                                                                                  for j in range(2)]))
    assert m["exact_match"] == pytest.approx(float((pred == (y > 0.5)).all(1).mean()))


def test_false_positives_and_negatives_and_label_sets():
    from picstory.evaluation.multilabel import confident_errors, label_sets

    probs = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.45]], dtype=np.float32)
    y = np.array([[0, 0], [1, 1], [0, 1]], dtype=np.float32)
    images = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    out = confident_errors(probs, y, images, ["a", "b", "c"], ["x", "y"], [0.5, 0.5])
    assert [(m["path"], m["label"], m["prob"]) for m in out["false_positives"]] == [("a", "x", pytest.approx(0.9))]
    assert [(m["path"], m["label"]) for m in out["false_negatives"]] == [("c", "y")]
    assert out["false_negatives"][0]["true"] == ["y"] and out["false_negatives"][0]["pred"] == []
    sets = label_sets(probs, ["x", "y"], [0.5, 0.4])
    assert [[x["label"] for x in s] for s in sets] == [["x"], ["y", "x"], ["y"]]


def test_mixup_keeps_multi_hot_targets_in_range():
    x = torch.randint(0, 255, (16, 1, 8, 8), dtype=torch.uint8)
    y = (torch.rand(16, 3) < 0.5).float()
    it = BatchIterator(x, y, 8, (0.5,), (0.25,), augment=AugmentConfig(mixup=0.4), num_classes=3)
    for _, yb in it:
        assert yb.shape == (8, 3) and float(yb.min()) >= 0 and float(yb.max()) <= 1


# ---- end to end --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("squares")
    path = one_hot_csv(root / "data")
    run = picstory.train(str(path), label_cols="tl,br", epochs=6, out=str(root / "runs"), **FAST)
    return run, root


def test_training_reaches_a_good_micro_f1_and_saves_thresholds(trained):
    run, _ = trained
    ev = json.loads((run.path / "eval.json").read_text())
    assert ev["task"] == "multilabel" and ev["classes"] == ["br", "tl"]
    assert ev["micro_f1"] >= 0.85, ev["micro_f1"]  # chance (always both labels) is about 0.67
    assert {r["label"] for r in ev["per_label"]} == {"br", "tl"}
    assert all({"precision", "recall", "f1", "ap", "support", "threshold"} <= set(r) for r in ev["per_label"])
    assert {"macro_f1", "mAP", "exact_match", "false_positives", "false_negatives"} <= set(ev)
    assert "confusion" not in ev
    meta = json.loads((run.path / "model" / "model.json").read_text())
    assert meta["task"] == "multilabel" and set(meta["thresholds"]) == {"br", "tl"}
    assert run.summary["task"] == "multilabel" and run.summary["test_micro_f1"] == ev["micro_f1"]
    html = (run.path / "report.html").read_text()
    assert "Per-label metrics" in html and "Confusion matrix" not in html
    assert "threshold" in (run.path / "per_class.csv").read_text().splitlines()[0]
    card = (run.path / "model" / "MODEL_CARD.md").read_text()
    assert "Multi-label: test micro-F1" in card and "| label | precision | recall | F1 | AP |" in card


def test_predict_and_serve_return_the_label_set(trained):
    run, root = trained
    data = root / "data"
    predictor = picstory.load(run.path)
    both = data / "003.png"
    rows = [line.split(",") for line in (data / "labels.csv").read_text().splitlines()[1:]]
    none = next(data / p for p, a, b in rows if a == "0" and b == "0")
    results = predictor.predict([both, none], top_k=2)
    assert [x["label"] for x in results[0]["labels"]] in (["br", "tl"], ["tl", "br"])
    assert results[1]["labels"] == [] and set(results[1]["probs"]) == {"br", "tl"}
    with TestClient(create_app(run.path, log_path=root / "log.sqlite")) as client:
        r = client.post("/predict", files={"file": ("a.png", both.read_bytes(), "image/png")})
    body = r.json()
    assert r.status_code == 200 and {x["label"] for x in body["labels"]} == {"br", "tl"}
    assert body["probs"]["tl"] == pytest.approx(results[0]["probs"]["tl"], abs=1e-5)


def test_onnx_export_keeps_parity_and_predicts_the_same_sets(trained):
    from picstory.deploy.export import export

    run, root = trained
    record = export(run.path, "onnx", verbose=False)
    assert record["parity"]["passed"] and record["parity"]["max_abs_diff"] <= 1e-4
    assert record["parity"]["label_set_agreement"] == 1.0
    assert "sigmoid" in record["output"]["values"]
    images = [root / "data" / f"{i:03d}.png" for i in range(8)]
    torch_sets = [r["labels"] for r in picstory.load(run.path).predict(images)]
    onnx_sets = [r["labels"] for r in picstory.load(run.path, backend="onnx").predict(images)]
    assert [[x["label"] for x in s] for s in torch_sets] == [[x["label"] for x in s] for s in onnx_sets]


def test_options_for_one_label_per_image_are_refused(tmp_path):
    path = one_hot_csv(tmp_path / "data", 30)
    for extra, match in (({"class_weights": "auto"}, "--pos-weight balanced"),
                         ({"balanced_sampling": True}, "--pos-weight balanced"),
                         ({"folds": 2}, "cross-validation of multi-label data")):
        with pytest.raises(ConfigError, match=match):
            picstory.train(str(path), label_cols="tl,br", epochs=1, out=str(tmp_path / "runs"), **{**FAST, **extra})
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # refused before a run


def test_pos_weight_and_mixup_train(tmp_path):
    path = one_hot_csv(tmp_path / "data", 60)
    run = picstory.train(str(path), label_cols="tl,br", epochs=1, pos_weight="balanced", mixup=0.2,
                         out=str(tmp_path / "runs"), **{**FAST, "label_smoothing": 0.1})
    assert run.summary["task"] == "multilabel" and run.summary["epochs_run"] == 1
    config = (run.path / "config.yaml").read_text()
    assert "pos_weight: balanced" in config and "label_cols: tl,br" in config and "multi_label: true" in config


def test_data_check_reports_label_counts_and_co_occurrence(tmp_path, capsys):
    path = one_hot_csv(tmp_path / "data", 24)
    rc = cli.main(["data", "check", str(path), "--label-cols", "tl,br", "--out", str(tmp_path / "check")])
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "check" / "report.json").read_text())
    rows = [line.split(",") for line in path.read_text().splitlines()[1:]]
    assert rc == 0 and report["classes"] == {"br": sum(r[2] == "1" for r in rows), "tl": sum(r[1] == "1" for r in rows)}
    m = report["multilabel"]
    assert m["no_label"] == sum(r[1:] == ["0", "0"] for r in rows)
    assert m["co_occurrence"] == [{"labels": ["br", "tl"], "images": sum(r[1:] == ["1", "1"] for r in rows)}]
    assert "multi-label:" in out and "2 labels" in out
    assert "Multi-label" in (tmp_path / "check" / "report.html").read_text()


def test_eval_on_a_json_file_and_on_class_folders(trained, tmp_path):
    from picstory.pipeline.evaluation_run import evaluate_run

    run, root = trained
    rows = [line.split(",") for line in (root / "data" / "labels.csv").read_text().splitlines()[1:41]]
    js = root / "data" / "some.json"
    js.write_text(json.dumps({p: [t for t, v in (("tl", a), ("br", b)) if v == "1"] for p, a, b in rows}))
    ev = evaluate_run(run.path, str(js), progress=False)
    assert ev["task"] == "multilabel" and ev["n"] == 40 and ev["micro_f1"] >= 0.85
    for p, a, b in rows:  # one label per image: a class folder
        if (a, b) in (("1", "0"), ("0", "1")):
            d = tmp_path / "folders" / ("tl" if a == "1" else "br")
            d.mkdir(parents=True, exist_ok=True)
            (d / p).write_bytes((root / "data" / p).read_bytes())
    ev = evaluate_run(run.path, str(tmp_path / "folders"), progress=False)
    assert ev["n"] == sum((a, b) in (("1", "0"), ("0", "1")) for _, a, b in rows) and ev["micro_f1"] >= 0.85
