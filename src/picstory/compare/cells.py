"""One sweep cell: its state on disk, its outcome, and training it — in this process or in a child process.

A child process per cell (``python -m picstory train``) when cells run in parallel: a crash or a memory leak in one
cell cannot take the others with it, each child sets its own thread count, and nothing re-imports the caller's
``__main__`` as multiprocessing's spawn would.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import math
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..device import passive_wait_env
from ..errors import UserError
from ..files import read_json
from ..runs import RunDir


@dataclass(frozen=True)
class Cell:
    name: str
    labels: dict = field(hash=False)  # axis → the value as written (names, tables)
    values: dict = field(hash=False)  # axis → the value as the config holds it
    seed: int | None = None  # set when repeats > 1
    group: str = ""  # the name without the seed: repeats of one setting share it


def inspect_cell(cell_dir: Path) -> tuple[str, dict]:
    """``done`` (a summary with a final stop reason), ``resume`` (a checkpoint to continue from), ``restart`` (a
    folder that never saved a checkpoint) or ``new``; with the summary when there is one."""
    summary = read_json(RunDir(cell_dir).summary)
    reason = summary.get("stop_reason")
    if reason and reason != "interrupted":
        return "done", summary
    if RunDir(cell_dir).last_checkpoint.is_file() or RunDir(cell_dir).folds.is_file():
        return "resume", summary
    return ("restart" if cell_dir.exists() else "new"), {}


def outcome(summary: dict, run_dir: Path) -> tuple[str, str]:
    """(status, reason) of a finished run. Failed: a NaN stop, no validated epoch, or a divergence that stayed
    finite — the training loss rose clearly above a uniform guess's (ln K) and the model ended at chance (no better
    than always answering the largest validation class): the weights blew up and the network went dead."""
    reason = str(summary.get("stop_reason", ""))
    if reason.startswith("nan loss") or summary.get("val_accuracy") is None:
        return "failed", reason
    k = len(summary.get("classes") or [])
    val_counts = list(((summary.get("class_counts") or {}).get("val") or {}).values())
    chance = max(val_counts) / sum(val_counts) if val_counts and sum(val_counts) else 1 / max(k, 1)
    losses = [_float(row.get("train_loss")) for row in read_metrics(run_dir)]
    if k > 1 and losses and max(losses) > 1.2 * math.log(k) and summary["val_accuracy"] <= chance + 0.02:
        return "failed", (f"diverged: train loss rose to {max(losses):.3g}, above a uniform guess's ln {k} = "
                          f"{math.log(k):.2f}, and validation accuracy ended at chance "
                          f"({summary['val_accuracy']:.3f})")
    return "ok", reason


def read_metrics(run_dir: Path) -> list[dict]:
    try:
        with open(RunDir(run_dir).metrics, newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def train_cell(task: dict, callbacks: list | None = None) -> dict:
    """Train (or resume) one cell; never raises for a cell's own failure. Runs in this process or a worker."""
    from ..pipeline.cv_run import train  # a cell with folds is a cross-validation: its summary holds the means

    try:
        if task["resume"]:
            run = train(resume=task["resume"], progress=False, command=task["command"], callbacks=callbacks)
        else:
            run = train(task["data"], progress=False, command=task["command"], callbacks=callbacks,
                        out=task["out"], name=task["name"], **task["overrides"])
    except KeyboardInterrupt:
        return {"status": "interrupted", "reason": "interrupted"}
    except UserError as e:
        return {"status": "failed", "reason": str(e)}
    except Exception as e:  # a crash in one cell (e.g. out of memory) must not cost the rest of the sweep
        return {"status": "failed", "reason": f"crashed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    status, reason = outcome(run.summary, Path(run.path))
    return {"status": status, "reason": reason}


def cell_command(task: dict) -> list[str]:
    """The ``python -m picstory train`` command line that trains (or resumes) a cell in its own process."""
    base = [sys.executable, "-m", "picstory", "train", "--quiet"]
    if task["resume"]:
        return base + ["--resume", task["resume"]]
    args = base + [task["data"], f"--out={task['out']}", f"--name={task['name']}"]
    for key, value in task["overrides"].items():
        flag = key.replace("_", "-")
        if isinstance(value, bool):
            args.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            args.append(f"--{flag}={value}")  # '=' keeps a value that starts with '-' from reading as a flag
    return args


def _train_cell_process(task: dict, log_dir: Path, running: dict) -> dict:
    """One cell in a child process (own interpreter, own threads, own memory): its log goes to log_dir."""
    log_dir.mkdir(exist_ok=True)
    log = log_dir / f"{task['cell']}.log"
    with open(log, "w") as f:
        # cells side by side wait passively: a spinning OpenMP thread steals the core its sibling cell needs
        proc = subprocess.Popen(cell_command(task), stdout=f, stderr=subprocess.STDOUT,
                                env=passive_wait_env(dict(os.environ)))
        running[task["cell"]] = proc
        code = proc.wait()
        running.pop(task["cell"], None)
    if code == 130:
        return {"status": "interrupted", "reason": "interrupted"}
    if code != 0:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        said = next((ln[len("error: "):] for ln in reversed(lines) if ln.startswith("error: ")), None)
        return {"status": "failed", "reason": said or f"crashed (exit {code}): {lines[-1][:200] if lines else ''}"}
    run_dir = Path(task["out"]) / task["name"]
    status, reason = outcome(read_json(RunDir(run_dir).summary), run_dir)
    return {"status": status, "reason": reason}


def run_all(tasks: list[dict], jobs: int, log_dir: Path, callbacks: list | None) -> Iterator[tuple[dict, dict]]:
    """(task, result) as cells finish: in this process for one job, else ``jobs`` child processes at a time."""
    if jobs <= 1:
        for task in tasks:
            result = train_cell(task, callbacks)
            yield task, result
            if result["status"] == "interrupted":
                raise KeyboardInterrupt
        return
    running: dict = {}  # cell → Popen, so that Ctrl-C reaches every child even when sent to this process only
    # the threads only wait; the child processes do the work
    pool = cf.ThreadPoolExecutor(max_workers=jobs)
    try:
        futures = {pool.submit(_train_cell_process, task, log_dir, running): task for task in tasks}
        for future in cf.as_completed(futures):
            yield futures[future], future.result()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in list(running.values()):
            try:  # a Ctrl-C on the terminal reached the children already; one sent to us alone did not
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGINT)  # the child keeps its last finished epoch and exits
                proc.wait()
        raise
    pool.shutdown(wait=True)


__all__ = ["inspect_cell", "outcome", "read_metrics", "train_cell", "cell_command", "run_all"]
