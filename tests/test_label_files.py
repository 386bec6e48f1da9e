"""Label files as real data sets ship them (issue 13, items 1–3): any delimiter or header, numeric labels, label
maps, group-aware and stratified splits, sample weights and per-group metrics — on tiny generated PNGs."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import picstory
from conftest import pattern
from picstory import cli
from picstory.data.batches import BatchIterator
from picstory.data.sources import resolve
from picstory.data.split import assign_splits, balance, group_split, split_source
from picstory.errors import DataError
from picstory.evaluation.metrics import group_metrics, summarize
from picstory.pipeline.data_check_run import check
from picstory.training.engine import Learner

FAST = dict(model="seed-mnist-cnn", epochs=1, batch_size=16, img_size=20, progress=False)


def images(root: Path, n: int, size: int = 20, seed: int = 0) -> list[str]:
    """n PNGs under root/img; image i shows pattern i % 2 (horizontal or vertical stripes)."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        Image.fromarray(pattern(i % 2, size, rng, False)).save(root / "img" / f"{i:04d}.png")
        names.append(f"img/{i:04d}.png")
    return names


def write(path: Path, lines: list[str], bom: bool = False) -> Path:
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def labels_of(src) -> dict[str, str]:
    return {Path(r.ref).name: r.label for r in src.records}


# ---- item 1: any sane label file ---------------------------------------------------------------------------------

def test_headerless_space_separated_file_reads_paths_labels_and_columns(tmp_path):
    names = images(tmp_path, 6)
    path = write(tmp_path / "labels.txt", [f"{p}   {i % 3}  line-{'ab'[i % 2]}" for i, p in enumerate(names)])
    src = resolve(str(path))
    assert src.columns == ["0", "1", "2"] and len(src.records) == 6 and not src.problems
    assert src.classes == ["0", "1", "2"]
    assert dict(src.records[1].meta) == {"2": "line-b"}
    assert any("no header" in n for n in src.notes)
    grouped = resolve(str(path), group_col="2")
    assert [r.group for r in grouped.records[:2]] == ["line-a", "line-b"]


@pytest.mark.parametrize("name, sep", [("l.csv", ","), ("l.csv", ";"), ("l.tsv", "\t"), ("l.txt", "\t"),
                                       ("l.txt", " ")])
def test_delimiter_is_sniffed_with_bom_header_and_quotes(tmp_path, name, sep):
    images(tmp_path, 4)
    (tmp_path / "img" / "0000.png").rename(tmp_path / "img" / "a, b 0.png")  # quoted: holds comma and space
    rows = [f'"img/a, b 0.png"{sep}cat{sep}x'] + [f"img/{i:04d}.png{sep}{'dog' if i % 2 else 'cat'}{sep}y"
                                                 for i in range(1, 4)]
    path = write(tmp_path / name, [f"file{sep}kind{sep}note", *rows], bom=True)
    src = resolve(str(path), path_col="file", label_col="kind")
    assert src.columns == ["file", "kind", "note"]
    assert labels_of(src) == {"a, b 0.png": "cat", "0001.png": "dog", "0002.png": "cat", "0003.png": "dog"}


def test_columns_by_index_and_by_contents(tmp_path):
    names = images(tmp_path, 4)
    path = write(tmp_path / "l.csv", ["who,what,where"] + [f"ann{i},{'ab'[i % 2]},{p}" for i, p in enumerate(names)])
    src = resolve(str(path), path_col="2", label_col="1")
    assert set(labels_of(src).values()) == {"a", "b"}
    with pytest.raises(DataError, match="--label-col"):  # a header with unknown names: say which flag to use
        resolve(str(path))
    assert len(resolve(str(path), label_col="what").records) == 4  # the path column is found by its contents


def test_mixed_delimiters_are_a_clear_error(tmp_path):
    names = images(tmp_path, 4)
    lines = [f"{p},{i % 2}" for i, p in enumerate(names[:3])] + [f"{names[3]}\t1"]
    with pytest.raises(DataError, match=r"mixed delimiters.*comma.*line 4.*tab"):
        resolve(str(write(tmp_path / "l.txt", lines)))


