"""Faults a careful adversarial user finds: a hostile bundle, a run written into the data, --epochs 0, short-run
schedules, label files that point outside the data set. Each test failed before its fix."""

import json
import pickle

import pytest
import torch

from picstory.deploy.predict import load
from picstory.errors import ConfigError, UserError
from picstory.models import create_model
from picstory.models.bundle import save_bundle
from picstory.training.optim import make_schedule

torch.set_num_threads(1)


class Payload:
    """Unpickling this writes a marker file: proof that a pickle ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _bundle(tmp_path, arch="resnet18"):
    model = create_model(arch, 2, 3, img_size=32).eval()
    meta = {"arch": arch, "model_kwargs": {"drop_rate": 0.1}, "num_classes": 2, "classes": ["a", "b"],
            "in_chans": 3, "img_size": 32, "fit": "crop", "mean": [0.5] * 3, "std": [0.25] * 3}
    return save_bundle(tmp_path / "bundle", model, meta)


@pytest.mark.parametrize("key", ["checkpoint_path", "pretrained_cfg_overlay", "pretrained_cfg", "pretrained"])
def test_a_hostile_bundle_is_refused_and_runs_no_pickle(tmp_path, key):
    bundle = _bundle(tmp_path)
    marker = tmp_path / "pwned"
    payload = tmp_path / "evil.pth"
    payload.write_bytes(pickle.dumps({"state_dict": Payload(str(marker))}))
    meta = json.loads((bundle / "model.json").read_text())
    meta["model_kwargs"][key] = (str(payload) if key == "checkpoint_path" else
                                 {"file": str(payload)} if key != "pretrained" else True)
    (bundle / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=f"model_kwargs key '{key}' is not allowed"):
        load(bundle)
    assert not marker.exists()


@pytest.mark.parametrize("value", ["/etc/passwd", "../x", [1], {"a": 1}, float("nan"), True, 1.5])
def test_bundle_model_kwargs_values_must_be_plain(tmp_path, value):
    bundle = _bundle(tmp_path)
    meta = json.loads((bundle / "model.json").read_text())
    meta["model_kwargs"] = {"global_pool" if isinstance(value, str) else "img_size": value}
    (bundle / "model.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="model_kwargs"):
        load(bundle)


def test_an_honest_bundle_still_loads(tmp_path):
    assert load(_bundle(tmp_path)).meta["model_kwargs"] == {"drop_rate": 0.1}


@pytest.mark.parametrize("epochs", [1, 2, 3, 10])
@pytest.mark.parametrize("name", ["cosine", "linear", "onecycle"])
def test_a_short_run_still_decays_to_the_schedules_floor(name, epochs):
    steps_per_epoch = 4
    total = epochs * steps_per_epoch
    factor = make_schedule(name, total, warmup_steps=3 * steps_per_epoch)  # a warm-up longer than the run
    last, plain_last = factor(total - 1), make_schedule(name, total)(total - 1)
    assert last <= 0.3 and last <= plain_last + 0.1, f"{name}, {epochs} epochs: last step at {last:.2f} of the peak"
    assert max(factor(s) for s in range(total)) > 0.5


def _folder(root, n=6):
    import numpy as np
    from PIL import Image

    for c, v in (("cat", 40), ("dog", 200)):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8, 3), v + i, np.uint8)).save(root / c / f"{i}.png")
    return root


def test_a_run_is_never_written_into_the_data(tmp_path, monkeypatch):
    from picstory.errors import DataError
    from picstory.pipeline import train

    data = _folder(tmp_path / "photos")
    monkeypatch.chdir(data)  # `picstory train .` inside the data folder: runs/ would land in the data
    with pytest.raises(DataError, match="--out .* is inside the data folder"):
        train(".", epochs=1, progress=False)
    with pytest.raises(DataError, match="inside the data folder"):
        train(str(data), out=str(data / "cat" / "runs"), epochs=1, progress=False)
    assert sorted(p.name for p in data.iterdir()) == ["cat", "dog"]


def test_run_folders_met_in_a_data_folder_are_skipped(tmp_path):
    from picstory.data.sources import resolve
    from picstory.runs import create_run_dir

    data = _folder(tmp_path / "photos")
    run = create_run_dir(data / "runs", "old")  # e.g. written by an older version
    (run / "curves.png").write_bytes((data / "cat" / "0.png").read_bytes())
    nested = create_run_dir(data / "cat" / "runs", "inside-a-class")  # met by the walk of a class folder
    (nested / "errors.png").write_bytes((data / "cat" / "0.png").read_bytes())
    source = resolve(str(data))
    assert source.classes == ["cat", "dog"] and len(source.records) == 12


def test_epochs_0_means_the_presets_choice(tmp_path):
    from picstory.data.sources import resolve
    from picstory.pipeline.training_run import resolve_config
    from picstory.training.presets import preset_values

    source = resolve(str(_folder(tmp_path / "photos")))
    cfg = resolve_config({"data": str(tmp_path / "photos"), "epochs": 0, "img_size": 8}, source)
    assert cfg.train.epochs == preset_values("default", 8)["epochs"] > 0
    assert resolve_config({"data": "x", "epochs": "3", "img_size": 8}, source).train.epochs == 3


def test_label_file_rows_that_leave_the_data_set_are_refused(tmp_path):
    from picstory.data.sources import resolve

    data = _folder(tmp_path / "set" / "images")
    secret = tmp_path / "secret.png"
    secret.write_bytes((data / "cat" / "0.png").read_bytes())
    rows = ["path,label", "images/cat/0.png,cat", "images/dog/0.png,dog", "../secret.png,cat", f"{secret},dog",
            "../missing.png,cat"]
    (tmp_path / "set" / "labels.csv").write_text("\n".join(rows) + "\n")
    source = resolve(str(tmp_path / "set" / "labels.csv"))
    assert len(source.records) == 2
    reasons = [reason for _, reason in source.problems]
    assert len(reasons) == 3 and all("leaves" in r and "--allow-outside" in r for r in reasons)
    assert not any("missing file" in r for r in reasons)  # nothing says which outside files exist
    assert len(resolve(str(tmp_path / "set" / "labels.csv"), allow_outside=True).records) == 4


def test_a_crash_between_the_bundle_renames_loses_no_model(tmp_path):
    from picstory.models.bundle import find_bundle

    run = tmp_path / "run"
    run.mkdir()
    bundle = save_bundle(run / "model", create_model("resnet18", 2, 3, img_size=32).eval(),
                         {"arch": "resnet18", "num_classes": 2, "classes": ["a", "b"], "in_chans": 3, "img_size": 32,
                          "fit": "crop", "mean": [0.5] * 3, "std": [0.25] * 3})
    aside = run / ".model.abc123.old"
    aside.mkdir()
    bundle.rename(aside / "bundle")  # the state after the first rename of a swap, before the second
    (run / ".model.def456.tmp").mkdir()  # a half-written new bundle
    assert find_bundle(run) == run / "model"
    assert load(run).meta["classes"] == ["a", "b"]
    save_bundle(run / "model", create_model("resnet18", 2, 3, img_size=32).eval(), load(run).meta)
    assert sorted(p.name for p in run.iterdir()) == ["model"]  # the writer cleans what killed saves left


def test_resume_removes_the_temp_files_of_killed_writes(tmp_path):
    import shutil
    from pathlib import Path

    from picstory.pipeline import train

    fixture = Path(__file__).parent / "fixtures" / "run-0.1.0"
    run = tmp_path / "runs" / "old-run"
    shutil.copytree(fixture, run)
    (run / "checkpoints" / ".last.pt.x1y2.tmp").write_bytes(b"half")
    (run / ".metrics.csv.x3.tmp").write_text("half")
    train(resume=str(run), progress=False)
    assert not list(run.rglob(".*.tmp"))


def test_a_closed_pipe_is_not_a_traceback(tmp_path):
    import subprocess
    import sys

    cmd = f"{sys.executable} -m picstory models | head -1"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
