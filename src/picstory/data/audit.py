"""``picstory data check``: what a data set holds and what is wrong with it, before any training.

Every file is read once: its bytes give the exact-duplicate hash (blake2b), its header the size, mode and EXIF
orientation, and a reduced decode (JPEG DCT draft) a 64-bit difference hash for near duplicates. Nothing is ever
written inside the data set. ``picstory data check`` (pipeline/data_check_run.py) writes the report as
``out/report.json`` and the page (pages/data_check.py) as ``out/report.html``.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections import Counter, defaultdict
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import DataConfig, plural
from ..device import cores
from ..errors import DataError
from ..options import DATA_CHECK
from ..runs import refuse_inside
from .decode import DecodeError, decode_image, probe
from .sources import Source, resolve
from .split import balance, describe_balance, split_source

HASH_DRAFT = (64, 64)  # JPEG DCT scaling for hashing: 2.5x faster on 500×375 photos, more on larger ones
# Near duplicates in two steps (bench/near_dups.py measured the choices; bench/README.md has the figures):
# 1. candidates: 64-bit dHashes at most HASH_RADIUS bits apart (resized, re-encoded, brightened or slightly cropped
#    copies measure 0–6; it is only a cheap filter, so it errs on the side of letting pairs through);
# 2. verification on 32×32 gray thumbnails, each normalised to zero mean and unit variance (brightness and
#    contrast shifts cancel): the thumbnails must correlate (≥ NEAR_CORRELATION) AND no 8×8 block may differ by more
#    than NEAR_BLOCK_DIFF on average. The block test is what separates two different parts on one texture (grid
#    lines, a uniform surface): the texture makes the global correlation high, the part changes one block a lot.
HASH_RADIUS = 8
THUMB_PX = 32
# a cropped copy is a rescaled one: each image also keeps hashes and thumbnails of its centre cut by these shares per
# side, and a pair is compared at the best-matching cut of either image (a 6 % crop cost 0.2 of correlation at 32 px)
CROP_LEVELS = (0.0, 0.025, 0.05, 0.075, 0.1)
NEAR_CORRELATION = 0.9
NEAR_BLOCK_DIFF = 0.4  # mean |a − b| of normalised pixels in the worst 8×8 block; most copies measure < 0.3
BLOCK_PX = 8
# and the perceptual hash (signs of the 8×8 lowest DCT frequencies of a 32×32 gray) at most PHASH_RADIUS of 63
# bits apart: alone it was the best single descriptor on the photo set (precision 0.89 at recall 0.9)
PHASH_RADIUS = 12
FEW_IMAGES = 10  # a class below this is too small to learn or to evaluate
IMBALANCE_WARN = 3.0
SPLIT_ORDER = ("train", "val", "test")
BOX = Image.Resampling.BOX


@dataclass(frozen=True)
class Seen:
    """What one readable image looks like; a failure is a plain reason string instead."""

    digest: bytes
    dhash: int | None  # None for in-memory sets, where near duplicates are not looked for
    thumb: bytes | None  # THUMB_PX² gray per CROP_LEVELS entry, to confirm a dHash match
    width: int
    height: int
    mode: str
    channels: int
    frames: int = 1
    exif_rotated: bool = False
    crop_hashes: tuple[int, ...] = ()  # dHash of each centre cut of CROP_LEVELS after the first
    phash: int | None = None  # 63-bit DCT hash; None (older records, tests) skips that check


@dataclass
class Audit:
    """The findings as record indices, for the JSON report (paths) and the HTML report (thumbnails)."""

    source: Source
    seen: list[Seen | str]
    duplicates: list[list[int]]
    near: list[list[int]]
    leaks: list[tuple[str, list[int]]]  # (duplicate | near duplicate, members)
    extra_reasons: list[str]


def audit(spec: str, out: str | Path | None = None, path_col: str = "", label_col: str = "",
          max_bad_fraction: float = DATA_CHECK.max_bad_fraction, workers: int = 0,
          progress: bool = True, allow_outside: bool = False, *, label_map: str = DATA_CHECK.label_map,
          group_col: str = DATA_CHECK.group_col, weight_col: str = DATA_CHECK.weight_col,
          stratify_col: str = DATA_CHECK.stratify_col, label_cols: str = DATA_CHECK.label_cols,
          multi_label: bool = DATA_CHECK.multi_label) -> tuple[Audit, dict]:
    """Look at every image of ``spec``: the findings (for the page) and the report (report.json). ``out``, where
    the report will go, is refused when it lies inside the data. With a group or strata column the report also
    holds the split training would make (default fractions, seed 0) and how far it moved the class balance."""
    extra: list[str] = []
    try:
        source = resolve(spec, path_col, label_col, allow_outside, label_map=label_map, group_col=group_col,
                         weight_col=weight_col, label_cols=label_cols, multi_label=multi_label)
    except DataError as e:
        # a wrong path or label-file option is a mistake, not a finding
        if not Path(spec).expanduser().is_dir() or group_col or weight_col or label_map or label_cols or multi_label:
            raise
        source, extra = Source(spec=str(spec), kind="folder", records=[], root=Path(spec).resolve()), [str(e)]
    if out is not None:
        refuse_inside(out, source.root)
    if source.in_memory:
        seen = inspect_arrays(source)
    else:
        seen = inspect_files([r.ref for r in source.records], workers, progress)
    found = find_groups(source, seen, extra)
    report = build_report(found, max_bad_fraction)
    report["notes"] = list(source.notes)
    if source.label_map:
        report["label_map"] = dict(source.label_map)
    if (group_col or stratify_col) and source.records:
        _split_plan(report, source, stratify_col)
    return found, report


def _split_plan(report: dict, source: Source, stratify_col: str) -> None:
    """The group-aware / stratified split training would make, and how far it moved each class's share."""
    d = DataConfig()
    notes: list[str] = []
    try:
        splits = split_source(source, d.val_fraction, d.test_fraction, 0, stratify_col, notes)
    except DataError as e:
        report["unusable_reasons"].append(str(e))
        report["usable"] = False
        return
    plan = balance(source, splits)
    report["split_plan"] = plan
    report["notes"] += notes + [describe_balance(plan)]