def test_headerless_file_whose_first_path_is_missing_is_still_data(tmp_path):
    names = images(tmp_path, 4)
    path = write(tmp_path / "l.txt", ["img/gone.png 0"] + [f"{p} {i % 2}" for i, p in enumerate(names)])
    src = resolve(str(path))
    assert src.columns == ["0", "1"] and len(src.records) == 4  # not taken for a header
    assert len(src.problems) == 1 and "missing file (row 1" in src.problems[0][1]


def test_empty_label_cells_are_named_rows_not_a_crash(tmp_path):
    names = images(tmp_path, 4)
    path = write(tmp_path / "l.csv", ["path,label,line", f"{names[0]},,a", f"{names[1]},1,b", f"{names[2]}",
                                      f"{names[3]},0,a"])
    src = resolve(str(path))
    assert len(src.records) == 2
    where = sorted(p for p, _ in src.problems)
    assert where == [f"{path}:2", f"{path}:4"]
    assert all("empty label (column 'label')" in why for _, why in src.problems)


def test_paths_leaving_the_folder_are_refused_with_the_row(tmp_path):
    images(tmp_path, 2)
    (tmp_path / "set").mkdir()
    path = write(tmp_path / "set" / "l.txt", ["../img/0000.png 0", "../img/0001.png 1"])
    with pytest.raises(DataError, match="no usable rows"):
        resolve(str(path))
    src = resolve(str(path), allow_outside=True)
    assert len(src.records) == 2


def test_numeric_labels_sort_by_value(tmp_path):
    names = images(tmp_path, 6)
    values = ["1", "0.667", "10", "0", "0.333", "2"]
    src = resolve(str(write(tmp_path / "l.txt", [f"{p} {v}" for p, v in zip(names, values)])))
    assert src.classes == ["0", "0.333", "0.667", "1", "2", "10"]


def test_label_map_inline_or_yaml_merges_and_renames(tmp_path):
    names = images(tmp_path, 8)
    path = write(tmp_path / "l.txt", [f"{p} {['0', '0.333', '0.667', '1'][i % 4]}" for i, p in enumerate(names)])
    src = resolve(str(path), label_map="0=ok,0.333=ok,0.667=defect,1.0=defect")  # 1.0 matches 1 by value
    assert src.class_counts() == {"defect": 4, "ok": 4} and src.label_map["1"] == "defect"
    (tmp_path / "map.yaml").write_text(yaml.safe_dump({0: "ok", 0.333: "ok", 0.667: "bad", 1: "bad"}))
    assert resolve(str(path), label_map=str(tmp_path / "map.yaml")).classes == ["bad", "ok"]


def test_label_map_unknown_value_warns_and_unmapped_value_errs(tmp_path):
    names = images(tmp_path, 4)
    path = write(tmp_path / "l.txt", [f"{p} {i % 3}" for i, p in enumerate(names)])
    src = resolve(str(path), label_map="0=a,1=b,2=c,7=d")
    assert any("'7=d' matches no label" in n for n in src.notes)
    with pytest.raises(DataError, match=r"leaves label value\(s\) 1, 2 unmapped"):
        resolve(str(path), label_map="0=a")
    with pytest.raises(DataError, match="not VALUE=CLASS"):
        resolve(str(path), label_map="0=a,1")


# ---- item 2: groups and strata -----------------------------------------------------------------------------------

def test_group_split_keeps_every_group_on_one_side_and_the_balance_close():
    rng = np.random.default_rng(0)
    groups = [f"g{i // 10}" for i in range(400)]  # 40 groups of 10
    labels = [str(int(rng.random() < (0.2 if int(g[1:]) % 2 else 0.7))) for g in groups]
    splits = group_split(labels, groups, {"val": 0.1, "test": 0.2}, seed=3)
    side = defaultdict(set)
    for g, s in zip(groups, splits):
        side[g].add(s)
    assert all(len(v) == 1 for v in side.values())
    n = {s: splits.count(s) for s in ("train", "val", "test")}
    assert abs(n["test"] - 80) <= 10 and abs(n["val"] - 40) <= 10
    overall = labels.count("1") / len(labels)
    for s in ("train", "val", "test"):
        part = [lab for lab, t in zip(labels, splits) if t == s]
        assert abs(part.count("1") / len(part) - overall) < 0.05, s


