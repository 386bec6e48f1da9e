"""Fashion-MNIST on this CPU: the hand-written PyTorch recipe vs picstory's presets, side by side in one run.

    python bench/fashion.py                     # reference + default + fast + best
    python bench/fashion.py --only fast,default # a subset
    python bench/fashion.py --best-budget 3     # also `best` with 3× the reference's epochs budget

(a) reference: a torchvision Dataset + ToTensor/Normalize + DataLoader(batch_size=64) + seed-mnist-cnn + Adam 1e-3,
    early stopping (patience 2) on an 80/20 split, test accuracy of the best validation epoch — the recipe users copy.
(b–d) `picstory train builtin:fashion-mnist --preset default|fast|best`, the real CLI path.
Each variant runs in its own process so that peak RSS is its own. Ratios are to (a), measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def reference(max_epochs: int = 30, patience: int = 2, seed: int = 0, device: str = "cpu",
              deadline: float | None = None) -> dict:
    """``deadline``: a time.perf_counter() value at which training stops, even mid-epoch (bench/budget.py); the
    best validated weights so far are tested, or the current ones when no epoch finished."""
    entered = time.perf_counter()
    import numpy as np
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset, random_split
    from torchvision import transforms

    from picstory.data.sources import resolve
    from picstory.models import create_model

    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    src = resolve("builtin:fashion-mnist")
    index = {c: i for i, c in enumerate(src.classes)}  # Source.classes is computed on each access: once here
    labels = np.array([index[r.label] for r in src.records])
    is_test = np.array([r.split == "test" for r in src.records])

    class Fashion(Dataset):  # the tutorial way: one PIL image per __getitem__
        def __init__(self, images, targets):
            self.images, self.targets = images, targets
            self.tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.2860,), (0.3530,))])

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            return self.tf(Image.fromarray(self.images[i])), int(self.targets[i])

    full = Fashion(src.arrays[~is_test], labels[~is_test])
    test = Fashion(src.arrays[is_test], labels[is_test])
    n_val = len(full) // 5
    train_set, val_set = random_split(full, [len(full) - n_val, n_val], torch.Generator().manual_seed(seed))
    train_dl = DataLoader(train_set, batch_size=64, shuffle=True)
    val_dl, test_dl = DataLoader(val_set, batch_size=256), DataLoader(test, batch_size=256)
    model = create_model("seed-mnist-cnn", 10, in_chans=1, img_size=28).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def accuracy(dl):
        model.eval()
        correct = n = 0
        with torch.no_grad():
            for x, y in dl:
                correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
                n += len(y)
        return correct / n

    best, best_state, wait, epochs, start = -1.0, None, 0, 0, time.perf_counter()
    setup_s = start - entered
    steps = 0
    for epoch in range(max_epochs):
        model.train()
        for x, y in train_dl:
            opt.zero_grad()
            loss_fn(model(x.to(device)), y.to(device)).backward()
            opt.step()
            steps += 1
            if deadline is not None and time.perf_counter() > deadline:
                break
        if deadline is not None and time.perf_counter() > deadline:
            break
        epochs += 1
        acc = accuracy(val_dl)
        if acc > best:
            best, wait = acc, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            wait += 1
            if wait >= patience:
                break
    seconds = time.perf_counter() - start
    if best_state is not None:
        model.load_state_dict(best_state)
    tested = time.perf_counter()
    test_accuracy = accuracy(test_dl)
    return {"seconds": seconds, "epochs": epochs, "test_accuracy": test_accuracy, "val_accuracy": best,
            "images": steps * 64, "model": "seed-mnist-cnn", "img_size": 28, "steps": steps,
            "setup_s": round(setup_s, 1), "test_s": round(time.perf_counter() - tested, 1)}


def picstory_run(preset: str, out: str, extra: list[str]) -> dict:
    from picstory.cli import main
    from picstory.commands import cmd_train  # noqa: F401  (fail early when the package is missing)

    name = f"bench-{preset}"
    code = main(["train", "builtin:fashion-mnist", "--preset", preset, "--out", out, "--name", name, "--quiet",
                 *extra])
    if code:
        raise SystemExit(code)
    run = max(Path(out).glob(f"{name}*"), key=lambda p: p.stat().st_mtime)
    s = json.loads((run / "summary.json").read_text())
    n_train = sum(s["class_counts"]["train"].values())
    return {"seconds": s["train_seconds"], "epochs": s["epochs_run"], "test_accuracy": s["test_accuracy"],
            "val_accuracy": s["val_accuracy"], "images": n_train * s["epochs_run"], "model": s["model"],
            "img_size": s["img_size"], "precision": s.get("precision"), "run": str(run)}


def child(variant: str, out: str, extra: list[str]) -> None:
    result = reference() if variant == "reference" else picstory_run(variant, out, extra)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def run_child(variant: str, out: str, extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--out", out, "--", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"{variant} failed")
    return json.loads(lines[-1][7:])


def matmul_flops() -> dict:
    """Peak-ish matmul throughput of this CPU in fp32 and bf16 (small probe: a few 1024² products)."""
    import torch

    from picstory.device import cpu_has_fast_bf16

    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        if dtype == torch.bfloat16 and not cpu_has_fast_bf16():
            continue  # emulated bf16 is 100× slower: not worth probing
        a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
        for _ in range(3):
            a @ b
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < 1.0:
            a @ b
            n += 1
        out[str(dtype).replace("torch.", "")] = 2 * 1024**3 * n / (time.perf_counter() - t)
    return out


def cpu_line() -> str:
    """The CPU model, torch's kernel capability (what ATen dispatches to) and the vector flags that matter here."""
    import platform

    import torch

    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model in ("x86_64", ""):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"]
    return (f"CPU: {model}; torch capability {torch.backends.cpu.get_cpu_capability()}; "
            f"flags {' '.join(f for f in wanted if f in flags) or 'none of avx2/avx512/amx'}; cores {os.cpu_count()}")


