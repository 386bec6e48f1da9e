"""Inference speed: eager torch vs ONNX Runtime on the CPU, batch-1 latency and batch-32 throughput.

    .venv/bin/python bench/inference.py                                   # seed CNN, PicNet, EfficientNet-Lite0
    .venv/bin/python bench/inference.py --models seed-mnist-cnn --calls 500 --threads 1

Each model is saved as a bundle and exported with ``picstory.deploy.export`` (parity check included), so the ONNX
file is exactly what ``picstory serve --backend onnx`` runs. Both backends compute the same thing — model +
softmax on a normalised float32 batch — and get the same thread count. Eager is given its best plain setup:
eval mode, ``torch.inference_mode``, channels_last weights and inputs, ``torch.set_num_threads``.

The machine is shared, so the two backends are timed in alternating rounds (eager, ORT, eager, ORT, …): a burst of
load from elsewhere hits both rather than one. Compare the ratios of one run; absolute milliseconds move around.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from picstory.deploy.export import INPUT_NAME, OUTPUT_NAME, WithSoftmax, export, make_session  # noqa: E402
from picstory.models import create_model, list_models  # noqa: E402
from picstory.models.bundle import save_bundle  # noqa: E402

# label → (arch, in_chans, img_size)
MODELS: dict[str, tuple[str, int, int]] = {
    "seed-mnist-cnn": ("seed-mnist-cnn", 1, 28),
    "efficientnet_lite0": ("efficientnet_lite0", 3, 224),
}


def fast_model() -> str | None:
    """The PicNet size ``--model auto`` picks for Fashion-MNIST-sized data, when the registry has the family."""
    names = [n for n in list_models("picnet") if n.startswith("picnet")]
    return "picnet-m" if "picnet-m" in names else (names[0] if names else None)


def build(label: str, directory: Path) -> tuple[torch.nn.Module, object, tuple[int, int, int]]:
    arch, c, s = MODELS.get(label) or (label, 1, 28)
    torch.manual_seed(0)
    model = create_model(arch, 10, c, img_size=s).eval()
    meta = {"arch": arch, "num_classes": 10, "classes": [str(i) for i in range(10)], "in_chans": c,
            "img_size": s, "fit": "crop", "mean": [0.5] * c, "std": [0.5] * c}
    bundle = save_bundle(directory / label, model, meta)
    record = export(bundle, "onnx", verbose=False)
    parity = record["parity"]
    print(f"  {label}: exported, parity max |Δp| {parity['max_abs_diff']:.1e}, "
          f"top-1 {parity['top1_agreement']:.0%}", flush=True)
    session = make_session((bundle / "model.onnx").read_bytes())
    return WithSoftmax(model).eval(), session, (c, s, s)


def runners(eager: torch.nn.Module, session, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    """Eager in both memory layouts (channels_last is picstory's default; plain NCHW can win at batch 1, and the
    baseline should be eager's best), and ORT on the same numbers."""
    import copy

    eager_cl = copy.deepcopy(eager).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    x_np = np.ascontiguousarray(x.numpy())

    def run_eager_cl():
        with torch.inference_mode():
            return eager_cl(x_cl)

    def run_eager_nchw():
        with torch.inference_mode():
            return eager(x)

    def run_ort():
        return session.run([OUTPUT_NAME], {INPUT_NAME: x_np})

    return {"eager_cl": run_eager_cl, "eager_nchw": run_eager_nchw, "ort": run_ort}


def time_calls(fns: dict[str, Callable[[], object]], calls: int, rounds: int, warmup: int) -> dict[str, list[float]]:
    """Per-call seconds for each function, measured in alternating rounds after a warm-up."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    per_round = max(1, calls // rounds)
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return times


def bench_model(label: str, directory: Path, args: argparse.Namespace) -> dict:
    eager, session, shape = build(label, directory)
    gen = torch.Generator().manual_seed(0)
    x1 = torch.randn(1, *shape, generator=gen)
    x32 = torch.randn(args.batch, *shape, generator=gen)
    lat = time_calls(runners(eager, session, x1), args.calls, args.rounds, warmup=20)
    big_calls = max(args.rounds, int(args.calls * 2 / args.batch) if shape[-1] > 64 else args.calls // 4)
    thr = time_calls(runners(eager, session, x32), big_calls, args.rounds, warmup=3)
    row = {"model": label, "px": shape[-1]}
    for backend in lat:
        ms = np.array(lat[backend]) * 1e3
        row[f"{backend}_p50"] = float(np.median(ms))
        row[f"{backend}_p90"] = float(np.percentile(ms, 90))
        row[f"{backend}_ips"] = args.batch / statistics.median(thr[backend])
    # the eager baseline is its better layout, chosen separately for latency and for throughput
    best = min(("eager_cl", "eager_nchw"), key=lambda b: row[f"{b}_p50"])
    row["eager_layout"] = "CL" if best == "eager_cl" else "NCHW"
    row["eager_p50"], row["eager_p90"] = row[f"{best}_p50"], row[f"{best}_p90"]
    best_thr = max(("eager_cl", "eager_nchw"), key=lambda b: row[f"{b}_ips"])
    row["eager_ips"], row["eager_thr_layout"] = row[f"{best_thr}_ips"], "CL" if best_thr == "eager_cl" else "NCHW"
    row["lat_ratio"] = row["eager_p50"] / row["ort_p50"]
    row["thr_ratio"] = row["ort_ips"] / row["eager_ips"]
    return row


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    head = (f"{'model':<20} {'px':>4}  {'eager p50 ms':>15} {'p90':>7}  {'ORT p50 ms':>10} {'p90':>7}  "
            f"{'ORT/eager b1':>12}  {'eager img/s':>14} {'ORT img/s':>10}  {'ORT/eager b' + str(args.batch):>13}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['model']:<20} {r['px']:>4}  {r['eager_layout']:>5} {r['eager_p50']:>9.3f} {r['eager_p90']:>7.3f}  "
              f"{r['ort_p50']:>10.3f} {r['ort_p90']:>7.3f}  {r['lat_ratio']:>11.2f}×  "
              f"{r['eager_thr_layout']:>5} {r['eager_ips']:>8.0f} {r['ort_ips']:>10.0f}  {r['thr_ratio']:>12.2f}×")
    print(f"\nratio = eager time / ORT time at batch 1 (speed-up of ORT), ORT img/s / eager img/s at batch "
          f"{args.batch}; eager = its faster layout (CL channels_last | NCHW); {args.calls} batch-1 calls per "
          f"backend in {args.rounds} alternating rounds; {torch.get_num_threads()} threads; torch "
          f"{torch.__version__}, onnxruntime {ort_version()}")


def ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated labels (default: seed CNN, PicNet, "
                                                     "EfficientNet-Lite0)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for both backends (0 = all cores)")
    parser.add_argument("--calls", type=int, default=200, help="timed batch-1 calls per backend")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds the calls are split into")
    parser.add_argument("--batch", type=int, default=32, help="batch size of the throughput test")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    labels = [m for m in args.models.split(",") if m] or [
        x for x in ("seed-mnist-cnn", fast_model(), "efficientnet_lite0") if x]
    rows = []
    with tempfile.TemporaryDirectory(prefix="picstory-bench-") as tmp:
        for label in labels:
            rows.append(bench_model(label, Path(tmp), args))
    print()
    print_table(rows, args)


if __name__ == "__main__":
    main()
