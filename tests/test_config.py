import pytest

from picstory import config as C
from picstory.cli import build_parser
from picstory.errors import ConfigError


def test_defaults_round_trip_yaml(tmp_path):
    cfg = C.Config().updated(lr="1e-3", epochs=3, img_size=32, hflip=0.0)
    path = tmp_path / "config.yaml"
    path.write_text(C.dump_yaml(cfg))
    assert C.load_yaml(path) == cfg


def test_flat_and_nested_keys_agree():
    assert C.from_dict({"train": {"epochs": 4}}) == C.from_dict({"epochs": 4})


@pytest.mark.parametrize("d,fragment", [
    ({"epoch": 3}, "did you mean epochs"),
    ({"train": {"lrr": 1}}, "did you mean lr"),
    ({"epochs": -1}, "'epochs' must be ≥ 0"),
    ({"lr": "fast"}, "'lr' must be a positive number"),
    ({"optimizer": "adamm"}, "did you mean adam"),
    ({"batch_size": "many"}, "'batch_size' must be int"),
    ({"progressive": "64,big"}, "'progressive' must be"),
])
def test_bad_keys_and_values_are_named(d, fragment):
    with pytest.raises(ConfigError, match=fragment):
        C.from_dict(d)


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="c.yaml"):
        C.load_yaml(bad)
    with pytest.raises(ConfigError, match="not found"):
        C.load_yaml(tmp_path / "missing.yaml")


def test_every_config_key_is_a_train_flag():
    parser = build_parser()
    help_text = parser._subparsers._group_actions[0].choices["train"].format_help()
    for key in C.FIELDS:
        if key != "data":
            assert "--" + key.replace("_", "-") in help_text, key
    assert "(default: adamw)" in help_text
