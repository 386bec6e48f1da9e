"""Unknown inputs: how well each out-of-distribution score tells a model's own kind of image from others.

    .venv/bin/python bench/ood.py                               # FMNIST (fast preset, 2,000/class) + photo run
    .venv/bin/python bench/ood.py --fmnist-run runs/X --photo-run runs/Y   # reuse trained runs
    .venv/bin/python bench/ood.py --skip-photo --limit-per-class 500       # quick

Fashion-MNIST: ``picstory.train("builtin:fashion-mnist", preset="fast", limit_per_class=N)`` (the real training
path: calibration, feature bank and thresholds are stored in the bundle), then in-distribution = the 10,000 test
images against (a) scikit-learn's digits scaled to 28×28, (b) scikit-image's sample photos cut into gray 28×28
patches, (c) uniform noise, (d) the test images rotated 90°.
Photos: efficientnet_lite0 fine-tuned (fast preset) on a generated folder of five scikit-image photos (bench/ingest.py's
generator), in-distribution = freshly generated images of the same five, out = photos of other scenes.

Scores (higher = more unusual): max-softmax (calibrated), energy (−logsumexp of the logits), and the k-th nearest
cosine distance to the bundle's training-feature bank for several k. AUROC and FPR@95 %TPR by scikit-learn; the
"flagged" column is the share the bundle's own rule (predict/serve's path, Predictor.predict_scored) answers unknown.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import picstory  # noqa: E402
from picstory.deploy.preprocess import preprocess  # noqa: E402
from picstory.evaluation import ood  # noqa: E402
from picstory.evaluation.calibration import bundle_temperature  # noqa: E402
from picstory.models.bundle import find_bundle, load_bundle, read_ood_bank  # noqa: E402

K_VALUES = (1, 10, 50)
GRAY_SOURCES = ("camera", "coins", "moon", "page", "text", "brick", "grass", "gravel", "horse", "cell",
                "clock_motion", "astronaut", "coffee", "chelsea", "hubble_deep_field", "ihc", "motorcycle_left",
                "rocket", "retina", "phantom")
OTHER_PHOTOS = ("motorcycle_left", "hubble_deep_field", "ihc", "camera", "coins", "horse", "page", "brick", "grass")


def skimage_photo(name: str) -> np.ndarray:
    """A sample photo read from scikit-image's own data folder (no download), as H×W×3 uint8."""
    import skimage.data
    from PIL import Image

    folder = Path(skimage.data.__file__).parent
    path = next(p for p in folder.iterdir() if p.stem == name)
    return np.asarray(Image.open(path).convert("RGB"))


# ---- out-of-distribution sets for 28×28 gray ---------------------------------------------------------------------


def digits_28() -> torch.Tensor:
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits().images * (255 / 16)
    out = [np.asarray(Image.fromarray(im.astype(np.uint8)).resize((28, 28), Image.Resampling.BILINEAR)) for im in d]
    return torch.from_numpy(np.stack(out))[:, None]


