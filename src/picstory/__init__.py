"""picstory: a folder of labelled images → a trained, evaluated, explained, exported and served classifier.

    import picstory
    run = picstory.train("builtin:digits", epochs=3)
    run.summary["test_accuracy"]
    picstory.load(run.path).predict(["photo.png"])
"""

__version__ = "0.1.0"

from .config import Config  # noqa: E402

# The sub-packages train/ and evaluate/ share their names with the API functions below. Importing them first
# binds the package attributes once; the functions defined afterwards then win (a later `import
# picstory.train.run` does not re-bind an already imported package).
from . import evaluate as _evaluate_pkg, train as _train_pkg  # noqa: E402,F401


def train(data=None, **kwargs):
    """Train a model; keyword arguments are config keys (see ``picstory train --help``). Returns a Run."""
    from .train.run import train as _train

    return _train(data, **kwargs)


def evaluate(run, data=None, tta: str = "none") -> dict:
    """Metrics of a run's best model on its test split, or on another data set with the same classes."""
    from .evaluate.api import evaluate_run

    return evaluate_run(run, data=data, tta=tta)


def load(target, device: str = "cpu", backend: str = "torch"):
    """A Predictor for a run directory, a bundle directory or a pretrained model name."""
    from .deploy.predict import load as _load

    return _load(target, device=device, backend=backend)


__all__ = ["Config", "train", "evaluate", "load", "__version__"]