def targets(results: dict) -> list[str]:
    """The issue's targets, as ratios to the reference measured in this run."""
    ref, out = results.get("reference"), []
    if not ref:
        return out
    if "fast" in results:
        r = results["fast"]
        share = r["seconds"] / ref["seconds"]
        ok = r["test_accuracy"] >= ref["test_accuracy"] and share <= 0.25
        out.append(f"fast ≥ reference acc in ≤ 25 % of its time: {r['test_accuracy']:.4f} vs "
                   f"{ref['test_accuracy']:.4f} in {100 * share:.0f} % — {'met' if ok else 'NOT met'}")
    for name, goal in (("default", 0.935), ("best", 0.940)):
        if name in results:
            r = results[name]
            share = r["seconds"] / ref["seconds"]
            ok = r["test_accuracy"] >= goal and share <= 1.0
            out.append(f"{name} ≥ {100 * goal:.1f} % within the reference's time: {r['test_accuracy']:.4f} in "
                       f"{100 * share:.0f} % — {'met' if ok else 'NOT met'}")
    return out


def train_flops_per_image(model: str, img_size: int) -> float:
    from picstory.models import count_flops, create_model

    m = create_model(model, 10, in_chans=1, img_size=img_size)
    return 3.0 * count_flops(m, (1, img_size, img_size))  # forward + backward ≈ 3 × forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="reference,default,fast,best")
    ap.add_argument("--out", default=None, help="run directories (default: a temp dir)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("extra", nargs="*", help="extra flags for the picstory runs (after --)")
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="picstory-bench-")
    if args.child:
        return child(args.child, out, args.extra)
    print(cpu_line(), flush=True)
    peak = matmul_flops()
    print("matmul GFLOP/s: " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peak.items()), flush=True)
    results = {}
    for variant in args.only.split(","):
        t = time.perf_counter()
        results[variant] = r = run_child(variant, out, args.extra)
        print(f"{variant:>9}: {r['test_accuracy']:.4f} test acc in {r['seconds']:.1f}s train "
              f"({r['epochs']} epochs; {time.perf_counter() - t:.0f}s wall)", flush=True)
    ref = results.get("reference")
    best_peak = max(peak.values())
    print(f"\n{'variant':>9} {'model':>15} {'test acc':>8} {'train s':>8} {'epochs':>6} {'time ×ref':>9} "
          f"{'Δacc':>7} {'RSS MB':>7} {'%peak':>6}")
    for name, r in results.items():
        flops = train_flops_per_image(r["model"], r["img_size"]) * r["images"] / r["seconds"]
        ratio = r["seconds"] / ref["seconds"] if ref else float("nan")
        dacc = r["test_accuracy"] - ref["test_accuracy"] if ref else float("nan")
        print(f"{name:>9} {r['model']:>15} {r['test_accuracy']:8.4f} {r['seconds']:8.1f} {r['epochs']:6d} "
              f"{ratio:9.2f} {dacc:+7.4f} {r['peak_rss_mb']:7.0f} {100 * flops / best_peak:5.1f}%")
    for line in targets(results):
        print(line)
    print(f"\ncores {os.cpu_count()}, torch threads default, date {time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
