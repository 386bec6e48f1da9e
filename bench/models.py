"""Architecture probe: speed, FLOPs and a short real Fashion-MNIST training per candidate, in one table.

    .venv/bin/python bench/models.py                        # speed of the family + the 30 s / 2 min / 6 min recipes
    .venv/bin/python bench/models.py --budgets 30s          # one recipe
    .venv/bin/python bench/models.py --models picnet-s,v-24-000 --epochs 4,8 --lr 0.4   # a grid
    .venv/bin/python bench/models.py --speed-only --threads 1 --models all              # every candidate's speed
    python3 bench/models.py --device cuda --no-speed --models v-16-101 --epochs 16 --kw act=gelu   # GPU grid

Speed: forward+backward+step images/s at batch 256, fp32 and bf16 autocast, channels_last, a few timed steps after
warm-up. Other processes share the cores: compare rows of one run and repeat when close; ``--threads 1`` measures
CPU time of one core instead of wall time, which a busy machine barely disturbs (2 cores ≈ 1.75× that figure).
Training: the inline airbench-style loop below — batched flip (+ optional random translate) on uint8 tensors,
label smoothing 0.1, piecewise-linear one-cycle LR, SGD-Nesterov or AdamW, bf16 autocast — then test accuracy without
and with flip TTA. Accuracy per epoch does not depend on the hardware, so grids can run on a GPU and CPU seconds
follow from epochs × 60,000 / CPU img/s; the budget recipes are then timed for real on the CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from picstory.models import count_flops, create_model  # noqa: E402

# label → (registry name, extra kwargs). Variants v-W-RRR[c]: widths W·(1, 2, 4, 8), residual pairs per stage RRR,
# "c": stages 2-3 convolve before pooling (4× the FLOPs, more detail) instead of after.
CANDIDATES: dict[str, tuple[str, dict]] = {
    name: (name, {}) for name in ("seed-mnist-cnn", "seed-cifar-cnn", "picnet-s", "picnet-m", "picnet-l")}
CANDIDATES.update({
    f"v-{w}-{r}{c}": ("picnet-s", dict(widths=(w, 2 * w, 4 * w, 8 * w), residual=tuple(int(d) for d in r),
                                       pool_first=not c))
    for w in (16, 24, 32, 48) for r in ("000", "001", "101", "111") for c in ("", "c")})
DEFAULT_MODELS = "seed-mnist-cnn,picnet-s,picnet-m,picnet-l"
HYP = dict(batch_size=256, optimizer="sgd", lr=0.2, weight_decay=5e-4, warmup_frac=0.2, label_smoothing=0.1,
           translate_px=0, seed=0)
OPT_DEFAULTS = {"sgd": dict(lr=0.2, weight_decay=5e-4), "adamw": dict(lr=1e-2, weight_decay=0.05)}
# The recommended recipe per time budget on 2 CPU cores (found with the grids; see models/picnet.py).
BUDGETS = {"30s": ("picnet-s", 5, dict(lr=0.4)), "2min": ("picnet-m", 11, dict(lr=0.4)),
           "6min": ("picnet-l", 24, dict(lr=0.2))}


def load_fashion(device: str):
    from picstory.data.sources import resolve

    src = resolve("builtin:fashion-mnist")
    classes = src.classes
    idx = {c: i for i, c in enumerate(classes)}
    x = torch.from_numpy(np.ascontiguousarray(src.arrays))[:, None]  # N×1×28×28 uint8
    y = torch.tensor([idx[r.label] for r in src.records])
    train = torch.tensor([r.split == "train" for r in src.records])
    return x[train].to(device), y[train].to(device), x[~train].to(device), y[~train].to(device)


def normalise(x_uint8: torch.Tensor) -> torch.Tensor:
    return (x_uint8.float() / 127.5 - 1.0).contiguous(memory_format=torch.channels_last)


def augment(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Per-image horizontal flip and random translation by up to ``pad`` px (zero padding), as tensor ops."""
    n, _, h, w = x.shape
    flip = torch.rand(n, device=x.device, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if pad:
        xp = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=gen)
        dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=gen)
        rows = (torch.arange(h, device=x.device)[None] + dy[:, None])[:, None, :, None]
        cols = (torch.arange(w, device=x.device)[None] + dx[:, None])[:, None, None, :]
        x = xp[torch.arange(n, device=x.device)[:, None, None, None], torch.arange(x.shape[1], device=x.device)
               [None, :, None, None], rows, cols]
    return x


