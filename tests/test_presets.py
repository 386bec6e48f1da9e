"""Every preset trains on real data (digits) and beats chance; the preset's recipe lands in config.yaml."""

import pytest
import yaml

import picstory
from picstory.training.presets import SMALL, fit_batch_size


@pytest.mark.parametrize("preset", ["fast", "default", "best"])
def test_presets_train_and_beat_chance_on_digits(preset, runs_dir):
    run = picstory.train("builtin:digits", preset=preset, epochs=2, out=str(runs_dir), progress=False,
                         hflip=0.0)
    assert run.summary["test_accuracy"] > 0.5  # ten classes: chance is 0.1
    cfg = yaml.safe_load((run.path / "config.yaml").read_text())
    assert cfg["model"]["model"] == SMALL[preset]["model"]
    assert cfg["train"]["optimizer"] == SMALL[preset]["optimizer"]
    assert cfg["train"]["precision"] in ("fp32", "bf16")  # auto was resolved and written down


def test_small_data_gets_smaller_batches():
    assert fit_batch_size(256, 60_000) == 256
    assert fit_batch_size(256, 1_797) == 32
    assert fit_batch_size(256, 100) == 16


def test_a_cpu_without_native_bf16_gets_its_own_fast_preset(monkeypatch):
    from picstory.data.sources import resolve
    from picstory.pipeline import training_run
    from picstory.training.presets import SMALL_FP32_CPU

    source = resolve("builtin:digits")
    for has_bf16, table in ((False, SMALL_FP32_CPU), (True, SMALL)):
        monkeypatch.setattr("picstory.device.cpu_has_fast_bf16", lambda: has_bf16)
        cfg = training_run.resolve_config({"data": "builtin:digits", "preset": "fast", "device": "cpu"}, source)
        assert cfg.train.epochs == table["fast"]["epochs"]
    cfg = training_run.resolve_config({"data": "builtin:digits", "preset": "fast", "device": "cpu",
                                       "precision": "fp32"}, source)  # fp32 asked for: the fp32 table
    assert cfg.train.epochs == SMALL_FP32_CPU["fast"]["epochs"] != SMALL["fast"]["epochs"]


def test_grayscale_photos_fine_tune_the_whole_network_from_the_start(tmp_path):
    from conftest import make_folder
    from picstory.data.sources import resolve
    from picstory.pipeline import training_run
    from picstory.training.presets import PHOTO

    for rgb, expect in ((False, {"backbone_lr_mult": 1.0, "freeze_epochs": 0}),
                        (True, {"backbone_lr_mult": 0.1, "freeze_epochs": PHOTO["default"]["freeze_epochs"]})):
        data = make_folder(tmp_path / ("rgb" if rgb else "gray"), n_per_class=4, size=96, rgb=rgb)
        user = {"data": str(data), "preset": "default", "img_size": 96}
        cfg = training_run.resolve_config(user, resolve(str(data)))
        assert (cfg.model.backbone_lr_mult, cfg.model.freeze_epochs) == tuple(expect.values()), rgb
    user = {"data": str(tmp_path / "gray"), "preset": "default", "img_size": 96, "backbone_lr_mult": 0.2}
    assert training_run.resolve_config(user, resolve(user["data"])).model.backbone_lr_mult == 0.2  # the user's
