"""Fashion-MNIST end to end on one GPU: picstory's GPU path vs the plain torchvision recipe on the same GPU.

    python bench/gpu.py                          # reference + fast + best
    python bench/gpu.py --only fast --json r.json
    python bench/gpu.py --fast-flags "--model picnet-l --epochs 12"   # try another recipe

Targets (H100-class GPU): `fast` ≥ 95 % test accuracy in ≤ 10 s, `best` ≥ 96 % in ≤ 60 s, each END TO END: the
seconds from the child process's start (Python, torch and CUDA start-up, reading the IDX files, the uint8 set to
the GPU, torch.compile, training, the test evaluation and the run directory with its report) to its end.

(a) reference: a torchvision Dataset + ToTensor/Normalize + DataLoader(batch_size=64) + seed-mnist-cnn + Adam 1e-3,
    each batch moved to the GPU, early stopping (patience 2) on an 80/20 split — bench/fashion.py's recipe on CUDA.
(b, c) `picstory train builtin:fashion-mnist --device cuda ...`, the real CLI path: the uint8 set on the GPU,
    augmentation on the GPU, bf16 autocast, channels_last, large eval batches, no host sync per step.
Each variant runs in its own process with an empty torch.compile cache, so compile time is counted. Set
PICSTORY_DATA to a folder with the four Fashion-MNIST *-ubyte.gz files when the Debian package is not installed.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # the child's clock starts before torch is imported

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

TARGETS = {"fast": (0.95, 10.0), "best": (0.96, 60.0)}  # (test accuracy, end-to-end seconds)
# Recipes: global batch, SGD-Nesterov one-cycle-like linear schedule of the small presets, flips (+ erasing for best)
RECIPES = {
    "fast": "--preset best --model picnet-l --epochs 14 --batch-size 512 --lr 0.6 --warmup-epochs 2 "
            "--eval-batch-size 4096 --patience 0 --tta flip",
    "best": "--preset best --model picnet-l --epochs 40 --batch-size 512 --lr 0.6 --warmup-epochs 4 --erase 0.25 "
            "--translate 0.1 --eval-batch-size 4096 --patience 0 --tta flip --compile",
}


def reference(max_epochs: int = 30, patience: int = 2, seed: int = 0) -> dict:
    """The plain torchvision recipe of bench/fashion.py, on the GPU."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fashion import reference as plain_recipe

    r = plain_recipe(max_epochs, patience, seed, device="cuda")
    return {"train_seconds": r["seconds"], "epochs": r["epochs"], "test_accuracy": r["test_accuracy"],
            "model": r["model"]}


def picstory_run(variant: str, out: str, flags: str) -> dict:
    from picstory.cli import main

    name = f"gpu-{variant}"
    code = main(["train", "builtin:fashion-mnist", "--device", "cuda", "--out", out, "--name", name, "--quiet",
                 *shlex.split(flags)])
    if code:
        raise SystemExit(code)
    run = max(Path(out).glob(f"{name}*"), key=lambda p: p.stat().st_mtime)
    s = json.loads((run / "summary.json").read_text())
    return {"train_seconds": s["train_seconds"], "epochs": s["epochs_run"], "test_accuracy": s["test_accuracy"],
            "model": s["model"], "precision": s.get("precision"), "images_per_second": s.get("images_per_second"),
            "run": str(run), "flags": flags}


def child(variant: str, out: str, flags: str) -> None:
    result = reference() if variant == "reference" else picstory_run(variant, out, flags)
    import torch

    torch.cuda.synchronize()
    result["seconds"] = time.perf_counter() - T0
    result["gpu"] = torch.cuda.get_device_name()
    result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(result), flush=True)


def run_child(variant: str, out: str, flags: str) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(prefix="inductor-"), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, __file__, "--child", variant, "--out", out, "--flags", flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
        return {"error": f"exit {proc.returncode}", "stderr": proc.stderr[-1500:]}
    return json.loads(lines[-1][7:])


def table(results: dict) -> str:
    ref = results.get("reference", {})
    rows = [f"{'variant':>9} {'model':>15} {'test acc':>8} {'end-to-end s':>12} {'train s':>8} {'epochs':>6} "
            f"{'time ×ref':>9} {'Δacc':>7} {'target':>16}"]
    for name, r in results.items():
        if "error" in r:
            rows.append(f"{name:>9} failed: {r['error']}")
            continue
        ratio = r["seconds"] / ref["seconds"] if ref.get("seconds") else float("nan")
        dacc = r["test_accuracy"] - ref["test_accuracy"] if ref.get("test_accuracy") else float("nan")
        target = ""
        if name in TARGETS:
            acc, secs = TARGETS[name]
            ok = r["test_accuracy"] >= acc and r["seconds"] <= secs
            target = f"{'MET' if ok else 'missed'} ≥{acc:.0%} ≤{secs:.0f}s"
        rows.append(f"{name:>9} {r['model']:>15} {r['test_accuracy']:8.4f} {r['seconds']:12.1f} "
                    f"{r['train_seconds']:8.1f} {r['epochs']:6d} {ratio:9.2f} {dacc:+7.4f} {target:>16}")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="reference,fast,best")
    ap.add_argument("--out", default=None, help="run directories (default: a temp dir)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--fast-flags", default=RECIPES["fast"])
    ap.add_argument("--best-flags", default=RECIPES["best"])
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--flags", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="picstory-gpu-")
    if args.child:
        return child(args.child, out, args.flags)
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs a CUDA GPU")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    results = {}
    for variant in args.only.split(","):
        flags = {"fast": args.fast_flags, "best": args.best_flags}.get(variant, "")
        results[variant] = r = run_child(variant, out, flags)
        if "error" not in r:
            print(f"{variant:>9}: {r['test_accuracy']:.4f} test acc, {r['seconds']:.1f}s end to end "
                  f"({r['train_seconds']:.1f}s training, {r['epochs']} epochs)", flush=True)
    print("\n" + table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
