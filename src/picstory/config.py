"""One config behind the CLI, the Python API and ``config.yaml``.

Frozen dataclasses with a default for every field; units live in the help text. The CLI flags are generated from
these fields (``img_size`` → ``--img-size``), so an option is declared exactly once. Unknown keys and bad values are
:class:`ConfigError`\\ s that name the key and suggest close matches.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

# Vocabularies: declared once, used by the config, the command options and the registries that implement them.
OPTIMIZERS = ("sgd", "sgd-momentum", "adam", "adamw", "adamax", "rmsprop", "adagrad")
SCHEDULES = ("constant", "step", "cosine", "onecycle", "linear", "plateau")
TTA_MODES = ("none", "flip", "flip+crops")
FITS = ("crop", "pad", "stretch")
BACKENDS = ("torch", "onnx", "onnx-int8", "openvino")
EXPORT_FORMATS = ("onnx", "torchscript", "onnx-int8", "openvino")
TABLE_FORMATS = ("table", "json", "csv")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LOGGERS = ("tensorboard", "mlflow")
PRUNERS = ("median", "halving", "none")
PRESETS = ("fast", "default", "best", "probe")


def opt(default, help: str, choices: tuple | None = None, min: float | None = None, max: float | None = None):
    """A config field: default, help text (with units), and optional validation bounds."""
    meta = {"help": help, "choices": choices, "min": min, "max": max}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataConfig:
    data: str = opt("", "DATA: class folders, file-name labels, a CSV, IDX files or builtin:NAME")
    img_size: int = opt(0, "training image size in px (0 = chosen from the data)", min=0, max=4096)
    channels: str = opt("auto", "input channels: auto (1 for gray data, else 3), 1 or 3", choices=("auto", "1", "3"))
    fit: str = opt("crop", "how images reach the square size: crop (shorter side, centre crop), pad, stretch",
                   choices=FITS)
    val_fraction: float = opt(0.1, "share of the training data held out for validation", min=0.0, max=0.5)
    test_fraction: float = opt(0.1, "share held out for testing when the data has no test split", min=0.0, max=0.5)
    path_col: str = opt("", "label-file column with image paths: a name or 0-based index (auto-detected when empty)")
    label_col: str = opt("", "label-file column with labels: a name or 0-based index (auto-detected when empty)")
    allow_outside: bool = opt(False, "use label-file rows whose path leaves the label file's folder (../, absolute)")
    label_map: str = opt("", "rename or merge label values: VALUE=CLASS,… (e.g. 0=ok,1=defect) or a YAML file")
    label_cols: str = opt("", "multi-label: one-hot 0/1 label-file columns, comma-separated (e.g. dog,cat,outdoor)")
    multi_label: bool = opt(False, "multi-label even when no cell holds several labels (dog|outdoor, dog;outdoor)")
    group_col: str = opt("", "label-file column whose groups never straddle train/val/test (e.g. patient, camera)")
    stratify_col: str = opt("", "label-file column added to the class in stratified splits (e.g. production line)")
    weight_col: str = opt("", "label-file column of sample weights ≥ 0: scales the loss and the metrics' support")
    report_by: str = opt("", "label-file column for per-group metrics in eval.json / report.html "
                             "(default: --group-col)")
    max_bad_fraction: float = opt(0.05, "stop before training when more than this share of files cannot be decoded",
                                  min=0.0, max=1.0)
    limit_per_class: int = opt(0, "use at most this many training images per class (0 = all)", min=0)
    folds: int = opt(0, "k-fold cross-validation: K runs, each validated on its own fold, the test split untouched "
                        "(0 = off)", min=0)
    fold: int = opt(0, "train only this fold (1 … --folds) of a cross-validation (0 = every fold)", min=0)


@dataclass(frozen=True)
class ModelConfig:
    model: str = opt("auto", "architecture: auto, a picstory model or any timm name (see `picstory models`)")
    pretrained: bool = opt(True, "start from pretrained weights when the architecture has them")
    weights: str = opt("", "initial weights: a .safetensors or weights-only torch state dict")
    drop_rate: float = opt(0.0, "dropout before the classifier", min=0.0, max=0.9)
    freeze_epochs: int = opt(-1, "epochs training only the head on a frozen backbone (-1 = auto)", min=-1)
    backbone_lr_mult: float = opt(0.1, "backbone LR as a fraction of --lr after unfreezing", min=0.0, max=1.0)


@dataclass(frozen=True)
class AugmentConfig:
    hflip: float = opt(0.5, "probability of a horizontal flip", min=0.0, max=1.0)
    vflip: float = opt(0.0, "probability of a vertical flip", min=0.0, max=1.0)
    translate: float = opt(0.1, "random shift as a fraction of the image size (pad and crop)", min=0.0, max=0.5)
    rrc_scale: float = opt(0.0, "random-resized-crop minimum area fraction (0 = off, e.g. 0.35)", min=0.0, max=1.0)
    rotate_deg: float = opt(0.0, "maximum random rotation in degrees", min=0.0, max=180.0)
    brightness: float = opt(0.0, "brightness jitter (fraction)", min=0.0, max=1.0)
    contrast: float = opt(0.0, "contrast jitter (fraction)", min=0.0, max=1.0)
    erase: float = opt(0.0, "probability of random erasing", min=0.0, max=1.0)
    mixup: float = opt(0.0, "mixup alpha (0 = off)", min=0.0)
    cutmix: float = opt(0.0, "cutmix alpha (0 = off)", min=0.0)


@dataclass(frozen=True)
class TrainConfig:
    preset: str = opt("default", "recipe preset: fast, default, best, or probe (a linear head on the pretrained "
                                 "backbone's cached features, trained in seconds)", choices=PRESETS)
    epochs: int = opt(0, "maximum epochs (0 = preset's choice)", min=0)
    batch_size: int = opt(0, "images per step, all processes together (0 = preset's choice)", min=0)
    optimizer: str = opt("adamw", "optimizer", choices=OPTIMIZERS)
    lr: str = opt("preset", "peak learning rate; preset = the preset's value; auto = run the LR finder first")
    weight_decay: float = opt(0.05, "decoupled weight decay (not applied to norms and biases)", min=0.0)
    momentum: float = opt(0.9, "momentum for sgd-momentum and rmsprop", min=0.0, max=1.0)
    nesterov: bool = opt(True, "Nesterov momentum for sgd-momentum")
    schedule: str = opt("onecycle", "LR schedule", choices=SCHEDULES)
    warmup_epochs: float = opt(1.0, "linear warmup in epochs (cosine, linear)", min=0.0)
    label_smoothing: float = opt(0.1, "label smoothing", min=0.0, max=0.5)
    class_weights: str = opt("none", "loss weights: none or auto (inverse class frequency)", choices=("none", "auto"))
    pos_weight: str = opt("none", "multi-label: positive weight per label, none or balanced (negatives / positives)",
                          choices=("none", "balanced"))
    balanced_sampling: bool = opt(False, "draw batches with equal class probability")
    ema: float = opt(0.0, "EMA decay of weights per step (0 = off, e.g. 0.999)", min=0.0, max=1.0)
    grad_clip: float = opt(0.0, "clip gradient norm (0 = off)", min=0.0)
    epoch_fraction: float = opt(1.0, "share of the training set one epoch draws, a fresh random subset each epoch "
                                     "(--time-budget lowers it when one full epoch would not fit)", min=0.001, max=1.0)
    patience: int = opt(5, "early stopping: epochs without improvement (0 = off)", min=0)
    min_delta: float = opt(0.001, "early stopping: smallest change that counts as improvement", min=0.0)
    monitor: str = opt("val_loss", "metric for early stopping and the best epoch", choices=("val_loss", "val_acc"))
    progressive: str = opt("", "progressive resizing: comma-separated sizes in px, e.g. 64,128,224")
    precision: str = opt("auto", "compute precision", choices=PRECISIONS)
    device: str = opt("auto", "device: auto, cpu or cuda", choices=("auto", "cpu", "cuda"))
    seed: int = opt(0, "random seed (same seed → same run on CPU)")
    threads: int = opt(0, "CPU threads (0 = the free cores shared among the picstory runs on this machine)", min=0)
    time_budget: str = opt("", "wall-clock budget for the whole run, e.g. 90s, 10m, 1h: epochs (and a smaller "
                               "model) are chosen to fit it (empty = none)")
    compile: bool = opt(False, "torch.compile the model")


@dataclass(frozen=True)
class EvalConfig:
    tta: str = opt("none", "test-time augmentation", choices=TTA_MODES)
    eval_batch_size: int = opt(512, "images per evaluation batch", min=1)


@dataclass(frozen=True)
class RunConfig:
    out: str = opt("runs", "directory holding run directories")
    name: str = opt("", "run name (default: model-data); an existing name gets -2, -3, …")
    log: str = opt("", "experiment tracking: tensorboard, mlflow or tensorboard,mlflow (empty = none)")
    log_every: int = opt(50, "tracking: training loss and LR every N steps", min=1)
    description: str = opt("", "what the model is for and what it is not for (the model card's intended use)")
    licence: str = opt("", "licence under which the model may be used (the model card's licence field)")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def updated(self, **flat: Any) -> "Config":
        """A copy with flat keys (``lr=1e-3``, ``img_size=64``) set, validated."""
        return from_dict(flat, base=self)


_SECTION_TYPES = {"data": DataConfig, "model": ModelConfig, "augment": AugmentConfig, "train": TrainConfig,
                  "eval": EvalConfig, "run": RunConfig}


def all_fields() -> dict[str, tuple[str, dataclasses.Field]]:
    """flat key → (section, field). Flat keys are unique across sections by design."""
    out = {}
    for section, cls in _SECTION_TYPES.items():
        for f in fields(cls):
            out[f.name] = (section, f)
    return out


FIELDS = all_fields()


def _field_type(f: dataclasses.Field) -> type:
    hints = typing.get_type_hints(_SECTION_TYPES[FIELDS[f.name][0]])
    return hints[f.name]


def plural(n: float, word: str) -> str:
    """``plural(1, "class")`` → "1 class", ``plural(3, "class")`` → "3 classes"."""
    count = f"{n:g}" if isinstance(n, float) else str(n)
    if n == 1:
        return f"{count} {word}"
    return f"{count} {word}es" if word.endswith(("s", "x", "ch", "sh")) else f"{count} {word}s"


def suggest(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def coerce(key: str, value: Any) -> Any:
    """Convert a CLI string or YAML value to the field's type and check its bounds."""
    if key not in FIELDS:
        raise ConfigError(f"unknown config key '{key}'{suggest(key, FIELDS)}")
    _, f = FIELDS[key]
    typ = _field_type(f)
    try:
        if typ is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                value = low in ("1", "true", "yes", "on")
            value = bool(value)
        elif typ is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            value = int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        elif typ is float:
            value = float(value)
        else:
            value = "" if value is None else str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"'{key}' must be {typ.__name__}, got {value!r}") from None
    meta = f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"'{key}' must be one of {', '.join(meta['choices'])}, got {value!r}"
                          f"{suggest(str(value), meta['choices'])}")
    if meta.get("min") is not None and value < meta["min"]:
        raise ConfigError(f"'{key}' must be ≥ {meta['min']}, got {value}")
    if meta.get("max") is not None and value > meta["max"]:
        raise ConfigError(f"'{key}' must be ≤ {meta['max']}, got {value}")
    if key == "lr" and value not in ("auto", "preset"):
        try:
            if float(value) <= 0:
                raise ValueError
        except ValueError:
            raise ConfigError(f"'lr' must be a positive number, preset or auto, got {value!r}") from None
    if key == "log" and value:
        bad = [n for n in value.split(",") if n.strip() not in LOGGERS]
        if bad:
            raise ConfigError(f"'log' must be {', '.join(LOGGERS)} or both comma-separated, got {bad[0]!r}"
                              f"{suggest(bad[0], LOGGERS)}")
    if key == "progressive" and value:
        try:
            sizes = [int(s) for s in value.split(",")]
            assert all(s >= 8 for s in sizes)
        except (ValueError, AssertionError):
            raise ConfigError(f"'progressive' must be comma-separated sizes ≥ 8 px, got {value!r}") from None
    if key == "time_budget" and value:
        parse_duration(value)
    if key == "folds" and value == 1:
        raise ConfigError("'folds' must be 0 (off) or at least 2, got 1: one fold leaves nothing to validate on")
    return value


