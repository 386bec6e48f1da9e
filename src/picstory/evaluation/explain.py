"""Grad-CAM heat maps — which pixels made the model say what it said — and their overlays on the image.

Grad-CAM (Selvaraju et al. 2017) weighs the last convolutional feature map by the gradient of the class score and
keeps the positive part: one forward and one backward pass per batch, at the resolution of that feature map,
upsampled to the image. It is the method that passes the model-randomisation sanity check (Adebayo et al. 2018)
among the cheap ones, and tests/test_explain.py checks that here: on a data set decided by a small square it
points inside the square for a trained model and not for one with shuffled weights.

The attribution itself comes from captum (``LayerGradCam``), PyTorch's own interpretability library: pure Python
on top of torch, maintained with it, and with Integrated Gradients, Occlusion and friends behind the same call
should a slower, finer method be wanted. (``grad-cam`` pulls in OpenCV for what PIL and matplotlib do here;
``torchcam`` does Grad-CAM alone.) Only the choice of layer is picstory's: a timm model names its stages in
``feature_info``; any other model offers its convolutions. The deepest feature map at least 7 wide (else the
deepest larger than 1×1) is explained; a model with none — an MLP, a vision transformer whose
only convolution cuts the image into tokens — is refused with its name.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import UserError
from ..models.wrappers import unwrap

METHOD = "Grad-CAM"
OVERLAY_MIN_PX = 224  # small inputs (28 px digits) are enlarged so the overlay can be read
OVERLAY_ALPHA = 0.5
# A 3×3 map cannot point at a 6 px detail: explain the deepest map at least this wide when there is one.
MIN_MAP_SIDE = 7


class ExplainError(UserError):
    """The model has no convolutional feature map to explain."""


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module, int]]:
    """(name, module, channels) of the layers worth explaining, deepest last."""
    info = getattr(model, "feature_info", None)
    info = info.get_dicts() if hasattr(info, "get_dicts") else info
    if isinstance(info, list) and info and all(isinstance(d, dict) for d in info):
        named = dict(model.named_modules())  # timm: the stage outputs the model itself declares
        return [(d["module"], named[d["module"]], int(d["num_chs"])) for d in info if d.get("module") in named]
    return [(n, m, m.out_channels) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def find_layer(model: nn.Module, in_chans: int, img_size: int, arch: str = "") -> tuple[str, nn.Module]:
    """The deepest layer whose output is an N×C×H×W map at least MIN_MAP_SIDE wide (else the deepest with H·W > 1),
    found by one probe forward."""
    model = unwrap(model)
    arch = arch or type(model).__name__
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        raise ExplainError(f"model {arch} has no convolution layers; Grad-CAM explains convolutional networks "
                           "(seed CNNs, PicNet, timm convnets such as resnet18 or efficientnet_b0)")
    candidates = _candidates(model)
    shapes: dict[str, tuple] = {}

    def record(name: str):
        def hook(_m, _i, out) -> None:  # returns None: the output passes on unchanged
            shapes.setdefault(name, tuple(out.shape) if isinstance(out, torch.Tensor) else ())
        return hook

    hooks = [m.register_forward_hook(record(name)) for name, m, _ in candidates]
    param = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_chans, img_size, img_size, dtype=param.dtype, device=param.device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    maps = [name for name in shapes  # forward order, the deepest map last
            if len(shapes[name]) == 4 and shapes[name][1] == next(c for n, _, c in candidates if n == name)
            and shapes[name][2] * shapes[name][3] > 1]
    fine = [name for name in maps if min(shapes[name][2:]) >= MIN_MAP_SIDE]
    if maps:
        return (fine or maps)[-1], model.get_submodule((fine or maps)[-1])
    raise ExplainError(f"model {arch} has no convolutional feature map before its head (a transformer or "
                       f"token-mixing model at {img_size} px); Grad-CAM explains convolutional networks only")


class Explainer:
    """Grad-CAM for one model: ``heatmaps(x)`` → N×H×W in [0, 1] at the input's size, for the predicted (or given)
    classes. The layer is chosen once, at construction."""

    def __init__(self, model: nn.Module, in_chans: int, img_size: int, arch: str = ""):
        from captum.attr import LayerGradCam

        self.model = model
        self.layer_name, layer = find_layer(model, in_chans, img_size, arch)
        self._cam = LayerGradCam(model, layer)

    def heatmaps(self, x: torch.Tensor, target: torch.Tensor | None = None, batch_size: int = 128
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(heat maps N×H×W float32 in [0, 1], explained class per image) for a normalised float batch."""
        from captum.attr import LayerAttribution

        was_training = self.model.training
        self.model.eval()
        maps, classes = [], []
        try:
            for i in range(0, len(x), batch_size):
                xb = x[i:i + batch_size]
                # gradients are the method: out of any inference_mode / no_grad the caller is in
                with torch.inference_mode(False), torch.enable_grad():
                    xb = xb.clone().requires_grad_(True)  # a graph even when the backbone is frozen
                    cls = self.model(xb).argmax(1) if target is None else target[i:i + batch_size].to(xb.device)
                    attr = self._cam.attribute(xb, target=cls, relu_attributions=True)
                    attr = LayerAttribution.interpolate(attr, tuple(xb.shape[-2:]), interpolate_mode="bilinear")
                maps.append(_unit(attr.detach().float()[:, 0]).cpu())
                classes.append(cls.detach().cpu())
        finally:
            self.model.train(was_training)
        return torch.cat(maps).numpy(), torch.cat(classes).numpy()


