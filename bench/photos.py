"""Photos: the three ways picstory trains on a pretrained backbone, and the fine-tuning step's throughput.

    python bench/photos.py --recipes [--n 2000] [--full-epochs 3]   # probe vs frozen epoch vs full fine-tune
    python bench/photos.py [--n 400] [--steps 6]                    # step throughput variants

--recipes trains through ``picstory.train`` (the real path: decode-once cache, batches, engine, evaluation on the
test split, report) on a generated folder of web-sized JPEGs, 5 classes: ``--preset probe`` (features once, with
and without flipped copies, then the latter once more with its features cached), one epoch of the head on the frozen
backbone (the fine-tune's first epoch, with its augmentation), and the full fine-tune (``--preset default``, one
frozen epoch then the whole network). The decode cache is filled before the first recipe so no recipe pays for
it; the embedding cache is emptied before each probe except the cached rerun. Prints train seconds, test accuracy
and training images/s (images × epochs / train seconds) per recipe.

The step variants of one training step (forward, backward, AdamW step) on batches from picstory's real input path
(decode-once cache → batched augmentation): frozen backbone vs full network, and torch eager fp32 (NCHW) vs
channels_last + bf16 autocast. Prints images/s and the ratios to eager fp32. bf16 runs only where the CPU has it
natively (elsewhere it is emulated and ~100× slower).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import make_set  # noqa: E402  (the same generated photos as the ingest benchmark)


def step_rate(model, batches, steps: int, bf16: bool, channels_last: bool) -> float:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    done, start = 0, None
    for i, (x, y) in enumerate(batches):
        if i == 1:  # the first step builds the oneDNN kernels
            start, done = time.perf_counter(), 0
        if i > steps:
            break
        x = x.contiguous(memory_format=fmt)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done += len(y)
    return done / (time.perf_counter() - start)


RECIPES = {  # name → picstory.train options (on top of the data's defaults)
    "probe, flipped copies": {"preset": "probe"},
    "probe, no flips": {"preset": "probe", "hflip": 0.0},
    "probe, no flips, cached": {"preset": "probe", "hflip": 0.0},  # the features of the run before
    "frozen epoch": {"preset": "default", "epochs": 1, "freeze_epochs": 1},
    "full fine-tune": {"preset": "default"},
}


def recipes(args) -> None:
    import shutil

    import picstory
    from picstory.device import set_threads
    from picstory.pipeline.training_run import prepare

    threads = set_threads()
    root = make_set(args.work / f"web-{args.n}", args.n, (500, 375), workers=threads)
    os.environ["PICSTORY_CACHE"] = str(args.work / "cache")
    cfg, td, _, _ = prepare(str(root), **({"img_size": args.img_size} if args.img_size else {}))  # fills the cache
    print(f"{args.n} images, {len(td.classes)} classes, {cfg.data.img_size} px, train/val/test "
          f"{td.n_train}/{len(td.splits['val'].labels)}/{len(td.splits['test'].labels)}", flush=True)
    del td
    rows = []
    chosen = [n for n in RECIPES if not args.only or any(part in n for part in args.only.split(","))]
    for name in chosen:
        options = RECIPES[name]
        if name == "full fine-tune":
            options = {**options, "epochs": args.full_epochs}
        if name.startswith("probe") and "cached" not in name:
            shutil.rmtree(args.work / "cache" / "embeddings", ignore_errors=True)
        if args.img_size:
            options = {**options, "img_size": args.img_size}
        t = time.perf_counter()
        run = picstory.train(str(root), out=str(args.work / "runs"), name=name.replace(" ", "-").replace(",", ""),
                             progress=False, **options)
        s = run.summary
        rows.append((name, s["epochs_run"], s["train_seconds"], time.perf_counter() - t, s["test_accuracy"],
                     s["images_per_second"]))
        print(f"  {name:24s} epochs {s['epochs_run']:2d}  train {s['train_seconds']:7.1f} s  "
              f"(whole run {rows[-1][3]:6.1f} s)  test acc {s['test_accuracy']:.4f}  "
              f"{s['images_per_second']:6.1f} img/s", flush=True)
    print("\n| recipe | epochs | train s | whole run s | test acc | train img/s | × full fine-tune speed |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    full = rows[-1][2] if chosen[-1] == "full fine-tune" else float("nan")
    for name, epochs, secs, whole, acc, rate in rows:
        print(f"| {name} | {epochs} | {secs:.1f} | {whole:.1f} | {acc:.4f} | {rate:.1f} | {full / secs:.1f}× |")
    print(f"\nthreads {threads}, {cfg.data.img_size} px, torch {torch.__version__}, "
          f"{torch.backends.cpu.get_cpu_capability()}, date {time.strftime('%Y-%m-%d')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", action="store_true", help="train probe / frozen epoch / full fine-tune")
    ap.add_argument("--full-epochs", type=int, default=3, help="--recipes: epochs of the full fine-tune")
    ap.add_argument("--only", default="", help="--recipes: comma-separated parts of recipe names (e.g. probe,full)")
    ap.add_argument("--img-size", type=int, default=0, help="--recipes: image size (0 = picstory's choice)")
    ap.add_argument("--n", type=int, default=0, help="generated web-sized JPEGs (default 2000 with --recipes, "
                                                     "else 400)")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per variant")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--work", type=Path, default=Path("/tmp/picstory-bench-photos"))
    args = ap.parse_args()
    if args.recipes:
        args.n = args.n or 2000
        return recipes(args)
    args.n = args.n or 400
    size = args.img_size or 224

    from picstory.device import cpu_has_fast_bf16, set_threads
    from picstory.models import set_backbone_frozen
    from picstory.pipeline.training_run import prepare

    threads = set_threads()
    root = make_set(args.work / f"web-{args.n}", args.n, (500, 375), workers=threads)
    os.environ["PICSTORY_CACHE"] = str(args.work / "cache")
    cfg, td, _, _ = prepare(str(root), model="efficientnet_lite0", img_size=size, batch_size=args.batch_size,
                            rrc_scale=0.35, precision="fp32", preset="default")
    state = {k: v.clone() for k, v in td.model.state_dict().items()}
    rows = []
    for frozen in (True, False):
        for bf16, cl in ((False, False), (False, True), (True, True)):
            if bf16 and not cpu_has_fast_bf16():
                continue
            td.model.load_state_dict(state)
            set_backbone_frozen(td.model, frozen)
            td.train_batches.set_epoch(0)
            rate = step_rate(td.model, td.train_batches, args.steps, bf16, cl)
            rows.append(("frozen" if frozen else "full", ("bf16" if bf16 else "fp32") + (" CL" if cl else " NCHW"),
                         rate))
            print(f"{rows[-1][0]:>6} {rows[-1][1]:>9}: {rate:6.1f} img/s", flush=True)
    base = {r[0]: r[2] for r in rows if r[1] == "fp32 NCHW"}
    print(f"\n{'backbone':>8} {'variant':>9} {'img/s':>7} {'× eager fp32':>12}")
    for mode, variant, rate in rows:
        print(f"{mode:>8} {variant:>9} {rate:7.1f} {rate / base[mode]:12.2f}")
    print(f"\nthreads {threads}, batch {args.batch_size}, {size} px, torch {torch.__version__}, "
          f"{torch.backends.cpu.get_cpu_capability()}, date {time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
