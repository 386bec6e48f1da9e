"""Near duplicates: precision / recall of the pairs `picstory data check` groups, and look-alikes it must not group.

    python bench/near_dups.py            # the three sets below, descriptor table + the audit's own result

Sets (each written as an image folder, seeded):
* fashion: 2,000 Fashion-MNIST training images (PNG) plus a copy of 200 of them, each re-encoded (JPEG q 70),
  cropped (2 px border, resized back), brightened (+25 levels) or cropped and brightened;
* photos: the scikit-image sample photos cut into non-overlapping 96×96 tiles, plus copies of 20 % of the tiles
  (JPEG q 70, a 6 % crop, +25 levels, or crop + brightness);
* textures: 300 images of different parts on one texture (grid lines every 16 px, a fixed surface pattern, sensor
  noise): no two are copies, so the right number of groups is 0.
Positives are the (original, copy) pairs; every other pair is a negative. The descriptor table scores each
candidate pair (dHash distance ≤ 8, whole or at a centre cut) by one descriptor and reports the best precision
reachable at recall ≥ 0.9;
the last lines run the real path (``picstory.data.audit.audit``) and score its groups.
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

BOX = Image.Resampling.BOX


def variant(img: Image.Image, kind: int, crop_frac: float) -> Image.Image:
    """A copy of one of four kinds: 0 JPEG re-encode, 1 crop, 2 brighter, 3 crop + brighter."""
    w, h = img.size
    if kind in (1, 3):
        dx, dy = max(1, int(round(w * crop_frac / 2))), max(1, int(round(h * crop_frac / 2)))
        img = img.crop((dx, dy, w - dx, h - dy)).resize((w, h), Image.Resampling.BICUBIC)
    if kind in (2, 3):
        img = Image.fromarray(np.clip(np.asarray(img).astype(np.int16) + 25, 0, 255).astype(np.uint8))
    if kind == 0:
        buf = io.BytesIO()
        img.convert("RGB" if img.mode != "L" else "L").save(buf, "JPEG", quality=70)
        img = Image.open(io.BytesIO(buf.getvalue()))
        img.load()
    return img


def with_copies(folder: Path, images: list[Image.Image], share: float, crop_frac: float, seed: int) -> set:
    """originals + seeded copies → the positive pairs (file names)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    names = []
    for k, im in enumerate(images):
        names.append(f"{k:05d}.png")
        im.save(folder / names[-1])
    pos = set()
    for k in rng.choice(len(images), int(round(share * len(images))), replace=False):
        name = f"{k:05d}-copy.png"
        variant(images[k], int(rng.integers(4)), crop_frac).save(folder / name)
        pos.add(frozenset((names[k], name)))
    return pos


def fashion_images(n: int, seed: int) -> list[Image.Image]:
    from picstory.data.sources import resolve

    src = resolve("builtin:fashion-mnist")
    train = [i for i, r in enumerate(src.records) if r.split == "train"]
    pick = np.random.default_rng(seed).choice(train, n, replace=False)
    return [Image.fromarray(src.arrays[i][..., 0] if src.arrays.ndim == 4 else src.arrays[i]) for i in pick]


def photo_tiles(tile: int = 96) -> list[Image.Image]:
    from skimage import data

    names = ["astronaut", "camera", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry",
             "moon", "page", "retina", "rocket", "coins", "horse", "brick", "grass", "gravel", "text"]
    out = []
    for name in names:
        try:
            arr = np.asarray(getattr(data, name)())
        except Exception:  # a sample that needs a download (pooch) is left out
            continue
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        h, w = arr.shape[:2]
        for y in range(0, h - tile + 1, tile):
            for x in range(0, w - tile + 1, tile):
                out.append(Image.fromarray(arr[y:y + tile, x:x + tile].astype(np.uint8)))
    return out


