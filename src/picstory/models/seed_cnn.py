"""The two seed CNNs (seed-004): the small baselines a tutorial would write, kept layer-for-layer as specified so
that results are comparable with the hand-written versions.

Named children (``conv1`` … ``fc2``) instead of indices make checkpoints readable and the head addressable.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from .registry import register_model


class SeedCNN(nn.Sequential):
    """Conv · MaxPool 2 · ReLU · Conv · MaxPool 2 · ReLU · Flatten · Linear(→100) · ReLU · Dropout 0.3 · Linear."""

    def __init__(self, num_classes: int, in_chans: int, widths: tuple[int, int], img_size: int,
                 hidden: int = 100, drop_rate: float = 0.3):
        if img_size < 4:
            raise ValueError(f"seed CNNs need images of at least 4 px, got {img_size}")
        c1, c2 = widths
        side = img_size // 2 // 2  # two 2×2 max-pools, floor as MaxPool2d does
        self.flatten_features = c2 * side * side
        super().__init__(OrderedDict([
            ("conv1", nn.Conv2d(in_chans, c1, 3, padding="same")),
            ("pool1", nn.MaxPool2d(2)),
            ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(c1, c2, 3, padding="same")),
            ("pool2", nn.MaxPool2d(2)),
            ("relu2", nn.ReLU()),
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(self.flatten_features, hidden)),
            ("relu3", nn.ReLU()),
            ("drop", nn.Dropout(drop_rate)),
            ("fc2", nn.Linear(hidden, num_classes)),
        ]))


def _dropout(drop_rate: float) -> float:
    # the seed recipe's 0.3 stays unless the caller asks for a different dropout explicitly
    return drop_rate if drop_rate > 0 else 0.3


@register_model("seed-mnist-cnn", head="fc2")
def seed_mnist_cnn(num_classes: int, in_chans: int = 1, img_size: int = 28, drop_rate: float = 0.0,
                   **kwargs) -> SeedCNN:
    return SeedCNN(num_classes, in_chans, (10, 32), img_size, drop_rate=_dropout(drop_rate), **kwargs)


@register_model("seed-cifar-cnn", head="fc2")
def seed_cifar_cnn(num_classes: int, in_chans: int = 3, img_size: int = 32, drop_rate: float = 0.0,
                   **kwargs) -> SeedCNN:
    return SeedCNN(num_classes, in_chans, (15, 45), img_size, drop_rate=_dropout(drop_rate), **kwargs)