_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """ "90s", "10m", "1.5h", "600" (seconds) → seconds."""
    value = str(text).strip().lower()
    number, unit = value.rstrip("sminh") or "", value[len(value.rstrip("sminh")):] or "s"
    try:
        seconds = float(number) * _UNITS[unit]
    except (KeyError, ValueError):
        raise ConfigError(f"'time_budget' must be a duration like 90s, 10m or 1h, got {text!r}") from None
    if seconds <= 0:
        raise ConfigError(f"'time_budget' must be above 0, got {text!r}")
    return seconds


def from_dict(d: dict, base: Config | None = None) -> Config:
    """Nested ({train: {lr: ..}}) or flat ({lr: ..}) keys over ``base`` (defaults when None)."""
    base = base or Config()
    flat: dict[str, Any] = {}
    for key, value in (d or {}).items():
        if key in _SECTION_TYPES and isinstance(value, dict):
            for k, v in value.items():
                if k not in FIELDS or FIELDS[k][0] != key:
                    raise ConfigError(f"unknown config key '{key}.{k}'"
                                      f"{suggest(k, [n for n, (s, _) in FIELDS.items() if s == key])}")
                flat[k] = v
        else:
            flat[key] = value
    sections = {name: getattr(base, name) for name in _SECTION_TYPES}
    for key, value in flat.items():
        value = coerce(key, value)
        section, _ = FIELDS[key]
        sections[section] = replace(sections[section], **{key: value})
    d = sections["data"]
    if d.fold and d.fold > d.folds:
        raise ConfigError(f"'fold' {d.fold} needs 'folds' of at least {d.fold} (got folds {d.folds})")
    return Config(**sections)


