"""Files: atomic writes, JSON reads, the cache root. Every module that writes a file the user keeps uses these.

A write goes to a temp file in the same directory, is fsynced, then renamed over the target: a reader (or a
crash) never sees half a file, and the previous version stays intact until the new one is complete.
"""

from __future__ import annotations

import base64
import errno
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import UserError


def cache_root() -> Path:
    """``$PICSTORY_CACHE`` or ``~/.cache/picstory``."""
    env = os.environ.get("PICSTORY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "picstory"


def _umask() -> int:
    """The process umask, read without changing it (os.umask can only be read by setting it, which races)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def public_mode(path: Path, is_dir: bool = False) -> None:
    """Give a file made by mkstemp/mkdtemp (0600/0700) the permissions a plain open()/mkdir() would have."""
    os.chmod(path, (0o777 if is_dir else 0o666) & ~_umask())


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _mount_point(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists():
        path = path.parent
    while not os.path.ismount(path):
        path = path.parent
    return path


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


def disk_full(path: str | Path, needed: int | None = None) -> UserError:
    """The one line for ENOSPC: which disk (mount point) and folder, how much was needed and how much is free."""
    folder = Path(os.path.abspath(path)).parent
    mount = _mount_point(folder)
    try:
        free = f"{_mb(shutil.disk_usage(mount).free)} free"
    except OSError:
        free = "free space unknown"
    need = f"{_mb(needed)} needed, " if needed else ""
    return UserError(f"the disk at {mount} is full while writing {path} ({need}{free}); free some space there or "
                     "choose another folder")


def reserve(fd: int, size: int) -> None:
    """Allocate ``size`` bytes of the file now, so a full disk is an OSError (ENOSPC) here and not a SIGBUS when a
    memmap page is first written (a sparse file has no blocks yet). Filesystems without fallocate skip this."""
    if size <= 0 or not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise


def write_durable(path: Path, data: bytes) -> None:
    """Write and fsync a file inside a temporary directory that is renamed into place as a whole."""
    with open(path, "wb") as f:
        reserve(f.fileno(), len(data))
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path: str | Path, data: bytes | str, *, user_error: bool = True) -> None:
    """Write ``data`` (text is UTF-8) to ``path`` atomically. An OSError becomes a one-line UserError naming the
    file (``user_error=False`` keeps the OSError for callers that handle it themselves)."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                reserve(f.fileno(), len(data))
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            public_mode(Path(tmp))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)
    except OSError as e:
        if not user_error:
            raise
        if e.errno in DISK_FULL:
            raise UserError(f"{disk_full(path, len(data))}; the previous file is intact") from None
        raise UserError(f"could not write {path}: {e.strerror or e}; the previous file is intact") from None


def remove_temp_files(folder: str | Path) -> int:
    """Delete the temp files (``.NAME.*.tmp``) that killed atomic writes left in ``folder``; only for the folder's
    one writer, which knows no write of its own is in flight. Returns how many went."""
    removed = 0
    for tmp in Path(folder).glob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def atomic_torch_save(path: str | Path, obj: dict) -> None:
    import torch  # heavy: only the writers of checkpoints need it

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


def read_json(path: str | Path, strict: bool = False) -> Any:
    """The parsed file; a missing or broken file is ``{}`` — or, with ``strict``, a UserError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        if strict:
            raise UserError(f"{path}: cannot read ({e}); re-run `picstory eval` or train again") from None
        return {}


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """``data:`` URI of encoded bytes, for images embedded in a self-contained HTML page."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
