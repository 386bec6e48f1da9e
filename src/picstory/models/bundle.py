"""The model bundle: ``model/`` = ``model.safetensors`` + ``model.json`` — weights and everything needed to use them.

Nothing in a bundle is pickled, so loading a bundle someone sent you cannot run their code. ``model.json`` records
the sha256 of the weights file; a bundle whose weights were changed or truncated is refused with the file's name.

A bundle is written as a whole: into a temporary sibling directory, fsynced, then swapped into place, so a crash
leaves either the old bundle or the new one, never a mix (and never a stale ``model.onnx`` next to new weights).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn

from .._version import __version__
from ..errors import UserError
from ..files import DISK_FULL, atomic_write, disk_full, fsync_dir, public_mode, write_durable
from .registry import check_model_kwargs
from .wrappers import unwrap

BUNDLE_FORMAT = "picstory-bundle/1"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
OOD_BANK_FILE = "ood_bank.safetensors"  # L2-normalised training features for the nearest-neighbour unknown score

# The exact pixel path from a file to the model input (see predict.preprocess). Stored in model.json so a bundle
# used outside picstory can be fed the same numbers.
PREPROCESSING = (
    "decode with PIL → apply EXIF orientation → convert to L (in_chans=1) or RGB (in_chans=3), 16-bit scaled to "
    "8-bit → JPEG draft to no less than img_size → fit to img_size×img_size (fit=crop: shorter side to img_size, "
    "centre crop; pad: longer side to img_size, centre on black; stretch: resize both sides) → uint8 CHW → "
    "x/255 → (x - mean) / std per channel → float32 NCHW"
)

REQUIRED_META = ("arch", "num_classes", "classes", "in_chans", "img_size", "fit", "mean", "std")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _complete_meta(model: nn.Module, meta: dict) -> dict:
    cfg = getattr(model, "picstory_cfg", {}) or {}
    out = dict(meta)
    for key in ("arch", "mean", "std"):
        if key not in out and key in cfg:
            out[key] = cfg[key]
    out.setdefault("model_kwargs", {})
    out.setdefault("fit", "crop")
    out.setdefault("preprocessing", PREPROCESSING)
    missing = [k for k in REQUIRED_META if k not in out]
    if missing:
        raise ValueError(f"bundle meta lacks {', '.join(missing)}")
    if len(out["classes"]) != out["num_classes"]:
        raise ValueError(f"bundle meta: {len(out['classes'])} class names for num_classes={out['num_classes']}")
    return out


def _state_bytes(model: nn.Module) -> bytes:
    """safetensors bytes of the state dict: tied tensors stored once, every tensor contiguous on the CPU."""
    state, seen = {}, {}
    for name, t in unwrap(model).state_dict().items():
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if t.numel() and key in seen:
            continue  # a tied weight (e.g. shared embedding/head): load_bundle restores it through the module
        seen[key] = name
        state[name] = t.detach().to("cpu").contiguous()
    return safetensors.torch.save(state, metadata={"format": "pt"})


def save_bundle(directory: str | Path, model: nn.Module, meta: dict) -> Path:
    """Write ``directory/model.safetensors`` + ``directory/model.json`` as one atomic step; returns the directory."""
    directory = Path(directory)
    meta = _complete_meta(unwrap(model), meta)
    weights = _state_bytes(model)
    meta.update({
        "format": BUNDLE_FORMAT,
        "sha256": _sha256(weights),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "picstory_version": __version__,
    })
    meta.pop("exports", None)  # exports belong to the weights they were made from
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        recover(directory, clean=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    except OSError as e:
        raise _write_error(directory, e, len(weights)) from None
    try:
        write_durable(tmp / WEIGHTS_FILE, weights)
        write_durable(tmp / META_FILE, json.dumps(meta, indent=2, sort_keys=True).encode() + b"\n")
        fsync_dir(tmp)
        public_mode(tmp, is_dir=True)
        _swap_in(tmp, directory)
    except OSError as e:  # the old bundle (if any) is still in place: _swap_in renames only complete folders
        raise _write_error(directory, e, len(weights)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _write_error(directory: Path, e: OSError, needed: int) -> UserError:
    if e.errno in DISK_FULL:
        return UserError(f"{disk_full(directory / WEIGHTS_FILE, needed)}; the previous bundle is intact")
    return UserError(f"could not write the bundle {directory}: {e.strerror or e}; choose a writable folder")


def recover(directory: Path, clean: bool = False) -> None:
    """A crash between the two renames of :func:`_swap_in` leaves the previous bundle in ``.NAME.*.old/bundle`` and
    no ``NAME``: put it back. ``clean`` (only the writer, which owns them) removes the ``.tmp`` / ``.old`` folders of
    killed saves."""
    directory = Path(directory)
    if not directory.parent.is_dir():
        return
    olds = sorted(directory.parent.glob(f".{directory.name}.*.old"), key=lambda p: p.stat().st_mtime)
    if not directory.exists() and olds and (olds[-1] / "bundle" / META_FILE).is_file():
        os.replace(olds[-1] / "bundle", directory)
        fsync_dir(directory.parent)
    for left in [] if not clean else [*olds, *directory.parent.glob(f".{directory.name}.*.tmp")]:
        shutil.rmtree(left, ignore_errors=True)


def _swap_in(tmp: Path, directory: Path) -> None:
    if not directory.exists():
        os.replace(tmp, directory)
    else:
        # os.replace cannot replace a non-empty directory: move the old one aside first
        old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".old", dir=directory.parent))
        os.replace(directory, old / "bundle")
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(directory.parent)


def update_meta(directory: str | Path, **fields: Any) -> dict:
    """Atomically merge top-level keys into an existing bundle's model.json (used to record exports)."""
    path = Path(directory) / META_FILE
    meta = read_meta(directory)
    meta.update(fields)
    atomic_write(path, json.dumps(meta, indent=2, sort_keys=True).encode() + b"\n")
    return meta


