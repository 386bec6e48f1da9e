"""Ingest speed: a folder of JPEGs → augmented 224 px training batches, torchvision's way vs picstory's.

    .venv/bin/python bench/ingest.py                          # 2,000 web-sized + 300 camera-sized JPEGs
    .venv/bin/python bench/ingest.py --n-web 300 --n-camera 40  # a quick run

torchvision: ``ImageFolder`` + RandomResizedCrop(224) + RandomHorizontalFlip + ToTensor, ``DataLoader(batch_size=64,
num_workers=2, shuffle=True)``: every epoch decodes every file again. picstory: ``load_images`` decodes each file once
(JPEG draft at the target size, in threads) into a uint8 memmap cache; the epoch is ``BatchIterator`` over that array
with batched random-resized-crop (scale 0.35..1) and flip. Epoch 1 starts from an empty cache, so it includes the fill;
epoch 2 calls ``load_images`` again (a cache hit) and iterates again. A second figure isolates the decode-once part:
``resolve`` + ``load_images`` alone against torchvision's whole epoch. Both sides run in this one process tree, their
epochs interleaved; compare the ratios, since absolute figures move with the load of a shared machine.

The images are generated once under ``--work`` from scikit-image's sample photos (random crops, scales, colour
shifts and sensor-like noise; one class per source photo) and reused by later runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from picstory.config import AugmentConfig  # noqa: E402
from picstory.data.cache import load_images  # noqa: E402
from picstory.data.sources import resolve  # noqa: E402
from picstory.device import cores as available_cores  # noqa: E402

SOURCES = ("astronaut", "coffee", "chelsea", "rocket", "retina")  # skimage.data photos, one class each
SETS = {"web": (500, 375), "camera": (3000, 2000)}  # landscape size in px; a quarter are portrait
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIZE, BATCH, LOADER_WORKERS = 224, 64, 2


# ---- data --------------------------------------------------------------------------------------------------------


def _make_one(job: tuple[str, int, int, int, int]) -> None:
    path, width, height, source_index, seed = job
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    photo = getattr(skimage.data, SOURCES[source_index])()
    ph, pw = photo.shape[:2]
    scale = rng.uniform(0.5, 1.0)  # crop a random 50–100 % window of the photo
    ch, cw = int(ph * scale), int(pw * scale)
    top, left = rng.integers(0, ph - ch + 1), rng.integers(0, pw - cw + 1)
    if rng.random() < 0.25:
        width, height = height, width
    im = Image.fromarray(photo[top:top + ch, left:left + cw]).resize((width, height), Image.Resampling.BICUBIC)
    arr = np.asarray(im, dtype=np.float32) * rng.uniform(0.8, 1.2, 3)  # colour cast
    arr += rng.normal(0, 4, arr.shape).astype(np.float32)  # sensor noise: realistic JPEG sizes for upscaled crops
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=int(rng.integers(80, 95)))


def make_set(root: Path, n: int, size: tuple[int, int], workers: int) -> Path:
    """root/CLASS/NNNNN.jpg, generated once (a marker file records the count)."""
    marker = root / f".complete-{n}"
    if marker.exists():
        return root
    jobs = []
    for i in range(n):
        cls = i % len(SOURCES)
        path = root / SOURCES[cls] / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        jobs.append((str(path), size[0], size[1], cls, i))
    t = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_make_one, jobs, chunksize=8))
    marker.touch()
    print(f"  generated {n} images of {size[0]}×{size[1]} in {root} ({time.perf_counter() - t:.0f} s)")
    return root


# ---- the two pipelines -------------------------------------------------------------------------------------------


def torchvision_loader(root: Path):
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.RandomResizedCrop(SIZE), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor()])
    return DataLoader(datasets.ImageFolder(str(root), tf), batch_size=BATCH, num_workers=LOADER_WORKERS,
                      shuffle=True)


def picstory_epoch(root: Path, epoch: int, cache_dir: Path) -> tuple[float, float]:
    """(seconds for the whole epoch, seconds of it spent getting the uint8 array: resolve + load_images)."""
    from picstory.data.batches import BatchIterator

    t0 = time.perf_counter()
    source = resolve(str(root))
    classes = source.classes
    labels = torch.tensor([classes.index(r.label) for r in source.records])
    cached = load_images(source, range(len(source.records)), SIZE, 3, "crop", workers=0, progress=False,
                         cache_dir=cache_dir)
    t_ingest = time.perf_counter() - t0
    # as training does (training/setup.py): one sequential read of the memmap into memory, kept in the cache's
    # N×H×W×C layout, from which BatchIterator gathers whole rows (random gathers from the memmap page-fault)
    images = torch.from_numpy(np.ascontiguousarray(cached.images)).permute(0, 3, 1, 2)
    it = BatchIterator(images, labels, BATCH, MEAN, STD, augment=AugmentConfig(rrc_scale=0.35), shuffle=True,
                       seed=0)
    it.set_epoch(epoch)
    for _ in it:
        pass
    return time.perf_counter() - t0, t_ingest


# ---- where the time goes -----------------------------------------------------------------------------------------


def profile(root: Path, work: Path, batches: int = 8) -> None:
    """Seconds per 64-image batch of each piece of picstory's epoch (cache hit) and per file of each side's decode,
    one process, timed back to back: which piece bounds the whole-epoch ratio."""
    from PIL import Image
    from torchvision import transforms

    from picstory.data.batches import Augmenter, make_generator, normalize

    source = resolve(str(root))
    with tempfile.TemporaryDirectory(dir=work) as cache_dir:
        files = [r.ref for r in source.records[:64]]
        t = time.perf_counter()
        load_images(source, range(64), SIZE, 3, "crop", workers=1, progress=False, cache_dir=Path(cache_dir))
        fill = (time.perf_counter() - t) / 64
        n = min(len(source.records), 256)
        cached = load_images(source, range(n), SIZE, 3, "crop", progress=False, cache_dir=Path(cache_dir))
        t = time.perf_counter()
        cached = load_images(source, range(n), SIZE, 3, "crop", progress=False, cache_dir=Path(cache_dir))
        hit = time.perf_counter() - t
        memmap_rows = torch.from_numpy(np.asarray(cached.images))
        rows = torch.from_numpy(np.ascontiguousarray(cached.images))  # what training gathers from
    tf = transforms.Compose([transforms.RandomResizedCrop(SIZE), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor()])
    t = time.perf_counter()
    for f in files:
        with Image.open(f) as im:
            tf(im.convert("RGB"))
    tv = (time.perf_counter() - t) / len(files)
    aug = Augmenter(AugmentConfig(rrc_scale=0.35), 0)
    g = make_generator(0)
    pieces = {"index_select from the memmap itself": 0.0, "index_select (gather 64 rows)": 0.0,
              "random-resized-crop + flip (grid_sample)": 0.0,
              "normalise to float channels_last": 0.0}
    for _ in range(batches):
        idx = torch.randint(len(rows), (BATCH,), generator=g)
        tm = time.perf_counter()
        memmap_rows.index_select(0, idx)
        t0 = time.perf_counter()
        x = rows.index_select(0, idx).permute(0, 3, 1, 2)
        t1 = time.perf_counter()
        x, _ = aug(x, torch.zeros(BATCH, dtype=torch.long), g)
        t2 = time.perf_counter()
        normalize(x, MEAN, STD)
        t3 = time.perf_counter()
        for key, dt in zip(pieces, (t0 - tm, t1 - t0, t2 - t1, t3 - t2)):
            pieces[key] += dt / batches
    per_image = {k: v / BATCH for k, v in pieces.items()}
    print(f"  profile of {root.name} ({len(source.records)} files), ms per image, one process:")
    print(f"    torchvision per file (decode + RRC + flip + ToTensor)  {1e3 * tv:7.2f}")
    print(f"    picstory fill per file (decode at draft size, resize)  {1e3 * fill:7.2f}  (1 thread)")
    print(f"    picstory cache hit ({n} files)                          {1e3 * hit / n:7.3f}")
    for k, v in per_image.items():
        print(f"    batch side: {k:42s} {1e3 * v:7.2f}")
    total = sum(v for k, v in per_image.items() if "memmap" not in k)
    print(f"    batch side total (from memory)                         {1e3 * total:7.2f}")


# ---- report ------------------------------------------------------------------------------------------------------


def run_set(name: str, n: int, root: Path, work: Path) -> dict:
    """Epochs interleaved (torchvision 1, picstory 1, torchvision 2, picstory 2) so load bursts hit both sides."""
    tv, ps, ingest = [], [], []
    with tempfile.TemporaryDirectory(dir=work) as cache_dir:
        t0 = time.perf_counter()
        loader = torchvision_loader(root)  # the folder scan counts towards torchvision's epoch 1
        for epoch in range(2):
            for _ in loader:
                pass
            tv.append(time.perf_counter() - t0)
            total, t_ingest = picstory_epoch(root, epoch, Path(cache_dir))
            ps.append(total)
            ingest.append(t_ingest)
            t0 = time.perf_counter()
    row = {"set": name, "n": n, "tv": [n / t for t in tv], "ps": [n / t for t in ps], "ingest": [n / t for t in ingest]}
    row["ratio"] = [p / t for p, t in zip(row["ps"], row["tv"])]
    row["ingest_ratio"] = [p / t for p, t in zip(row["ingest"], row["tv"])]
    print(f"  {name:7s} {n:6d}  torchvision {row['tv'][0]:7.0f} {row['tv'][1]:7.0f}   picstory "
          f"{row['ps'][0]:7.0f} {row['ps'][1]:7.0f}   ratio {row['ratio'][0]:5.1f}× {row['ratio'][1]:6.1f}×   "
          f"(load_images alone {row['ingest'][0]:.0f} {row['ingest'][1]:.0f} img/s: "
          f"{row['ingest_ratio'][0]:.1f}× {row['ingest_ratio'][1]:.0f}×)")
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-web", type=int, default=2000, help="web-sized (500×375) images; 0 skips the set")
    ap.add_argument("--n-camera", type=int, default=300, help="camera-sized (3000×2000) images; 0 skips the set")
    ap.add_argument("--work", type=Path, default=Path("/tmp/picstory-bench-ingest"), help="scratch folder")
    ap.add_argument("--cores", type=int, default=0,
                    help="pin the timed part to this many cores (0 = all; generation always uses all)")
    ap.add_argument("--profile", action="store_true", help="time each piece of both sides instead of the epochs")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    sets = [(name, n) for name, n in (("web", args.n_web), ("camera", args.n_camera)) if n]
    roots = {name: make_set(args.work / f"{name}-{n}", n, SETS[name], available_cores()) for name, n in sets}
    if args.profile:
        torch.set_num_threads(available_cores())
        for name, _ in sets:
            profile(roots[name], args.work)
        return 0
    if args.cores:  # DataLoader workers and decode threads inherit the affinity: both sides get the same cores
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cores])
    cores = available_cores()
    torch.set_num_threads(cores)
    print(f"ingest bench: {cores} cores, torch {torch.__version__}, {SIZE} px, batch {BATCH}, "
          f"DataLoader workers {LOADER_WORKERS}, picstory decode threads {cores}")
    print("  images/s      N              epoch 1 epoch 2            epoch 1 epoch 2         epoch 1 epoch 2")
    rows = [run_set(name, n, roots[name], args.work) for name, n in sets]
    targets = {"web": (1.0, 10.0), "camera": (3.0, 10.0)}
    for row in rows:
        want = targets[row["set"]]
        verdict = ["ok" if r >= w else "BELOW" for r, w in zip(row["ratio"], want)]
        print(f"  {row['set']}: epoch 1 {row['ratio'][0]:.1f}× (target ≥ {want[0]:g}×: {verdict[0]}), "
              f"epoch 2 {row['ratio'][1]:.1f}× (target ≥ {want[1]:g}×: {verdict[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