def autocast(device: str, precision: str):
    if precision == "bf16":
        return torch.autocast(device.split(":")[0], dtype=torch.bfloat16)
    return nullcontext()


def build(label: str, in_chans: int = 1, img_size: int = 28, device: str = "cpu", extra: dict | None = None):
    name, kwargs = CANDIDATES[label]
    kwargs = {**kwargs, **(extra or {})}
    model = create_model(name, num_classes=10, in_chans=in_chans, img_size=img_size, **kwargs)
    return model.to(device).to(memory_format=torch.channels_last)


def speed(label: str, precision: str, device: str, batch: int = 256, iters: int = 4,
          extra: dict | None = None) -> float:
    """Training images/s (forward + backward + SGD step) at ``batch``."""
    model = build(label, device=device, extra=extra)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 1, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        with autocast(device, precision):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    sync(device)
    clock = pick_clock(device)
    t0 = clock()
    for _ in range(iters):
        step()
    sync(device)
    return batch * iters / (clock() - t0)


def pick_clock(device: str):
    """One torch thread on a CPU: count CPU seconds, not wall seconds, which other processes barely disturb."""
    return time.thread_time if torch.get_num_threads() == 1 and device == "cpu" else time.perf_counter


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_optimizer(model, hyp: dict):
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]  # BN and biases: decay only hurts
    groups = [dict(params=decay, weight_decay=hyp["weight_decay"]), dict(params=no_decay, weight_decay=0.0)]
    if hyp["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=hyp["lr"], momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=hyp["lr"], betas=(0.9, 0.99))


def one_cycle(total_steps: int, warmup_frac: float):
    """LR factor: linear 0.1 → 1 over the warm-up, then linear to 0 (airbench's triangle)."""
    warm = max(1, int(total_steps * warmup_frac))

    def factor(step: int) -> float:
        if step < warm:
            return 0.1 + 0.9 * step / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))
    return factor


@torch.inference_mode()
def evaluate(model, x, y, device: str, precision: str) -> tuple[float, float]:
    model.eval()
    correct = correct_tta = 0
    for i in range(0, len(x), 1000):
        xb = normalise(x[i:i + 1000])
        with autocast(device, precision):
            logits = model(xb).float()
            logits_tta = logits + model(xb.flip(3)).float()
        correct += (logits.argmax(1) == y[i:i + 1000]).sum().item()
        correct_tta += (logits_tta.argmax(1) == y[i:i + 1000]).sum().item()
    return correct / len(x), correct_tta / len(x)


def train(label: str, data, epochs: int, hyp: dict, device: str, precision: str) -> dict:
    torch.manual_seed(hyp["seed"])
    xtr, ytr, xte, yte = data
    model = build(label, device=device, extra=hyp.get("model_kwargs"))
    opt = make_optimizer(model, hyp)
    bs = hyp["batch_size"]
    steps_per_epoch = len(xtr) // bs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, one_cycle(epochs * steps_per_epoch, hyp["warmup_frac"]))
    gen = torch.Generator(device=device).manual_seed(hyp["seed"])
    sync(device)
    clock = pick_clock(device)
    t0 = clock()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(xtr), device=device, generator=gen)
        for s in range(steps_per_epoch):
            idx = order[s * bs:(s + 1) * bs]
            xb = normalise(augment(xtr[idx], hyp["translate_px"], gen))
            with autocast(device, precision):
                loss = F.cross_entropy(model(xb), ytr[idx], label_smoothing=hyp["label_smoothing"])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
    sync(device)
    seconds = clock() - t0
    acc, acc_tta = evaluate(model, xte, yte, device, precision)
    return dict(seconds=seconds, acc=acc, acc_tta=acc_tta)