# ---- looking at every image ------------------------------------------------------------------------------------

def inspect_file(path: str) -> Seen | str:
    """Hashes, header facts and the near-duplicate hash of one file, or the reason it is unusable."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        info = probe(data)
        img = decode_image(data, draft=HASH_DRAFT)
    except DecodeError as e:
        return e.reason
    except OSError as e:
        return f"cannot read: {e.strerror or e}"
    except Exception as e:  # one odd file must not end a 50,000-file audit; its row names what broke
        return f"cannot decode: {type(e).__name__}: {e}"
    gray = Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).convert("L")
    cuts = [_cut(gray, f) for f in CROP_LEVELS]
    return Seen(hashlib.blake2b(data, digest_size=16).digest(), dhash(gray), b"".join(thumbnail(c) for c in cuts),
                info.width, info.height, info.mode, img.shape[2], info.frames, info.exif_rotated,
                tuple(dhash(c) for c in cuts[1:]), phash(gray))


def _cut(gray: Image.Image, share: float) -> Image.Image:
    if share <= 0:
        return gray
    w, h = gray.size
    dx, dy = w * share, h * share
    return gray.resize((max(9, round(w - 2 * dx)), max(9, round(h - 2 * dy))), BOX, box=(dx, dy, w - dx, h - dy))


def thumbnail(gray: Image.Image) -> bytes:
    return gray.resize((THUMB_PX, THUMB_PX), BOX).tobytes()


def phash(gray: Image.Image) -> int:
    from scipy.fft import dctn

    low = dctn(np.asarray(gray.resize((32, 32), BOX), np.float64), norm="ortho")[:8, :8].ravel()[1:]
    return int.from_bytes(np.packbits(np.r_[low > np.median(low), False]).tobytes(), "big")


def dhash(gray: Image.Image) -> int:
    """64-bit difference hash: is each of 8×8 gray cells brighter than its right neighbour (9×8 thumbnail)."""
    small = np.asarray(gray.resize((9, 8), BOX), dtype=np.int16)
    return int.from_bytes(np.packbits((small[:, 1:] > small[:, :-1]).ravel()).tobytes(), "big")


def _executor(workers: int, n: int) -> Executor:
    """Processes: on 2 cores, 10,000 JPEGs of 500×375 took 5.4 s in 2 processes, 6.3 s in 2 threads, 9–11 s in one
    (PIL frees the GIL in the codec, but opening, probing and hashing around it hold it)."""
    workers = max(1, min(workers or cores(), 32, n // 64 + 1))  # tiny sets: a pool start costs more than it saves
    return ThreadPoolExecutor(1) if workers == 1 else ProcessPoolExecutor(workers)


def inspect_files(paths: list[str], workers: int = 0, progress: bool = True) -> list[Seen | str]:
    from rich.console import Console
    from rich.progress import track

    console = Console(stderr=True)
    with _executor(workers, len(paths)) as ex:
        results = ex.map(inspect_file, paths, chunksize=32)
        return list(track(results, total=len(paths), description="checking images", console=console,
                          transient=True, disable=not (progress and console.is_terminal)))


def inspect_arrays(source: Source) -> list[Seen]:
    arrays = source.arrays
    h, w = arrays.shape[1:3]
    channels = arrays.shape[3] if arrays.ndim == 4 else 1
    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels, f"{channels}-channel")
    return [Seen(hashlib.blake2b(arrays[int(r.ref)].tobytes(), digest_size=16).digest(), None, None, w, h, mode,
                 channels) for r in source.records]


# ---- groups: duplicates, near duplicates, leaks -----------------------------------------------------------------

def find_groups(source: Source, seen: list[Seen | str], extra_reasons: list[str] | None = None) -> Audit:
    by_digest: dict[bytes, list[int]] = defaultdict(list)
    for i, s in enumerate(seen):
        if isinstance(s, Seen):
            by_digest[s.digest].append(i)
    duplicates = [g for g in by_digest.values() if len(g) > 1]
    near = near_groups([g[0] for g in by_digest.values()], seen, by_digest)
    leaks = []
    for kind, groups in (("duplicate", duplicates), ("near duplicate", near)):
        leaks += [(kind, g) for g in groups if len({source.records[i].split for i in g} - {None}) > 1]
    return Audit(source, seen, duplicates, near, leaks, extra_reasons or [])


def normalised(thumbs: list[bytes]) -> np.ndarray:
    """(N, levels, side, side) float32 thumbnails at zero mean, unit variance; a flat image stays near zero."""
    size = len(thumbs[0])
    side = THUMB_PX if size % (THUMB_PX * THUMB_PX) == 0 else int(round(size ** 0.5))
    z = np.stack([np.frombuffer(t, np.uint8) for t in thumbs]).astype(np.float32).reshape(len(thumbs), -1, side, side)
    z -= z.mean((2, 3), keepdims=True)
    z /= np.maximum(np.sqrt((z * z).mean((2, 3), keepdims=True)), 3.0)  # flat (σ < 3 levels) correlates with nothing
    return z


def pair_scores(za: np.ndarray, zb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(correlation, worst block's mean absolute difference) of normalised thumbnail pairs (N, side, side)."""
    corr = (za * zb).mean((1, 2))
    n, side = za.shape[0], za.shape[1]
    b = max(1, min(BLOCK_PX, side // 2))
    k = side // b
    diff = np.abs(za - zb)[:, :k * b, :k * b].reshape(n, k, b, k, b).mean((2, 4))
    return corr, diff.reshape(n, -1).max(1)


def aligned_scores(za: np.ndarray, zb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores at the best-correlating alignment: either image whole against a centre cut of the other (a crop)."""
    levels = za.shape[1]
    pairs = [(0, 0)] + [(k, 0) for k in range(1, levels)] + [(0, k) for k in range(1, levels)]
    scored = [pair_scores(za[:, i], zb[:, j]) for i, j in pairs]
    corr = np.stack([c for c, _ in scored])
    best = corr.argmax(0)
    pick = np.arange(za.shape[0])
    return corr[best, pick], np.stack([w for _, w in scored])[best, pick]


def verified(za: np.ndarray, zb: np.ndarray) -> np.ndarray:
    corr, worst = aligned_scores(za, zb)
    return (corr >= NEAR_CORRELATION) & (worst <= NEAR_BLOCK_DIFF)


def _distances(h: np.ndarray, rows: slice) -> np.ndarray:
    """Smallest dHash distance between rows' images and every image, whole or at a centre cut of either side."""
    d = np.bitwise_count(h[rows, 0, None] ^ h[None, :, 0])
    for k in range(1, h.shape[1]):
        np.minimum(d, np.bitwise_count(h[rows, k, None] ^ h[None, :, 0]), out=d)
        np.minimum(d, np.bitwise_count(h[rows, 0, None] ^ h[None, :, k]), out=d)
    return d


def near_groups(reps: list[int], seen: list, by_digest: dict[bytes, list[int]]) -> list[list[int]]:
    """Groups of distinct contents that are copies of one picture, each member verified against the group's
    representative (never chained through look-alikes: A ≈ B and B ≈ C does not put A with C)."""
    reps = [i for i in reps if seen[i].dhash is not None]
    if len(reps) < 2:
        return []
    levels = min(len(seen[i].crop_hashes) for i in reps) + 1
    hashes = np.array([(seen[i].dhash, *seen[i].crop_hashes[:levels - 1]) for i in reps], dtype=np.uint64)
    thumbs = [seen[i].thumb for i in reps]
    with_phash = all(seen[i].phash is not None for i in reps)
    ph = np.array([seen[i].phash for i in reps], dtype=np.uint64) if with_phash else None
    n, block = len(hashes), max(1, 2_000_000 // len(hashes))  # bounded memory: block × n distances at a time
    rows, cols = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for start in range(0, n, block):
        r, c = np.nonzero(_distances(hashes, slice(start, start + block)) <= HASH_RADIUS)
        r, c = r[c > r + start] + start, c[c > r + start]
        for k in range(0, len(r), 4096):
            rr, cc = r[k:k + 4096], c[k:k + 4096]
            # normalised per batch: all thumbnails as float32 at once would take 20 KB an image
            if ph is not None:
                near = np.bitwise_count(ph[rr] ^ ph[cc]) <= PHASH_RADIUS
                rr, cc = rr[near], cc[near]
            if not len(rr):
                continue
            za, zb = (normalised([thumbs[i] for i in ids])[:, :levels] for ids in (rr, cc))
            ok = verified(za, zb)
            rows.append(rr[ok])
            cols.append(cc[ok])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    groups = star_clusters(n, rows, cols)
    return sorted(sorted(i for k in ks for i in by_digest[seen[reps[k]].digest]) for ks in groups)


def star_clusters(n: int, rows: np.ndarray, cols: np.ndarray) -> list[list[int]]:
    """Each group is a representative and its own verified matches: the best-connected unassigned image leads,
    its unassigned matches join it, repeat. No member joins through another member."""
    neighbours: dict[int, list[int]] = defaultdict(list)
    for a, b in zip(rows.tolist(), cols.tolist()):
        neighbours[a].append(b)
        neighbours[b].append(a)
    taken = np.zeros(n, bool)
    groups = []
    for rep in sorted(neighbours, key=lambda v: (-len(neighbours[v]), v)):
        if taken[rep]:
            continue
        members = [rep] + [m for m in neighbours[rep] if not taken[m]]
        if len(members) > 1:
            taken[members] = True
            groups.append(members)
    return groups


# ---- the report --------------------------------------------------------------------------------------------------

def _shown(src: Source, path: str) -> str:
    """Problems name absolute paths; show them relative to the data, as records are shown."""
    return os.path.relpath(path, src.root) if src.root is not None and os.path.isabs(path) else path


def build_report(audit: Audit, max_bad_fraction: float = 0.05) -> dict:
    src, seen = audit.source, audit.seen
    good = [i for i, s in enumerate(seen) if isinstance(s, Seen)]
    name = [src.display_path(r) for r in src.records]
    bad = [{"path": _shown(src, p), "reason": why} for p, why in src.problems]
    bad += [{"path": name[i], "reason": s} for i, s in enumerate(seen) if isinstance(s, str)]
    classes = dict.fromkeys(src.classes, 0)
    classes.update(Counter(t for i in good for t in (src.records[i].tags if src.multilabel else
                                                     (src.records[i].label,))))
    counts = [n for n in classes.values() if n]
    report = {
        "data": src.spec, "kind": src.kind, "classes": classes, "total": len(good),
        "files": len(src.records) + len(src.problems), "ignored": src.ignored,
        "usable": True, "unusable_reasons": [], "bad_files": bad,
        "duplicates": [[name[i] for i in g] for g in audit.duplicates],
        "near_duplicates": [[name[i] for i in g] for g in audit.near],
        "leaks": [{"kind": k, "paths": [name[i] for i in g], "splits": [src.records[i].split for i in g]}
                  for k, g in audit.leaks],
        "conflicting_labels": [{"paths": [name[i] for i in g], "labels": [src.records[i].label for i in g]}
                               for g in audit.duplicates + audit.near
                               if len({src.records[i].label for i in g}) > 1],
        "imbalance_ratio": round(max(counts) / min(counts), 2) if counts else None,
        "sizes": _sizes([seen[i] for i in good]),
        "modes": dict(Counter(seen[i].mode for i in good).most_common()),
        "channels": {str(c): n for c, n in sorted(Counter(seen[i].channels for i in good).items())},
        "exif_rotated": sum(seen[i].exif_rotated for i in good),
        "animated": sum(seen[i].frames > 1 for i in good),
    }
    if src.multilabel:
        report["multilabel"] = multilabel_summary([src.records[i].tags for i in good])
    if any(r.split for r in src.records):
        splits = defaultdict(Counter)
        for i in good:
            for t in src.records[i].tags if src.multilabel else (src.records[i].label,):
                splits[src.records[i].split or "unassigned"][t] += 1
        order = [s for s in (*SPLIT_ORDER, "unassigned") if s in splits]
        report["split_counts"] = {s: {c: splits[s][c] for c in src.classes if splits[s][c]} for s in order}
    report["unusable_reasons"] = audit.extra_reasons + _unusable(report, max_bad_fraction)
    report["usable"] = not report["unusable_reasons"]
    report["warnings"] = _warnings(report, audit)
    return report


def multilabel_summary(tag_sets: list[tuple[str, ...]], pairs: int = 10) -> dict:
    """How many labels images carry, and which labels occur together most often."""
    per_image = Counter(len(t) for t in tag_sets)
    together = Counter(p for t in tag_sets for p in itertools.combinations(sorted(t), 2))
    return {"labels_per_image": {str(k): per_image[k] for k in sorted(per_image)},
            "mean_labels": round(sum(len(t) for t in tag_sets) / max(len(tag_sets), 1), 3),
            "no_label": per_image.get(0, 0),
            "co_occurrence": [{"labels": list(p), "images": n} for p, n in together.most_common(pairs)]}


def _sizes(seen: list[Seen]) -> dict:
    if not seen:
        return {}
    w = np.array([s.width for s in seen])
    h = np.array([s.height for s in seen])
    edges = np.histogram_bin_edges(np.concatenate([w, h]), bins=min(12, max(1, len(np.unique(np.r_[w, h])))))
    stats = {k: {"min": int(a.min()), "median": float(np.median(a)), "max": int(a.max())} for k, a in
             (("width", w), ("height", h))}
    return {**stats, "histogram": {"edges": [round(float(e), 1) for e in edges],
                                   "width": np.histogram(w, edges)[0].tolist(),
                                   "height": np.histogram(h, edges)[0].tolist()}}


def _unusable(report: dict, max_bad_fraction: float) -> list[str]:
    reasons = []
    present = [c for c, n in report["classes"].items() if n]
    if report["total"] == 0:
        reasons.append("no readable images")
    elif report.get("multilabel") and not present:
        reasons.append("no image carries any label; a multi-label classifier needs positives to learn from")
    elif len(present) < 2 and not report.get("multilabel"):  # one multi-label label is a yes/no detector
        reasons.append(f"only one class ('{present[0]}'); a classifier needs at least 2 classes")
    nbad, nfiles = len(report["bad_files"]), max(1, report["files"])
    if nbad and nbad / nfiles > max_bad_fraction:
        reasons.append(f"{nbad} of {nfiles} files ({nbad / nfiles:.0%}) are unreadable or unlabelled; at most "
                       f"{max_bad_fraction:.0%} may be (fix or remove them, or raise --max-bad-fraction)")
    return reasons


def _warnings(report: dict, audit: Audit) -> list[str]:
    out = []
    for c, n in report["classes"].items():
        if n < FEW_IMAGES:
            out.append(f"class '{c}' has {'no readable' if n == 0 else f'only {n}'} image{'s' * (n != 1)}")
    ratio = report["imbalance_ratio"]
    if ratio and ratio >= IMBALANCE_WARN:
        big = max(report["classes"], key=report["classes"].get)
        small = min((c for c, n in report["classes"].items() if n), key=report["classes"].get)
        out.append(f"imbalance {ratio:.0f}:1 ('{big}' vs '{small}'); consider more images of the small classes")
    for key, what in (("bad_files", "bad file"), ("duplicates", "duplicate group"),
                      ("near_duplicates", "near-duplicate group")):
        if report[key]:
            out.append(plural(len(report[key]), what) + (" will be skipped" if key == "bad_files" else ""))
    out += _leak_sentences(audit)
    if report["conflicting_labels"]:
        out.append(f"the same picture has different labels in {plural(len(report['conflicting_labels']), 'group')}")
    for split, counts in report.get("split_counts", {}).items():
        missing = [c for c, n in report["classes"].items() if n and not counts.get(c)]
        if split in ("train", "test") and missing:
            out.append(f"class(es) {', '.join(repr(c) for c in missing)} have no images in the {split} split")
    if report["animated"]:
        out.append(f"{report['animated']} animated images: only the first frame is used")
    return out


def _leak_sentences(audit: Audit) -> list[str]:
    """"4 test images also appear in train": each image counted once, against the earliest split it leaks from."""
    leaked: dict[tuple[str, str], set[int]] = defaultdict(set)
    recs = audit.source.records
    near = any(kind != "duplicate" for kind, _ in audit.leaks)
    for _, group in audit.leaks:
        splits = {recs[i].split for i in group}
        for i in group:
            first = next((s for s in SPLIT_ORDER if s in splits and s != recs[i].split), None)
            if first and recs[i].split and SPLIT_ORDER.index(first) < SPLIT_ORDER.index(recs[i].split):
                leaked[(recs[i].split, first)].add(i)
    how = " (exactly or nearly)" if near else ""
    return [f"{len(idx)} {split} image{'s' * (len(idx) != 1)} also appear{'s' * (len(idx) == 1)}{how} in {other}"
            for (split, other), idx in sorted(leaked.items(), key=lambda kv: SPLIT_ORDER.index(kv[0][0]))]
