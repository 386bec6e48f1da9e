"""Many runs at once: N concurrent `picstory train` processes of one config, aggregate images/s vs one run alone.

    python bench/concurrency.py                        # N = 1, 2, 4; builtin:digits, picnet-s, 3 epochs
    python bench/concurrency.py --n 1,2,4,8 --rounds 2
    python bench/concurrency.py --data builtin:fashion-mnist --limit-per-class 300 --epochs 1

Two modes, interleaved at every N so that changes in the machine's load hit both:
- policy:   the picstory CLI as it is — each run registers itself, takes cores // live runs threads (re-checked every
            few seconds) and its OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE, set before torch loads).
- defaults: plain torch defaults — every run uses all cores (--threads = cores) and OpenMP's default wait policy.
A run's images/s is its training images × epochs over its train_seconds (summary.json). The aggregate is all runs'
images over the span from the first run's training start to the last one's end (env.json's start + train_seconds):
runs whose start-up (imports, data) staggers them do not count as overlapping when they did not.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def start(mode: str, i: int, n: int, args, out: str) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    extra = []
    if mode == "defaults":
        env["OMP_WAIT_POLICY"] = ""  # set, so the CLI leaves it alone; empty, so OpenMP keeps its default
        extra = ["--threads", str(len(os.sched_getaffinity(0)))]
    cmd = [sys.executable, "-m", "picstory", "train", args.data, "--model", args.model, "--epochs", str(args.epochs),
           "--limit-per-class", str(args.limit_per_class), "--preset", "fast", "--patience", "0",
           "--out", out, "--name", f"{mode}-n{n}-{i}", "--quiet", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def batch(mode: str, n: int, args, out: str) -> dict:
    t = time.perf_counter()
    procs = [start(mode, i, n, args, out) for i in range(n)]
    rates, spans, total = [], [], 0
    for i, p in enumerate(procs):
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"{mode} n={n} run {i} failed:\n{err[-2000:]}")
        run = max(Path(out).glob(f"{mode}-n{n}-{i}*"), key=lambda d: d.stat().st_mtime)
        s = json.loads((run / "summary.json").read_text())
        images = sum(s["class_counts"]["train"].values()) * s["epochs_run"]
        rates.append(images / s["train_seconds"])
        begin = datetime.datetime.fromisoformat(json.loads((run / "env.json").read_text())["started"]).timestamp()
        spans.append((begin, begin + s["train_seconds"]))
        total += images
    span = max(e for _, e in spans) - min(b for b, _ in spans)
    return {"mode": mode, "n": n, "rates": rates, "aggregate": total / span, "sum_of_rates": sum(rates),
            "wall": time.perf_counter() - t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="builtin:digits")
    ap.add_argument("--limit-per-class", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--model", default="picnet-s")
    ap.add_argument("--n", default="1,2,4")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="picstory-bench-conc-")
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} cores, load average {os.getloadavg()[0]:.1f}; {args.data} ({args.limit_per_class}/class), "
          f"{args.model}, {args.epochs} epoch(s); date {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    batch("policy", 1, args, out)  # warm-up: the decode cache and the precision probe, not timed
    results: dict = {}
    for _ in range(args.rounds):
        for n in [int(x) for x in args.n.split(",")]:
            for mode in ("policy", "defaults"):
                r = batch(mode, n, args, out)
                results.setdefault((mode, n), []).append(r)
                print(f"{mode:>8} N={n}: aggregate {r['aggregate']:7.0f} img/s (sum of rates "
                      f"{r['sum_of_rates']:.0f}), per run "
                      + " ".join(f"{x:.0f}" for x in r["rates"]) + f"  ({r['wall']:.0f}s wall, load "
                      f"{os.getloadavg()[0]:.1f})", flush=True)
    best = {k: max(v, key=lambda r: r["aggregate"]) for k, v in results.items()}
    print("\n| mode | N | aggregate img/s | per run img/s | × same mode N=1 | × policy N=1 |")
    print("|---|---|---|---|---|---|")
    for (mode, n), r in sorted(best.items(), key=lambda kv: (kv[0][1], kv[0][0] != "policy")):
        one = best.get((mode, 1), r)["aggregate"]
        pol = best.get(("policy", 1), r)["aggregate"]
        print(f"| {mode} | {n} | {r['aggregate']:.0f} | {sum(r['rates']) / len(r['rates']):.0f} | "
              f"{r['aggregate'] / one:.2f} | {r['aggregate'] / pol:.2f} |")


if __name__ == "__main__":
    main()
