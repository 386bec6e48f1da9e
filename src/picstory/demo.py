"""`make demo`: a real data set through the whole workflow — export → data check → train → eval → predict.

Fashion-MNIST (Debian's dataset-fashion-mnist) when it is installed, otherwise scikit-learn's digits. Everything
is written under ./demo/; a second run reuses the exported folder and the decode cache.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from .data.builtin import fashion_mnist_dir

ROOT = Path("demo")


def step(title: str, *args: str) -> None:
    print(f"\n$ picstory {' '.join(args)}", flush=True)
    t = time.perf_counter()
    code = subprocess.call([sys.executable, "-m", "picstory", *args])
    if code not in (0, 2):
        sys.exit(f"demo: '{title}' failed with exit code {code}")
    print(f"  ({title}: {time.perf_counter() - t:.0f}s)", flush=True)


def main() -> None:
    name = "fashion-mnist" if fashion_mnist_dir() else "digits"
    if name == "digits":
        print("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist); using digits instead")
    folder = ROOT / f"{name}-png"
    if not (folder / "test").is_dir():
        shutil.rmtree(folder, ignore_errors=True)
        step("export", "data", "export", f"builtin:{name}", str(folder))
    step("data check", "data", "check", str(folder), "--out", str(ROOT / "data-check"))
    step("train", "train", str(folder), "--out", str(ROOT / "runs"), "--name", name)
    run = sorted((ROOT / "runs").glob(f"{name}*"), key=lambda p: p.stat().st_mtime)[-1]
    step("eval", "eval", str(run), "--tta", "flip")
    samples = [sorted(d.iterdir())[0] for d in sorted((folder / "test").iterdir())[:4]]
    step("predict", "predict", str(run), *map(str, samples), "--top-k", "2")
    print(f"\nreport: {(run / 'report.html').resolve()}\nserve it: picstory serve {run}")


if __name__ == "__main__":
    main()
