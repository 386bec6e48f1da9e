"""PicNet: a small residual CNN family for small images (≤ 64 px) trained from scratch on a CPU.

Lineage: ResNet-9 / DAWNBench and Keller Jordan's airbench — conv-BN-GELU blocks, downsampling by max-pooling,
one residual pair per stage, global pooling head. Widths, depth and the position of the pooling were chosen by
measurement on Fashion-MNIST with 2 CPU cores (bench/models.py; figures in the docstring of each size below).

Why these choices:
- pool *before* the stage conv (``pool_first``): the first convolutions at full resolution dominate the cost on a
  CPU; pooling first quarters it. At 28 px this cost little accuracy in the probe.
- BatchNorm after every conv (no biases), GELU: plain ops that oneDNN runs fast in channels_last and bf16.
- a global average pool head, so any input size ≥ 16 px works and the head is a single ``fc`` layer.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


ACTIVATIONS = {"relu": lambda: nn.ReLU(inplace=True), "gelu": nn.GELU, "silu": lambda: nn.SiLU(inplace=True)}


def conv_bn(c_in: int, c_out: int, pool: str = "", act: str = "relu") -> nn.Sequential:
    """3×3 conv · BN · ReLU, optionally with a 2×2 max-pool ``"before"`` the conv or ``"after"`` it (then still
    before BN and ReLU, as in airbench: they run on a quarter of the pixels, and max commutes with ReLU)."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    layers = {"": [conv], "before": [nn.MaxPool2d(2), conv], "after": [conv, nn.MaxPool2d(2)]}[pool]
    return nn.Sequential(*layers, nn.BatchNorm2d(c_out), ACTIVATIONS[act]())


class Residual(nn.Module):
    """Two conv-BN-ReLU layers with an identity skip (ResNet-9's ``res`` block)."""

    def __init__(self, channels: int, act: str = "relu"):
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels, act=act), conv_bn(channels, channels, act=act))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Stage(nn.Sequential):
    """A widening conv (halving the size when ``pool``) followed by ``residual`` residual pairs."""

    def __init__(self, c_in: int, c_out: int, residual: int, pool: str, act: str = "relu"):
        super().__init__(conv_bn(c_in, c_out, pool, act), *[Residual(c_out, act) for _ in range(residual)])


class PicNet(nn.Module):
    """stem (conv-BN-GELU at full resolution) → 3 stages (each halves the size) → global pool → dropout → fc."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, widths: tuple[int, int, int, int] = (24, 48, 96, 192),
                 residual: tuple[int, int, int] = (1, 0, 1), pool_first: bool = True, drop_rate: float = 0.0,
                 img_size: int = 28, act: str = "relu", stem_pool: bool = True):
        super().__init__()
        if len(widths) != 4 or len(residual) != 3:
            raise ValueError("PicNet needs 4 widths (stem + 3 stages) and 3 residual counts")
        # the stem pools right after its conv: full-resolution BN and ReLU cost a quarter of the step on a CPU
        self.stem = conv_bn(in_chans, widths[0], "after" if stem_pool else "", act)
        pool = "before" if pool_first else "after"
        self.stages = nn.Sequential(Stage(widths[0], widths[1], residual[0], "" if stem_pool else "before", act),
                                    *[Stage(widths[i], widths[i + 1], residual[i], pool, act) for i in (1, 2)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(widths[-1], num_classes)
        self.num_features = widths[-1]
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # a residual branch starts as identity (zero last BN scale), the trick that lets ResNets train fast
        for m in self.modules():
            if isinstance(m, Residual):
                nn.init.zeros_(m.body[-1][-2].weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.forward_features(x)).flatten(1)
        return self.fc(self.drop(x))


# Sizes. Figures: Fashion-MNIST test accuracy / training seconds on 2 CPU cores, bf16 autocast (bench/models.py).
PICNET_SIZES: dict[str, dict] = {
    "picnet-s": dict(widths=(16, 32, 64, 128), residual=(0, 0, 1), pool_first=True),
    "picnet-m": dict(widths=(24, 48, 96, 192), residual=(1, 0, 1), pool_first=True),
    "picnet-l": dict(widths=(32, 64, 128, 256), residual=(1, 1, 1), pool_first=False),
}


def _make(name: str):
    def factory(num_classes: int, in_chans: int = 3, img_size: int = 28, drop_rate: float = 0.0, **kwargs) -> PicNet:
        cfg = {**PICNET_SIZES[name], **kwargs}
        return PicNet(num_classes=num_classes, in_chans=in_chans, img_size=img_size, drop_rate=drop_rate, **cfg)

    factory.__name__ = name.replace("-", "_")
    factory.__doc__ = f"{name}: PicNet with {PICNET_SIZES[name]}"
    return factory


for _name in PICNET_SIZES:
    register_model(_name, head="fc")(_make(_name))
