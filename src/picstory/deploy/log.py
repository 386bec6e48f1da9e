"""The prediction log: one SQLite row per served prediction, written off the request path.

Rows are queued by the server and inserted in batches by one writer thread, so a request never waits on the disk.
WAL mode lets `picstory monitor` (and several server workers) read and write the same file at once. With a store
directory the raw input bytes are kept as ``<sha256>.<ext>`` so a person can look at and relabel what the model saw.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import re
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..models.bundle import find_bundle

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,            -- unix seconds, UTC
    model_sha256 TEXT,
    input_sha256 TEXT NOT NULL,
    width INTEGER,
    height INTEGER,
    top1_label TEXT,
    top1_prob REAL,
    topk_json TEXT,                -- [{"label", "probability"}, ...], most probable first
    latency_ms REAL,
    stored_path TEXT,              -- absolute path of the stored input, NULL when inputs are not stored
    unknown INTEGER                -- 1: answered "unknown" (out of distribution or below --min-confidence)
);
CREATE INDEX IF NOT EXISTS predictions_time ON predictions(time);
"""
COLUMNS = ("time", "model_sha256", "input_sha256", "width", "height", "top1_label", "top1_prob", "topk_json",
           "latency_ms", "stored_path", "unknown")
# only files this module wrote are ever deleted by the size cap
_STORED_NAME = re.compile(r"^[0-9a-f]{64}\.[a-z0-9]{1,5}$")
_STOP = object()


@dataclass(frozen=True)
class Entry:
    """One prediction as the server hands it to the log."""

    model_sha256: str
    input_sha256: str
    width: int
    height: int
    predictions: list[dict]  # [{"label", "probability"}], most probable first
    latency_ms: float
    data: bytes | None = None  # raw input, kept only when the log stores inputs
    ext: str = "bin"
    time: float = 0.0  # unix seconds; 0 → stamped by PredictionLog.record
    unknown: bool | None = None  # the answer was "unknown"; None: not decided (a log from before the column)


def default_log_path(target: str | Path) -> Path:
    """RUN/predictions.sqlite for a run directory; beside the bundle folder for a bare bundle."""
    return find_bundle(target).resolve().parent / "predictions.sqlite"


def connect(path: str | Path) -> sqlite3.Connection:
    """Open (and create) a log database in WAL mode with the predictions table."""
    con = sqlite3.connect(str(path), timeout=30)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a process crash; the log is not a ledger
    con.executescript(SCHEMA)
    if "unknown" not in _columns(con):  # a log written before the column existed
        con.execute("ALTER TABLE predictions ADD COLUMN unknown INTEGER")
    return con


def _columns(con: sqlite3.Connection) -> set[str]:
    return {row[1] for row in con.execute("PRAGMA table_info(predictions)")}


def read_rows(path: str | Path) -> list[dict]:
    """All logged predictions as dicts (COLUMNS keys), oldest first. Missing file → empty list."""
    if not Path(path).is_file():
        return []
    con = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, timeout=30)
    try:
        if not con.execute("SELECT 1 FROM sqlite_master WHERE name='predictions'").fetchone():
            return []
        have = _columns(con)
        cols = [c if c in have else f"NULL AS {c}" for c in COLUMNS]  # read-only: an old log is read as it is
        cur = con.execute(f"SELECT {', '.join(cols)} FROM predictions ORDER BY time, id")
        return [dict(zip(COLUMNS, row)) for row in cur]
    finally:
        con.close()


class InputStore:
    """Keeps input bytes as DIR/<sha256>.<ext>; beyond ``cap_mb`` the oldest stored files are deleted."""

    def __init__(self, root: str | Path, cap_mb: float | None = None):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.cap_bytes = None if cap_mb is None else int(cap_mb * 2**20)
        self._total = sum(p.stat().st_size for p in self._owned())

    def _owned(self) -> list[Path]:
        return [p for p in self.root.iterdir() if _STORED_NAME.match(p.name) and p.is_file()]

    def put(self, sha256: str, ext: str, data: bytes) -> Path:
        ext = ext.lower() if re.fullmatch(r"[A-Za-z0-9]{1,5}", ext or "") else "bin"
        dest = self.root / f"{sha256}.{ext}"
        if dest.exists():
            os.utime(dest)  # seen again: keep it longer under the cap
            return dest
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
        self._total += len(data)
        if self.cap_bytes is not None and self._total > self.cap_bytes:
            self._enforce_cap()
        return dest

    def _enforce_cap(self) -> None:
        files = sorted(self._owned(), key=lambda p: p.stat().st_mtime)
        self._total = sum(p.stat().st_size for p in files)
        while files and self._total > self.cap_bytes:
            oldest = files.pop(0)
            self._total -= oldest.stat().st_size
            oldest.unlink(missing_ok=True)


def check_log_path(path: str | Path) -> None:
    """Create the log (and its folder) or say in one line why not: read-only disk, a folder in the way, …"""
    path = Path(path).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        connect(path).close()
    except (OSError, sqlite3.Error) as e:
        raise UserError(f"cannot open the prediction log {path}: {getattr(e, 'strerror', None) or e}; "
                        "choose a writable path with --log") from None


class PredictionLog:
    """Thread-safe, non-blocking prediction log: ``record()`` queues, one thread inserts in batches."""

    def __init__(self, path: str | Path, store_inputs: str | Path | None = None, store_cap_mb: float | None = None,
                 max_pending: int = 10_000):
        self.path = Path(path).expanduser().resolve()
        check_log_path(self.path)  # create the file now, so a bad path fails at start-up, not on a request
        self.store = InputStore(store_inputs, store_cap_mb) if store_inputs else None
        self.dropped = 0  # rows lost because the writer fell max_pending behind
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name="picstory-prediction-log", daemon=True)
        self._thread.start()

    def record(self, entry: Entry) -> None:
        if not entry.time:  # stamped now, not when the writer gets to it
            entry = dataclasses.replace(entry, time=time.time())
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self.dropped += 1  # never make a client wait on the log

    def close(self) -> None:
        """Write what is queued, then stop the writer thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout=30)
        if self.dropped:
            print(f"picstory: {self.dropped} predictions were not logged to {self.path} (the writer fell behind "
                  "or the database failed)", file=sys.stderr)

    def _run(self) -> None:
        con = connect(self.path)
        try:
            stop = False
            while not stop:
                items = [self._queue.get()]
                while len(items) < 512:
                    try:
                        items.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                entries = [i for i in items if isinstance(i, Entry)]
                if entries:
                    try:
                        self._write(con, entries)
                    except sqlite3.Error:
                        self.dropped += len(entries)  # a locked or broken log must not stop serving
                stop = any(item is _STOP for item in items)
        finally:
            con.close()

    def _write(self, con: sqlite3.Connection, entries: list[Entry]) -> None:
        rows = []
        for e in entries:
            stored = None
            if self.store is not None and e.data is not None:
                try:
                    stored = str(self.store.put(e.input_sha256, e.ext, e.data))
                except OSError:
                    stored = None  # a full disk must not lose the prediction row too
            top = e.predictions[0] if e.predictions else {"label": None, "probability": None}
            rows.append((e.time, e.model_sha256, e.input_sha256, e.width, e.height, top["label"],
                         top["probability"], json.dumps(e.predictions), e.latency_ms, stored,
                         None if e.unknown is None else int(e.unknown)))
        with con:
            con.executemany(f"INSERT INTO predictions ({', '.join(COLUMNS)}) VALUES "
                            f"({', '.join('?' * len(COLUMNS))})", rows)
