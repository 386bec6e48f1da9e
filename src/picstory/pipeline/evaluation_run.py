"""``picstory eval RUN [DATA]``: the best bundle on the run's test split or on another data set → eval.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, UserError
from ..evaluation.calibration import bundle_temperature, softmax
from ..evaluation.metrics import confident_mistakes, group_metrics, predict_images, summarize, suspects
from ..files import atomic_write, read_json
from ..options import EVAL
from ..runs import RunDir, find_run
from .confidence_run import split_confidence

SUSPECT_SCAN_MAX = 20_000  # training images scanned for likely label errors (bounded time on big sets)


def evaluate_run(run: str | Path, data: str | None = None, tta: str = EVAL.tta, td=None, write_report: bool = True,
                 summary: dict | None = None, device: str = "cpu", progress: bool = True,
                 report_by: str = EVAL.report_by, path_col: str = EVAL.path_col, label_col: str = EVAL.label_col,
                 group_col: str = EVAL.group_col, weight_col: str = EVAL.weight_col,
                 allow_outside: bool = EVAL.allow_outside) -> dict:
    """Metrics of the run's best bundle on its test split, or on ``data`` (label-file columns: the run's unless
    given); per-group metrics for ``report_by`` (default: the run's --report-by, else its --group-col)."""
    from ..models.bundle import is_multilabel, load_bundle

    run_dir = find_run(run)
    model, meta = load_bundle(RunDir(run_dir).bundle, device=device)
    model = model.to(memory_format=torch.channels_last)
    classes = meta["classes"]
    multilabel = is_multilabel(meta)
    mean, std = meta["mean"], meta["std"]
    dcfg = _run_data_config(run_dir)
    given = {"path_col": path_col, "label_col": label_col, "group_col": group_col, "weight_col": weight_col,
             "allow_outside": allow_outside}
    if td is not None:
        test, train, name = td.splits["test"], td.splits["train"], "test"
    else:
        test, name, train = _load_eval_data(run_dir, meta, data, progress, options=given)
    images, labels, paths = test.images, test.labels.numpy(), test.paths
    if not len(labels):
        return {}
    weights = test.weights.numpy() if test.weights is not None else None
    temperature = bundle_temperature(meta) or 1.0
    probs = predict_images(model, images, mean, std, tta=tta, device=device, multilabel=multilabel,
                           temperature=temperature)
    if multilabel:
        if report_by:  # asked for explicitly: say why it is absent rather than drop it silently
            print(f"note: --report-by {report_by}: per-group metrics are single-label; skipped for this multi-label "
                  "model", file=sys.stderr)
        return _write_eval(run_dir, data, _multilabel_result(probs, test, meta, name, data, tta, weights),
                           write_report, summary)
    result = {"split": name, "data": data or meta.get("data", ""), "tta": tta,
              **summarize(probs, labels, classes, weights),
              **split_confidence(model, meta, RunDir(run_dir).bundle, images, labels, device, probs),
              "mistakes": confident_mistakes(probs, labels, images, paths, classes)}
    column = report_by or dcfg.get("report_by") or group_col or dcfg.get("group_col") or ""
    if column:
        result["by_group"] = group_metrics(probs, labels, classes, _column_values(test.records, column, data or
                                                                                 dcfg.get("data", "")), column,
                                           weights)
    if train is not None and len(train.labels):
        try:  # one pass over the training set for the gallery's neighbours and the label-error scan
            bank = training_bank(run_dir, model, meta, train, device)
        except Exception as e:  # noqa: BLE001 — a full disk is named again by the eval.json write that follows
            print(f"warning: no nearest training images in the report: {type(e).__name__}: {e}", file=sys.stderr)
            bank = None
        explain_mistakes(result["mistakes"], probs, labels, images, train, model, meta, run_dir, device, bank=bank)
        sel = np.arange(len(train.labels))[:SUSPECT_SCAN_MAX]
        tprobs = (softmax(bank["logits"][sel], temperature) if bank is not None else
                  predict_images(model, train.images[sel], mean, std, device=device, temperature=temperature))
        result["suspects"] = suspects(tprobs, train.labels.numpy()[sel], train.images[sel],
                                      [train.paths[i] for i in sel], classes)
    return _write_eval(run_dir, data, result, write_report, summary)


def _write_eval(run_dir: Path, data: str | None, result: dict, write_report: bool, summary: dict | None) -> dict:
    atomic_write(RunDir(run_dir).eval(data), json.dumps(result, indent=1))
    if write_report and data is None:
        finalize_report(run_dir, summary or read_json(RunDir(run_dir).summary))
    return result


def training_bank(run_dir: Path, model: torch.nn.Module, meta: dict, train=None, device: str = "cpu",
                  progress: bool = False) -> dict:
    """The run's training images in the model's feature space (``features``, ``logits``, ``labels``, ``paths``),
    from RUN/embeddings.npz while the weights and the split are the ones it was computed for."""
    from ..evaluation.neighbours import training_features

    # no split at hand (`picstory similar`): the training images are decoded only when the cache cannot answer
    split = train if train is not None else (lambda: _train_split(run_dir, meta, progress))
    return training_features(run_dir, model, meta, split, device)


def _train_split(run_dir: Path, meta: dict, progress: bool):
    from ..data.sources import resolve
    from ..data.split import read_manifest

    dcfg = _run_data_config(run_dir)
    source = resolve(dcfg.get("data") or meta.get("data"), **_label_options(dcfg, None, {}))
    if not RunDir(run_dir).split.is_file():
        raise UserError(f"{run_dir}: no split.csv, so no training images to compare with")
    return _decode(source, read_manifest(RunDir(run_dir).split, source)["train"], meta, progress)[0]


def explain_mistakes(mistakes: list[dict], probs: np.ndarray, labels: np.ndarray, images: torch.Tensor, train, model,
                     meta: dict, run_dir: Path, device: str = "cpu", k: int = 3, bank: dict | None = None) -> None:
    """Each mistake gets its Grad-CAM overlay (``heatmap``, a data URI; left out for a model Grad-CAM cannot
    explain) and its ``k`` nearest training images (``neighbours``: thumb, label, path, similarity) from ``bank``
    (``training_bank``; None: no neighbours)."""
    from ..evaluation.explain import ExplainError, explain_images, overlay_png
    from ..evaluation.metrics import confident_mistake_indices, thumb
    from ..evaluation.neighbours import embed, nearest
    from ..files import data_uri

    if not mistakes:
        return
    order = confident_mistake_indices(probs, labels, len(mistakes))
    chosen = images[torch.as_tensor(order, dtype=torch.long)].cpu()
    try:
        pred = torch.as_tensor([meta["classes"].index(m["pred"]) for m in mistakes])
        heat, _ = explain_images(model, chosen, meta["mean"], meta["std"], meta.get("arch", ""), pred, device)
        for m, img, h in zip(mistakes, chosen, heat):
            m["heatmap"] = data_uri(overlay_png(img.permute(1, 2, 0).numpy(), h, min_px=96))
    except ExplainError as e:
        print(f"note: no heat maps in the report: {e}", file=sys.stderr)
    except Exception as e:  # noqa: BLE001 — derived data: the evaluation and the run stand without it
        print(f"warning: no heat maps in the report: {type(e).__name__}: {e}", file=sys.stderr)
    if bank is None:
        return
    try:
        idx, sims = nearest(embed(model, chosen, meta["mean"], meta["std"], device=device), bank["features"], k)
    except Exception as e:  # noqa: BLE001 — a full disk is named again by the eval.json write that follows
        print(f"warning: no nearest training images in the report: {type(e).__name__}: {e}", file=sys.stderr)
        return
    for m, row, sim in zip(mistakes, idx, sims):
        m["neighbours"] = [{"path": bank["paths"][j], "label": bank["labels"][j], "similarity": round(float(s), 4),
                            "thumb": thumb(train.images[j].cpu().permute(1, 2, 0).numpy())} for j, s in zip(row, sim)]
def _multilabel_result(probs: np.ndarray, test, meta: dict, name: str, data: str | None, tta: str,
                       weights: np.ndarray | None) -> dict:
    """Multi-label metrics at the bundle's thresholds; per-group metrics and suspects are single-label analyses."""
    from ..evaluation.multilabel import confident_errors, summarize_multilabel
    from ..models.bundle import thresholds

    thr, targets = thresholds(meta), test.labels.numpy()
    return {"split": name, "data": data or meta.get("data", ""), "tta": tta,
            **summarize_multilabel(probs, targets, meta["classes"], thr, weights),
            **confident_errors(probs, targets, test.images, test.paths, meta["classes"], thr)}


def tune_thresholds(run: str | Path, td, device: str = "cpu") -> dict[str, float]:
    """Multi-label: each label's F1-best threshold on the validation split, written into the bundle's model.json."""
    from ..evaluation.multilabel import tune_thresholds as tune
    from ..models.bundle import load_bundle, update_meta

    bundle = RunDir(find_run(run)).bundle
    model, meta = load_bundle(bundle, device=device)
    val = td.splits["val"]
    probs = predict_images(model.to(memory_format=torch.channels_last), val.images, meta["mean"], meta["std"],
                           device=device, multilabel=True)
    tuned = dict(zip(meta["classes"], tune(probs, val.labels.numpy())))
    update_meta(bundle, thresholds=tuned, thresholds_from=f"validation split ({len(val.labels)} images), best F1")
    return tuned


def test_images(run: str | Path, limit: int = 64) -> torch.Tensor:
    """Up to ``limit`` uint8 images of a run's test split (export's parity check uses real inputs)."""
    from ..models.bundle import read_meta

    run_dir = find_run(run)
    test, *_ = _load_eval_data(run_dir, read_meta(RunDir(run_dir).bundle), None, progress=False, limit=limit)
    return test.images


def _run_data_config(run_dir: Path) -> dict:
    import yaml

    cfg = yaml.safe_load(RunDir(run_dir).config.read_text()) if RunDir(run_dir).config.is_file() else {}
    return (cfg or {}).get("data", {}) or {}


def _column_values(records: list, column: str, spec: str) -> list[str]:
    """Each evaluated image's value in ``column``; an unknown column names the close matches."""
    import difflib

    known = {name for r in records for name, _ in r.meta}
    if column not in known:
        close = difflib.get_close_matches(column, sorted(known), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise DataError(f"--report-by {column}: {spec} has no such column (columns besides path and label: "
                        f"{', '.join(sorted(known)) or 'none'}){hint}")
    return [dict(r.meta).get(column, "") for r in records]


def _label_options(dcfg: dict, data: str | None, given: dict) -> dict:
    """The run's label-file options (its --label-map always: the model's classes are the mapped ones), with the
    columns the user gives for another DATA; a DATA that is not a label file takes none."""
    from .. import config as C
    from ..data.labelfile import LABEL_FILE_EXTS

    if data is not None and Path(data).suffix.lower() not in LABEL_FILE_EXTS:
        return {}
    run = C.label_file_options(dcfg)
    same = data is None or Path(data).expanduser().resolve() == Path(dcfg.get("data") or ".").expanduser().resolve()
    if not same:  # another file may name its columns differently: only what the user gives, and the map
        run = {k: v for k, v in run.items() if k == "label_map"}
    return {**run, **C.label_file_options({k: v for k, v in given.items() if v})}


def _load_eval_data(run_dir: Path, meta: dict, data: str | None, progress: bool, limit: int | None = None,
                    options: dict | None = None):
    from ..data.sources import resolve
    from ..data.split import read_manifest

    dcfg = _run_data_config(run_dir)
    spec = data or dcfg.get("data") or meta.get("data")
    opts = _label_options(dcfg, data, options or {})
    if meta.get("task") == "multilabel" and Path(spec).suffix.lower() in (".csv", ".tsv", ".txt"):
        opts["multi_label"] = True  # another file of single labels is still scored label by label
    source = resolve(spec, **opts)
    classes = meta["classes"]
    unknown = sorted(set(source.classes) - set(classes))
    if unknown:
        raise DataError(f"{spec} has classes the model does not know: {', '.join(unknown[:10])} "
                        f"(the model knows {', '.join(classes[:10])}{'…' if len(classes) > 10 else ''})")
    train_idx: list[int] = []
    if data is None:
        splits = read_manifest(RunDir(run_dir).split, source)
        idx, train_idx, name = splits["test"][:limit], splits["train"] if limit is None else [], "test"
    else:
        declared = [i for i, r in enumerate(source.records) if r.split == "test"]
        idx, name = (declared, "test") if declared else (list(range(len(source.records))), "all")
    def part(ids: list[int]):
        return _decode(source, ids, meta, progress, weighted=bool(opts.get("weight_col")))[0]

    test = part(idx)
    if not len(test.labels):
        raise UserError(f"no test images to evaluate in {spec}")
    train = part(train_idx) if train_idx else None
    return test, name, train


def _decode(source, ids: list[int], meta: dict, progress: bool, weighted: bool = False):
    """The run's input pixels for ``source.records[ids]`` (a Split) and which of ``ids`` could be read."""
    from ..data.cache import load_images
    from ..training.setup import Split

    index = {c: i for i, c in enumerate(meta["classes"])}
    multilabel = meta.get("task") == "multilabel"
    cached = load_images(source, ids, meta["img_size"], meta["in_chans"], meta.get("fit", "crop"), progress=progress)
    ok = [j for j in range(len(ids)) if cached.ok[j]]
    if cached.bad:
        print(f"warning: skipped {len(cached.bad)} unreadable image(s)", file=sys.stderr)
    arr = np.ascontiguousarray(cached.images[ok]) if ok else np.zeros((0, 1, 1, 1), np.uint8)
    recs = [source.records[ids[j]] for j in ok]
    weights = torch.tensor([r.weight for r in recs], dtype=torch.float32) if weighted else None
    labels = (torch.from_numpy(source.targets(recs, meta["classes"])) if multilabel
              else torch.tensor([index[r.label] for r in recs], dtype=torch.long))
    split = Split(torch.from_numpy(arr).permute(0, 3, 1, 2), labels,
                  [source.display_path(r) for r in recs], weights, recs)
    return split, [ids[j] for j in ok]


def split_probabilities(run: str | Path, source, split: str = "val", tta: str = EVAL.tta, device: str = "cpu",
                        progress: bool = False) -> dict:
    """The best model's probabilities on one split of the run's own manifest (cross-validation's out-of-fold
    predictions): ``probs`` (N, K), ``labels``, ``indices`` into ``source.records``, display ``paths``."""
    from ..data.split import read_manifest
    from ..models.bundle import load_bundle

    run_dir = find_run(run)
    model, meta = load_bundle(RunDir(run_dir).bundle, device=device)
    model = model.to(memory_format=torch.channels_last)
    ids = read_manifest(RunDir(run_dir).split, source)[split]
    part, kept = _decode(source, ids, meta, progress)
    probs = predict_images(model, part.images, meta["mean"], meta["std"], tta=tta, device=device)
    return {"probs": probs.reshape(len(kept), len(meta["classes"])), "labels": part.labels.numpy(),
            "indices": np.array(kept, dtype=np.int64), "paths": part.paths, "classes": meta["classes"]}


def finalize_report(run_dir: Path, summary: dict) -> None:
    """Diagnosis into summary.json, then report.html. A failing report never loses the trained model."""
    try:
        from ..doctor import diagnose
        from ..pages.run_report import write_report

        summary = dict(summary)
        summary["diagnosis"] = diagnose(run_dir)
        atomic_write(RunDir(run_dir).summary, json.dumps(summary, indent=1))
        write_report(run_dir)
    except Exception as e:  # noqa: BLE001 — the report is derived data; say so and keep the run
        print(f"warning: could not write the report for {run_dir}: {type(e).__name__}: {e}", file=sys.stderr)
        if "--debug" in sys.argv:
            raise
