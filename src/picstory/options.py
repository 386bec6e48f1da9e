"""The options of every command besides train, declared once for the CLI and the Python API.

Each command's flags are generated from its dataclass here (``top_k`` → ``--top-k``), and the library functions take
their defaults from the same instances, so a default cannot differ between ``picstory predict`` and
``picstory.load(...).predict``. The vocabularies (optimizers, schedules, TTA modes, fits, …) live
in config.py; tests/test_options.py checks that the registries and those names agree.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from .config import BACKENDS, EXPORT_FORMATS, PRUNERS, TABLE_FORMATS, TTA_MODES, opt


@dataclass(frozen=True)
class DataCheckOptions:
    out: str | None = opt(None, "report folder (default: data-check/NAME)")
    path_col: str = opt("", "label-file column with image paths (name or 0-based index)")
    label_col: str = opt("", "label-file column with labels (name or 0-based index)")
    allow_outside: bool = opt(False, "use label-file rows whose path leaves the label file's folder")
    label_map: str = opt("", "rename or merge label values: VALUE=CLASS,… or a YAML file")
    group_col: str = opt("", "column whose groups never straddle train/val/test: reports the group-aware split")
    stratify_col: str = opt("", "column added to the class in the stratified split")
    weight_col: str = opt("", "column of sample weights ≥ 0")
    label_cols: str = opt("", "multi-label: one-hot 0/1 columns, comma-separated")
    multi_label: bool = opt(False, "read the labels as multi-label even when no cell holds several")
    max_bad_fraction: float = opt(0.05, "unusable above this share of bad files", min=0.0, max=1.0)


@dataclass(frozen=True)
class DataIssuesOptions:
    export_relabel: str | None = opt(None, "copy the likely mislabelled images here (DIR/<label>/ + relabel.csv)")
    limit: int = opt(20, "rows shown in the table (issues.csv holds all)", min=0)


@dataclass(frozen=True)
class EvalOptions:
    tta: str = opt("none", "test-time augmentation", choices=TTA_MODES)
    report_by: str = opt("", "label-file column for per-group metrics; none: the run's --report-by or --group-col")
    path_col: str = opt("", "DATA's column with image paths; none: the run's")
    label_col: str = opt("", "DATA's column with labels; none: the run's")
    group_col: str = opt("", "DATA's group column; none: the run's")
    weight_col: str = opt("", "DATA's sample-weight column; none: the run's")
    allow_outside: bool = opt(False, "use DATA rows whose path leaves the label file's folder")


@dataclass(frozen=True)
class PredictOptions:
    top_k: int = opt(5, "labels shown per image", min=1)
    format: str = opt("table", "output format", choices=TABLE_FORMATS)
    tta: str = opt("none", "test-time augmentation", choices=TTA_MODES)
    backend: str = opt("torch", "inference engine", choices=BACKENDS)
    explain: str | None = opt(None, "write a Grad-CAM overlay PNG of each image into this folder (torch backend)")
    min_confidence: str = opt("", "answer unknown below this calibrated probability: 0.8, or per class "
                                  "shirt=0.9,coat=0.7 (none: only the bundle's unknown threshold)")


@dataclass(frozen=True)
class SimilarOptions:
    k: int = opt(5, "nearest training images per image", min=1)
    format: str = opt("table", "output format", choices=TABLE_FORMATS)


@dataclass(frozen=True)
class ExportOptions:
    format: str = opt("onnx", "file format", choices=EXPORT_FORMATS)
    opset: int = opt(17, "ONNX opset", min=7)
    dynamic_batch: bool = opt(True, "accept any batch size (off: the batch of the example only)")
    calibration_images: int = opt(300, "onnx-int8: training images (seeded sample) that calibrate the ranges", min=1)
    min_agreement: float = opt(0.99, "onnx-int8: least top-1 agreement with the fp32 model on the test split",
                               min=0.0, max=1.0)
    max_accuracy_drop: float = opt(0.5, "onnx-int8: largest accuracy loss in percentage points", min=0.0)
    require_faster: bool = opt(True, "onnx-int8: keep the file only when batch-1 latency beats fp32 ONNX here")


@dataclass(frozen=True)
class ServeOptions:
    host: str = opt("127.0.0.1", "bind address (127.0.0.1: this machine only)")
    port: int = opt(8000, "TCP port", min=0, max=65535)
    backend: str = opt("torch", "inference engine", choices=BACKENDS)
    workers: int = opt(1, "server processes", min=1)
    log: str | None = opt(None, "prediction log (SQLite; default RUN/predictions.sqlite)")
    store_inputs: str | None = opt(None, "keep every input image in this folder")
    max_body_mb: float = opt(10.0, "largest request body in MB (→ 413)", min=0.0)
    max_pixels: int = opt(40_000_000, "largest image in pixels (→ 413)", min=1)
    store_cap_mb: float | None = opt(None, "size cap of --store-inputs in MB (the oldest go)")
    device: str = opt("cpu", "device", choices=("cpu", "cuda"))
    read_timeout: float = opt(5.0, "seconds a client may take to send a request body (→ 408)", min=0.1)
    max_uploads: int = opt(128, "request bodies read at once, apart from the inference queue (→ 503)", min=1)


@dataclass(frozen=True)
class SweepOptions:
    grid: list = opt([], "a config key and its values (KEY=V1,V2); repeat for more axes, or a YAML grid file")
    repeats: int = opt(1, "seeds per cell", min=1)
    jobs: int = opt(1, "cells trained at once (threads are split)", min=1)


@dataclass(frozen=True)
class TuneOptions:
    trials: int = opt(20, "trials to run, at least 1 (a resumed study counts the finished ones)")
    budget_minutes: float | None = opt(None, "start no new trial after this many minutes", min=0.0)
    space: list = opt([], "KEY=LOW..HIGH[:log] or KEY=A,B,C; repeat per key, or a YAML file "
                          "(default: lr, optimizer, weight_decay)")
    pruner: str = opt("median", "stop trials behind the others per epoch: median, halving or none", choices=PRUNERS)


@dataclass(frozen=True)
class RunsOptions:
    sort: str = opt("", "column to sort by (e.g. test)")
    format: str = opt("table", "output format", choices=TABLE_FORMATS)


@dataclass(frozen=True)
class MonitorOptions:
    log: str | None = opt(None, "prediction log (default: the run's predictions.sqlite)")
    out: str | None = opt(None, "report folder (default: the run directory)")
    export_relabel: str | None = opt(None, "copy the low-confidence inputs here for relabelling")
    low_confidence: float = opt(0.6, "a prediction below this probability counts as low-confidence", min=0.0,
                                max=1.0)


@dataclass(frozen=True)
class DoctorOptions:
    target_accuracy: float | None = opt(None, "the accuracy the model must reach (default: from the data)")
    class_recall: float | None = opt(None, "the recall every class must reach")
    export_relabel: str | None = opt(None, "copy the images worth a second look here")
    format: str = opt("text", "output format", choices=("text", "json"))


PREDICT, EXPORT, SERVE, EVAL = PredictOptions(), ExportOptions(), ServeOptions(), EvalOptions()
MONITOR, DOCTOR, DATA_CHECK = MonitorOptions(), DoctorOptions(), DataCheckOptions()
TUNE = TuneOptions()
DATA_ISSUES = DataIssuesOptions()
SIMILAR = SimilarOptions()


def values(cls: type, args) -> dict:
    """The dataclass's fields read from a parsed command line."""
    return {f.name: getattr(args, f.name) for f in fields(cls)}
