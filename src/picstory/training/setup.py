"""From a split source to what the fit loop needs: cached uint8 tensors, batch iterators, the model and its
normalisation, class weights, and the data facts the report and the doctor read (data.json)."""

from __future__ import annotations

import hashlib
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import config as C
from ..data.sources import Source
from ..errors import ConfigError, UnusableDataError
from .distributed import Dist, barrier, eval_shard, local_batch_size


@dataclass
class Split:
    images: torch.Tensor  # uint8 N×C×H×W (channels_last storage), on CPU
    labels: torch.Tensor  # int64 N; multi-label: float32 N×K multi-hot
    paths: list[str]
    weights: torch.Tensor | None = None  # float32 N, --weight-col (None: every image weighs 1)
    records: list = field(default_factory=list)  # the Record of each image: group and columns for per-group metrics


@dataclass
class TrainData:
    classes: list[str]
    splits: dict[str, Split]
    model: torch.nn.Module
    pretrained: bool
    mean: tuple
    std: tuple
    train_batches: object
    val_batches: object
    loss_weight: torch.Tensor | None
    data_summary: dict
    params: int
    save_bundle: Callable = field(repr=False, default=None)
    multilabel: bool = False
    pos_weight: torch.Tensor | None = None  # multi-label --pos-weight balanced: negatives / positives per label

    @property
    def n_train(self) -> int:
        return len(self.splits["train"].labels)


def load_train_data(cfg: C.Config, source: Source, splits: dict[str, list[int]], device: torch.device, dist: Dist,
                    progress: bool) -> TrainData:
    from ..data.batches import BatchIterator, compute_mean_std

    classes = source.classes
    if source.multilabel:
        check_multilabel_config(cfg)
    parts, bad = _load_splits(cfg, source, splits, dist, progress)
    if not len(parts["val"].labels):
        raise ConfigError("the validation split is empty: set --val-fraction above 0 or add a val/ folder")
    model, pretrained = _create_model(cfg, len(classes), parts["train"].images.shape[1])
    _check_input_sizes(model, cfg, parts["train"].images.shape[1])
    if pretrained or cfg.model.weights:
        mean, std = _model_norm(model, parts["train"].images.shape[1])
    else:
        mean, std = compute_mean_std(parts["train"].images)
    t = cfg.train
    train, val = parts["train"], parts["val"]
    counts = _label_counts(train.labels, len(classes))
    loss_weight, pos_weight = None, None
    if source.multilabel and t.pos_weight == "balanced":
        pos_weight = ((len(train.labels) - counts) / counts.clamp(min=1)).clamp(min=1e-3).to(device)
    if train.weights is not None and float(train.weights.sum()) <= 0:
        raise ConfigError(f"--weight-col {cfg.data.weight_col}: every training weight is 0; nothing would be learnt")
    if t.class_weights == "auto":
        loss_weight = (counts.sum() / (len(classes) * counts.clamp(min=1))).to(device)
    sample_weights = (1.0 / counts.clamp(min=1))[train.labels] if t.balanced_sampling else None
    # --batch-size is global: each of N ranks takes batch // N (distributed.py)
    batch = local_batch_size(min(t.batch_size, len(train.labels)), dist)
    on_device = _maybe_to_device(train.images, device), _maybe_to_device(val.images, device)
    train_batches = BatchIterator(on_device[0], train.labels.to(on_device[0].device), batch, mean, std,
                                  augment=cfg.augment, shuffle=True,
                                  drop_last=len(train.labels) // dist.world_size > batch,
                                  seed=t.seed, rank=dist.rank, world_size=dist.world_size, device=device,
                                  sample_weights=sample_weights, size=cfg.data.img_size, num_classes=len(classes),
                                  loss_weights=train.weights)
    train_batches.limit(t.epoch_fraction)
    # validation: an uneven shard per rank, not cut to equal length, so the all-reduced metrics count every sample
    val_images, val_labels = eval_shard(on_device[1], val.labels.to(on_device[1].device), dist)
    val_batches = BatchIterator(val_images, val_labels, cfg.eval.eval_batch_size, mean, std, augment=None,
                                shuffle=False, drop_last=False, seed=t.seed, device=device, size=cfg.data.img_size,
                                num_classes=len(classes))
    model = model.to(device, memory_format=torch.channels_last)
    td = TrainData(classes=classes, splits=parts, model=model, pretrained=pretrained, mean=mean, std=std,
                   train_batches=train_batches, val_batches=val_batches, loss_weight=loss_weight,
                   data_summary=_data_summary(source, classes, parts, bad),
                   params=sum(p.numel() for p in model.parameters()), multilabel=source.multilabel,
                   pos_weight=pos_weight)
    td.save_bundle = _bundle_saver(cfg, source, td)
    return td


