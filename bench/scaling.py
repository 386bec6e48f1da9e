"""Training throughput at 1, 2, … processes under torchrun (DDP): the same `picstory train`, more ranks.

    python bench/scaling.py                                  # CPU, gloo: 1 and 2 processes, picnet-s
    python bench/scaling.py --nprocs 1,2,4 --model seed-mnist-cnn --limit-per-class 2000
    python bench/scaling.py --device cuda --nprocs 1         # one GPU (NCCL with more GPUs)

Every run is `python -m torch.distributed.run --standalone --nproc-per-node N -m picstory train
builtin:fashion-mnist ...` with the same GLOBAL batch (--batch-size is global), so each run takes the same
optimizer steps; only the work per rank shrinks. images/s = training images × epochs / training seconds (validation
included, from summary.json); "wall" is the whole command (start-up, data, the test evaluation and the report).
On a CPU the N processes share the machine's cores (each gets cores / N threads): DDP pays there only when the
gradient all-reduce costs less than what one process loses to poor multi-thread scaling of small convolutions.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run(nproc: int, args: argparse.Namespace, out: str) -> dict:
    name = f"scale-{args.device}-{nproc}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "picstory", "train", "builtin:fashion-mnist", "--preset", "fast", "--model", args.model,
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--patience", "0",
           "--limit-per-class", str(args.limit_per_class), "--device", args.device, "--out", out, "--name", name,
           "--quiet", *shlex.split(args.extra)]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores() // nproc))}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode:
        print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"{nproc} process(es) failed")
    run_dir = max(Path(out).glob(f"{name}*"), key=lambda p: p.stat().st_mtime)
    s = json.loads((run_dir / "summary.json").read_text())
    env_json = json.loads((run_dir / "env.json").read_text())
    return {"nproc": nproc, "images_per_second": s["images_per_second"], "train_seconds": s["train_seconds"],
            "wall_seconds": round(wall, 1), "test_accuracy": s["test_accuracy"], "val_accuracy": s["val_accuracy"],
            "precision": s.get("precision"), "threads_per_process": env_json.get("threads"),
            "world_size": env_json.get("world_size"), "device": s.get("device")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nprocs", default="1,2", help="process counts to compare")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--model", default="picnet-s")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256, help="global batch (images per step, all ranks)")
    ap.add_argument("--limit-per-class", type=int, default=1000, help="training images per class (0 = all 54,000)")
    ap.add_argument("--extra", default="", help="more `picstory train` flags, e.g. '--precision fp32'")
    ap.add_argument("--out", default=None)
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="picstory-scaling-")
    rows = []
    for n in (int(v) for v in args.nprocs.split(",")):
        rows.append(run(n, args, out))
        r = rows[-1]
        print(f"{n} process(es): {r['images_per_second']:.0f} img/s, {r['train_seconds']:.1f}s training, "
              f"{r['wall_seconds']:.1f}s wall", flush=True)
    base = rows[0]["images_per_second"]
    print(f"\n{args.device}, {cores()} cores, {args.model}, {args.epochs} epochs × "
          f"{args.limit_per_class * 10 if args.limit_per_class else 54000} images, global batch {args.batch_size}")
    print(f"{'procs':>5} {'threads':>7} {'precision':>9} {'img/s':>8} {'speed-up':>8} {'train s':>8} {'wall s':>7} "
          f"{'val acc':>7} {'test acc':>8}")
    for r in rows:
        print(f"{r['nproc']:>5} {r['threads_per_process']:>7} {r['precision']:>9} {r['images_per_second']:8.0f} "
              f"{r['images_per_second'] / base:8.2f} {r['train_seconds']:8.1f} {r['wall_seconds']:7.1f} "
              f"{r['val_accuracy']:7.4f} {r['test_accuracy']:8.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
