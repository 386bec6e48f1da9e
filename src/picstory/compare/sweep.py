"""``picstory sweep``: train every combination of a grid of config values and compare them in one table.

Each cell is an ordinary run directory under ``out/NAME/`` with a name made from its values
(``optimizer=adam,lr=1e-3``), so a sweep resumes by re-running the same command: finished cells are skipped, an
interrupted cell continues from its checkpoint, a cell that never saved one starts again. A cell that fails (bad
setting, NaN loss) is recorded with its reason and the other cells still run.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from .. import config as C
from ..device import cores
from ..errors import ConfigError, UserError
from ..files import read_json
from ..runs import RunDir, slug
from . import report
from .cells import Cell, inspect_cell, run_all

# keys that define where and on what a sweep runs, not what it compares
NOT_AN_AXIS = {"data": "a sweep compares settings on one data set; run one sweep per DATA",
               "out": "the sweep folder is set with --out", "name": "the sweep is named with --name"}
IGNORED_IN_IDENTITY = ("threads",)  # how a cell is run, not what it computes


def parse_grid(grid: Any) -> dict[str, list]:
    """``["optimizer=adam,sgd", "lr=1e-2,1e-3"]``, a YAML file path (a mapping of key → list), or a dict, into
    an ordered ``{key: [values]}``."""
    if isinstance(grid, dict):
        items: list = [grid]
    elif isinstance(grid, (str, Path)):
        items = [grid]
    else:
        items = list(grid or [])
    axes: dict[str, list] = {}
    for item in items:
        for key, values in _parse_item(item).items():
            key = str(key).strip().replace("-", "_")
            if key in axes:
                raise ConfigError(f"--grid: '{key}' is given twice; list all its values once, e.g. {key}=A,B")
            axes[key] = values
    return axes


def _parse_item(item: Any) -> dict:
    if isinstance(item, dict):
        return {k: v if isinstance(v, list) else [v] for k, v in item.items()}
    text = str(item).strip()
    if "=" in text:
        key, _, values = text.partition("=")
        return {key: [v.strip() for v in values.split(",")] if values.strip() else []}
    path = Path(text)
    if path.suffix.lower() in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"--grid {text}: grid file not found")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"--grid {text}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"--grid {text}: expected a mapping of config keys to lists of values")
        return _parse_item(loaded)
    raise ConfigError(f"--grid {text!r}: expected KEY=V1,V2 (e.g. lr=1e-2,1e-3) or a YAML grid file")


def validate_grid(axes: dict[str, list], overrides: dict, repeats: int) -> dict[str, list[tuple[str, Any]]]:
    """Each axis as ``[(label, value)]``; every key and value checked against the config before any training."""
    if not axes:
        raise ConfigError("empty grid: give at least one --grid KEY=V1,V2 (e.g. --grid lr=1e-2,1e-3)")
    if repeats < 1:
        raise ConfigError(f"--repeats must be ≥ 1, got {repeats}")
    checked: dict[str, list[tuple[str, Any]]] = {}
    for key, values in axes.items():
        if key in NOT_AN_AXIS:
            raise ConfigError(f"--grid cannot vary '{key}': {NOT_AN_AXIS[key]}")
        if not values or any(v is None or str(v).strip() == "" for v in values):
            raise ConfigError(f"--grid {key}: empty value; write {key}=V1,V2")
        try:
            pairs = [(str(v), C.coerce(key, v)) for v in values]
        except ConfigError as e:
            raise ConfigError(f"--grid: {e}") from None
        labels = [label for label, _ in pairs]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"--grid {key}: a value is listed twice ({', '.join(labels)})")
        if key in overrides:
            raise ConfigError(f"'{key}' is both a grid axis and a fixed option ({overrides[key]}); drop one")
        if key == "seed" and repeats > 1:
            raise ConfigError("--repeats varies the seed already; drop seed from --grid or use --repeats 1")
        checked[key] = pairs
    return checked


def make_cells(axes: dict[str, list[tuple[str, Any]]], repeats: int, base_seed: int) -> list[Cell]:
    """The grid's product in order (first axis slowest), each setting ``repeats`` times with seeds base + r."""
    cells = []
    for combo in itertools.product(*axes.values()):
        labels = {k: label for k, (label, _) in zip(axes, combo)}
        values = {k: value for k, (_, value) in zip(axes, combo)}
        group = ",".join(f"{k}={_slug_value(v)}" for k, v in labels.items())
        for r in range(repeats):
            seed = base_seed + r if repeats > 1 else None
            name = group + (f",seed={seed}" if seed is not None else "")
            cells.append(Cell(_short(name), labels, values, seed, _short(group)))
    names = [c.name for c in cells]
    if len(set(names)) != len(names):  # two values that slug alike (paths): keep every folder distinct
        cells = [Cell(f"{c.name}-{_digest(repr((c.values, c.seed)))}", c.labels, c.values, c.seed,
                      f"{c.group}-{_digest(repr(c.values))}") for c in cells]
    return cells


