"""Linear probe: a pretrained backbone embeds every image once, a linear head fits on those fixed features.

This is Teachable Machine's and Create ML's method. Fine-tuning pays a forward *and* a backward pass through the
whole network for every image in every epoch; the probe pays one forward pass per image (two with flipped copies),
and the head then trains in well under a second: full-batch L-BFGS on an (N, 1280) matrix, with its weight decay
chosen on the validation split from a small grid. The embeddings are cached on disk keyed by the images' bytes and
the backbone's weights, so a second run on the same data (another seed of the head, another weight decay) skips the
network entirely.

The result is the ordinary model — the untouched backbone with the fitted head written into its classifier — so the
bundle, predict, serve, export and the report need nothing new. :class:`ProbeLearner` keeps the :class:`Learner`'s
events: its one "epoch" is embed + fit, then validation, metrics.csv, the best and last checkpoints as usual.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import config as C
from ..errors import ConfigError, UserError
from ..files import atomic_write, cache_root
from ..models.features import features_and_logits
from ..models.parts import get_submodule, head_name
from ..models.wrappers import unwrap
from .engine import Learner

# L2 strength per feature (standardised features, mean loss): ×√10 steps across the range where the held-out loss
# of a 1280-d probe on a few hundred to a few thousand images has its minimum; each fit warm-starts from the last
WEIGHT_DECAYS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)
LBFGS_ITERATIONS = 100
KEEP_EMBEDDINGS = 20  # cached embedding files kept (newest first); each is N × 1280 × 4 bytes


def probe_by_default(user: dict, cfg: C.Config, img_size: int, n_images: int, gray: bool = False) -> bool:
    """Whether this run's unset --preset means probe (presets.default_is_probe); prints a note when it does.
    Grayscale photos fine-tune instead: a linear head on ImageNet features underfits them (bench/README.md,
    "Grayscale photos": probe 78.4 %, the gray fine-tune 83.2 %)."""
    from ..models import has_pretrained
    from .presets import default_is_probe, preset_values

    m = cfg.model
    model = m.model if m.model != "auto" else preset_values("probe", img_size)["model"]
    on_gpu = cfg.train.device != "cpu" and torch.cuda.is_available()
    pretrained = m.pretrained and not m.weights and has_pretrained(model)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or not default_is_probe(user, img_size, n_images, on_gpu,
                                                                          pretrained):
        return False
    if gray:
        print("note: grayscale photos: the whole network is fine-tuned (a linear probe underfits gray images); "
              "--preset probe trains in seconds instead", file=sys.stderr)
        return False
    print("note: photos on a CPU: --preset probe (a linear head on the pretrained backbone's features); "
          "--preset default fine-tunes the whole network", file=sys.stderr)
    return True


def check_probe(cfg: C.Config) -> None:
    """The options a probe cannot honour fail before any data is read, naming the option."""
    from ..models import has_pretrained

    t, m = cfg.train, cfg.model
    pretrained = bool(m.weights) or (m.pretrained and has_pretrained(m.model))
    if not pretrained:
        raise ConfigError(f"--preset probe needs a pretrained backbone: '{cfg.model.model}' has no offline weights "
                          "here (use --model efficientnet_lite0, or --weights FILE), or choose --preset default")
    bad = [(t.ema > 0, "--ema (there are no steps to average)"),
           (bool(t.progressive), "--progressive (the features are computed at one size)"),
           (t.lr == "auto", "--lr auto (the head is fitted by L-BFGS, not by a learning rate)"),
           (int(os.environ.get("WORLD_SIZE", "1")) > 1, "torchrun (it runs in one process)")]
    for failed, what in bad:
        if failed:
            raise ConfigError(f"--preset probe does not take {what}; drop it or choose --preset default")


@dataclass
class ProbeLearner(Learner):
    """A Learner whose single epoch embeds the train and val splits and fits the head on the features."""

    flip: bool = False  # add horizontally flipped copies of the training images (hflip > 0 says flips keep labels)
    backbone: str = ""  # architecture name, part of the embedding cache key
    cache_dir: Path | None = None
    progress: bool = False
    weight_decay: float | None = None  # the grid's choice, after fit()

    def fit(self) -> None:
        self.epochs = 1  # the head's fit is a complete optimisation: there is no second epoch to run
        super().fit()

    def train_epoch(self) -> tuple[float, float]:
        model = unwrap(getattr(self, "raw_model", None) or self.model)
        head = get_submodule(model, head_name(model))
        if not isinstance(head, nn.Linear):
            raise ConfigError(f"--preset probe needs a linear classifier; '{self.backbone}' ends in "
                              f"{type(head).__name__}")
        tb = self.train_batches
        t0 = time.perf_counter()
        x_train = self._features(model, tb.images, tb.size, tb.mean, tb.std, flip=False)
        y_train, w_train = tb.labels.cpu(), tb.loss_weights
        if self.flip:
            x_train = torch.cat([x_train, self._features(model, tb.images, tb.size, tb.mean, tb.std, flip=True)])
            y_train = torch.cat([y_train, y_train])
            w_train = None if w_train is None else torch.cat([w_train, w_train])
        vb = self.val_batches
        self._val = (self._features(model, vb.images, tb.size, vb.mean, vb.std, flip=False), vb.labels.cpu())
        t1 = time.perf_counter()
        weight, bias, self.weight_decay = self._fit_head(x_train, y_train, w_train)
        with torch.no_grad():
            head.weight.copy_(weight.to(head.weight))
            head.bias.copy_(bias.to(head.bias))
        if self.progress and self.is_main:
            print(f"probe: {len(x_train)} training and {len(self._val[1])} validation features in "
                  f"{t1 - t0:.1f} s, head fitted in {time.perf_counter() - t1:.2f} s (weight decay "
                  f"{self.weight_decay:g})", file=sys.stderr)
        with torch.no_grad():
            logits = (x_train @ weight.T + bias).to(self.device)
            y_dev = y_train.to(self.device)
            loss = self.loss_fn(logits, y_dev, None if w_train is None else w_train.to(self.device))
        return float(loss), float((logits.argmax(1) == y_dev).float().mean())

    def validate(self) -> dict:
        if not hasattr(self, "_val"):  # before the probe's epoch: the ordinary pass through the whole model
            return super().validate()
        head = get_submodule(unwrap(self.model), head_name(unwrap(self.model)))
        x, y = self._val
        with torch.no_grad():
            logits = head(x.to(head.weight))  # the saved head on the val features: what the full model computes
        k = self.num_classes
        confusion = torch.bincount(y * k + logits.argmax(1).cpu(), minlength=k * k).reshape(k, k)
        return {"val_loss": float(F.cross_entropy(logits.float().cpu(), y)),
                "val_acc": float(confusion.diag().sum()) / max(len(y), 1), "confusion": confusion.tolist()}

    # ---- pieces -------------------------------------------------------------------------------------------------

    def _features(self, model: nn.Module, images: torch.Tensor, size, mean, std, flip: bool) -> torch.Tensor:
        key = embedding_key(model, self.backbone, images, size, mean, std, flip, self.autocast_dtype)
        root = Path(self.cache_dir) if self.cache_dir is not None else cache_root()
        path = root / "embeddings" / f"{key}.npy"
        cached = _load(path, len(images))
        if cached is not None:
            return cached
        if self.progress and self.is_main:
            print(f"probe: embedding {len(images)} images{' (flipped)' if flip else ''} with {self.backbone}",
                  file=sys.stderr)
        feats = embed(model, images, self.train_batches.batch_size, mean, std, size, self.device, flip,
                      self.autocast)
        _save(path, feats)
        return feats

    def _fit_head(self, x: torch.Tensor, y: torch.Tensor,
                  w: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Standardise the features, fit one head per weight decay (warm-started), keep the lowest val loss, and
        fold the standardisation into the head so it applies to raw features."""
        mu, sigma = x.mean(0), x.std(0).clamp(min=1e-6)
        z, z_val = (x - mu) / sigma, (self._val[0] - mu) / sigma
        class_w = None if self.loss_weight is None else self.loss_weight.float().cpu()
        sample_w = None if w is None else w.float().cpu()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # (N, 1280) × (1280, K) products are too small to share: 4-5× less CPU on one
        try:
            best = self._grid(z, y, z_val, sample_w, class_w)
        finally:
            torch.set_num_threads(threads)
        _, wd, weight, bias = best
        return weight / sigma, bias - (weight / sigma) @ mu, wd

    def _grid(self, z, y, z_val, sample_w, class_w) -> tuple:
        best, params = None, None
        for wd in WEIGHT_DECAYS:
            params = fit_linear(z, y, self.num_classes, wd, sample_w, class_w, self.label_smoothing, params)
            with torch.no_grad():
                val_loss = float(F.cross_entropy(z_val @ params[0].T + params[1], self._val[1]))
            if best is None or val_loss < best[0]:
                best = (val_loss, wd, params[0].clone(), params[1].clone())
        return best


