"""Photo-sized fine-tuning throughput: efficientnet_lite0 at 224 px on a generated JPEG class folder.

    python bench/photos.py [--n 400] [--steps 6]

Four variants of one training step (forward, backward, AdamW step) on batches from picstory's real input path
(decode-once cache → batched augmentation): frozen backbone vs full network, and torch eager fp32 (NCHW) vs
channels_last + bf16 autocast. Prints images/s and the ratios to eager fp32. bf16 runs only where the CPU has it
natively (elsewhere it is emulated and ~100× slower).
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=400, help="generated web-sized JPEGs")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per variant")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--work", type=Path, default=Path("/tmp/picstory-bench-photos"))
    args = ap.parse_args()

    from picstory.device import cpu_has_fast_bf16, set_threads
    from picstory.models import set_backbone_frozen
    from picstory.pipeline.training_run import prepare

    threads = set_threads()
    root = make_set(args.work / "web", args.n, (500, 375), workers=threads)
    cfg, td, _, _ = prepare(str(root), model="efficientnet_lite0", img_size=224, batch_size=args.batch_size,
                            rrc_scale=0.35, precision="fp32")
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
    print(f"\nthreads {threads}, batch {args.batch_size}, 224 px, torch {torch.__version__}, "
          f"{torch.backends.cpu.get_cpu_capability()}, date {time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
