"""Batched augmentation vs torchvision's per-image functions fed the same drawn parameters, and the epoch iterator.

Tolerances (pixel units, 0..255): index ops (flip, pad-and-crop, erase) are exact; resampling ops (random-resized
crop, rotation) agree within 0.02 — float rounding of grid coordinates, both sides are bilinear with
align_corners=False; brightness/contrast within 1e-3.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from picstory.config import AugmentConfig
from picstory.data.batches import Augmenter, BatchIterator, compute_mean_std, normalize

torch.set_num_threads(1)
OFF = AugmentConfig(hflip=0.0, vflip=0.0, translate=0.0)  # every op off; each test turns one on


def images(n=16, c=3, h=20, w=24, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def run(cfg: AugmentConfig, x: torch.Tensor, seed: int = 1, num_classes: int = 4, fill=0.0):
    aug = Augmenter(cfg, num_classes, fill=fill)
    p = aug.sample_params(torch.Generator().manual_seed(seed), x.shape[0], x.shape[-2], x.shape[-1])
    y = torch.arange(x.shape[0]) % num_classes
    before = x.clone()
    out, y_out = aug.apply(x, y, p)
    assert torch.equal(x, before), "the augmenter must not modify its input"
    return p, out, y, y_out


@pytest.mark.parametrize("which", ["hflip", "vflip"])
def test_flips_match_torchvision(which):
    x = images()
    p, out, _, _ = run(AugmentConfig(**{**vars(OFF), which: 0.5}), x)
    flags = getattr(p, which)
    assert 0 < int(flags.sum()) < len(x)  # both branches exercised
    for i in range(len(x)):
        ref = getattr(TF, which)(x[i]) if flags[i] else x[i]
        assert torch.equal(out[i], ref), i


@pytest.mark.parametrize("shape", [(3, 20, 24), (1, 28, 28)])
def test_translate_is_flip_then_reflect_pad_and_crop(shape):
    x = images(c=shape[0], h=shape[1], w=shape[2])
    p, out, _, _ = run(AugmentConfig(hflip=0.5, vflip=0.0, translate=0.2), x)
    assert out.dtype == torch.uint8  # index ops stay on uint8
    pad_y, pad_x = round(0.2 * shape[1]), round(0.2 * shape[2])
    assert p.shift[:, 0].abs().max() <= pad_y and p.shift[:, 1].abs().max() <= pad_x
    assert len({tuple(s) for s in p.shift.tolist()}) > 1
    for i in range(len(x)):
        img = TF.hflip(x[i]) if p.hflip[i] else x[i]
        padded = TF.pad(img, [pad_x, pad_y], padding_mode="reflect")
        dy, dx = p.shift[i].tolist()
        ref = TF.crop(padded, pad_y + dy, pad_x + dx, shape[1], shape[2])
        assert torch.equal(out[i], ref), i


def test_random_resized_crop_matches_resized_crop():
    x = images(n=24)
    p, out, _, _ = run(AugmentConfig(hflip=0.5, vflip=0.0, translate=0.1, rrc_scale=0.3), x)
    assert p.shift is None  # rrc replaces translate
    top, left, h, w = p.crop.long().T
    area = (h * w).float() / (20 * 24)
    assert (area >= 0.28).all() and (area <= 1.0).all() and (top + h <= 20).all() and (left + w <= 24).all()
    assert area.std() > 0
    for i in range(len(x)):
        ref = TF.resized_crop(x[i].float(), *p.crop[i].long().tolist(), [20, 24],
                              interpolation=InterpolationMode.BILINEAR, antialias=True)
        ref = TF.hflip(ref) if p.hflip[i] else ref
        torch.testing.assert_close(out[i], ref, atol=0.02, rtol=0)


def test_rotation_matches_rotate():
    x = images()
    p, out, _, _ = run(AugmentConfig(**{**vars(OFF), "rotate_deg": 40.0}), x)
    assert p.angle.abs().max() <= 40 and p.angle.abs().max() > 5
    for i in range(len(x)):
        ref = TF.rotate(x[i].float(), float(p.angle[i]), interpolation=InterpolationMode.BILINEAR)
        torch.testing.assert_close(out[i], ref, atol=0.02, rtol=0)


def test_random_resized_crop_falls_back_to_torchvisions_centre_crop():
    x = images(n=4, c=1, h=8, w=40)  # no box of full area fits the 3/4..4/3 ratio: every try fails
    p, _, _, _ = run(AugmentConfig(**{**vars(OFF), "rrc_scale": 1.0}), x)
    ref = T.RandomResizedCrop.get_params(x[0], scale=(1.0, 1.0), ratio=(3 / 4, 4 / 3))
    assert p.crop.long().tolist() == [list(ref)] * 4


@pytest.mark.parametrize("c", [1, 3])
def test_brightness_contrast_match_adjust_functions(c):
    x = images(c=c)
    p, out, _, _ = run(AugmentConfig(**{**vars(OFF), "brightness": 0.6, "contrast": 0.6}), x)
    assert p.brightness.min() >= 0.4 and p.contrast.max() <= 1.6 and p.brightness.std() > 0
    for i in range(len(x)):
        ref = TF.adjust_contrast(TF.adjust_brightness(x[i] / 255, float(p.brightness[i])), float(p.contrast[i]))
        torch.testing.assert_close(out[i], ref * 255, atol=1e-3, rtol=0)


def test_erasing_matches_erase():
    x = images(n=32)
    fill = [10.0, 20.0, 30.0]
    p, out, _, _ = run(AugmentConfig(**{**vars(OFF), "erase": 0.5}), x, fill=fill)
    erased = p.erase[:, 2] > 0
    assert 0 < int(erased.sum()) < len(x)
    for i in range(len(x)):
        ref = x[i].float()
        if erased[i]:
            top, left, h, w = p.erase[i].tolist()
            assert h * w >= 0.02 * 20 * 24 * 0.5 and h < 20 and w < 24
            ref = TF.erase(ref, top, left, h, w, torch.tensor(fill).view(3, 1, 1))
        assert torch.equal(out[i], ref), i


def test_mixup_targets_are_probabilities_of_the_mixed_pair():
    x = images()
    p, out, y, soft = run(AugmentConfig(**{**vars(OFF), "mixup": 0.4}), x)
    assert p.mix == "mixup" and 0 < p.lam < 1 and soft.shape == (len(x), 4)
    torch.testing.assert_close(soft.sum(1), torch.ones(len(x)))
    xf = x.float()
    torch.testing.assert_close(out, p.lam * xf + (1 - p.lam) * xf[p.perm])
    onehot = F.one_hot(y, 4).float()
    torch.testing.assert_close(soft, p.lam * onehot + (1 - p.lam) * onehot[p.perm])


def test_cutmix_pastes_the_partners_box_and_weights_by_area():
    x = images(n=8, h=32, w=32)
    aug = Augmenter(AugmentConfig(**{**vars(OFF), "mixup": 1.0, "cutmix": 1.0}), 4)
    kinds = set()
    for seed in range(12):
        p = aug.sample_params(torch.Generator().manual_seed(seed), 8, 32, 32)
        kinds.add(p.mix)
        if p.mix != "cutmix":
            continue
        out, soft = aug.apply(x, torch.zeros(8, dtype=torch.long), p)
        y0, y1, x0, x1 = p.mix_box
        ref = x.float().clone()
        ref[:, :, y0:y1, x0:x1] = x.float()[p.perm, :, y0:y1, x0:x1]
        assert torch.equal(out, ref)
        assert p.lam == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 32**2)
        torch.testing.assert_close(soft.sum(1), torch.ones(8))
    assert kinds == {"mixup", "cutmix"}  # both on: one picked per batch


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_normalize_matches_formula_and_is_channels_last(dtype):
    x = images(c=3).to(dtype)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.25)
    out = normalize(x, mean, std)
    ref = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_compute_mean_std_matches_numpy_across_chunks():
    x = images(n=37, c=3, h=9, w=11)
    x[:, 2] = 7  # a constant channel: std floored, never 0
    mean, std = compute_mean_std(x, chunk=5)
    a = x.numpy().astype(np.float64) / 255
    np.testing.assert_allclose(mean, a.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std[:2], a.std(axis=(0, 2, 3))[:2], rtol=1e-10)
    assert std[2] == pytest.approx(1 / 255)
    assert compute_mean_std(x, chunk=5) == compute_mean_std(x)


def collect(it):
    xs, ys = zip(*list(it))
    return torch.cat(xs), torch.cat(ys)


def test_epoch_covers_every_sample_once_and_x_matches_y():
    x = images(n=53, c=1, h=8, w=8)
    it = BatchIterator(x, torch.arange(53), batch_size=10, mean=(0.5,), std=(0.25,), shuffle=True, seed=3)
    assert len(it) == 6
    xs, ys = collect(it)
    assert sorted(ys.tolist()) == list(range(53)) and ys.tolist() != list(range(53))
    torch.testing.assert_close(xs, normalize(x[ys], (0.5,), (0.25,)))
    assert len(BatchIterator(x, torch.arange(53), 10, (0.5,), (0.25,), drop_last=True)) == 5


def test_same_seed_same_batches_other_seed_or_epoch_differs():
    x = images(n=40)
    cfg = AugmentConfig(hflip=0.5, translate=0.1, brightness=0.2, erase=0.5)

    def batches(seed, epoch=0):
        it = BatchIterator(x, torch.arange(40), 8, (0.5,) * 3, (0.25,) * 3, augment=cfg, seed=seed)
        it.set_epoch(epoch)
        return collect(it)

    a, b, c, d = batches(0), batches(0), batches(1), batches(0, epoch=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1]) and not torch.equal(a[1], d[1])


def test_ddp_shards_are_disjoint_equal_and_cover_the_epoch():
    n, labels = 103, torch.arange(103)
    shards = []
    for rank in range(2):
        it = BatchIterator(images(n=n, c=1, h=4, w=4), labels, 16, (0.5,), (0.5,), rank=rank, world_size=2, seed=5)
        it.set_epoch(2)
        assert len(it) == 4
        shards.append(collect(it)[1].tolist())
    assert len(shards[0]) == len(shards[1]) == 51
    assert not set(shards[0]) & set(shards[1])
    assert len(set(shards[0]) | set(shards[1])) == 102  # one sample truncated, none repeated


def test_balanced_sampling_evens_out_an_imbalanced_set():
    labels = torch.tensor([0] * 450 + [1] * 50)
    weights = 1.0 / torch.bincount(labels).double()[labels]
    it = BatchIterator(images(n=500, c=1, h=4, w=4), labels, 100, (0.5,), (0.5,), sample_weights=weights)
    ys = collect(it)[1]
    assert len(ys) == 500 and 0.4 < ys.float().mean() < 0.6
    plain = collect(BatchIterator(images(n=500, c=1, h=4, w=4), labels, 100, (0.5,), (0.5,)))[1]
    assert plain.float().mean() == pytest.approx(0.1)


def test_progressive_size_resizes_after_augmentation():
    x = images(n=12, c=3, h=32, w=32)
    it = BatchIterator(x, torch.arange(12), 12, (0.5,) * 3, (0.25,) * 3, shuffle=False, size=16)
    xb, _ = next(iter(it))
    ref = normalize(F.interpolate(x.float(), size=(16, 16), mode="bilinear", antialias=True), (0.5,) * 3, (0.25,) * 3)
    torch.testing.assert_close(xb, ref)
    it.size = 24
    assert next(iter(it))[0].shape == (12, 3, 24, 24)


def test_augmented_batches_are_normalised_channels_last_with_soft_targets():
    x = images(n=20, c=3, h=16, w=16)
    cfg = AugmentConfig(hflip=0.5, rrc_scale=0.5, rotate_deg=10, contrast=0.3, erase=0.3, mixup=0.2, cutmix=1.0)
    it = BatchIterator(x, torch.arange(20) % 5, 8, (0.4,) * 3, (0.2,) * 3, augment=cfg, size=12)
    for xb, yb in it:
        assert xb.dtype == torch.float32 and xb.is_contiguous(memory_format=torch.channels_last)
        assert xb.shape[1:] == (3, 12, 12) and yb.shape == (len(xb), 5)
        torch.testing.assert_close(yb.sum(1), torch.ones(len(xb)))
    assert xb.abs().max() <= (1 / 0.2) * 1.01  # normalised pixels lie within (0-mean)/std .. (1-mean)/std


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_match_cpu():
    x = images(n=20, c=3, h=16, w=16)
    cfg = AugmentConfig(hflip=0.5, vflip=0.5, rrc_scale=0.5, rotate_deg=10, brightness=0.3, contrast=0.3, erase=0.5,
                        mixup=0.2)
    for aug in (None, AugmentConfig(), cfg):
        cpu = collect(BatchIterator(x, torch.arange(20), 8, (0.4,) * 3, (0.2,) * 3, augment=aug, size=12))
        gpu = collect(BatchIterator(x.cuda(), torch.arange(20).cuda(), 8, (0.4,) * 3, (0.2,) * 3, augment=aug,
                                    size=12, device="cuda"))
        assert gpu[0].is_cuda and gpu[0].is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(gpu[0].cpu(), cpu[0], atol=1e-3, rtol=0)
        torch.testing.assert_close(gpu[1].cpu(), cpu[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_hot_loop_never_waits_for_the_gpu():
    x, y = images(n=32, c=3, h=16, w=16).cuda(), (torch.arange(32) % 4).cuda()
    cfg = AugmentConfig(hflip=0.5, vflip=0.5, rrc_scale=0.5, rotate_deg=10, brightness=0.3, contrast=0.3, erase=0.5,
                        mixup=0.2, cutmix=1.0)
    for aug in (AugmentConfig(), cfg):
        it = BatchIterator(x, y, 8, (0.4,) * 3, (0.2,) * 3, augment=aug, size=12, device="cuda")
        torch.cuda.set_sync_debug_mode("error")  # any host-device synchronisation raises
        try:
            batches = list(it)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert len(batches) == 4
