"""Inference speed and accuracy per engine: eager torch, TorchScript, ONNX Runtime fp32 and int8, OpenVINO.

    .venv/bin/python bench/inference.py --run seed-mnist-cnn=runs/A --run picnet-m=runs/B \
        --run efficientnet_lite0=runs/C
    .venv/bin/python bench/inference.py --models seed-mnist-cnn --calls 100        # untrained: speed only

With ``--run LABEL=RUN`` the run's bundle is copied to a temporary folder (the run is not touched), exported with
picstory's own exporters (parity checks included), quantized with ``picstory.deploy.quantize`` calibrated on the run's
training images, and every engine's accuracy is measured on the run's test split. Without a run, a seeded untrained
model is timed and accuracy is left blank. The int8 file is timed even when its gate would refuse it (the gate's
verdict is a column), so the table shows what int8 costs and gains either way.

Engines get the same thread count and are timed in alternating rounds (eager, TorchScript, ORT, …), so a burst of load
from elsewhere on a shared machine hits all of them; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from picstory.data.batches import normalize  # noqa: E402
from picstory.deploy.export import INPUT_NAME, OUTPUT_NAME, WithSoftmax, export, make_session  # noqa: E402
from picstory.models import create_model  # noqa: E402
from picstory.models.bundle import load_bundle, read_meta, save_bundle  # noqa: E402

# label → (arch, in_chans, img_size) for untrained models
MODELS: dict[str, tuple[str, int, int]] = {
    "seed-mnist-cnn": ("seed-mnist-cnn", 1, 28),
    "picnet-m": ("picnet-m", 1, 28),
    "efficientnet_lite0": ("efficientnet_lite0", 3, 224),
}
ENGINES = ("eager", "torchscript", "onnx", "onnx-int8", "openvino")


def prepare(label: str, run: str | None, tmp: Path, n_calib: int, eval_limit: int) -> dict:
    """Bundle copy, exports and the evaluation data of one model."""
    from picstory.deploy.quantize import export_int8
    from picstory.errors import UserError

    bundle = tmp / label / "model"
    if run:
        from picstory.pipeline.int8_run import run_images

        shutil.copytree(Path(run) / "model", bundle)
        for f in bundle.glob("model.*"):
            if f.suffix not in (".json", ".safetensors"):
                f.unlink()  # re-export here, with this picstory and this machine
        calib, images, labels, split = run_images(Path(run), n_calib)
        images, labels = images[:eval_limit], labels[:eval_limit]
    else:
        arch, c, s = MODELS[label]
        torch.manual_seed(0)
        meta = {"arch": arch, "num_classes": 10, "classes": [str(i) for i in range(10)], "in_chans": c,
                "img_size": s, "fit": "crop", "mean": [0.5] * c, "std": [0.5] * c}
        save_bundle(bundle, create_model(arch, 10, c, img_size=s).eval(), meta)
        gen = torch.Generator().manual_seed(0)
        calib = torch.randint(0, 256, (64, c, s, s), generator=gen, dtype=torch.uint8)
        images, labels, split = calib[:32], np.zeros(32, np.int64), "none"
    export(bundle, "onnx", verbose=False)
    export(bundle, "torchscript", verbose=False)
    try:
        export(bundle, "openvino", verbose=False)
    except UserError as e:
        print(f"  {label}: no OpenVINO ({e})", flush=True)
    try:
        gate = export_int8(bundle, calib, images, labels, split, require_faster=False, max_accuracy_drop=100.0,
                           min_agreement=0.0, verbose=False)["gate"]
    except UserError as e:
        print(f"  {label}: no int8 ({e})", flush=True)
        gate = None
    return {"bundle": bundle, "images": images, "labels": labels, "split": split, "gate": gate, "trained": bool(run)}


def engines(prep: dict, threads: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """engine → f(normalised float32 N×C×H×W) → N×K probabilities."""
    bundle = prep["bundle"]
    model, _ = load_bundle(bundle, "cpu")
    eager = WithSoftmax(model).eval()
    eager_cl = copy.deepcopy(eager).to(memory_format=torch.channels_last)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.load(str(bundle / "model.torchscript.pt"), map_location="cpu")

    def torch_fn(m, cl: bool):
        def run(x: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(x)
            with torch.inference_mode():
                return m(t.contiguous(memory_format=torch.channels_last) if cl else t).numpy()
        return run

    def ort_fn(path: Path):
        sess = make_session(path.read_bytes(), threads)
        return lambda x: sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]

    out = {"eager": torch_fn(eager_cl, True), "eager_nchw": torch_fn(eager, False), "torchscript": torch_fn(ts, False),
           "onnx": ort_fn(bundle / "model.onnx")}
    if (bundle / "model.int8.onnx").is_file():
        out["onnx-int8"] = ort_fn(bundle / "model.int8.onnx")
    if (bundle / "model.openvino.xml").is_file():
        from picstory.deploy.openvino_ir import OpenVINOSession

        ov = OpenVINOSession(bundle / "model.openvino.xml", threads)
        out["openvino"] = lambda x: ov.run(None, {INPUT_NAME: x})[0]
    return out


def time_calls(fns: dict[str, Callable], x: np.ndarray, calls: int, rounds: int, warmup: int) -> dict[str, list]:
    for fn in fns.values():
        for _ in range(warmup):
            fn(x)
    times: dict[str, list[float]] = {k: [] for k in fns}
    per_round = max(1, calls // rounds)
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn(x)
                times[name].append(time.perf_counter() - t0)
    return times


def size_mb(bundle: Path, engine: str) -> float:
    files = {"eager": ["model.safetensors"], "torchscript": ["model.torchscript.pt"], "onnx": ["model.onnx"],
             "onnx-int8": ["model.int8.onnx"], "openvino": ["model.openvino.xml", "model.openvino.bin"]}[engine]
    return sum((bundle / f).stat().st_size for f in files) / 1e6


def bench_model(label: str, run: str | None, tmp: Path, args: argparse.Namespace) -> list[dict]:
    prep = prepare(label, run, tmp, args.calibration, args.eval_limit)
    meta = read_meta(prep["bundle"])
    fns = engines(prep, torch.get_num_threads())
    x_all = normalize(prep["images"], tuple(meta["mean"]), tuple(meta["std"])).float().numpy()
    gen = np.random.default_rng(0)
    x1 = np.ascontiguousarray(x_all[:1])
    xb = np.ascontiguousarray(x_all[gen.integers(0, len(x_all), args.batch)])
    px = int(meta["img_size"])
    lat = time_calls(fns, x1, args.calls, args.rounds, warmup=10)
    big = max(args.rounds, args.calls // 8 if px > 64 else args.calls // 2)
    thr = time_calls(fns, xb, big, args.rounds, warmup=2)
    # the eager baseline is its faster memory layout
    if np.median(lat["eager_nchw"]) < np.median(lat["eager"]):
        lat["eager"], thr["eager"] = lat["eager_nchw"], thr["eager_nchw"]
    rows = []
    for engine in ENGINES:
        if engine not in fns:
            continue
        ms = np.array(lat[engine]) * 1e3
        acc = None
        if prep["trained"]:
            probs = np.concatenate([fns[engine](np.ascontiguousarray(x_all[i:i + args.batch]))
                                    for i in range(0, len(x_all), args.batch)])
            acc = float((probs.argmax(1) == prep["labels"]).mean())
        rows.append({"model": label, "px": px, "engine": engine, "p50": float(np.median(ms)),
                     "p99": float(np.percentile(ms, 99)), "ips": args.batch / float(np.median(thr[engine])),
                     "acc": acc, "n": len(prep["labels"]), "split": prep["split"],
                     "mb": size_mb(prep["bundle"], engine)})
    base = next(r for r in rows if r["engine"] == "eager")
    onnx = next(r for r in rows if r["engine"] == "onnx")
    for r in rows:
        r["lat_x"], r["thr_x"] = base["p50"] / r["p50"], r["ips"] / base["ips"]
        r["vs_onnx"] = onnx["p50"] / r["p50"]
    if prep["gate"]:
        g = prep["gate"]
        next(r for r in rows if r["engine"] == "onnx-int8")["gate"] = (
            f"agree {g['top1_agreement']:.1%}, drop {g['accuracy_drop_points']:+.2f} pt")
    print(f"  {label}: done", flush=True)
    return rows


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    b = args.batch
    print(f"| model | px | engine | b1 p50 ms | b1 p99 ms | b1 × eager | b1 × ONNX fp32 | b{b} img/s | b{b} × eager "
          f"| test acc | MB | int8 vs fp32 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        acc = f"{r['acc']:.2%} (n={r['n']})" if r["acc"] is not None else "–"
        print(f"| {r['model']} | {r['px']} | {r['engine']} | {r['p50']:.3f} | {r['p99']:.3f} | {r['lat_x']:.2f}× | "
              f"{r['vs_onnx']:.2f}× | {r['ips']:.0f} | {r['thr_x']:.2f}× | {acc} | {r['mb']:.2f} | "
              f"{r.get('gate', '')} |")
    import onnxruntime

    try:
        import openvino
        ov = openvino.__version__
    except ImportError:
        ov = "not installed"
    print(f"\n{args.calls} batch-1 calls per engine in {args.rounds} alternating rounds; {torch.get_num_threads()} "
          f"threads; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, OpenVINO {ov}; "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", default=[], metavar="LABEL=RUN",
                        help="a trained run per model label (accuracy on its test split)")
    parser.add_argument("--models", default="", help="comma-separated untrained labels to time "
                                                     f"({', '.join(MODELS)}) when no --run is given")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for every engine (0 = all cores)")
    parser.add_argument("--calls", type=int, default=100, help="timed batch-1 calls per engine")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds the calls are split into")
    parser.add_argument("--batch", type=int, default=32, help="batch size of the throughput test")
    parser.add_argument("--calibration", type=int, default=300, help="int8 calibration images from the run")
    parser.add_argument("--eval-limit", type=int, default=2000, help="test images per model for accuracy")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    jobs = [tuple(r.split("=", 1)) for r in args.run] or [
        (m, None) for m in (args.models.split(",") if args.models else MODELS)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="picstory-bench-") as tmp:
        for label, run in jobs:
            rows += bench_model(label, run, Path(tmp), args)
    print()
    print_table(rows, args)


if __name__ == "__main__":
    main()
