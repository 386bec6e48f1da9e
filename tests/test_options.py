"""Every name a flag accepts is implemented, and every default is the same on the CLI, in the API and the server."""

import dataclasses
import inspect

import numpy as np
import pytest
import torch

from picstory import cli
from picstory import config as C
from picstory import options as O
from picstory.data.cache import fit_image
from picstory.deploy import export, predict, serve
from picstory.errors import ConfigError
from picstory.evaluation.tta import predict_proba
from picstory.training.optim import build_optimizer, make_schedule


def test_every_declared_optimizer_and_schedule_is_implemented():
    params = [torch.nn.Parameter(torch.zeros(2))]
    for name in C.OPTIMIZERS:
        assert isinstance(build_optimizer(name, [{"params": params}], 0.1), torch.optim.Optimizer)
    for name in C.SCHEDULES:
        factor = make_schedule(name, 10, 2)
        assert all(0.0 <= factor(s) <= 1.0 for s in range(10))
    with pytest.raises(ConfigError, match="unknown optimizer"):
        build_optimizer("adamm", [{"params": params}], 0.1)
    with pytest.raises(ConfigError, match="unknown schedule"):
        make_schedule("cosin", 10)


def test_every_tta_mode_fit_and_export_format_is_implemented():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    for mode in C.TTA_MODES:
        probs = predict_proba(model, torch.rand(2, 3, 8, 8), mode)
        assert probs.shape == (2, 4) and torch.allclose(probs.sum(1), torch.ones(2))
    img = np.zeros((10, 6, 3), np.uint8)
    for fit in C.FITS:
        assert fit_image(img, 8, fit).shape == (8, 8, 3)
    assert set(C.EXPORT_FORMATS) == set(export.FORMATS)


def test_config_choices_come_from_the_vocabularies():
    assert C.FIELDS["optimizer"][1].metadata["choices"] == C.OPTIMIZERS
    assert C.FIELDS["schedule"][1].metadata["choices"] == C.SCHEDULES
    assert C.FIELDS["tta"][1].metadata["choices"] == C.TTA_MODES
    assert C.FIELDS["fit"][1].metadata["choices"] == C.FITS


def _parsed(argv):
    return cli.build_parser().parse_args(argv)


@pytest.mark.parametrize("argv, cls", [
    (["predict", "run", "x.jpg"], O.PredictOptions), (["serve", "run"], O.ServeOptions),
    (["export", "run"], O.ExportOptions), (["eval", "run"], O.EvalOptions), (["monitor", "run"], O.MonitorOptions),
    (["doctor", "run"], O.DoctorOptions), (["data", "check", "d"], O.DataCheckOptions),
    (["sweep", "d"], O.SweepOptions), (["runs"], O.RunsOptions), (["similar", "run", "x.jpg"], O.SimilarOptions),
])
def test_cli_defaults_are_the_options_defaults(argv, cls):
    args = _parsed(argv)
    for f in dataclasses.fields(cls):
        expected = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert getattr(args, f.name) == expected, f"{argv[0]} --{f.name}"


def test_api_and_server_defaults_are_the_options_defaults():
    def default(fn, name):
        return inspect.signature(fn).parameters[name].default

    assert default(predict.Predictor.predict, "top_k") == O.PREDICT.top_k == _parsed(["predict", "r", "x"]).top_k
    assert default(predict.format_predictions, "top_k") == O.PREDICT.top_k
    assert default(predict.load, "backend") == O.PREDICT.backend
    assert default(export.export, "opset") == O.EXPORT.opset
    assert default(serve.serve, "port") == O.SERVE.port
    assert default(serve.create_app, "max_pixels") == O.SERVE.max_pixels
    assert default(serve.create_app, "max_body_bytes") == int(O.SERVE.max_body_mb * 2**20)


def test_option_flags_check_type_and_bounds(capsys):
    with pytest.raises(SystemExit):
        _parsed(["predict", "run", "x.jpg", "--top-k", "0"])
    assert "--top-k: must be ≥ 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parsed(["serve", "run", "--port", "eighty"])
    assert "expected int, got 'eighty'" in capsys.readouterr().err
    assert _parsed(["export", "run", "--no-dynamic-batch"]).dynamic_batch is False
    assert _parsed(["sweep", "d", "--grid", "lr=1,2", "--grid", "wd=0"]).grid == ["lr=1,2", "wd=0"]