def photo_patches(n: int = 2000, seed: int = 0) -> torch.Tensor:
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = [np.asarray(Image.fromarray(skimage_photo(s)).convert("L")) for s in GRAY_SOURCES]
    out = []
    for i in range(n):
        im = photos[i % len(photos)]
        side = int(rng.integers(28, max(29, min(im.shape) // 3)))
        top, left = rng.integers(0, im.shape[0] - side + 1), rng.integers(0, im.shape[1] - side + 1)
        patch = Image.fromarray(im[top:top + side, left:left + side]).resize((28, 28), Image.Resampling.BILINEAR)
        out.append(np.asarray(patch))
    return torch.from_numpy(np.stack(out))[:, None]


def noise(n: int = 2000, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8))


# ---- photos --------------------------------------------------------------------------------------------------------


def photo_file(path: Path, photo: np.ndarray, seed: int, size=(320, 240)) -> None:
    """bench/ingest.py's recipe (random 50–100 % crop, colour cast, sensor noise, flip) for any photo."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    ph, pw = photo.shape[:2]
    scale = rng.uniform(0.5, 1.0)
    ch, cw = int(ph * scale), int(pw * scale)
    top, left = rng.integers(0, ph - ch + 1), rng.integers(0, pw - cw + 1)
    im = Image.fromarray(photo[top:top + ch, left:left + cw]).resize(size, Image.Resampling.BICUBIC)
    arr = np.asarray(im, dtype=np.float32) * rng.uniform(0.8, 1.2, 3) + rng.normal(0, 4, (size[1], size[0], 3))
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=int(rng.integers(80, 95)))


def photo_sets(work: Path, n_train: int, n_eval: int) -> tuple[Path, list[Path], list[Path]]:
    from ingest import SOURCES

    train = work / "photos"
    marker = train / f".complete-{n_train}"
    if not marker.exists():
        for i in range(n_train):
            photo_file(train / SOURCES[i % len(SOURCES)] / f"{i:05d}.jpg", skimage_photo(SOURCES[i % len(SOURCES)]), i)
        marker.touch()
    held, other = [], []
    for i in range(n_eval):  # seeds the training folder never used
        held.append(work / "held" / f"{i:05d}.jpg")
        if not held[-1].exists():
            photo_file(held[-1], skimage_photo(SOURCES[i % len(SOURCES)]), 1_000_000 + i)
        other.append(work / "other" / f"{i:05d}.jpg")
        if not other[-1].exists():
            photo_file(other[-1], skimage_photo(OTHER_PHOTOS[i % len(OTHER_PHOTOS)]), 2_000_000 + i)
    return train, held, other


# ---- scoring -------------------------------------------------------------------------------------------------------


def all_scores(run: Path, images: torch.Tensor) -> dict[str, np.ndarray]:
    model, meta = load_bundle(run)
    bank = read_ood_bank(find_bundle(run), meta)
    t = bundle_temperature(meta) or 1.0
    logits, feats = ood.logits_and_features(model, images, meta["mean"], meta["std"])
    out = ood.all_scores(logits, feats, None, t)
    for k in K_VALUES:
        out[f"knn k={k}"] = ood.knn_score(feats, bank, k)
    return out


def flagged(run: Path, images: torch.Tensor) -> float:
    """Share answered "unknown" by the bundle's own rule, through the predictor predict and serve use."""
    predictor = picstory.load(run)
    verdicts = [v for i in range(0, len(images), 256) for _, v in predictor.predict_scored(images[i:i + 256])]
    return float(np.mean([v["unknown"] for v in verdicts]))


def table(run: Path, inside: torch.Tensor, outside: dict[str, torch.Tensor]) -> list[str]:
    s_in = all_scores(run, inside)
    default = f"knn k={ood.KNN_K}" if ood.DEFAULT_SCORE == "knn" else ood.DEFAULT_SCORE
    lines = [f"in-distribution: {len(inside)} images, flagged unknown by the bundle's rule {flagged(run, inside):.1%}",
             "| out-of-distribution set | n | score | AUROC | FPR@95%TPR | flagged by the bundle |",
             "|---|---:|---|---:|---:|---:|"]
    for name, x in outside.items():
        s_out = all_scores(run, x)
        share = flagged(run, x)
        for method in s_in:
            r = ood.auroc_fpr95(s_in[method], s_out[method])
            mark = " (default)" if method == default else ""
            lines.append(f"| {name} | {len(x)} | {method}{mark} | {r['auroc']:.4f} | {r['fpr95']:.4f} | "
                         f"{f'{share:.1%}' if mark else ''} |")
    return lines


def fmnist(args, work: Path) -> list[str]:
    from picstory.pipeline.evaluation_run import test_images

    run = Path(args.fmnist_run) if args.fmnist_run else None
    if run is None:
        t = time.perf_counter()
        result = picstory.train("builtin:fashion-mnist", preset="fast", limit_per_class=args.limit_per_class,
                                out=str(work / "runs"), name="fmnist", progress=False)
        run = result.path
        print(f"trained {run}: test acc {result.summary['test_accuracy']:.4f} in {time.perf_counter() - t:.0f} s",
              flush=True)
    inside = test_images(run, limit=10_000)
    sets = {"(a) digits 28×28": digits_28(), "(b) photo patches": photo_patches(), "(c) uniform noise": noise(),
            "(d) test rotated 90°": torch.rot90(inside, 1, dims=(2, 3)).contiguous()}
    return [f"Fashion-MNIST run {run}"] + table(run, inside, sets)


def photos(args, work: Path) -> list[str]:
    from picstory.models.bundle import read_meta

    train, held, other = photo_sets(work, args.photo_n, args.photo_eval)
    run = Path(args.photo_run) if args.photo_run else None
    if run is None:
        t = time.perf_counter()
        result = picstory.train(str(train), model="efficientnet_lite0", preset="fast", img_size=args.photo_size,
                                val_fraction=args.photo_val, out=str(work / "runs"), name="photos", progress=False)
        run = result.path
        print(f"trained {run}: test acc {result.summary['test_accuracy']:.4f} in {time.perf_counter() - t:.0f} s",
              flush=True)
    meta = read_meta(find_bundle(run))
    inside = torch.stack([preprocess(p, meta) for p in held])
    outside = {"out-of-class photos": torch.stack([preprocess(p, meta) for p in other])}
    return [f"photo run {run} (efficientnet_lite0, {args.photo_n} generated photos of 5 scenes)"] + \
        table(run, inside, outside)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "picstory-bench-ood"))
    ap.add_argument("--fmnist-run", help="reuse this Fashion-MNIST run instead of training one")
    ap.add_argument("--limit-per-class", type=int, default=2000, help="training images per class (fast run)")
    ap.add_argument("--photo-run", help="reuse this photo run instead of training one")
    ap.add_argument("--photo-n", type=int, default=250, help="generated training photos (5 classes)")
    ap.add_argument("--photo-eval", type=int, default=200, help="held-out and out-of-class photos each")
    ap.add_argument("--photo-size", type=int, default=128, help="photo run's --img-size in px")
    ap.add_argument("--skip-photo", action="store_true")
    ap.add_argument("--skip-fmnist", action="store_true")
    ap.add_argument("--photo-val", type=float, default=0.2, help="photo run's --val-fraction (≥ 50 images calibrate)")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu "
          f"{torch.backends.cpu.get_cpu_capability()}", flush=True)
    if not args.skip_fmnist:
        print("\n".join(fmnist(args, work)), flush=True)
    if not args.skip_photo:
        print("\n".join(["", *photos(args, work)]), flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