def textures(n: int, seed: int, size: int = 128) -> list[Image.Image]:
    """Different parts on one surface: the surface pattern and grid are shared, the part's shape and place not."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    surface = 150 + 12 * np.sin(xx / 3.1) * np.cos(yy / 2.3) + np.random.default_rng(99).normal(0, 6, (size, size))
    surface[(yy % 16) < 2] = 90
    surface[(xx % 16) < 2] = 90
    out = []
    for _ in range(n):
        img = surface + rng.normal(0, 3, (size, size))
        cy, cx = rng.uniform(20, size - 20, 2)
        ry, rx = rng.uniform(8, 24, 2)
        if rng.random() < 0.5:
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            mask = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        img[mask] = rng.uniform(40, 80)
        out.append(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)))
    return out


# ---- descriptors, scored on candidate pairs ----------------------------------------------------------------------

def features(path: Path) -> dict:
    from scipy.fft import dctn

    from picstory.data.audit import dhash

    gray = Image.open(path).convert("L")
    d = np.asarray(gray.resize((17, 16), BOX), np.int16)
    p = dctn(np.asarray(gray.resize((32, 32), BOX), np.float64), norm="ortho")[:8, :8].ravel()[1:]
    return {"dhash": dhash(gray), "dhash256": (d[:, 1:] > d[:, :-1]).ravel(), "phash": p > np.median(p),
            "t16": np.asarray(gray.resize((16, 16), BOX), np.float32),
            "t32": np.asarray(gray.resize((32, 32), BOX), np.float32)}


def _z(t: np.ndarray) -> np.ndarray:
    t = t - t.mean()
    return t / max(float(np.sqrt((t * t).mean())), 3.0)


def descriptor_scores(a: dict, b: dict, corr: float, worst: float) -> dict:
    """Higher = more alike, for every descriptor (corr, worst: the audit's aligned scores of the pair)."""
    from skimage.metrics import structural_similarity

    from picstory.data.audit import NEAR_CORRELATION, PHASH_RADIUS

    za, zb = _z(a["t32"]), _z(b["t32"])
    return {"dHash 64 (8×8)": -bin(a["dhash"] ^ b["dhash"]).count("1"),
            "dHash 256 (16×16)": -int((a["dhash256"] != b["dhash256"]).sum()),
            "pHash 63 (DCT 32×32)": -int((a["phash"] != b["phash"]).sum()),
            "correlation 16×16 (before)": float((_z(a["t16"]) * _z(b["t16"])).mean()),
            "correlation 32×32": float((za * zb).mean()),
            "SSIM 32×32": float(structural_similarity(a["t32"], b["t32"], data_range=255)),
            "correlation 32×32, best centre cut": float(corr),
            "worst 8×8 block, best centre cut": -float(worst),
            f"{BACKBONE} penultimate cosine ({BACKBONE_PX} px, ImageNet)": float(a["deep"] @ b["deep"]),
            "picstory rule, then backbone cosine": float(a["deep"] @ b["deep"])
            if corr >= NEAR_CORRELATION and (a["phash"] != b["phash"]).sum() <= PHASH_RADIUS else -1e9,
            "picstory: pHash ≤ 12 and corr ≥ 0.9, then worst block": -float(worst)
            if corr >= NEAR_CORRELATION and (a["phash"] != b["phash"]).sum() <= PHASH_RADIUS else -1e9}


def best_precision(scores: list[float], labels: list[bool], n_pos: int) -> tuple[float, float]:
    """Highest precision at recall ≥ 0.9 (missed candidates count against recall), and its threshold."""
    order = np.argsort(-np.array(scores), kind="stable")
    s, y = np.array(scores)[order], np.array(labels)[order]
    tp, best = np.cumsum(y), (float("nan"), float("nan"))
    for k in range(len(s)):
        if k + 1 < len(s) and s[k + 1] == s[k] or s[k] <= -1e9:
            continue  # a threshold takes every pair with the same score; -1e9 marks a pair the rule rejects
        if tp[k] / n_pos >= 0.9 and not tp[k] / (k + 1) <= best[0]:
            best = (tp[k] / (k + 1), float(s[k]))
    return best


BACKBONE, BACKBONE_PX = "efficientnet_lite0", 160


def backbone_features(paths: list[Path]) -> np.ndarray:
    """Unit-length penultimate features of the pretrained ImageNet backbone (offline weights), (N, D)."""
    import torch

    from picstory.deploy.predict import pretrained_model
    from picstory.evaluation.neighbours import embed

    model, meta = pretrained_model(BACKBONE)
    x = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB").resize((BACKBONE_PX, BACKBONE_PX), BOX))
                                   for p in paths])).permute(0, 3, 1, 2).contiguous()
    return embed(model, x, meta["mean"], meta["std"], batch_size=64)


