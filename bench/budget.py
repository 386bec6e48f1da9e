"""Accuracy vs time budget on Fashion-MNIST: `picstory train --time-budget B` next to the plain recipe stopped at
the same wall time.

    python bench/budget.py                    # budgets 1m, 2m, 5m, 10m
    python bench/budget.py --budgets 1m,2m    # a subset

For every budget, interleaved:
- picstory: `picstory train builtin:fashion-mnist --time-budget B` (default preset), the real CLI path in its own
  process; wall time from process start to exit, measured here.
- recipe: bench/fashion.py's reference (torchvision Dataset + DataLoader(64) + seed-mnist-cnn + Adam 1e-3, early
  stopping on an 80/20 split), in its own process, training until B (from its process start) minus a reserve for
  its test pass, then the test accuracy of its best validated weights (the current ones when no epoch finished).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECIPE_TEST_RESERVE_S = 6.0  # its 10,000-image test pass (DataLoader, batch 256) on 2 cores


def recipe_child(budget_s: float) -> None:
    sys.path.insert(0, str(HERE))
    from fashion import reference
    from picstory.device import process_age

    started = time.perf_counter() - process_age()
    r = reference(deadline=started + budget_s - RECIPE_TEST_RESERVE_S)
    print("RESULT " + json.dumps(r), flush=True)


def run_picstory(budget: str, out: str) -> dict:
    name = f"budget-{budget}"
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "picstory", "train", "builtin:fashion-mnist", "--time-budget", budget,
                           "--out", out, "--name", name, "--quiet"], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"picstory --time-budget {budget} failed:\n{proc.stderr[-3000:]}")
    run = max(Path(out).glob(f"{name}*"), key=lambda p: p.stat().st_mtime)
    s = json.loads((run / "summary.json").read_text())
    plan = s.get("time_budget", {})
    return {"test_accuracy": s["test_accuracy"], "wall": wall, "epochs_run": s["epochs_run"],
            "planned": plan.get("epochs"), "model": s["model"], "stop": s["stop_reason"], "plan": plan,
            "plan_line": (f"plan {plan.get('model')}, {plan.get('epochs')} epochs"
                          + (f" over {100 * plan['fraction']:.0f} % of the data" if plan.get("fraction", 1) < 1 else "")
                          + f" × {plan.get('epoch_s')}s after {plan.get('spent_s')}s, predicted "
                          f"{plan.get('predicted_s')}s, actual {plan.get('actual_s')}s")}


def run_recipe(budget_s: float) -> dict:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--recipe-child", str(budget_s)], capture_output=True, text=True)
    wall = time.perf_counter() - t
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"recipe failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(lines[-1][7:]), "wall": wall}


def main() -> None:
    from picstory.config import parse_duration

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", default="1m,2m,5m,10m")
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", choices=("picstory", "recipe"), default=None, help="one side only")
    ap.add_argument("--recipe-child", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.recipe_child is not None:
        return recipe_child(args.recipe_child)
    out = args.out or tempfile.mkdtemp(prefix="picstory-bench-budget-")
    print(f"{len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.1f}, "
          f"date {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    rows = []
    for budget in args.budgets.split(","):
        seconds = parse_duration(budget)
        p = run_picstory(budget, out) if args.only != "recipe" else None
        r = run_recipe(seconds) if args.only != "picstory" else None
        rows.append((budget, seconds, p, r))
        if p:
            print(f"{budget:>4} picstory: {p['test_accuracy']:.4f} in {p['wall']:.0f}s wall "
              f"({100 * p['wall'] / seconds:.0f} % of budget), {p['model']} {p['epochs_run']}/{p['planned']} epochs "
              f"({p['stop']}); {p['plan_line']}", flush=True)
        if r:
            print(f"{budget:>4}   recipe: {r['test_accuracy']:.4f} in {r['wall']:.0f}s wall, {r['epochs']} full "
                  f"epochs, {r.get('steps')} steps (setup {r.get('setup_s')}s, training {r['seconds']:.0f}s, test "
                  f"{r.get('test_s')}s), load {os.getloadavg()[0]:.1f}", flush=True)
    print("\n| budget | picstory test acc | wall (% of budget) | model, epochs run / planned | stop | "
          "recipe test acc | recipe wall | recipe epochs |")
    print("|---|---|---|---|---|---|---|---|")
    for budget, seconds, p, r in rows:
        ours = (f"{p['test_accuracy']:.4f} | {p['wall']:.0f}s ({100 * p['wall'] / seconds:.0f} %) | {p['model']}, "
                f"{p['epochs_run']}/{p['planned']} | {p['stop']}") if p else "– | – | – | –"
        theirs = f"{r['test_accuracy']:.4f} | {r['wall']:.0f}s | {r['epochs']}" if r else "– | – | –"
        print(f"| {budget} | {ours} | {theirs} |")


if __name__ == "__main__":
    main()
