"""Recipe presets: values a preset sets unless the user set them. Chosen by measurement (bench/README.md)."""

from __future__ import annotations

# Small images (≤ 64 px: MNIST-like, icons, thumbnails) train a fast residual net from scratch. The recipe was
# found by measurement on Fashion-MNIST with 2 cores (bench/README.md): SGD-Nesterov at a high peak LR with a
# linear warm-up and decay, label smoothing, flips only (a random shift costs accuracy in runs this short).
_SMALL = {"batch_size": 256, "optimizer": "sgd-momentum", "nesterov": True, "weight_decay": 5e-4,
          "schedule": "linear", "label_smoothing": 0.1, "hflip": 0.5, "translate": 0.0}
SMALL = {
    "fast": {**_SMALL, "model": "picnet-s", "epochs": 5, "lr": "0.4", "warmup_epochs": 1.0},
    "default": {**_SMALL, "model": "picnet-m", "epochs": 10, "lr": "0.4", "warmup_epochs": 2.0},
    "best": {**_SMALL, "model": "picnet-m", "epochs": 12, "lr": "0.4", "warmup_epochs": 2.4, "tta": "flip"},
}
# A CPU without native bf16 (AVX2 and older; every step in fp32) runs a picnet epoch ~1.5× slower than one with
# AVX512-BF16/AMX, while the plain recipe's fp32 steps cost the same on both: measured on Fashion-MNIST, 2 cores
# (bench/README.md, "Fashion-MNIST ... AVX2"), `fast` needs one epoch less there to stay within a quarter of the
# recipe's time; its accuracy barely moves (91.8 % in 5 epochs).
SMALL_FP32_CPU = {
    **SMALL,
    "fast": {**SMALL["fast"], "epochs": 4, "warmup_epochs": 0.8},
}
# Cosine without warmup: the zero-initialised head can take the full LR from the first step of its frozen epoch.
_PHOTO = {"model": "efficientnet_lite0", "batch_size": 32, "lr": "1e-3", "freeze_epochs": 1, "weight_decay": 0.01,
          "schedule": "cosine", "warmup_epochs": 0.0}
PHOTO = {
    "fast": {**_PHOTO, "epochs": 3, "rrc_scale": 0.35},
    "default": {**_PHOTO, "epochs": 8, "rrc_scale": 0.35},
    "best": {**_PHOTO, "epochs": 15, "rrc_scale": 0.25, "ema": 0.999},
}
# Grayscale photos (1 channel) fine-tune the whole network from the first step at the full LR: on real gray images
# (Fashion-MNIST at 64 px, 3,000 images, bench/README.md "Grayscale photos") the recipe above underfit — train
# accuracy 61 %, test 69.9 %, below a linear probe's 78.4 % — and this change took it to 83.2 %. ImageNet features
# fit gray product / part images less well than colour photos, so the backbone must move more; the 1-channel stem
# (summed RGB filters) measured the same as feeding three copies of the gray channel.
PHOTO_GRAY = {"backbone_lr_mult": 1.0, "freeze_epochs": 0}
# probe (training/probe.py): one pass of the frozen pretrained backbone, then a linear head by L-BFGS. hflip > 0
# adds the flipped copy of every training image; the batch is the embedding batch; no smoothing (the head's
# weight decay, chosen on val, is its regulariser); no early stopping (there is one epoch); lr 1 is L-BFGS's step
PROBE = {"model": "efficientnet_lite0", "epochs": 1, "lr": "1", "batch_size": 64, "freeze_epochs": 0,
         "label_smoothing": 0.0,
         "hflip": 0.5, "patience": 0, "schedule": "constant", "warmup_epochs": 0.0}
SMALL_MAX_PX = 64
# Left at its default, the preset is probe for photos on a CPU when pretrained weights are there and the training
# set is at most this large (bench/README.md, "Photos"): the probe reached the fine-tune's test accuracy in a small
# fraction of its time. --preset default (or any option only fine-tuning uses) fine-tunes the whole network.
PROBE_DEFAULT_MAX_IMAGES = 10_000
FINE_TUNE_KEYS = ("epochs", "freeze_epochs", "backbone_lr_mult", "drop_rate", "ema", "progressive", "lr", "optimizer",
                  "schedule", "weight_decay", "warmup_epochs", "momentum", "nesterov", "label_smoothing", "patience",
                  "grad_clip", "compile", "balanced_sampling", "translate", "rrc_scale", "rotate_deg", "brightness",
                  "contrast", "erase", "mixup", "cutmix", "vflip", "folds")

# The next smaller model of a family, for --time-budget when the preset's model cannot train enough epochs in time.
SMALLER = {"picnet-l": "picnet-m", "picnet-m": "picnet-s"}


def model_ladder(model: str) -> list[str]:
    """``model`` and the smaller models of its family, largest first."""
    ladder = [model]
    while ladder[-1] in SMALLER:
        ladder.append(SMALLER[ladder[-1]])
    return ladder


def preset_values(preset: str, img_size: int, fp32_cpu: bool = False, gray: bool = False) -> dict:
    """The preset's values for this image size; ``fp32_cpu``: training runs on a CPU without native bf16;
    ``gray``: the images have one channel."""
    if preset == "probe":  # a pretrained backbone at any size
        return dict(PROBE)
    if img_size <= SMALL_MAX_PX:
        return dict((SMALL_FP32_CPU if fp32_cpu else SMALL)[preset])
    return {**PHOTO[preset], **(PHOTO_GRAY if gray else {})}


def default_is_probe(user: dict, img_size: int, n_images: int, on_gpu: bool, pretrained: bool) -> bool:
    """Whether an unset --preset means probe (see PROBE_DEFAULT_MAX_IMAGES); ``user`` holds what the user set."""
    fine_tune = [k for k in FINE_TUNE_KEYS if k in user and str(user[k]) not in ("preset", "0")]
    return ("preset" not in user and not fine_tune and not on_gpu and pretrained and img_size > SMALL_MAX_PX
            and n_images <= PROBE_DEFAULT_MAX_IMAGES)


def photo_size(median_short_side: float, on_gpu: bool = False) -> int:
    """Training size for photos, in steps of 32 and never above the images' own size: 224 (the pretrained size)
    on a GPU, 160 on a CPU, where a full fine-tuning step at 224 px runs at only a few images/s on 2 cores
    (bench/photos.py) and 160 px halves the work for a small loss of accuracy. --img-size 224 overrides it."""
    return int(max(64, min(224 if on_gpu else 160, 32 * round(median_short_side / 32))))


def fit_batch_size(batch_size: int, n_images: int, min_steps: int = 30, floor: int = 16) -> int:
    """Halve the preset's batch until an epoch has ``min_steps`` steps (or the batch reaches ``floor``): a small
    data set needs more, smaller steps — 1,400 images in batches of 256 give 5 updates an epoch."""
    while batch_size > floor and n_images * 0.8 / batch_size < min_steps:
        batch_size //= 2
    return batch_size