def descriptor_table(folder: Path, pos: set) -> dict[str, tuple[float, float]]:
    from picstory.data.audit import HASH_RADIUS, _distances, aligned_scores, inspect_file, normalised

    paths = sorted(p for p in folder.rglob("*.png"))
    feats = [features(p) for p in paths]
    deep = backbone_features(paths)
    for f, d in zip(feats, deep):
        f["deep"] = d
    seen = [inspect_file(str(p)) for p in paths]
    hashes = np.array([(s.dhash, *s.crop_hashes) for s in seen], np.uint64)
    r, c = np.nonzero(_distances(hashes, slice(0, len(paths))) <= HASH_RADIUS)  # the audit's candidate rule
    keep = c > r
    r, c = r[keep], c[keep]
    z = normalised([s.thumb for s in seen])
    corr, worst = aligned_scores(z[r], z[c])
    table: dict[str, list] = {}
    labels = []
    for i, j, cc, ww in zip(r, c, corr, worst):
        labels.append(frozenset((paths[i].name, paths[j].name)) in pos)
        for k, v in descriptor_scores(feats[i], feats[j], cc, ww).items():
            table.setdefault(k, []).append(v)
    n_pos = max(len(pos), 1)
    return {k: best_precision(v, labels, n_pos) for k, v in table.items()} | {
        "_candidates": (len(labels), sum(labels) / n_pos)}


def audit_pairs(folder: Path) -> tuple[set, int, float]:
    from picstory.data.audit import audit

    t0 = time.perf_counter()
    found, _ = audit(str(folder), progress=False)
    seconds = time.perf_counter() - t0
    names = [Path(r.ref).name for r in found.source.records]
    pairs = {frozenset((names[a], names[b])) for g in found.near + found.duplicates for a, b in combinations(g, 2)}
    return pairs, len(found.near), seconds


def main() -> None:
    seed = 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sets = {"fashion": with_copies(root / "fashion" / "x", fashion_images(2000, seed), 0.1, 2 / 28, seed),
                "photos": with_copies(root / "photos" / "x", photo_tiles(), 0.2, 0.06, seed)}
        tex = root / "textures" / "x"
        tex.mkdir(parents=True)
        for k, im in enumerate(textures(300, seed)):
            im.save(tex / f"{k:05d}.png")
        for name, pos in sets.items():
            folder = root / name  # one class folder, x/
            n = len(list((folder / "x").iterdir()))
            table = descriptor_table(folder, pos)
            cand, cand_recall = table.pop("_candidates")
            print(f"\n{name}: {n} images, {len(pos)} positive pairs; {cand} candidate pairs (dHash ≤ 8) hold "
                  f"{cand_recall:.1%} of the positives")
            print("| descriptor | best precision at recall ≥ 0.9 | threshold |\n|---|---:|---:|")
            for k, (p, t) in table.items():
                print(f"| {k} | {p:.3f} | {t:.3g} |" if p == p else f"| {k} | recall 0.9 not reached | |")
            pairs, groups, seconds = audit_pairs(folder)
            tp = len(pairs & pos)
            print(f"data check (real path): {groups} near groups, {len(pairs)} pairs, precision "
                  f"{tp / max(len(pairs), 1):.3f}, recall {tp / len(pos):.3f}  ({seconds:.1f} s)")
        _, groups, seconds = audit_pairs(tex.parent)
        print(f"\ntextures: 300 different parts on one surface → data check finds {groups} near-duplicate groups "
              f"(target 0, {seconds:.1f} s)")


if __name__ == "__main__":
    main()