def test_group_larger_than_the_test_share_is_named():
    groups = ["big"] * 60 + [f"g{i}" for i in range(40)]
    labels = [str(i % 2) for i in range(100)]
    notes: list[str] = []
    splits = group_split(labels, groups, {"test": 0.1}, seed=0, notes=notes)
    assert {s for g, s in zip(groups, splits) if g == "big"} == {"train"}
    assert any("'big' (60)" in n and "test share" in n for n in notes)
    notes = []
    few = ["a"] * 30 + ["b"] * 30 + ["c"] * 40
    splits = group_split(labels, few, {"test": 0.1}, seed=0, notes=notes)
    assert set(splits) == {"train", "test"} and any("every group is larger than the test share" in n for n in notes)
    with pytest.raises(DataError, match="only 1 group"):
        group_split(labels, ["one"] * 100, {"test": 0.1})


def test_unknown_group_col_names_close_matches(tmp_path):
    names = images(tmp_path, 4)
    path = write(tmp_path / "l.csv", ["path,label,camera"] + [f"{p},{i % 2},c{i}" for i, p in enumerate(names)])
    with pytest.raises(DataError, match=r"no column 'camra' for --group-col.*did you mean camera"):
        resolve(str(path), group_col="camra")
    with pytest.raises(DataError, match="not a label file"):
        resolve(str(tmp_path / "img"), group_col="camera")


def test_stratify_col_keeps_each_stratum_in_every_split(tmp_path):
    names = images(tmp_path, 80)
    path = write(tmp_path / "l.csv", ["path,label,line"] + [f"{p},{i % 2},{'ab'[(i // 2) % 2]}"
                                                           for i, p in enumerate(names)])
    src = resolve(str(path))
    splits = split_source(src, 0.1, 0.2, 0, stratify_col="line")
    for s in ("train", "val", "test"):
        seen = {(src.records[i].label, dict(src.records[i].meta)["line"]) for i in splits[s]}
        assert len(seen) == 4, s
    with pytest.raises(DataError, match="--stratify-col lin: .*did you mean line"):
        split_source(src, 0.1, 0.2, 0, stratify_col="lin")


def test_data_check_reports_the_group_split_and_balance_shift(tmp_path, capsys):
    names = images(tmp_path / "data", 60)
    path = write(tmp_path / "data" / "labels.txt", [f"{p} {i % 2} line-{i % 6}" for i, p in enumerate(names)])
    report = check(str(path), tmp_path / "out", group_col="2", progress=False)
    plan = report["split_plan"]
    assert plan["groups"] == 6 and plan["groups_straddling"] == []
    assert sum(plan["n"].values()) == 60 and "max_shift_points" in plan
    rc = cli.main(["data", "check", str(path), "--group-col", "2", "--out", str(tmp_path / "out2")])
    out = capsys.readouterr().out
    assert rc == 0 and "class balance moved at most" in out and "6 groups, none split" in out
    assert "no header" in out


def test_group_metrics_give_accuracy_and_recall_per_value():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 1, 0])
    g = group_metrics(probs, labels, ["a", "b"], ["x", "x", "y", "y"], "camera")
    rows = {r["value"]: r for r in g["groups"]}
    assert rows["x"]["accuracy"] == 1.0 and rows["y"]["accuracy"] == 0.0 and g["worst"] == "y"
    assert rows["y"]["recall"] == {"a": 0.0, "b": 0.0} and rows["x"]["n"] == 2


# ---- item 3: sample weights --------------------------------------------------------------------------------------

def test_weighted_loss_is_the_weighted_mean_of_per_sample_losses():
    torch.manual_seed(0)
    logits, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    w = torch.tensor([1.0, 0.0, 2.0, 0.5, 1.0, 0.0])
    learner = Learner(model=torch.nn.Identity(), optimizer=None, train_batches=None, val_batches=None, lr=0.1,
                      schedule=lambda s: 1.0, epochs=1, num_classes=3)
    each = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    assert torch.allclose(learner.loss_fn(logits, y, w), (each * w).sum() / w.sum())
    assert torch.allclose(learner.loss_fn(logits, y, torch.ones(6)), learner.loss_fn(logits, y))
    keep = w > 0  # a zero weight removes the sample from the loss
    assert torch.allclose(learner.loss_fn(logits, y, w), learner.loss_fn(logits[keep], y[keep], w[keep]))


