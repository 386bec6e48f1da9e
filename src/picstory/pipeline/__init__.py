"""Where the stages meet: a training run, a cross-validation, an evaluation run and the LR range test, each read
top to bottom."""

from .cv_run import cross_validate, train
from .evaluation_run import evaluate_run as evaluate
from .evaluation_run import test_images
from .lr_find_run import lr_find
from .training_run import Run, prepare

__all__ = ["train", "cross_validate", "prepare", "evaluate", "lr_find", "test_images", "Run"]
