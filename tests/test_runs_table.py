"""`picstory runs` output: JSON and CSV that parse back, sorting by any column, plain and rich tables."""

from __future__ import annotations

import csv
import io
import json

import pytest
import yaml

from picstory.compare.table import RUN_COLUMNS, format_runs, render
from picstory.errors import UserError
from picstory.runs import list_runs

ROWS = [
    {"name": "b-run", "data": "builtin:digits", "model": "picnet-s", "optimizer": "adamw", "lr": 0.003,
     "best_val": 0.91, "test": 0.905, "epochs": 4, "seconds": 12.5, "status": "max epochs", "date": "2026-01-02"},
    {"name": "a-run", "data": "builtin:digits", "model": "seed-mnist-cnn", "optimizer": "sgd", "lr": 0.1,
     "best_val": 0.95, "test": 0.94, "epochs": 10, "seconds": 40.0, "status": "max epochs", "date": "2026-01-01"},
    {"name": "c-run", "data": "cats", "model": "picnet-m", "optimizer": "adam", "lr": "preset",
     "best_val": None, "test": None, "epochs": None, "seconds": None, "status": "running or interrupted",
     "date": ""},
]


def names(rows):
    return [r["name"] for r in rows]


def test_json_parses_back_to_the_rows():
    out = json.loads(format_runs(ROWS, "json", ""))
    assert out == [{c: r[c] for c in RUN_COLUMNS} for r in ROWS]


def test_csv_parses_with_every_column():
    reader = csv.DictReader(io.StringIO(format_runs(ROWS, "csv", "")))
    rows = list(reader)
    assert reader.fieldnames == RUN_COLUMNS
    assert names(rows) == ["b-run", "a-run", "c-run"]
    assert rows[0]["test"] == "0.905" and rows[2]["test"] == "" and rows[2]["status"] == "running or interrupted"


@pytest.mark.parametrize("sort, expected", [
    ("test", ["a-run", "b-run", "c-run"]),  # accuracies: best first, missing last
    ("best_val", ["a-run", "b-run", "c-run"]),
    ("seconds", ["b-run", "a-run", "c-run"]),  # everything else ascending
    ("-seconds", ["a-run", "b-run", "c-run"]),
    ("-test", ["b-run", "a-run", "c-run"]),
    ("name", ["a-run", "b-run", "c-run"]),
])
def test_sort(sort, expected):
    assert names(json.loads(format_runs(ROWS, "json", sort))) == expected
    reader = csv.DictReader(io.StringIO(format_runs(ROWS, "csv", sort)))
    assert names(reader) == expected


def test_unknown_sort_column_or_format_is_a_user_error():
    with pytest.raises(UserError, match=r"cannot sort by 'tset'.*did you mean test"):
        format_runs(ROWS, "table", "tset")
    with pytest.raises(UserError, match=r"unknown format 'yaml'"):
        format_runs(ROWS, "yaml", "")


def test_plain_table_when_not_a_terminal():
    text = format_runs(ROWS, "table", "test")  # pytest captures stdout: not a tty
    lines = text.splitlines()
    assert lines[0].split() == [c for c in RUN_COLUMNS if c != "date"]
    assert [ln.split()[0] for ln in lines[2:]] == ["a-run", "b-run", "c-run"]
    assert "0.9400" in lines[2] and "40.0" in lines[2] and "\x1b[" not in text
    assert lines[4].split()[5:9] == ["-", "-", "-", "-"]


def test_rich_table_on_a_terminal():
    text = render(ROWS, ["name", "test"], "table", tty=True)
    assert "a-run" in text and "0.9400" in text and ("┃" in text or "│" in text)


def test_empty_listing():
    assert format_runs([], "table", "") == "no runs found"
    assert json.loads(format_runs([], "json", "")) == []
    assert format_runs([], "csv", "").splitlines() == [",".join(RUN_COLUMNS)]


def test_listing_of_run_folders(tmp_path):
    run = tmp_path / "runs" / "one"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"data": "builtin:digits"},
                                                     "model": {"model": "picnet-s"},
                                                     "train": {"optimizer": "sgd", "lr": "0.1"}}))
    (run / "summary.json").write_text(json.dumps({"val_accuracy": 0.97, "test_accuracy": 0.96, "epochs_run": 3,
                                                  "train_seconds": 9.5, "stop_reason": "max epochs", "lr": 0.1}))
    out = json.loads(format_runs(list_runs(tmp_path / "runs"), "json", "test"))
    assert out[0]["name"] == "one" and out[0]["test"] == 0.96 and out[0]["model"] == "picnet-s"
