"""picstory: a folder of labelled images → a trained, evaluated, explained, exported and served classifier.

    import picstory
    run = picstory.train("builtin:digits", epochs=3)
    run.summary["test_accuracy"]
    picstory.load(run.path).predict(["photo.png"])
"""

from ._version import __version__
from .config import Config

# The API functions import the pipeline when first called, so `import picstory` (and every CLI command that
# does not train) starts without loading torch.


def train(data=None, **kwargs):
    """Train a model; keyword arguments are config keys (see ``picstory train --help``). Returns a Run."""
    from .pipeline import train as _train

    return _train(data, **kwargs)


def evaluate(run, data=None, tta: str = "none", **options) -> dict:
    """Metrics of a run's best model on its test split, or on another data set with the same classes; ``options``
    are the eval options (``report_by="camera"``, label-file columns of ``data``: see ``picstory eval --help``)."""
    from .pipeline import evaluate as _evaluate

    return _evaluate(run, data=data, tta=tta, **options)


def load(target, device: str = "cpu", backend: str = "torch"):
    """A Predictor for a run directory, a bundle directory or a pretrained model name."""
    from .deploy.predict import load as _load

    return _load(target, device=device, backend=backend)


__all__ = ["Config", "train", "evaluate", "load", "__version__"]
