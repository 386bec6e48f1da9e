"""HTTP serving under load: req/s and p50 / p99 latency of `picstory serve`, with and without micro-batching.

    .venv/bin/python bench/serve_load.py                          # seed CNN on Fashion-MNIST + EfficientNet-Lite0
    .venv/bin/python bench/serve_load.py --models seed-mnist-cnn --requests 1000 --concurrency 16

For each model a bundle is saved, then the real server (``serve()``, uvicorn, one worker, prediction log on) is
started on a free loopback port, and ``--concurrency`` client threads send ``--requests`` single-image POSTs
(keep-alive, one httpx client per thread) after a short warm-up. The peer is the same server with ``max_batch=1``:
identical HTTP, decode and logging, only the model sees one image per call — the ratio is what micro-batching buys.
Both servers run at once and are loaded in alternating rounds. Clients and servers share the machine's cores, so
absolute figures are a floor; compare the ratio of one run.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from picstory.config import BACKENDS  # noqa: E402
from picstory.models import create_model  # noqa: E402
from picstory.models.bundle import read_meta, save_bundle  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def fashion_pngs(n: int) -> list[bytes]:
    """Real Fashion-MNIST test images as PNG bytes (random grey 28 px images when the data set is absent)."""
    if FASHION.is_file():
        raw = gzip.decompress(FASHION.read_bytes())
        images = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    else:
        images = np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    return [_encode(Image.fromarray(a), "PNG") for a in images]


def photo_jpegs(n: int, size: tuple[int, int] = (400, 300)) -> list[bytes]:
    """Smooth colour 400×300 JPEGs: a realistic decode + resize cost for a 224 px model."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size[1], 0:size[0]] / max(size)
    out = []
    for _ in range(n):
        f = rng.uniform(2, 9, 3)
        img = np.stack([np.sin(f[c] * (x + rng.uniform()) + f[(c + 1) % 3] * y) for c in range(3)], -1)
        out.append(_encode(Image.fromarray(((img + 1) * 127.5).astype(np.uint8)), "JPEG"))
    return out


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, quality=90) if fmt == "JPEG" else img.save(buf, fmt)
    return buf.getvalue()


def make_bundle(arch: str, root: Path, backend: str = "torch") -> tuple[Path, list[bytes], str]:
    if arch == "efficientnet_lite0":
        model = create_model(arch, 1000, 3, pretrained=True)
        c, s, classes, images = 3, 224, [f"class_{i}" for i in range(1000)], photo_jpegs(32)
    else:
        model = create_model(arch, 10, 1, img_size=28)
        c, s, classes, images = 1, 28, [str(i) for i in range(10)], fashion_pngs(256)
    cfg = model.picstory_cfg
    meta = {"arch": arch, "model_kwargs": {}, "num_classes": len(classes), "classes": classes, "in_chans": c,
            "img_size": s, "fit": "crop", "mean": list(cfg["mean"]), "std": list(cfg["std"]), "data": "bench",
            "data_fingerprint": "bench", "metrics": {}}
    ctype = "image/jpeg" if c == 3 else "image/png"
    bundle = save_bundle(root / arch / "model", model, meta)
    if backend == "onnx-int8":
        quantize_for_bench(bundle, images)
    return bundle.parent, images, ctype


def quantize_for_bench(bundle: Path, images: list[bytes]) -> None:
    """The int8 file for ``--backend onnx-int8``: calibrated and gated on the served images, the fp32 model's answers
    standing in for labels (an untrained bench model has none); the limits are off — this measures speed."""
    import torch

    from picstory.data.batches import normalize
    from picstory.deploy.export import export, make_session, run_onnx
    from picstory.deploy.preprocess import preprocess
    from picstory.deploy.quantize import export_int8

    meta = read_meta(bundle)
    x = torch.stack([preprocess(img, meta) for img in images])
    export(bundle, "onnx", verbose=False)
    x_norm = normalize(x, tuple(meta["mean"]), tuple(meta["std"]))
    ref = run_onnx(make_session((bundle / "model.onnx").read_bytes()), x_norm)
    g = export_int8(bundle, x, x, ref.argmax(1), "served images", min_agreement=0.0, max_accuracy_drop=100.0,
                    require_faster=False, verbose=False)["gate"]
    print(f"  int8: agreement with fp32 {g['top1_agreement']:.1%} on {g['images']} served images, batch-1 "
          f"{g['fp32_latency_ms']:.2f} → {g['int8_latency_ms']:.2f} ms", flush=True)