def fit_linear(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float,
               sample_weight: torch.Tensor | None = None, class_weight: torch.Tensor | None = None,
               label_smoothing: float = 0.0, init: tuple[torch.Tensor, torch.Tensor] | None = None,
               max_iter: int = LBFGS_ITERATIONS) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by full-batch L-BFGS: mean cross-entropy + ``weight_decay``/2 · ‖W‖².
    (torch rather than scikit-learn: the loss keeps picstory's class weights, sample weights and smoothing.)"""
    d = x.shape[1]
    weight = (init[0].clone() if init else torch.zeros(num_classes, d)).requires_grad_(True)
    bias = (init[1].clone() if init else torch.zeros(num_classes)).requires_grad_(True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = x @ weight.T + bias
        each = F.cross_entropy(logits, y, weight=class_weight, label_smoothing=label_smoothing, reduction="none")
        if sample_weight is None:
            loss = each.mean()
        else:
            loss = (each * sample_weight).sum() / sample_weight.sum().clamp(min=1e-12)
        loss = loss + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return weight.detach(), bias.detach()


@torch.inference_mode()
def embed(model: nn.Module, images: torch.Tensor, batch_size: int, mean, std, size, device, flip: bool = False,
          autocast=contextlib.nullcontext) -> torch.Tensor:
    """(N, D) fp32 head-input features of uint8 N×C×H×W ``images``, the model in eval mode (BatchNorm running
    statistics, no dropout) — exactly what the saved model computes before its classifier."""
    from ..data.batches import BatchIterator

    was_training = model.training
    model.eval()
    labels = torch.zeros(len(images), dtype=torch.long)
    batches = BatchIterator(images, labels, batch_size, mean, std, augment=None, shuffle=False, device=device,
                            size=size)
    out = []
    try:
        for x, _ in batches:
            if flip:
                x = x.flip(3)
            with autocast():
                feats, _ = features_and_logits(model, x)
            out.append(feats.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


def embedding_key(model: nn.Module, backbone: str, images: torch.Tensor, size, mean, std, flip: bool,
                  dtype) -> str:
    """A digest of everything the features depend on: the pixels, the backbone's weights (not the head's),
    the input size, the normalisation, the flip and the compute precision."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((backbone, size, tuple(mean), tuple(std), flip, str(dtype), tuple(images.shape))).encode())
    head = head_name(model)
    for name, tensor in model.state_dict().items():
        if name == head or name.startswith(head + "."):
            continue
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    nhwc = images.permute(0, 2, 3, 1).cpu().contiguous()  # the cache's own layout: no copy
    h.update(memoryview(nhwc.numpy()).cast("B"))
    return h.hexdigest()


def _load(path: Path, n: int) -> torch.Tensor | None:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None  # absent, truncated or foreign: compute the features again
    if arr.ndim != 2 or len(arr) != n or arr.dtype != np.float32:
        return None
    os.utime(path)  # recently used: kept by the pruning below
    return torch.from_numpy(arr)


def _save(path: Path, feats: torch.Tensor) -> None:
    """Best effort: a cache that cannot be written costs the next run time, never this run its result."""
    buf = io.BytesIO()
    np.save(buf, feats.numpy(), allow_pickle=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, buf.getvalue())
        files = sorted(path.parent.glob("*.npy"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in files[KEEP_EMBEDDINGS:]:
            old.unlink(missing_ok=True)
    except (OSError, UserError) as e:
        print(f"note: embedding cache not written ({str(e).splitlines()[0]})", file=sys.stderr)
