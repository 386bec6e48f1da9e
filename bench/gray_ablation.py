"""Why does the photo recipe underfit grayscale images? An ablation of its parts on real grayscale images.

    python bench/gray_ablation.py                          # every variant, 200 train / 100 test images per class
    python bench/gray_ablation.py --only base,no-freeze    # a subset
    python bench/gray_ablation.py --per-class 100 --epochs 3 --img-size 64

The images are real (Fashion-MNIST, 28×28 gray product photos, the only real grayscale set that installs offline),
written once as a class folder with a declared test split; the shirt / T-shirt / pullover / coat classes differ in
small details (collars, buttons, sleeve ends), the nearest thing offline to "fine defects". Each variant is
``picstory.train`` on that folder with the photo recipe's defaults (efficientnet_lite0 pretrained, 1 frozen + full
epochs, AdamW 1e-3, backbone LR × 0.1, random-resized crops from 35 % of the area, 1-channel stem) and one part
changed; the probe (a linear head on the frozen features) is the floor the fine-tune must beat. Prints train and
test accuracy next to each other (an underfitting recipe has both low), the majority baseline and the seconds.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

BASE = {"model": "efficientnet_lite0", "preset": "default", "lr": "1e-3", "freeze_epochs": 1,
        "backbone_lr_mult": 0.1, "rrc_scale": 0.35, "schedule": "cosine", "warmup_epochs": 0.0,
        "weight_decay": 0.01, "batch_size": 32, "optimizer": "adamw", "label_smoothing": 0.1}
VARIANTS = {  # name → what changes from BASE
    "base": {},
    "no-freeze": {"freeze_epochs": 0},
    "backbone-lr-x1": {"backbone_lr_mult": 1.0},
    "no-crop": {"rrc_scale": 1.0},
    "rgb-stem": {"channels": "3"},
    "lr-3e-3": {"lr": "3e-3"},
    "size-x2": {"img_size": "x2"},
    "backbone-lr-x1+no-freeze": {"backbone_lr_mult": 1.0, "freeze_epochs": 0},
    "probe": None,  # --preset probe with its own values (L-BFGS head, lr 1)
}


def write_folder(root: Path, per_class: int, seed: int = 0) -> Path:
    """Fashion-MNIST as PNG class folders: ``per_class`` training and ``per_class // 2`` test images per class."""
    import numpy as np
    from PIL import Image

    from picstory.data.sources import resolve

    if (root / "done").is_file():
        return root
    src = resolve("builtin:fashion-mnist")
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("test", per_class // 2)):
        idx = np.array([i for i, r in enumerate(src.records) if (r.split == "test") == (split == "test")])
        labels = np.array([src.records[i].label for i in idx])
        for c in src.classes:
            pick = rng.choice(idx[labels == c], n, replace=False)
            d = root / split / c.replace("/", "-")
            d.mkdir(parents=True, exist_ok=True)
            for i in pick:
                Image.fromarray(src.arrays[i]).save(d / f"{i}.png")
    (root / "done").write_text("")
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--only", default="")
    ap.add_argument("--work", type=Path, default=Path("/tmp/picstory-bench-gray"))
    args = ap.parse_args()

    import picstory

    data = write_folder(args.work / f"fmnist-{args.per_class}", args.per_class)
    names = [n for n in VARIANTS if not args.only or n in args.only.split(",")]
    rows = []
    for name in names:
        change = VARIANTS[name]
        options = ({"model": BASE["model"], "preset": "probe", "img_size": args.img_size} if change is None else
                   {**BASE, "epochs": args.epochs, "img_size": args.img_size, **change})
        if options["img_size"] == "x2":
            options["img_size"] = 2 * args.img_size
        t = time.perf_counter()
        run = picstory.train(str(data), out=str(args.work / "runs"), name=name, progress=False, val_fraction=0.15,
                             seed=0, **options)
        s = run.summary
        with open(run.path / "metrics.csv") as f:
            history = list(csv.DictReader(f))
        train_acc = float(history[-1]["train_acc"]) if history else float("nan")
        rows.append((name, s["epochs_run"], train_acc, s["val_accuracy"], s["test_accuracy"],
                     s.get("test_balanced_accuracy"), s.get("majority_baseline"), s["train_seconds"],
                     time.perf_counter() - t))
        print(f"{name:24s} epochs {rows[-1][1]}  train acc {train_acc:.4f}  val {s['val_accuracy']:.4f}  "
              f"test {s['test_accuracy']:.4f}  train {s['train_seconds']:.0f}s", flush=True)
    print(f"\n{args.per_class} training images per class (15 % of them validation), {args.per_class // 2} test per "
          f"class, {args.img_size} px, {args.epochs} epochs\n")
    print("| variant | epochs | train acc (last epoch) | val acc | test acc | balanced | majority | train s | run s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.4f} | {r[3]:.4f} | {r[4]:.4f} | {r[5] or float('nan'):.4f} | "
              f"{r[6] or float('nan'):.4f} | {r[7]:.0f} | {r[8]:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