def is_multilabel(meta: dict) -> bool:
    return meta.get("task") == "multilabel"


def thresholds(meta: dict) -> list[float]:
    """A multi-label bundle's per-label thresholds in class order (0.5 for a label without a tuned one)."""
    tuned = meta.get("thresholds") or {}
    return [float(tuned.get(c, 0.5)) for c in meta["classes"]]
def write_ood_bank(directory: str | Path, features: torch.Tensor) -> str:
    """Store the feature bank next to the weights (atomically); returns its sha256 for model.json."""
    data = safetensors.torch.save({"features": features.detach().to("cpu", torch.float16).contiguous()})
    atomic_write(Path(directory) / OOD_BANK_FILE, data)
    return _sha256(data)


def read_ood_bank(directory: str | Path, meta: dict) -> torch.Tensor | None:
    """The bundle's feature bank as fp32 (N, D), checked against model.json; None when the bundle has none."""
    record = (meta.get("ood") or {}).get("bank")
    if not record:
        return None
    path = Path(directory) / OOD_BANK_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: missing although {META_FILE} names it; restore the bundle or train again") from None
    if _sha256(data) != record.get("sha256"):
        raise UserError(f"{path}: sha256 does not match {META_FILE} (modified or corrupt); restore the bundle")
    try:
        return safetensors.torch.load(data)["features"].float()
    except (SafetensorError, ValueError, KeyError) as e:
        raise UserError(f"{path}: not a feature bank ({e}); restore the bundle or train again") from None


def find_bundle(run_or_bundle: str | Path) -> Path:
    """The bundle directory of a run directory (``RUN/model``) or a bundle directory itself."""
    path = Path(run_or_bundle).expanduser()
    if not path.exists():
        raise UserError(f"{path}: no such run or model bundle directory")
    if path.is_file() and path.name == META_FILE:
        path = path.parent
    if (path / META_FILE).is_file():
        return path
    if not (path / "model").exists():
        recover(path / "model")
    if (path / "model" / META_FILE).is_file():
        return path / "model"
    raise UserError(f"{path}: not a run or model bundle (no {META_FILE} in it or in {path / 'model'}); "
                    "train a model first or give the run directory")


def read_meta(directory: str | Path) -> dict:
    """Parsed model.json of a bundle directory, with a clear error for a missing or corrupt file."""
    path = Path(directory) / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing; the bundle is incomplete — export or train again") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not readable as JSON ({e}); the bundle is corrupt — train or save it again") from None
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise UserError(f"{path}: format {found!r} is not {BUNDLE_FORMAT!r}; save the bundle with this picstory")
    missing = [k for k in REQUIRED_META + ("sha256",) if k not in meta]
    if missing:
        raise UserError(f"{path}: lacks {', '.join(missing)}; the bundle is corrupt — train or save it again")
    return meta


def read_weights(directory: str | Path, meta: dict) -> dict[str, torch.Tensor]:
    """The state dict of a bundle, after checking the weights file against the sha256 in model.json."""
    path = Path(directory) / WEIGHTS_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: missing; the bundle is incomplete — train or save it again") from None
    # hash the very bytes we parse, so the check and the load cannot see different files
    if _sha256(data) != meta["sha256"]:
        raise UserError(f"{path}: sha256 does not match {META_FILE} (modified or corrupt); "
                        "restore the bundle or train again")
    try:
        return safetensors.torch.load(data)
    except (SafetensorError, ValueError) as e:
        raise UserError(f"{path}: not a valid safetensors file ({e})") from None


def build_model(meta: dict) -> nn.Module:
    """An untrained model of the bundle's architecture (no weights are downloaded)."""
    from . import create_model

    kwargs = check_model_kwargs(meta.get("model_kwargs") or {}, META_FILE)
    return create_model(meta["arch"], meta["num_classes"], meta["in_chans"], pretrained=False,
                        img_size=meta["img_size"], **kwargs)


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    # keys dropped at save time as tied duplicates are fine when the module ties them again
    stored_ptrs = {p.untyped_storage().data_ptr() for n, p in model.state_dict().items() if n in state}
    own = model.state_dict()
    missing = [k for k in missing if own[k].untyped_storage().data_ptr() not in stored_ptrs]
    if missing or unexpected:
        detail = "; ".join(x for x in (f"missing {', '.join(missing[:5])}" if missing else "",
                                       f"unexpected {', '.join(unexpected[:5])}" if unexpected else "") if x)
        raise UserError(f"{path}: weights do not fit the architecture in {META_FILE} ({detail})")


def load_bundle(directory: str | Path, device: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model from a bundle (or a run directory), load verified weights, eval mode on ``device``."""
    directory = find_bundle(directory)
    meta = read_meta(directory)
    check_model_kwargs(meta.get("model_kwargs") or {}, str(directory / META_FILE))  # before any file is read
    state = read_weights(directory, meta)
    model = build_model(meta)
    try:
        _load_state(model, state, directory / WEIGHTS_FILE)
    except RuntimeError as e:  # shape mismatches
        raise UserError(f"{directory / WEIGHTS_FILE}: weights do not fit the architecture in {META_FILE} "
                        f"({str(e).splitlines()[-1].strip()})") from None
    model = model.to(device).to(memory_format=torch.channels_last).eval()
    return model, meta
