"""Models: the seed CNNs, the PicNet family for small images, every timm architecture, offline pretrained weights.

    model = create_model("picnet-m", num_classes=10, in_chans=1, img_size=28)
    model.picstory_cfg  # {"arch", "mean", "std", "input_size", "pretrained", "head", ...}
"""

from . import picnet, seed_cnn  # noqa: F401  (importing them registers the picstory models)
from .parts import backbone_parameters, count_flops, head_parameters, is_backbone_frozen, set_backbone_frozen
from .pretrained import has_pretrained, imagenet_classes, load_pretrained
from .registry import create_model, default_model, list_models, register_model
from .weights import adapt_first_conv, load_weights, read_state_dict

__all__ = [
    "adapt_first_conv", "backbone_parameters", "count_flops", "create_model", "default_model", "has_pretrained",
    "head_parameters", "imagenet_classes", "is_backbone_frozen", "list_models", "load_pretrained", "load_weights",
    "read_state_dict", "register_model", "set_backbone_frozen",
]