def load_yaml(path: str | Path, base: Config | None = None) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(d).__name__}")
    return from_dict(d, base)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def help_text(key: str) -> str:
    _, f = FIELDS[key]
    return f.metadata["help"]


def default_of(key: str):
    section, f = FIELDS[key]
    return getattr(getattr(Config(), section), key)


def get(cfg: Config, key: str):
    section, _ = FIELDS[key]
    return getattr(getattr(cfg, section), key)


def field_python_type(key: str) -> type:
    return _field_type(FIELDS[key][1])


__all__ = ["Config", "DataConfig", "ModelConfig", "AugmentConfig", "TrainConfig", "EvalConfig", "RunConfig",
           "from_dict", "load_yaml", "dump_yaml", "coerce", "get", "FIELDS", "suggest"]


# DataConfig keys that shape how a label file becomes records: sources.resolve(spec, **label_file_options(...))
LABEL_FILE_KEYS = ("path_col", "label_col", "allow_outside", "label_map", "group_col", "weight_col", "label_cols",
                   "multi_label")


def label_file_options(values: Any) -> dict:
    """The label-file keys from a flat dict, a Config, a nested config.yaml dict or an options object."""
    if isinstance(values, Config):
        values = dataclasses.asdict(values.data)
    elif isinstance(values, dict) and isinstance(values.get("data"), dict):
        values = values["data"]
    elif not isinstance(values, dict):
        values = {k: getattr(values, k, None) for k in LABEL_FILE_KEYS}
    out = {k: values.get(k) for k in LABEL_FILE_KEYS if values.get(k) not in (None, "")}
    for key in ("allow_outside", "multi_label"):
        if key in out:
            out[key] = bool(out[key])
    if out.get("multi_label") is False:
        del out["multi_label"]
    return out


def overrides_from(args: Any) -> dict:
    """The config keys a parsed command line set (flags default to None, so only what the user typed counts)."""
    return {k: getattr(args, k) for k in FIELDS if k != "data" and getattr(args, k, None) is not None}