def _slug_value(v: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+=-]+", "-", str(v).replace(",", "+")).strip("-") or "empty"


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _short(name: str, limit: int = 120) -> str:
    return name if len(name) <= limit else f"{name[:limit - 9]}-{_digest(name)}"


def _identity(data: str, axes: dict, overrides: dict, repeats: int) -> dict:
    return {"data": data, "grid": {k: [label for label, _ in v] for k, v in axes.items()},
            "overrides": {k: v for k, v in overrides.items() if k not in IGNORED_IN_IDENTITY}, "repeats": repeats}


def _differences(old: dict, new: dict) -> list[str]:
    diffs = []
    if old.get("data") != new["data"]:
        diffs.append(f"data {old.get('data')} → {new['data']}")
    og, ng = old.get("grid", {}), new["grid"]
    for k in list(og) + [k for k in ng if k not in og]:
        if og.get(k) != ng.get(k):
            before = ",".join(og[k]) if k in og else "(not an axis)"
            after = ",".join(ng[k]) if k in ng else "(not an axis)"
            diffs.append(f"grid {k}: {before} → {after}")
    oo, no = old.get("overrides", {}), new["overrides"]
    for k in sorted(set(oo) | set(no)):
        if oo.get(k) != no.get(k):
            diffs.append(f"--{k.replace('_', '-')} {oo.get(k, '(default)')} → {no.get(k, '(default)')}")
    if old.get("repeats", 1) != new["repeats"]:
        diffs.append(f"--repeats {old.get('repeats', 1)} → {new['repeats']}")
    return diffs


