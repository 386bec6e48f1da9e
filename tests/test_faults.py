"""Every command, given a read-only output or a malformed input, answers one line and a non-zero exit: no
traceback, no path of a report that was never written. A failed start is marked failed, not left "running"."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import make_folder
from picstory.cli import main
from picstory.errors import UserError
from picstory.runs import list_runs

torch.set_num_threads(1)
TINY = ["--model", "seed-mnist-cnn", "--img-size", "16", "--epochs", "1", "--quiet"]


def _mount(path: Path, opts: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny trained run, a copy of it on a read-only filesystem, and a read-only empty folder (root ignores
    file modes, so read-only means a read-only mount)."""
    root = tmp_path_factory.mktemp("faults")
    data = make_folder(root / "data", n_per_class=8, size=16)
    assert main(["train", str(data), "--out", str(root / "runs"), "--name", "ok", *TINY]) == 0
    run = root / "runs" / "ok"
    ro_run, ro = root / "ro-run", root / "ro"
    if not (_mount(ro_run, "size=64m") and _mount(ro, "ro,size=1m")):
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    shutil.copytree(run, ro_run / "ok")
    subprocess.run(["mount", "-o", "remount,ro", str(ro_run)], check=True)
    yield {"data": data, "run": run, "ro_run": ro_run / "ok", "ro": ro, "root": root,
           "img": next((data / "blob").glob("*.png"))}
    for m in (ro_run, ro):
        subprocess.run(["umount", "-l", str(m)], check=False)


RO_CASES = {
    "data check --out": lambda w: ["data", "check", str(w["data"]), "--out", str(w["ro"] / "check")],
    "train --out": lambda w: ["train", str(w["data"]), "--out", str(w["ro"]), *TINY],
    "eval (read-only run)": lambda w: ["eval", str(w["ro_run"])],
    "export (read-only run)": lambda w: ["export", str(w["ro_run"])],
    "predict --backend onnx (read-only run)": lambda w: ["predict", str(w["ro_run"]), str(w["img"]),
                                                         "--backend", "onnx"],
    "serve --log": lambda w: ["serve", str(w["run"]), "--log", str(w["ro"] / "log.sqlite"), "--port", "0"],
    "doctor --export-relabel": lambda w: ["doctor", str(w["run"]), "--export-relabel", str(w["ro"] / "relabel")],
    "lr-find --out": lambda w: ["lr-find", str(w["data"]), "--out", str(w["ro"]), *TINY[:4]],
    "sweep --out": lambda w: ["sweep", str(w["data"]), "--out", str(w["ro"]), "--grid", "lr=0.1", *TINY[:-1]],
}


def _one_line_failure(argv: list[str], capsys) -> str:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    out, err = capsys.readouterr()
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code not in (0, None), f"exit 0 for {argv}: {out[-300:]} {err[-300:]}"
    assert lines and "Traceback" not in err, err
    assert lines[-1].startswith("error: "), err  # the CLI's one-line error
    return lines[-1]


@pytest.mark.parametrize("case", list(RO_CASES))
def test_a_read_only_output_is_one_line(world, capsys, case):
    line = _one_line_failure(RO_CASES[case](world), capsys)
    assert "read-only" in line.lower() or "not writable" in line or "cannot" in line or "could not" in line, line


def _bundle_copy(world, name: str) -> Path:
    run = world["root"] / name
    shutil.copytree(world["run"], run)
    return run


MALFORMED = {
    "model.json not JSON": ("model/model.json", "{not json"),
    "model.json a list": ("model/model.json", "[1, 2]"),
    "model.json wrong types": ("model/model.json", None),
    "weights missing": ("model/model.safetensors", ""),
    "checkpoint foreign": ("checkpoints/last.pt", {"hello": 1}),
}


@pytest.mark.parametrize("case", list(MALFORMED))
@pytest.mark.parametrize("command", ["predict", "export", "eval", "serve", "train --resume"])
def test_a_malformed_run_is_one_line(world, capsys, case, command):
    run = _bundle_copy(world, f"bad-{abs(hash((case, command)))}")
    rel, content = MALFORMED[case]
    target = run / rel
    if content is None:
        meta = json.loads(target.read_text())
        meta.update({"img_size": "huge", "classes": "abc"})
        target.write_text(json.dumps(meta))
    elif content == "":
        target.unlink()
    elif isinstance(content, dict):
        torch.save(content, target)
        (run / "summary.json").unlink()  # an interrupted run, so --resume reads the checkpoint
    else:
        target.write_text(content)
    argv = {"predict": ["predict", str(run), str(world["img"])], "export": ["export", str(run)],
            "eval": ["eval", str(run)], "serve": ["serve", str(run), "--port", "0"],
            "train --resume": ["train", "--resume", str(run), "--quiet"]}[command]
    if command == "train --resume" and "checkpoint" not in case:
        pytest.skip("resume reads the checkpoint, not the bundle")
    if command != "train --resume" and "checkpoint" in case:
        pytest.skip("only resume reads the checkpoint")
    _one_line_failure(argv, capsys)


def test_a_failed_start_is_marked_failed_not_running(tmp_path, capsys):
    from picstory.pipeline import train

    data = make_folder(tmp_path / "data", n_per_class=6, size=16)
    for i in range(3):
        (data / "blob" / f"broken{i}.png").write_bytes(b"not an image")  # 3 of 21: far over the 5 % allowed
    with pytest.raises(UserError, match="bad"):
        train(str(data), out=str(tmp_path / "runs"), name="bad", model="seed-mnist-cnn", img_size=16, epochs=1,
              progress=False)
    rows = list_runs(tmp_path / "runs")
    assert len(rows) == 1 and rows[0]["status"].startswith("failed: ") and "bad" in rows[0]["status"]
    with pytest.raises(UserError, match="failed"):
        train(resume=str(tmp_path / "runs" / "bad"), progress=False)
    assert main(["runs", str(tmp_path / "runs")]) == 0
    assert "failed: " in capsys.readouterr().out


def test_bad_weights_at_start_leave_no_running_run(tmp_path):
    from picstory.pipeline import train

    data = make_folder(tmp_path / "data", n_per_class=6, size=16)
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"garbage")
    with contextlib.suppress(UserError):
        train(str(data), out=str(tmp_path / "runs"), model="seed-mnist-cnn", img_size=16, epochs=1,
              weights=str(bad), progress=False)
    runs = tmp_path / "runs"
    statuses = [r["status"] for r in list_runs(runs)] if runs.is_dir() else []
    assert all(s.startswith("failed: ") for s in statuses), statuses
