"""Where the stages meet: a training run, an evaluation run and the LR range test, each read top to bottom."""

from .evaluation_run import evaluate_run as evaluate
from .evaluation_run import test_images
from .lr_find_run import lr_find
from .training_run import Run, prepare, train

__all__ = ["train", "prepare", "evaluate", "lr_find", "test_images", "Run"]