def check_multilabel_config(cfg: C.Config) -> None:
    """Options that only mean something for one label per image are refused for multi-label data, in one line."""
    t = cfg.train
    for flag, on in (("--class-weights auto", t.class_weights == "auto"),
                     ("--balanced-sampling", t.balanced_sampling)):
        if on:
            raise ConfigError(f"{flag} balances one label per image; multi-label data uses --pos-weight balanced "
                              "instead")
    if cfg.data.folds:
        raise ConfigError(f"--folds {cfg.data.folds}: cross-validation of multi-label data is not supported; "
                          "train without --folds")


def _label_counts(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Images per class (multi-label: images carrying each label)."""
    if labels.dim() == 2:
        return labels.sum(0).float()
    return torch.bincount(labels, minlength=k).float()


def _load_splits(cfg: C.Config, source: Source, splits: dict[str, list[int]], dist: Dist,
                 progress: bool) -> tuple[dict[str, Split], list]:
    from ..data.cache import load_images

    sizes = [cfg.data.img_size] + [int(s) for s in cfg.train.progressive.split(",") if s]
    size = max(sizes)
    order = splits["train"] + splits["val"] + splits["test"]
    if cfg.data.limit_per_class:
        order = _limit(source, splits, cfg.data.limit_per_class) + splits["val"] + splits["test"]
    # rank 0 fills the cache; then the first rank of every other node (for a per-node cache); the rest then read
    # cache hits instead of decoding the same files. The waits use the long-timeout group: decoding can take hours
    stage = 0 if dist.is_main else 1 if dist.local_rank == 0 else 2
    for turn in range(3 if dist.enabled else 1):
        if turn == stage:
            cached = load_images(source, order, size, int(cfg.data.channels), cfg.data.fit,
                                 progress=progress and dist.is_main)
        barrier(dist, slow=True)
    bad = cached.bad
    if len(bad) > cfg.data.max_bad_fraction * len(order):
        examples = "; ".join(f"{p}: {r}" for p, r in bad[:3])
        raise UnusableDataError(f"{len(bad)} of {len(order)} images cannot be decoded (more than "
                                f"{cfg.data.max_bad_fraction:.0%}), e.g. {examples}; run `picstory data check "
                                f"{cfg.data.data}` for the list, or raise --max-bad-fraction")
    if bad and dist.is_main:
        print(f"warning: skipped {len(bad)} unreadable image(s), e.g. {bad[0][0]}: {bad[0][1]}", file=sys.stderr)
    index = {cls: i for i, cls in enumerate(source.classes)}
    row_of = {rec_i: row for row, rec_i in enumerate(order)}
    parts = {}
    for name, idx in splits.items():
        idx = [i for i in idx if i in row_of and cached.ok[row_of[i]]]
        rows = np.array([row_of[i] for i in idx], dtype=np.int64)
        arr = np.ascontiguousarray(cached.images[rows]) if len(rows) else np.zeros((0, size, size, 1), np.uint8)
        images = torch.from_numpy(arr).permute(0, 3, 1, 2)  # NHWC storage = channels_last NCHW view
        recs = [source.records[i] for i in idx]
        labels = (torch.from_numpy(source.targets(recs, source.classes)) if source.multilabel else
                  torch.tensor([index[r.label] for r in recs], dtype=torch.long))
        weights = torch.tensor([r.weight for r in recs], dtype=torch.float32) if cfg.data.weight_col else None
        parts[name] = Split(images, labels, [source.display_path(r) for r in recs], weights, recs)
    return parts, bad


def _limit(source: Source, splits: dict[str, list[int]], n: int) -> list[int]:
    seen: Counter = Counter()
    out = []
    for i in splits["train"]:
        label = source.records[i].label
        if seen[label] < n:
            seen[label] += 1
            out.append(i)
    splits["train"] = out
    return out


def _create_model(cfg: C.Config, num_classes: int, in_chans: int) -> tuple[torch.nn.Module, bool]:
    from ..models import create_model, has_pretrained, load_weights

    m = cfg.model
    pretrained = bool(m.pretrained and not m.weights and has_pretrained(m.model))
    try:
        model = create_model(m.model, num_classes, in_chans=in_chans, pretrained=pretrained,
                             img_size=cfg.data.img_size, drop_rate=m.drop_rate)
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f"cannot build model '{m.model}' for {cfg.data.img_size} px: {e}; "
                          "choose a larger --img-size or another --model") from None
    if m.weights:
        load_weights(model, m.weights)
    if pretrained:
        # a zero head starts every class at equal odds; timm's Google-style init draws ±1/√classes, which for a
        # handful of classes gives confident nonsense (an initial loss of ~6 instead of ln K)
        head = getattr(model, model.picstory_cfg.get("head", ""), None)
        if isinstance(head, torch.nn.Linear):
            torch.nn.init.zeros_(head.weight)
            torch.nn.init.zeros_(head.bias)
    return model, pretrained


def _check_input_sizes(model: torch.nn.Module, cfg: C.Config, in_chans: int) -> None:
    """One tiny forward pass per training size, so a size the model cannot take fails before epoch 1."""
    sizes = sorted({cfg.data.img_size, *(int(s) for s in cfg.train.progressive.split(",") if s)})
    model.eval()
    for size in sizes:
        try:
            with torch.no_grad():
                model(torch.zeros(2, in_chans, size, size))
        except RuntimeError as e:
            hint = ("--progressive needs a model with global pooling (e.g. picnet-s)" if len(sizes) > 1
                    else "choose a larger --img-size")
            raise ConfigError(f"model '{cfg.model.model}' cannot take {size}×{size} px input: {hint} "
                              f"({str(e).splitlines()[0][:120]})") from None
    model.train()


def _model_norm(model: torch.nn.Module, in_chans: int) -> tuple[tuple, tuple]:
    pc = getattr(model, "picstory_cfg", {})
    mean, std = tuple(pc.get("mean", (0.5,) * 3)), tuple(pc.get("std", (0.25,) * 3))
    if in_chans == 1 and len(mean) == 3:  # a pretrained RGB net fed gray images: its filters were summed
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    return mean, std


def _maybe_to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """On a GPU the whole uint8 split lives on the device when it fits in a quarter of free memory."""
    if device.type != "cuda":
        return images
    free, _ = torch.cuda.mem_get_info(device)
    return images.to(device) if images.numel() < free // 4 else images


def _data_summary(source: Source, classes: list[str], parts: dict[str, Split], bad: list) -> dict:
    counts = {name: {c: 0 for c in classes} for name in parts}
    for name, part in parts.items():
        for i, n in enumerate(_label_counts(part.labels, len(classes)).tolist()):
            counts[name][classes[i]] = int(n)
    train_counts = [n for n in counts["train"].values() if n]
    return {"spec": source.spec, "kind": source.kind, "class_counts": counts,
            "bad_files": [{"path": p, "reason": r} for p, r in bad],
            "leaks": _leaks(parts), "duplicates": _duplicate_count(parts),
            "imbalance_ratio": (max(train_counts) / min(train_counts)) if train_counts else None}


def _hashes(part: Split) -> list[str]:
    return [hashlib.blake2b(img.numpy().tobytes(), digest_size=12).hexdigest() for img in part.images]


def _leaks(parts: dict[str, Split]) -> list[dict]:
    """Identical pixels in more than one split: test accuracy that only measures memory."""
    where: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for name, part in parts.items():
        for h, path in zip(_hashes(part), part.paths):
            where[h].append((name, path))
    leaks = [{"paths": [p for _, p in v], "splits": [s for s, _ in v]} for v in where.values()
             if len({s for s, _ in v}) > 1]
    return leaks[:200]


def _duplicate_count(parts: dict[str, Split]) -> int:
    hashes = [h for part in parts.values() for h in _hashes(part)]
    return len(hashes) - len(set(hashes))


def _bundle_saver(cfg: C.Config, source: Source, td: TrainData) -> Callable:
    from ..models.bundle import save_bundle

    final_size = cfg.data.img_size
    if cfg.train.progressive:
        final_size = int(cfg.train.progressive.split(",")[-1])
    meta = {"arch": cfg.model.model, "model_kwargs": {"drop_rate": cfg.model.drop_rate},
            "num_classes": len(td.classes), "classes": td.classes, "in_chans": int(cfg.data.channels),
            "img_size": final_size, "fit": cfg.data.fit, "mean": list(td.mean), "std": list(td.std),
            "data": cfg.data.data, "data_fingerprint": source.fingerprint()}
    if source.multilabel:  # sigmoid outputs, one independent yes/no per label; thresholds come after training
        meta["task"] = "multilabel"
    if source.label_map:  # label value in the file → class the model predicts
        meta["label_map"] = dict(source.label_map)

    def save(directory: Path, model: torch.nn.Module, metrics: dict) -> None:
        save_bundle(directory, model, {**meta, "metrics": metrics})

    return save


_ = Path