def _unit(heat: torch.Tensor) -> torch.Tensor:
    """Each map scaled to [0, 1] by its own maximum (an all-zero map stays zero)."""
    top = heat.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return (heat.clamp_min(0) / top).clamp(0, 1)


def overlay(image: np.ndarray, heat: np.ndarray, min_px: int = OVERLAY_MIN_PX) -> Image.Image:
    """The heat map (jet colours, half transparent) over an H×W×C uint8 image, enlarged to ≥ ``min_px``."""
    from matplotlib import colormaps

    rgb = image if image.ndim == 3 and image.shape[2] == 3 else np.repeat(image.reshape(*image.shape[:2], 1), 3, 2)
    colour = colormaps["jet"](heat)[..., :3] * 255
    alpha = OVERLAY_ALPHA * np.sqrt(heat)[..., None]  # cold regions stay close to the image
    mixed = (rgb.astype(np.float32) * (1 - alpha) + colour * alpha).round().clip(0, 255).astype(np.uint8)
    out = Image.fromarray(mixed)
    scale = max(1, -(-min_px // max(out.size)))
    return out.resize((out.width * scale, out.height * scale), Image.Resampling.NEAREST) if scale > 1 else out


def overlay_png(image: np.ndarray, heat: np.ndarray, min_px: int = OVERLAY_MIN_PX) -> bytes:
    buf = io.BytesIO()
    overlay(image, heat, min_px).save(buf, format="PNG")
    return buf.getvalue()


def explain_images(model: nn.Module, images: torch.Tensor, mean, std, arch: str = "",
                   target: torch.Tensor | None = None, device: str | torch.device = "cpu"
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Heat maps and explained classes for uint8 N×C×H×W images (the run's normalisation)."""
    from ..data.batches import normalize

    explainer = Explainer(model, images.shape[1], images.shape[-1], arch)
    return explainer.heatmaps(normalize(images.to(device), mean, std), target)


def pointing_hit(heat: np.ndarray, box: tuple[int, int, int, int], margin: int = 0) -> bool:
    """The pointing game: does the heat map's maximum fall inside ``box`` = (top, left, height, width)?"""
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    top, left, h, w = box
    return top - margin <= y < top + h + margin and left - margin <= x < left + w + margin