def parse_kw(text: str) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        key, value = item.split("=", 1)
        if "-" in value.strip("-"):  # tuples: widths=16-32-64-128
            out[key] = tuple(int(v) for v in value.split("-"))
        else:
            out[key] = int(value) if value.lstrip("-").isdigit() else value
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated candidate labels, or 'all'")
    p.add_argument("--epochs", default="", help="comma-separated epochs: train every model for each (a grid)")
    p.add_argument("--budgets", default=",".join(BUDGETS), help="recipes to run when --epochs is not given "
                   f"({', '.join(f'{k}: {v[0]} {v[1]} epochs' for k, v in BUDGETS.items())}); '' for none")
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"))
    p.add_argument("--lr", type=float, default=0.0, help="peak LR (0 = the optimizer's default)")
    p.add_argument("--weight-decay", type=float, default=-1.0, help="(-1 = the optimizer's default)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--warmup-frac", type=float, default=0.2)
    p.add_argument("--translate-px", type=int, default=0, help="random shift in px (0 = flip only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp32"), help="training precision")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default); 1 measures speed "
                   "in CPU time of one core, robust to a busy machine")
    p.add_argument("--iters", type=int, default=4, help="timed steps per speed probe")
    p.add_argument("--kw", default="", help="extra model options, e.g. act=gelu,residual=0-0-1")
    p.add_argument("--speed-only", action="store_true")
    p.add_argument("--no-speed", action="store_true", help="skip the speed probe (GPU grids)")
    return p.parse_args(argv)


def make_hyp(args, **overrides) -> dict:
    hyp = {**HYP, **OPT_DEFAULTS[args.optimizer], "optimizer": args.optimizer, "batch_size": args.batch_size,
           "warmup_frac": args.warmup_frac, "translate_px": args.translate_px, "seed": args.seed,
           "model_kwargs": parse_kw(args.kw)}
    if args.lr:
        hyp["lr"] = args.lr
    if args.weight_decay >= 0:
        hyp["weight_decay"] = args.weight_decay
    return {**hyp, **overrides}


def probe_row(label: str, args, extra: dict) -> str:
    model = build(label, extra=extra)
    params = sum(p.numel() for p in model.parameters())
    mflops = count_flops(model, (1, 28, 28)) / 1e6
    fp32 = bf16 = float("nan")
    if not args.no_speed:
        fp32, bf16 = (speed(label, p, args.device, args.batch_size, args.iters, extra) for p in ("fp32", "bf16"))
    return f"{label:<16} {params:>9,} {mflops:>8.2f} {fp32:>10.0f} {bf16:>10.0f}"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    labels = list(CANDIDATES) if args.models == "all" else args.models.split(",")
    hyp = make_hyp(args)
    print(f"# torch {torch.__version__}, cpu capability {torch.backends.cpu.get_cpu_capability()}, "
          f"threads {torch.get_num_threads()}, device {args.device}, hyp {hyp}, train precision {args.precision}",
          flush=True)
    data = None if args.speed_only else load_fashion(args.device)
    print(f"{'model':<16} {'params':>9} {'MFLOPs':>8} {'img/s fp32':>10} {'img/s bf16':>10} {'epochs':>6} "
          f"{'seconds':>8} {'test acc':>8} {'tta acc':>8}  budget", flush=True)
    rows = {}
    for label in labels:
        rows[label] = probe_row(label, args, hyp["model_kwargs"])
        if args.speed_only or not args.epochs:
            print(rows[label], flush=True)
            continue
        for epochs in [int(e) for e in args.epochs.split(",")]:
            r = train(label, data, epochs, hyp, args.device, args.precision)
            print(f"{rows[label]} {epochs:>6} {r['seconds']:>8.1f} {r['acc']:>8.4f} {r['acc_tta']:>8.4f}", flush=True)
    if args.speed_only or args.epochs:
        return
    for budget in filter(None, args.budgets.split(",")):
        label, epochs, overrides = BUDGETS[budget]
        row = rows.get(label) or probe_row(label, args, hyp["model_kwargs"])
        r = train(label, data, epochs, make_hyp(args, **overrides), args.device, args.precision)
        print(f"{row} {epochs:>6} {r['seconds']:>8.1f} {r['acc']:>8.4f} {r['acc_tta']:>8.4f}  {budget} "
              f"(lr {overrides.get('lr', hyp['lr'])})", flush=True)


if __name__ == "__main__":
    main()
