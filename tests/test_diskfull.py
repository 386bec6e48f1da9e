"""A full disk is one line naming the disk and the space needed, never a SIGBUS or a raw OSError, and no partial
file is left to keep the disk full. A real 2 MB tmpfs where mounting is allowed; a simulated ENOSPC always."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from picstory.data.cache import load_images
from picstory.data.sources import resolve
from picstory.errors import UserError
from picstory.files import atomic_write
from picstory.models import create_model
from picstory.models.bundle import save_bundle

torch.set_num_threads(1)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "2m"):
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip() or 'not permitted'}); "
                    "the simulated-ENOSPC tests cover the same path")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _images(root: Path, n: int = 40) -> Path:
    from PIL import Image
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n // 2):
            Image.fromarray(rng.integers(0, 255, (16, 16), np.uint8)).save(root / cls / f"{i}.png")
    return root


def _bundle_model():
    model = create_model("resnet18", 2, 3, img_size=32).eval()  # ~45 MB of weights: more than the disk holds
    meta = {"arch": "resnet18", "num_classes": 2, "classes": ["a", "b"], "in_chans": 3, "img_size": 32,
            "fit": "crop", "mean": [0.5] * 3, "std": [0.25] * 3}
    return model, meta


def test_a_full_cache_disk_is_one_line_and_leaves_no_file(tmp_path):
    source = resolve(str(_images(tmp_path / "data")))
    with small_tmpfs(tmp_path / "disk") as disk:
        with pytest.raises(UserError, match=rf"disk at {disk} is full .*MB needed, .*MB free"):
            # 40 × 224² × 3 = 6 MB of rows on a 2 MB disk: a sparse file would SIGBUS on the first page past 2 MB
            load_images(source, range(40), 224, 3, cache_dir=disk, progress=False)
        assert not [p for p in disk.rglob("*") if p.is_file() and p.suffix != ".sqlite"]


def test_a_full_cache_disk_in_a_child_process_is_not_a_bus_error(tmp_path):
    data = _images(tmp_path / "data")
    with small_tmpfs(tmp_path / "disk") as disk:
        code = ("from picstory.data.cache import load_images; from picstory.data.sources import resolve; "
                "from picstory.errors import UserError\n"
                f"try: load_images(resolve({str(data)!r}), range(40), 224, 3, cache_dir={str(disk)!r}, "
                "progress=False)\nexcept UserError as e: print(e); raise SystemExit(1)")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and "is full" in proc.stdout, (proc.returncode, proc.stderr[-500:])


def test_a_full_disk_while_saving_the_bundle_keeps_the_old_one(tmp_path):
    model, meta = _bundle_model()
    with small_tmpfs(tmp_path / "disk", "60m") as disk:
        save_bundle(disk / "model", model, meta)
        old = (disk / "model" / "model.safetensors").read_bytes()
        with pytest.raises(UserError, match=rf"disk at {disk} is full .*previous bundle is intact"):
            save_bundle(disk / "model", model, meta)  # a second copy does not fit next to the first
        assert (disk / "model" / "model.safetensors").read_bytes() == old
        assert sorted(p.name for p in disk.iterdir()) == ["model"]


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_simulated_enospc_reserving_the_cache_file(tmp_path, monkeypatch):
    source = resolve(str(_images(tmp_path / "data")))
    monkeypatch.setattr(os, "posix_fallocate", _enospc)
    with pytest.raises(UserError, match=r"is full while writing .*cached images \(.*MB needed, .*MB free\)"):
        load_images(source, range(40), 32, 3, cache_dir=tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").rglob("*.u8*"))


@pytest.mark.parametrize("writer", ["report", "checkpoint", "bundle"])
def test_simulated_enospc_while_writing_results(tmp_path, monkeypatch, writer):
    from picstory.files import atomic_torch_save

    monkeypatch.setattr(os, "posix_fallocate", _enospc)
    target = tmp_path / "run"
    target.mkdir()
    with pytest.raises(UserError, match=rf"disk at /\S* is full while writing {target}"):
        if writer == "report":
            atomic_write(target / "report.html", "<html>" * 1000)
        elif writer == "checkpoint":
            atomic_torch_save(target / "last.pt", {"w": torch.zeros(100)})
        else:
            save_bundle(target / "model", *_bundle_model())
    assert not list(target.iterdir())  # no temp file left behind


def test_simulated_enospc_from_write_itself(tmp_path, monkeypatch):
    """Filesystems without fallocate (the reservation is skipped) report ENOSPC from write()."""
    import builtins
    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f = f

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, _):
            raise OSError(errno.ENOSPC, "No space left on device")

    def unsupported(*_a):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    monkeypatch.setattr(os, "fdopen", lambda fd, mode: Full(real_open(fd, mode)))
    with pytest.raises(UserError, match="is full while writing"):
        atomic_write(tmp_path / "summary.json", "{}")
    assert not list(tmp_path.iterdir())
