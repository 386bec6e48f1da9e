"""Finding flipped labels: confident learning on out-of-fold probabilities vs the doctor's top-loss rule.

    python bench/label_issues.py                       # 10,000 training images, 5 folds, --preset fast
    python bench/label_issues.py --n 3000 --epochs 2   # a quick look

1. A seeded, stratified subset of Fashion-MNIST's training images (and 2,000 of its test images, clean) is written
   as IDX files; 5 % of the training labels are flipped (seeded) to a plausible neighbour class (shirt ↔ t-shirt,
   pullover ↔ coat, sneaker ↔ sandal, ankle boot ↔ sneaker, …).
2. ``picstory train DIR --folds 5 --preset fast`` runs as a user would run it (the real CLI, its own process).
3. On the run's out-of-fold probabilities: ``picstory data issues`` (confident learning) and the doctor's earlier
   top-loss rule (top class ≠ label at ≥ 0.8, largest loss first), all of it and cut to the size of confident
   learning's list; precision / recall / F1 of each flagged set against the flipped images.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLASSES = ["T-shirt-top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# the classes a tired annotator mixes up: each class's plausible wrong labels
NEIGHBOURS = {0: [6, 2, 3], 1: [3], 2: [4, 6, 0], 3: [4, 0, 1], 4: [2, 6, 3], 5: [7, 9], 6: [0, 2, 4],
              7: [5, 9], 8: [2, 0], 9: [7, 5]}


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    n, h, w = images.shape
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">HBBIII", 0, 8, 3, n, h, w) + images.tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">HBBI", 0, 8, 1, n) +
                                                         labels.astype(np.uint8).tobytes())


def make_noisy_set(folder: Path, n: int, n_test: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """IDX files with flipped training labels; returns (flipped mask, clean labels) in training-file order."""
    from picstory.data.sources import resolve

    src = resolve("builtin:fashion-mnist")
    labels = np.array([CLASSES.index(r.label) for r in src.records])
    is_test = np.array([r.split == "test" for r in src.records])
    rng = np.random.default_rng(seed)
    train_idx = np.flatnonzero(~is_test)
    per_class = n // 10
    pick = np.concatenate([rng.choice(train_idx[labels[train_idx] == c], per_class, replace=False)
                           for c in range(10)])
    pick = pick[rng.permutation(len(pick))]
    test_pick = rng.choice(np.flatnonzero(is_test), n_test, replace=False)
    clean = labels[pick]
    noisy = clean.copy()
    flipped = np.zeros(len(pick), bool)
    flipped[rng.choice(len(pick), int(round(noise * len(pick))), replace=False)] = True
    for i in np.flatnonzero(flipped):
        noisy[i] = rng.choice(NEIGHBOURS[int(clean[i])])
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder, "train", src.arrays[pick], noisy)
    write_idx(folder, "t10k", src.arrays[test_pick], labels[test_pick])
    return flipped, clean


def scores(flagged: np.ndarray, truth: np.ndarray) -> dict:
    tp = int((flagged & truth).sum())
    p = tp / max(int(flagged.sum()), 1)
    r = tp / max(int(truth.sum()), 1)
    return {"flagged": int(flagged.sum()), "true_pos": tp, "precision": p, "recall": r,
            "f1": 2 * p * r / (p + r) if p + r else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="training images (stratified)")
    ap.add_argument("--n-test", type=int, default=2_000)
    ap.add_argument("--noise", type=float, default=0.05)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--epochs", type=int, default=0, help="0 = the preset's")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    src = Path(__file__).resolve().parents[1] / "src"
    sys.path.insert(0, str(src))
    from picstory.data.sources import resolve
    from picstory.doctor.issues import issues_table, label_issues, load_oof
    from picstory.evaluation.label_issues import top_loss

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "noisy-fashion"
        flipped, clean = make_noisy_set(data, args.n, args.n_test, args.noise, args.seed)
        cmd = [sys.executable, "-m", "picstory", "train", str(data), "--folds", str(args.folds), "--preset",
               args.preset, "--out", str(Path(tmp) / "runs"), "--name", "cv", "--quiet", "--seed", str(args.seed)]
        cmd += ["--epochs", str(args.epochs)] if args.epochs else []
        env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        t0 = time.perf_counter()
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if out.returncode:
            sys.exit(f"training failed:\n{out.stderr[-2000:]}")
        parent = Path(tmp) / "runs" / "cv"
        # out-of-fold refs are indices into the source's records; map them back to the training file's order
        source = resolve(str(data))
        train_pos = {}
        for i, rec in enumerate(source.records):
            if rec.split == "train":
                train_pos[rec.ref] = len(train_pos)
        oof = load_oof(parent)
        pos = np.array([train_pos[str(r)] for r in oof["refs"]])
        truth = flipped[pos]
        labels, probs = oof["labels"].astype(int), oof["probs"]
        found = label_issues(parent)
        cl = np.zeros(len(pos), bool)
        by_ref = {str(r): k for k, r in enumerate(oof["refs"])}
        cl[[by_ref[r["ref"]] for r in found["rows"]]] = True
        tl_order = top_loss(probs, labels)
        tl_all = np.zeros(len(pos), bool)
        tl_all[tl_order] = True
        tl_cut = np.zeros(len(pos), bool)
        tl_cut[tl_order[:int(cl.sum())]] = True
        cv = json.loads((parent / "cv.json").read_text())
        print("$ " + " ".join(["picstory", *cmd[3:]]).replace(tmp, "TMP"))
        print(out.stdout.strip().replace(tmp, "TMP"))
        print(f"$ picstory data issues TMP/runs/cv\n{issues_table(found, 5)}\n".replace(tmp, "TMP"))
    rows = [("confident learning (picstory data issues)", scores(cl, truth)),
            ("top-loss, p(top) >= 0.8, all (doctor before)", scores(tl_all, truth)),
            ("top-loss, cut to confident learning's count", scores(tl_cut, truth))]
    m = cv["metrics"]
    print(f"Fashion-MNIST subset: {len(pos)} training images, {int(truth.sum())} flipped ({args.noise:.0%}), "
          f"{args.folds} folds, --preset {args.preset}{f' --epochs {args.epochs}' if args.epochs else ''}; "
          f"train {seconds:.0f} s; val acc {m['val_accuracy']['mean']:.4f} ± {m['val_accuracy']['std']:.4f}, "
          f"test acc (clean labels) {m['test_accuracy']['mean']:.4f} ± {m['test_accuracy']['std']:.4f}, "
          f"out-of-fold acc {cv['oof']['accuracy']:.4f}")
    print("| method | flagged | correct | precision | recall | F1 |\n|---|---:|---:|---:|---:|---:|")
    for name, s in rows:
        print(f"| {name} | {s['flagged']} | {s['true_pos']} | {s['precision']:.3f} | {s['recall']:.3f} | "
              f"{s['f1']:.3f} |")


if __name__ == "__main__":
    main()