def test_batches_carry_each_samples_weight():
    imgs = torch.arange(8, dtype=torch.uint8).view(8, 1, 1, 1).expand(8, 1, 4, 4).contiguous()
    w = torch.arange(8, dtype=torch.float32) / 10
    it = BatchIterator(imgs, torch.zeros(8, dtype=torch.long), 3, (0.0,), (1.0,), shuffle=True, seed=1,
                       loss_weights=w)
    for x, _, wb in it:
        assert torch.allclose(wb, x[:, 0, 0, 0] * 255 / 10)  # pixel value i ↔ weight i/10, after the shuffle


def test_weighted_accuracy_and_support():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    labels = np.array([0, 1, 1])
    m = summarize(probs, labels, ["a", "b"], weights=np.array([1.0, 1.0, 2.0]))
    assert m["accuracy"] == pytest.approx(2 / 3) and m["weighted_accuracy"] == pytest.approx(0.5)
    assert [c["weighted_support"] for c in m["per_class"]] == [1.0, 3.0]
    assert "weighted_accuracy" not in summarize(probs, labels, ["a", "b"])


def test_bad_weight_cell_is_a_named_row(tmp_path):
    names = images(tmp_path, 3)
    path = write(tmp_path / "l.csv", ["path,label,conf", f"{names[0]},0,0.5", f"{names[1]},1,high",
                                      f"{names[2]},1,-1"])
    src = resolve(str(path), weight_col="conf")
    assert [r.weight for r in src.records] == [0.5]
    assert [p for p, _ in src.problems] == [f"{path}:3", f"{path}:4"]


# ---- through train and eval ----------------------------------------------------------------------------------------

def test_headerless_file_trains_and_evaluates_with_groups_weights_and_a_label_map(tmp_path, capsys):
    names = images(tmp_path / "data", 72)
    lines = [f"{p}  {['0', '0.333', '0.667', '1'][(i % 2) * 2 + (i // 2) % 2]}  line-{i % 8}  {1 + i % 3}"
             for i, p in enumerate(names)]
    path = write(tmp_path / "data" / "labels.txt", lines)
    run = picstory.train(str(path), out=str(tmp_path / "runs"), group_col="2", weight_col="3",
                         label_map="0=ok,0.333=ok,0.667=defect,1=defect", report_by="2", **FAST)
    cfg = yaml.safe_load((run.path / "config.yaml").read_text())["data"]
    assert cfg["label_map"] == "0=ok,0.333=ok,0.667=defect,1=defect" and cfg["weight_col"] == "3"
    meta = json.loads((run.path / "model" / "model.json").read_text())
    assert meta["classes"] == ["defect", "ok"] and meta["label_map"]["0.667"] == "defect"
    split_of = {}
    for row in (run.path / "split.csv").read_text().splitlines()[1:]:
        ref, _, s = row.split(",")
        split_of[ref] = s
    side = defaultdict(set)
    for line in lines:
        p, _, group, _ = line.split()
        side[group].add(split_of[p])
    assert all(len(v) == 1 for v in side.values())
    data = json.loads((run.path / "data.json").read_text())
    assert data["split"]["groups"] == 8 and not data["split"]["groups_straddling"]
    ev = json.loads((run.path / "eval.json").read_text())
    assert "weighted_accuracy" in ev and ev["by_group"]["column"] == "2"
    assert "Metrics by 2" in (run.path / "report.html").read_text()
    rc = cli.main(["eval", str(run.path), "--report-by", "2"])
    assert rc == 0 and "by 2: line-" in capsys.readouterr().out
    with pytest.raises(DataError, match=r"--report-by lin: .*no such column \(columns besides path and label: 2, 3\)"):
        picstory.evaluate(str(run.path), report_by="lin")


def test_assign_splits_without_groups_is_unchanged():
    from picstory.data.records import Record

    recs = [Record(f"/x/{i}.png", str(i % 2)) for i in range(40)]
    a = assign_splits(recs, 0.1, 0.1, seed=0)
    assert a.count("test") == 4 and a.count("val") == 4
    assert balance(type("S", (), {"classes": ["0", "1"], "records": recs})(),
                   {s: [i for i, t in enumerate(a) if t == s] for s in ("train", "val", "test")})["groups"] == 0
