"""Optimizer × learning-rate study with the seed-004 CNN (seed-mnist-cnn), run through `picstory sweep` itself.

    python bench/optimizers.py                                   # digits, then Fashion-MNIST, full training splits
    python bench/optimizers.py --data digits
    python bench/optimizers.py --data fashion-mnist --limit-per-class 600 --epochs 6 --out bench/out/opt-600

Five optimizers (adam, adagrad, rmsprop, sgd, sgd-momentum) × three LRs (1e-2, 1e-3, 1e-4), every cell with the
same recipe as the classic study: constant LR, no warm-up, no label smoothing, no augmentation, no weight decay,
batch 64, at most --epochs epochs with early stopping (patience 3 on validation loss), one torch thread per cell
(--threads; on this shared 2-core machine 1 thread trained this net 3-30x faster than 2). The sweep folders go to
bench/out/optimizers/DATA/ (comparison.csv/.md/.html); the overlaid validation curves are copied to
bench/optimizers-DATA.png and a markdown table of test accuracy and seconds is printed for bench/optimizers.md.
Re-running resumes: finished cells are skipped.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from picstory.compare.sweep import sweep

HERE = Path(__file__).resolve().parent
OPTIMIZERS = ["adam", "adagrad", "rmsprop", "sgd", "sgd-momentum"]
LRS = ["1e-2", "1e-3", "1e-4"]
CLASSIC = dict(model="seed-mnist-cnn", schedule="constant", warmup_epochs=0, label_smoothing=0, hflip=0,
               translate=0, weight_decay=0, nesterov=False, momentum=0.9, batch_size=64, patience=3, seed=0)
# 10 Fashion-MNIST epochs keep the 15 cells near 15 minutes at ~7,000 images/s (--limit-per-class cuts further)
DEFAULTS = {"digits": {"epochs": 30, "limit_per_class": 0},
            "fashion-mnist": {"epochs": 10, "limit_per_class": 0}}


def run(data: str, epochs: int, limit_per_class: int, jobs: int, threads: int, out: Path) -> dict:
    began = time.perf_counter()
    result = sweep(f"builtin:{data}", [f"optimizer={','.join(OPTIMIZERS)}", f"lr={','.join(LRS)}"], jobs=jobs,
                   out=str(out), name=data, epochs=epochs, limit_per_class=limit_per_class or None,
                   threads=threads or None, **CLASSIC)
    result["wall_seconds"] = time.perf_counter() - began
    shutil.copyfile(Path(result["dir"]) / "comparison_curves.png", HERE / f"optimizers-{data}.png")
    return result


def markdown(result: dict) -> str:
    """Optimizers down, LRs across: test accuracy (seconds, epochs run); the best validation cell in bold."""
    rows = {(r["optimizer"], r["lr"]): r for r in result["rows"]}
    lines = ["| optimizer | " + " | ".join(f"lr {lr}" for lr in LRS) + " |", "|---|" + "---|" * len(LRS)]
    for opt in OPTIMIZERS:
        cells = []
        for lr in LRS:
            r = rows[(opt, lr)]
            if r["test_acc"] is None:
                cells.append(f"{r['status']}: {r['stop_reason'][:40]}")
                continue
            text = f"{r['test_acc']:.4f} ({r['seconds']:.0f} s, {r['epochs_run']} ep)"
            if r["status"] != "ok":  # e.g. diverged: the numbers are kept, the verdict beside them
                text += f" ✗ {r['stop_reason'].split(':')[0]}"
            cells.append(f"**{text}**" if r["cell"] == result["best"] else text)
        lines.append(f"| {opt} | " + " | ".join(cells) + " |")
    total = sum(r["seconds"] or 0 for r in result["rows"])
    lines.append(f"\ntraining time of all cells {total:.0f} s; whole sweep {result['wall_seconds']:.0f} s wall "
                 f"(data loading, evaluation and reports included)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="digits,fashion-mnist", help="comma-separated: digits, fashion-mnist")
    p.add_argument("--epochs", type=int, default=0, help="maximum epochs per cell (0 = the data set's default)")
    p.add_argument("--limit-per-class", type=int, default=-1, help="training images per class (-1 = default)")
    p.add_argument("--jobs", type=int, default=1, help="cells trained at once")
    p.add_argument("--threads", type=int, default=1, help="torch threads per cell (0 = all cores)")
    p.add_argument("--out", default=str(HERE / "out" / "optimizers"))
    args = p.parse_args(argv)
    print(f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}", file=sys.stderr)
    for data in args.data.split(","):
        d = DEFAULTS[data]
        epochs = args.epochs or d["epochs"]
        limit = d["limit_per_class"] if args.limit_per_class < 0 else args.limit_per_class
        result = run(data, epochs, limit, args.jobs, args.threads, Path(args.out))
        print(f"\n## {data}: ≤ {epochs} epochs, patience 3, {args.threads or 'all'} thread(s)"
              + (f", {limit} training images per class" if limit else ", full training split") + "\n")
        print(markdown(result))
        print(f"\nbest on validation: {result['best']}; curves: bench/optimizers-{data}.png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