def _open_sweep_dir(path: Path, identity: dict) -> dict:
    """The sweep's record: the existing one when this is the same sweep again, a new one for a new folder."""
    record_path = path / "sweep.json"
    if record_path.is_file():
        old = read_json(record_path)
        diffs = _differences(old, identity)
        if diffs:
            raise UserError(f"{path} holds a different sweep ({'; '.join(diffs)}); repeat its original options to "
                            "resume it, or pass --name NEW for a new sweep")
        return old
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"{path} exists and is not a sweep folder (no sweep.json); pass --name NEW or --out DIR")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the sweep folder {path}: {e.strerror}; choose another with --out") from None
    return {**identity, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _write_record(path: Path, record: dict) -> None:
    from ..files import atomic_write

    atomic_write(path / "sweep.json", json.dumps(record, indent=1))


def sweep(data: str, grid: Any, repeats: int = 1, jobs: int = 1, name: str = "", out: str = "runs",
          command: str = "", callbacks: list | None = None, progress: bool = True, **train_overrides) -> dict:
    """Train every cell of ``grid`` on ``data`` with ``train_overrides`` fixed; write comparison.csv/.md/.html in
    ``out/NAME`` and return ``{"table", "dir", "rows", "best", ...}``. ``jobs`` > 1 trains cells in parallel
    processes (``python -m picstory train``) with the cores split between them; ``callbacks`` reach cells trained
    in this process (jobs 1 only). One job is the default: a child process costs ~4 s of CPU to start, more than
    parallel small cells gain on 2 cores (6 digits cells: 15–33 s with 1 job, 23–40 s with 2)."""
    from ..data import sources

    overrides = {k: C.coerce(k, v) for k, v in train_overrides.items() if v is not None}
    axes = validate_grid(parse_grid(grid), overrides, repeats)
    if jobs < 1:
        raise ConfigError(f"--jobs must be ≥ 1, got {jobs}")
    if callbacks and jobs > 1:
        raise ValueError("callbacks need jobs=1: cells trained in other processes cannot call them")
    sources.resolve(data, **C.label_file_options(overrides))  # fail before any cell
    cells = make_cells(axes, repeats, int(overrides.get("seed", 0)))
    path = Path(out or "runs") / (name or f"sweep-{slug(data)}")
    record = _open_sweep_dir(path, _identity(data, axes, overrides, repeats))
    record["command"] = command or record.get("command", "")
    record["cells"] = [c.name for c in cells]
    results: dict = record.setdefault("results", {})
    tasks, states = [], {}
    for cell in cells:
        state, _ = inspect_cell(path / cell.name)
        states[state] = states.get(state, 0) + 1
        if state == "done":
            continue
        if state == "restart":
            shutil.rmtree(path / cell.name)  # a cell that died before its first checkpoint has nothing to keep
        cell_overrides = {**overrides, **cell.values, **({"seed": cell.seed} if cell.seed is not None else {})}
        tasks.append({"cell": cell.name, "data": data, "out": str(path), "name": cell.name, "command": command,
                      "overrides": cell_overrides, "resume": str(path / cell.name) if state == "resume" else None})
    jobs = max(1, min(jobs, len(tasks)))
    threads = int(overrides.get("threads") or max(1, cores() // jobs))  # cores: affinity and cgroup quota
    if jobs > 1 and "threads" not in overrides:  # cells at once share the cores instead of fighting over them
        for task in tasks:
            task["overrides"]["threads"] = threads
    _write_record(path, record)
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    say(f"sweep {path}: {len(cells)} cells ({states.get('done', 0)} finished, {states.get('resume', 0)} to resume, "
        f"{len(tasks) - states.get('resume', 0)} to train){f', {jobs} jobs × {threads} threads' if jobs > 1 else ''}")
    try:
        for k, (task, result) in enumerate(run_all(tasks, jobs, path / "logs", callbacks), 1):
            results[task["cell"]] = result
            if result["status"] == "failed" and inspect_cell(path / task["cell"])[0] == "restart":
                # failed before its first checkpoint: the folder holds no results, only a ghost for `picstory runs`
                shutil.rmtree(path / task["cell"], ignore_errors=True)
            _write_record(path, record)
            say(f"[{k}/{len(tasks)}] {task['cell']}: {_result_line(path / task['cell'], result)}")
    except KeyboardInterrupt:
        _write_record(path, record)
        say(f"sweep interrupted; run the same command again to resume ({path})")
        raise
    return report.write_comparison(path, cells, record, repeats)


def _result_line(cell_dir: Path, result: dict) -> str:
    if result["status"] != "ok":
        return f"{result['status']}: {result['reason']}"
    s = read_json(RunDir(cell_dir).summary)
    test = s.get("test_accuracy")
    return (f"val {s.get('val_accuracy', 0):.4f}" + (f"  test {test:.4f}" if test is not None else "") +
            f"  {s.get('epochs_run')} epochs  {s.get('train_seconds', 0):.1f}s  ({result['reason']})")


__all__ = ["sweep", "parse_grid", "validate_grid", "make_cells", "Cell"]
