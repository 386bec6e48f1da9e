"""Batched augmentation on uint8 tensors, normalisation, and the epoch iterator.

The split arrives as one uint8 N×C×H×W tensor; every batch is cut from it with ``index_select`` and augmented
with whole-batch tensor ops — no per-image Python and no worker processes. The augmenter works in pixel units
(0..255) so that brightness/contrast clamp exactly like torchvision's ColorJitter, and index-only ops (flip,
translate) run on uint8, a quarter of the memory traffic of float. Normalisation comes last, fused with the uint8 →
float conversion and the channels_last layout, and is the same function evaluation and prediction use.

All randomness comes from ``torch.Generator``\\ s keyed by (seed, epoch[, rank]): a run is reproducible on CPU and
every DDP rank agrees on the epoch's shuffle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..config import AugmentConfig

CL = torch.channels_last
RRC_RATIO = (3 / 4, 4 / 3)  # torchvision RandomResizedCrop
ERASE_SCALE, ERASE_RATIO = (0.02, 0.33), (0.3, 3.3)  # torchvision RandomErasing
GRAY = (0.2989, 0.587, 0.114)  # torchvision rgb_to_grayscale, used by adjust_contrast


def make_generator(*key: int) -> torch.Generator:
    """A CPU generator whose stream depends on every part of ``key`` (seed, epoch, rank, purpose)."""
    state = np.random.SeedSequence([int(k) % 2**63 for k in key]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


def compute_mean_std(images: torch.Tensor, chunk: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 N×C×H×W images, in 0..1 units.

    Exact: per-channel 256-bin histograms summed in int64 over chunks, so no float copy of the set is made.
    A constant channel gets std 1/255 rather than 0, so normalising never divides by zero. ``chunk``: images per
    step (0 = about 16 M pixels).
    """
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"compute_mean_std needs a non-empty N×C×H×W tensor, got shape {tuple(images.shape)}")
    n, c = images.shape[:2]
    hist = torch.zeros(c, 256, dtype=torch.int64, device=images.device)
    per_chunk = chunk or max(1, 2**24 // images[0].numel())
    for start in range(0, n, per_chunk):
        part = images[start:start + per_chunk]
        for ch in range(c):
            hist[ch] += torch.bincount(part[:, ch].reshape(-1).to(torch.uint8), minlength=256)
    values = torch.arange(256, dtype=torch.int64, device=images.device)
    s1, s2 = (hist * values).sum(1).tolist(), (hist * values * values).sum(1).tolist()
    count = int(hist[0].sum())
    mean = tuple(s / count / 255 for s in s1)
    # Python ints keep s2*count - s1² exact however large the set
    std = tuple(max(math.sqrt((q * count - s * s) / count**2) / 255, 1 / 255) for s, q in zip(s1, s2))
    return mean, std


def _scale_shift(mean, std, channels: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.as_tensor(mean, dtype=torch.float32).reshape(-1).expand(channels)
    s = torch.as_tensor(std, dtype=torch.float32).reshape(-1).expand(channels)
    return _dev((1 / (255 * s)).view(1, channels, 1, 1), device), _dev((-m / s).view(1, channels, 1, 1), device)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (or float 0..255) N×C×H×W → float32 ``(x/255 - mean)/std`` in channels_last, in one pass + one add.

    The one pixels→tensor step shared by training, evaluation and prediction.
    """
    if x.dim() != 4:
        raise ValueError(f"normalize expects N×C×H×W, got shape {tuple(x.shape)}")
    scale, shift = _scale_shift(mean, std, x.shape[1], x.device)
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device, memory_format=CL)
    torch.mul(x, scale, out=out)  # converts, scales and re-lays-out in a single write
    return out.add_(shift)


@dataclass
class AugParams:
    """Per-sample random parameters of one batch; None = op off. Pixel offsets are int64, boxes (top, left, h, w)."""

    hflip: torch.Tensor | None = None  # (N,) bool
    vflip: torch.Tensor | None = None  # (N,) bool
    shift: torch.Tensor | None = None  # (N, 2) dy, dx: pad-and-crop offsets, reflect fill
    crop: torch.Tensor | None = None  # (N, 4) random-resized-crop box in the source
    angle: torch.Tensor | None = None  # (N,) degrees, counter-clockwise like torchvision
    brightness: torch.Tensor | None = None  # (N,) factors
    contrast: torch.Tensor | None = None  # (N,) factors
    erase: torch.Tensor | None = None  # (N, 4) box; h = w = 0 means not erased
    mix: str | None = None  # "mixup" | "cutmix"
    lam: float = 1.0  # weight of the sample itself (cutmix: after clipping the box)
    perm: torch.Tensor | None = None  # (N,) partner of each sample
    mix_box: tuple[int, int, int, int] = (0, 0, 0, 0)  # cutmix box, same for the whole batch


def _first_valid(ok: torch.Tensor, *vals: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Of 10 tries per sample (torchvision's retry loop), take the first that passed; argmax finds the first True."""
    first = ok.to(torch.uint8).argmax(1, keepdim=True)
    return (ok.any(1),) + tuple(v.gather(1, first)[:, 0] for v in vals)


def _boxes(g, n, height, width, scale, ratio, tries_ok) -> tuple[torch.Tensor, ...]:
    area = torch.empty(n, 10).uniform_(*scale, generator=g) * (height * width)
    aspect = torch.exp(torch.empty(n, 10).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g))
    w, h = torch.round(torch.sqrt(area * aspect)), torch.round(torch.sqrt(area / aspect))
    ok, h, w = _first_valid(tries_ok(h, w), h, w)
    u = torch.rand(n, 2, generator=g)
    return ok, h, w, (u[:, 0] * (height - h + 1)).floor(), (u[:, 1] * (width - w + 1)).floor()


def _affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """F.affine_grid(theta, [n, 1, h, w], align_corners=False) by broadcasting: the same points, but without the
    batched matmul over a homogeneous base grid, which cost more than the grid_sample itself on a CPU."""
    xs = (torch.arange(w, device=theta.device, dtype=theta.dtype) * 2 + 1) / w - 1
    ys = (torch.arange(h, device=theta.device, dtype=theta.dtype) * 2 + 1) / h - 1
    t = theta[:, :, :, None, None]  # n×2×3×1×1
    grid = t[:, :, 0] * xs.view(1, 1, 1, w) + t[:, :, 1] * ys.view(1, 1, h, 1) + t[:, :, 2]  # n×2×h×w
    return grid.permute(0, 2, 3, 1)


class Augmenter:
    """Whole-batch augmentation in pixel units (0..255), in the usual torchvision order: flips then pad-and-crop
    (or random-resized-crop then flips) → rotate → brightness → contrast → erase → mixup/cutmix.

    ``__call__`` draws parameters (:meth:`sample_params`) and applies them (:meth:`apply`); tests feed the same
    parameters to torchvision's per-image functions. The input is never modified. Uint8 input stays uint8 when only
    index ops (flip, translate) run; any other op returns float32. ``fill`` is the erasing value per channel in
    pixel units: the iterator passes mean×255, i.e. 0 after normalisation, like RandomErasing after Normalize.
    """

    def __init__(self, cfg: AugmentConfig, num_classes: int, fill: Sequence[float] | float = 0.0):
        self.cfg, self.num_classes, self.fill = cfg, num_classes, fill

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator):
        return self.apply(x, y, self.sample_params(generator, x.shape[0], x.shape[-2], x.shape[-1]))

    def sample_params(self, g: torch.Generator, n: int, height: int, width: int) -> AugParams:
        c, p = self.cfg, AugParams()
        p.hflip = torch.rand(n, generator=g) < c.hflip if c.hflip > 0 else None
        p.vflip = torch.rand(n, generator=g) < c.vflip if c.vflip > 0 else None
        if c.rrc_scale > 0:
            ok, h, w, i, j = _boxes(g, n, height, width, (c.rrc_scale, 1.0), RRC_RATIO,
                                    lambda h, w: (h > 0) & (h <= height) & (w > 0) & (w <= width))
            fh, fw = _centre_box(height, width)
            p.crop = torch.stack([torch.where(ok, i, (height - fh) // 2), torch.where(ok, j, (width - fw) // 2),
                                  torch.where(ok, h, fh), torch.where(ok, w, fw)], 1)
        elif c.translate > 0:
            pad = torch.tensor([round(c.translate * height), round(c.translate * width)])
            p.shift = (torch.rand(n, 2, generator=g) * (2 * pad + 1)).floor().long() - pad
        if c.rotate_deg > 0:
            p.angle = torch.empty(n).uniform_(-c.rotate_deg, c.rotate_deg, generator=g)
        if c.brightness > 0:
            p.brightness = torch.empty(n).uniform_(max(0.0, 1 - c.brightness), 1 + c.brightness, generator=g)
        if c.contrast > 0:
            p.contrast = torch.empty(n).uniform_(max(0.0, 1 - c.contrast), 1 + c.contrast, generator=g)
        if c.erase > 0:
            ok, h, w, i, j = _boxes(g, n, height, width, ERASE_SCALE, ERASE_RATIO,
                                    lambda h, w: (h < height) & (w < width))
            on = ok & (torch.rand(n, generator=g) < c.erase)
            p.erase = torch.stack([i, j, h * on, w * on], 1).long()
        if c.mixup > 0 or c.cutmix > 0:
            self._sample_mix(p, g, n, height, width)
        return p

    def _sample_mix(self, p: AugParams, g: torch.Generator, n: int, height: int, width: int) -> None:
        c = self.cfg
        cutmix = c.cutmix > 0 and (c.mixup <= 0 or bool(torch.rand(1, generator=g) < 0.5))
        alpha = c.cutmix if cutmix else c.mixup
        # torch's Beta sampler takes no generator; numpy's, seeded from ours, keeps the stream reproducible
        lam = float(np.random.default_rng(int(torch.randint(2**62, (1,), generator=g))).beta(alpha, alpha))
        p.mix, p.lam, p.perm = ("cutmix" if cutmix else "mixup"), lam, torch.randperm(n, generator=g)
        if cutmix:  # timm's rand_bbox: a box of area (1-lam), centre anywhere, clipped; lam follows the clip
            cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
            cy, cx = (int(v) for v in torch.randint(0, 1 << 30, (2,), generator=g) % torch.tensor([height, width]))
            y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
            x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
            p.mix_box, p.lam = (y0, y1, x0, x1), 1 - (y1 - y0) * (x1 - x0) / (height * width)

    def apply(self, x: torch.Tensor, y: torch.Tensor, p: AugParams) -> tuple[torch.Tensor, torch.Tensor]:
        src = x
        if p.crop is not None:
            x = self.warp(_to_float(x), p.crop, p.hflip, p.vflip, p.angle)
        else:
            x = self.flip_shift(x, p.hflip, p.vflip, p.shift)
            if p.angle is not None:
                x = self.warp(_to_float(x), None, None, None, p.angle)
        if p.brightness is not None or p.contrast is not None or p.erase is not None or p.mix:
            x = x if (x is not src and x.dtype == torch.float32) else x.to(torch.float32, memory_format=CL, copy=True)
            if p.brightness is not None or p.contrast is not None:
                self.color_(x, p.brightness, p.contrast)
            if p.erase is not None:
                self.erase_(x, p.erase)
            if p.mix:
                x, y = self.mix_(x, y, p)
        return x, y

    @staticmethod
    def flip_shift(x: torch.Tensor, hflip, vflip, shift) -> torch.Tensor:
        """Flip, then pad-and-crop with reflect fill, as ONE gather over the flattened H×W plane (any dtype).

        Reflect (not zeros): shifted natural images get no black bars to learn from, and dark-background sets like
        Fashion-MNIST reflect their own background. The padding lives in the index maths, so nothing is padded.
        """
        if hflip is None and vflip is None and shift is None:
            return x
        n, c, h, w = x.shape
        dev = x.device
        rows, cols = torch.arange(h, device=dev).expand(n, h), torch.arange(w, device=dev).expand(n, w)
        if shift is not None:
            shift = _dev(shift, dev)
            rows, cols = _reflect(rows + shift[:, :1], h), _reflect(cols + shift[:, 1:], w)
        if vflip is not None:
            rows = torch.where(_dev(vflip, dev)[:, None], h - 1 - rows, rows)
        if hflip is not None:
            cols = torch.where(_dev(hflip, dev)[:, None], w - 1 - cols, cols)
        flat = (rows[:, :, None] * w + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
        return x.reshape(n, c, h * w).gather(2, flat).view(n, c, h, w)

    @staticmethod
    def warp(x: torch.Tensor, crop, hflip, vflip, angle) -> torch.Tensor:
        """Random-resized-crop + flips + rotation as ONE affine grid_sample (bilinear, zeros outside the image).

        Coordinates follow align_corners=False, i.e. torchvision's resized_crop (crop, then bilinear resize: always
        an upscale, so antialiasing is moot) and rotate about the image centre. Without rotation the sampling
        points are clamped to the crop so its edge pixels never blend with pixels outside it, like a real crop.
        """
        n, _, h, w = x.shape
        dev = x.device
        theta = torch.zeros(n, 2, 3)
        if crop is not None:
            top, left, ch, cw = crop.to(torch.float32).unbind(1)
            theta[:, 0, 0], theta[:, 1, 1] = cw / w, ch / h
            theta[:, 0, 2], theta[:, 1, 2] = (2 * left + cw) / w - 1, (2 * top + ch) / h - 1
        else:
            theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        if hflip is not None:
            theta[:, :, 0] *= 1 - 2 * hflip.float()[:, None]
        if vflip is not None:
            theta[:, :, 1] *= 1 - 2 * vflip.float()[:, None]
        if angle is not None:  # output → source is the inverse rotation; pixel units keep non-square images right
            a = torch.deg2rad(angle.float())
            cos, sin = torch.cos(a), torch.sin(a)
            rot = torch.stack([torch.stack([cos, -sin * h / w], 1), torch.stack([sin * w / h, cos], 1)], 1)
            theta[:, :, :2] = theta[:, :, :2] @ rot
        grid = _affine_grid(_dev(theta, dev), h, w)
        if angle is None and crop is not None:
            top, left, ch, cw = _dev(crop.to(torch.float32), dev).unbind(1)
            lo = torch.stack([(2 * left + 1) / w - 1, (2 * top + 1) / h - 1], 1).view(n, 1, 1, 2)
            hi = torch.stack([(2 * (left + cw) - 1) / w - 1, (2 * (top + ch) - 1) / h - 1], 1).view(n, 1, 1, 2)
            grid = torch.clamp(grid, lo, hi)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    @staticmethod
    def color_(x: torch.Tensor, brightness, contrast) -> torch.Tensor:
        """In place: F.adjust_brightness then F.adjust_contrast (fixed order; ColorJitter shuffles it)."""
        n, c = x.shape[:2]
        if brightness is not None:
            x.mul_(_dev(brightness, x.device).view(n, 1, 1, 1)).clamp_(0, 255)
        if contrast is not None:
            f = _dev(contrast, x.device).view(n, 1, 1, 1)
            means = x.mean(dim=(2, 3))  # the grayscale mean is the weighted mean of the channel means
            gray = sum(w * means[:, i] for i, w in enumerate(GRAY)) if c == 3 else means.mean(1)
            x.mul_(f).add_((1 - f) * gray.view(n, 1, 1, 1)).clamp_(0, 255)
        return x

    def erase_(self, x: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        """In place: F.erase with each sample's box; empty boxes erase nothing."""
        n, c, h, w = x.shape
        top, left, bh, bw = _dev(box, x.device).view(n, 4, 1).unbind(1)
        rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        inside = (((rows >= top) & (rows < top + bh))[:, :, None] & ((cols >= left) & (cols < left + bw))[:, None])
        fill = _dev(torch.as_tensor(self.fill, dtype=x.dtype).reshape(-1).expand(c).reshape(1, c, 1, 1), x.device)
        return torch.where(inside[:, None], fill, x, out=x)

    def mix_(self, x: torch.Tensor, y: torch.Tensor, p: AugParams) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup or cutmix with the batch permuted; targets become probabilities (N, K) that sum to 1."""
        perm = _dev(p.perm, x.device)
        if p.mix == "cutmix":
            y0, y1, x0, x1 = p.mix_box
            x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
        else:
            partner = x.index_select(0, perm)  # taken before x is scaled in place
            x.mul_(p.lam).add_(partner, alpha=1 - p.lam)
        if y.dim() == 1:
            y = torch.zeros(len(y), self.num_classes, dtype=x.dtype, device=x.device).scatter_(1, y[:, None], 1.0)
        return x, y.mul(p.lam).add_(y.index_select(0, perm), alpha=1 - p.lam)


def _centre_box(height: int, width: int) -> tuple[int, int]:
    """torchvision's RandomResizedCrop fallback when 10 tries fail: the whole image, cut to the ratio range."""
    ratio = width / height
    if ratio < RRC_RATIO[0]:
        return int(round(width / RRC_RATIO[0])), width
    if ratio > RRC_RATIO[1]:
        return height, int(round(height * RRC_RATIO[1]))
    return height, width


def _reflect(i: torch.Tensor, size: int) -> torch.Tensor:
    """Index of a reflect-padded position (F.pad mode="reflect": the edge pixel is not repeated)."""
    i = i.abs()
    return torch.where(i > size - 1, 2 * (size - 1) - i, i)


def _dev(t: torch.Tensor, device) -> torch.Tensor:
    """Small parameter tensors go to the device without blocking: a blocking copy would sync the stream per batch."""
    return t.to(device, non_blocking=True)


def _gather_rows(rows: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``rows.index_select(0, idx)``; on a CPU by numpy's take, one memcpy per row: torch's parallel uint8 gather
    took 43 ms (1 thread) to 970 ms (2 threads, busy cores) for 64 rows of 224×224×3, numpy 12 ms either way."""
    if rows.device.type != "cpu":
        return rows.index_select(0, idx)
    return torch.from_numpy(np.take(rows.numpy(), idx.numpy(), axis=0))


def _to_float(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float32 else x.to(torch.float32, memory_format=CL)


class BatchIterator:
    """Epoch iterator over one split held as a uint8 tensor: shuffle, DDP shard, augment, resize, normalise.

    Yields ``(x, y)``: x float32 N×C×size×size channels_last, normalised, on ``device``; y int64 (N,), or float
    (N, K) probabilities when mixup/cutmix are on. Call :meth:`set_epoch` before each epoch (like
    DistributedSampler): the shuffle comes from (seed, epoch) and is the same on every rank; augmentation comes
    from (seed, epoch, rank). Each rank takes ``order[rank::world_size]`` cut to ``len // world_size`` samples, so
    ranks get equal batch counts and no sample twice per epoch (the remainder is dropped, which matters for
    evaluation: evaluate on one rank or with world_size 1). ``sample_weights`` draws N indices per epoch with
    replacement (balanced sampling). ``loss_weights`` (N,) makes each batch ``(x, y, w)``: the loss weight of
    every sample (under mixup/cutmix, the weight of the image the batch row started from). ``size`` may change
    between epochs (progressive resizing): batches are resized with antialiased bilinear interpolation after
    augmentation.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, mean, std,
                 augment: AugmentConfig | None = None, shuffle: bool = True, drop_last: bool = False,
                 seed: int = 0, rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu",
                 sample_weights: torch.Tensor | None = None, size: int | None = None,
                 num_classes: int | None = None, loss_weights: torch.Tensor | None = None):
        if images.dim() != 4 or len(images) != len(labels):
            raise ValueError(f"images must be N×C×H×W with one label each, got {tuple(images.shape)} and "
                             f"{len(labels)} labels")
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size ≥ 1 and 0 ≤ rank < world_size, got {batch_size}, {rank}, {world_size}")
        for name, w in (("sample_weights", sample_weights), ("loss_weights", loss_weights)):
            if w is not None and len(w) != len(images):
                raise ValueError(f"{name} has {len(w)} entries for {len(images)} images")
        # per-sample loss weights (--weight-col) travel with each batch as a third element
        self.loss_weights = None if loss_weights is None else loss_weights.float().to(labels.device)
        self.images, self.labels, self.batch_size = images, labels, batch_size
        # rows are gathered from the NHWC storage when that is contiguous (the cache's layout): index_select on
        # the permuted channels_last view walks memory element by element and is 40–100× slower
        nhwc = images.permute(0, 2, 3, 1)
        self._rows = nhwc if nhwc.is_contiguous() else None
        self.mean, self.std = mean, std
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        self.sample_weights = None if sample_weights is None else sample_weights.detach().double().cpu()
        self.size, self.epoch = size, 0
        self.max_batches: int | None = None  # an epoch of the first N batches of the shuffle (epoch_fraction)
        self.augmenter = None
        if augment is not None:
            if num_classes is None and (augment.mixup > 0 or augment.cutmix > 0):
                num_classes = int(labels.max()) + 1 if len(labels) else 1
            fill = [255 * m for m in torch.as_tensor(mean, dtype=torch.float64).reshape(-1).tolist()]
            self.augmenter = Augmenter(augment, num_classes or 0, fill=fill)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def limit(self, fraction: float) -> None:
        """Epochs of ``fraction`` of the batches (at least one): the first ones of each epoch's shuffle."""
        self.max_batches = None if fraction >= 1 else math.ceil(self._all_batches() * fraction)

    def _local_count(self) -> int:
        return len(self.images) // self.world_size

    def _all_batches(self) -> int:
        n = self._local_count()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        batches = self._all_batches()
        return batches if self.max_batches is None else max(1, min(batches, self.max_batches))

    def epoch_indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, in order (on the images' device)."""
        n = len(self.images)
        g = make_generator(self.seed, self.epoch, 0)
        if self.sample_weights is not None:
            order = torch.multinomial(self.sample_weights, n, replacement=True, generator=g)
        elif self.shuffle:
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        order = order[self.rank::self.world_size][:self._local_count()]
        return _dev(order, self.images.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        order = self.epoch_indices()
        g = make_generator(self.seed, self.epoch, self.rank, 1)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            x = (_gather_rows(self._rows, idx).permute(0, 3, 1, 2) if self._rows is not None
                 else self.images.index_select(0, idx)).to(self.device, non_blocking=True)
            y = self.labels.index_select(0, idx.to(self.labels.device)).to(self.device, non_blocking=True)
            if self.augmenter is not None:
                x, y = self.augmenter(x, y, g)
            if self.loss_weights is not None:
                w = self.loss_weights.index_select(0, idx.to(self.loss_weights.device))
                yield self._finish(x), y, w.to(self.device, non_blocking=True)
            else:
                yield self._finish(x), y

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        """Resize (when ``size`` differs from the stored size) and normalise into channels_last float32."""
        if self.size and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x.float(), size=(self.size, self.size), mode="bilinear", antialias=True,
                              align_corners=False)
        if x.dtype != torch.float32 or not x.is_contiguous(memory_format=CL):
            return normalize(x, self.mean, self.std)
        scale, shift = _scale_shift(self.mean, self.std, x.shape[1], x.device)
        return x.mul_(scale).add_(shift)  # a float batch made here is ours to overwrite