@contextlib.contextmanager
def server(run: Path, log: Path, threads: int, **kw):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = {"port": port, "log_path": str(log), **kw}
    code = (f"import torch; torch.set_num_threads({threads}); from picstory.deploy.serve import serve; "
            f"serve({str(run)!r}, **{args!r})")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health/ready", timeout=5).status_code == 200:
                    break
            time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def send(pool: ThreadPoolExecutor, url: str, images: list[bytes], ctype: str, requests: int) -> dict:
    """``requests`` POSTs through the pool's threads (one keep-alive client per thread): latencies, codes, wall."""
    local = threading.local()

    def one(i: int) -> tuple[float, int]:
        client = getattr(local, "client", None) or httpx.Client(timeout=120)
        local.client = client
        t0 = time.perf_counter()
        r = client.post(f"{url}/predict?top_k=1", content=images[i % len(images)], headers={"content-type": ctype})
        return time.perf_counter() - t0, r.status_code

    t0 = time.perf_counter()
    results = list(pool.map(one, range(requests)))
    return {"ms": [t * 1e3 for t, _ in results], "codes": [c for _, c in results], "wall": time.perf_counter() - t0}


def compare(run: Path, images: list[bytes], ctype: str, tmp: Path, args, threads: int) -> list[dict]:
    """Both servers up at once, loaded in alternating rounds, so a burst of load from elsewhere hits both."""
    sizes = (32, 1)
    totals = {b: {"ms": [], "codes": [], "wall": 0.0} for b in sizes}
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(args.concurrency) as pool:
        urls = {b: stack.enter_context(server(run, tmp / f"{run.name}-{b}.sqlite", threads, max_batch=b,
                                              device=args.device, backend=args.backend)) for b in sizes}
        for b in sizes:
            send(pool, urls[b], images, ctype, 4 * args.concurrency)  # warm-up: connections, first batches
        for _ in range(args.rounds):
            for b in sizes:
                r = send(pool, urls[b], images, ctype, args.requests // args.rounds)
                totals[b] = {k: totals[b][k] + r[k] for k in r}
    rows = []
    for b in sizes:
        t = totals[b]
        rows.append({"model": run.name, "max_batch": b, "rps": len(t["ms"]) / t["wall"],
                     "p50": float(np.median(t["ms"])), "p99": float(np.percentile(t["ms"], 99)),
                     "ok": t["codes"].count(200), "other": len(t["codes"]) - t["codes"].count(200)})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="seed-mnist-cnn,efficientnet_lite0")
    p.add_argument("--requests", type=int, default=400, help="timed requests per server")
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds the requests are split into")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="torch threads in the server (0 = all cores)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="torch", choices=BACKENDS,
                   help="onnx-int8: quantized here, calibrated on the served images (gate limits off: speed only)")
    args = p.parse_args(argv)
    threads = args.threads or os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="picstory-serve-bench-") as tmp:
        for arch in [m for m in args.models.split(",") if m]:
            run, images, ctype = make_bundle(arch, Path(tmp), args.backend)
            rows += compare(run, images, ctype, Path(tmp), args, threads)
            print(f"  {arch}: done", flush=True)
    head = f"{'model':<20} {'max_batch':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'200':>5} {'other':>5}"
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['model']:<20} {r['max_batch']:>9} {r['rps']:>8.1f} {r['p50']:>8.1f} {r['p99']:>8.1f} "
              f"{r['ok']:>5} {r['other']:>5}")
    for arch in dict.fromkeys(r["model"] for r in rows):
        a, b = [r for r in rows if r["model"] == arch]
        print(f"{arch}: micro-batching {a['rps'] / b['rps']:.2f}× the req/s of max_batch=1, "
              f"p99 {a['p99']:.0f} vs {b['p99']:.0f} ms")
    print(f"\n{args.requests} requests per server in {args.rounds} alternating rounds, {args.concurrency} client "
          f"threads, loopback, server torch threads {threads}, device {args.device}, backend {args.backend}, "
          "1 uvicorn worker")


if __name__ == "__main__":
    main()
