"""What each sub-command does: a call into the library and a short, readable print-out."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from .config import overrides_from as _overrides
from .errors import UserError
from .options import DataCheckOptions, EvalOptions, values
from .runs import RunDir


def _cmdline(argv: list[str]) -> str:
    return "picstory " + shlex.join(argv)


def cmd_data(args: argparse.Namespace, argv: list[str]) -> int:
    if args.data_command == "export":
        from .data.builtin import export_folder
        from .data.sources import resolve

        counts = export_folder(resolve(args.data), args.out)
        split_counts = ", ".join(f"{k}: {v}" for k, v in counts.items())
        print(f"wrote {sum(counts.values())} PNG files to {args.out} ({split_counts})")
        return 0
    if args.data_command == "issues":
        return _data_issues(args)
    from .pipeline.data_check_run import check
    from .runs import slug

    out = Path(args.out or Path("data-check") / slug(args.data))
    opts = values(DataCheckOptions, args)
    report = check(args.data, out, **{k: v for k, v in opts.items() if k != "out"})
    kind = "labels" if report.get("multilabel") else "classes"
    print(f"{report['total']} images, {len(report['classes'])} {kind}, {len(report['bad_files'])} bad files, "
          f"{len(report['duplicates'])} duplicate groups, {len(report['leaks'])} cross-split leaks")
    if report.get("multilabel"):
        m = report["multilabel"]
        pairs = ", ".join(f"{'+'.join(p['labels'])} {p['images']}" for p in m["co_occurrence"][:5])
        print(f"multi-label: {m['mean_labels']} labels per image on average, {m['no_label']} with none; "
              f"labels: {', '.join(f'{c} {n}' for c, n in report['classes'].items())}"
              + (f"; most often together: {pairs}" if pairs else ""))
    for note in report.get("notes", []):
        print(f"  · {note}")
    for w in report.get("warnings", []):
        print(f"  - {w}")
    verdict = "usable" if report["usable"] else "NOT usable: " + "; ".join(report.get("unusable_reasons", []))
    print(f"{verdict}\nreport: {out / 'report.html'}")
    return 0 if report["usable"] else 2


def _data_issues(args: argparse.Namespace) -> int:
    from .doctor import export_relabel
    from .doctor.issues import issues_table, label_issues, relabel_candidates, write_issues_csv

    result = label_issues(args.run)
    print(issues_table(result, args.limit))
    print(f"list: {write_issues_csv(result)}")
    if args.export_relabel:
        n = export_relabel(result["parent"], args.export_relabel, candidates=relabel_candidates(args.run))
        print(f"copied {n} images to check into {args.export_relabel}")
    return 0


def cmd_train(args: argparse.Namespace, argv: list[str]) -> int:
    if args.nproc is not None and args.nproc != 1:
        from .launch import launch

        return launch(args.nproc, argv, device=args.device or "auto")
    import time

    from .device import process_age
    from .pipeline.cv_run import train

    run = train(args.data, config=args.config, resume=args.resume, progress=not args.quiet,
                command=_cmdline(argv), started=time.perf_counter() - process_age(), **_overrides(args))
    s = run.summary
    if s and s.get("folds"):
        test = (f", test acc {s['test_accuracy']:.4f} ± {s['test_accuracy_std']:.4f}"
                if s.get("test_accuracy") is not None else "")
        print(f"\n{run.path}: {s['folds']} folds, val acc {s['val_accuracy']:.4f} ± {s['val_accuracy_std']:.4f}"
              f"{test}, out-of-fold acc {s['oof_accuracy']:.4f}, {s['train_seconds']:.0f}s")
        print(f"report: {run.path / 'cv.html'}\nlabel issues: picstory data issues {run.path}")
    elif s and s.get("task") == "multilabel" and s.get("test_micro_f1") is not None:
        print(f"\n{run.path}: best epoch {s['best_epoch']}/{s['epochs_run']}, val exact match "
              f"{s['val_accuracy']:.4f}, test micro-F1 {s['test_micro_f1']:.4f}, mAP {s.get('test_mAP') or 0:.4f}, "
              f"exact match {s['test_accuracy']:.4f}, {s['train_seconds']:.0f}s ({s['stop_reason']})")
        print(f"report: {run.path / 'report.html'}")
    elif s:
        test = s.get("test_accuracy")
        print(f"\n{run.path}: best epoch {s['best_epoch']}/{s['epochs_run']}, val acc {s['val_accuracy']:.4f}, "
              f"test acc {test:.4f}" if test is not None else f"\n{run.path}: no test split", end="")
        print(f", {s['train_seconds']:.0f}s ({s['stop_reason']})")
        print(f"report: {run.path / 'report.html'}")
    return 0


def cmd_eval(args: argparse.Namespace, argv: list[str]) -> int:
    from .pipeline.evaluation_run import evaluate_run

    r = evaluate_run(args.run, data=args.data, **values(EvalOptions, args))
    if not r:
        raise UserError(f"{args.run}: the run has no test split to evaluate; pass DATA")
    if r.get("task") == "multilabel":
        mean_ap = "–" if r["mAP"] is None else f"{r['mAP']:.4f}"
        print(f"{r['split']} micro-F1 {r['micro_f1']:.4f}  macro-F1 {r['macro_f1']:.4f}  mAP {mean_ap}  exact match "
              f"{r['exact_match']:.4f}  loss {r['loss']:.4f}  ({r['n']} images, tta {r['tta']})")
        worst = sorted(r["per_label"], key=lambda c: c["f1"])[:3]
        print("weakest labels: " + ", ".join(f"{c['label']} (F1 {c['f1']:.2f}, threshold {c['threshold']:.2f})"
                                             for c in worst))
        return 0
    weighted = f"  weighted {r['weighted_accuracy']:.4f}" if "weighted_accuracy" in r else ""
    top = next((k for k in r if k.startswith("top") and k.endswith("_accuracy")), "top5_accuracy")
    print(f"{r['split']} accuracy {r['accuracy']:.4f}{weighted}  {top[:-9].replace('top', 'top-')} "
          f"{r.get(top, float('nan')):.4f}  "
          f"loss {r['loss']:.4f}  ({r['n']} images, tta {r['tta']})")
    print(confidence_line(r))
    if r.get("majority_class") is not None:
        print(f"balanced accuracy {r['balanced_accuracy']:.4f}  majority baseline {r['majority_baseline']:.4f} "
              f"(always {r['majority_class']!r})")
    worst = sorted(r["per_class"], key=lambda c: c["f1"])[:3]
    print("weakest classes: " + ", ".join(f"{c['class']} (F1 {c['f1']:.2f})" for c in worst))
    if r.get("by_group"):
        g = r["by_group"]
        print(f"by {g['column']}: " + ", ".join(f"{row['value']} {row['accuracy']:.3f} (n={row['n']})"
                                                 for row in g["groups"][:12])
              + (f", … {len(g['groups']) - 12} more" if len(g["groups"]) > 12 else ""))
    return 0


def confidence_line(r: dict) -> str:
    """eval's calibration and unknown figures, on one or two lines."""
    cal = r.get("calibration") or {}
    before = (cal.get("before") or {}).get("ece")
    if "temperature" in r:
        text = f"calibration: ECE {r['ece']:.4f} (uncalibrated {before:.4f}, temperature {r['temperature']:.3f}, " \
               f"{r['ece_bins']} bins)"
    else:
        text = f"calibration: none stored (ECE {r['ece']:.4f}, {r.get('calibration_note', '')})"
    acc = (r.get("risk_coverage") or {}).get("accepted_accuracy") or {}
    at = ", ".join(f"{float(c):.0%} {a:.4f}" for c, a in acc.items())
    if "unknown_rate" in r:
        ok = "–" if r["accepted_accuracy"] is None else f"{r['accepted_accuracy']:.4f}"
        text += (f"\nunknown: {r['unknown_rate']:.1%} answered unknown ({r['unknown_score']} score > "
                 f"{r['unknown_threshold']:.4g}); accuracy of the accepted {ok}; at coverage {at}")
    elif at:
        text += f"\naccuracy of the most confident: at coverage {at}"
    return text


def cmd_predict(args: argparse.Namespace, argv: list[str]) -> int:
    from .deploy.predict import expand_inputs, format_predictions, load

    predictor = load(args.target, backend=args.backend)
    inputs = expand_inputs(args.images)
    results = predictor.predict(inputs, top_k=args.top_k, tta=args.tta, min_confidence=args.min_confidence)
    if args.explain:
        from .deploy.predict import write_explanations

        for r, path in zip(results, write_explanations(predictor, inputs, args.explain)):
            r["explanation"] = path
        n = sum(r["explanation"] is not None for r in results)
        print(f"Grad-CAM overlays: {n} PNG file(s) in {args.explain}", file=sys.stderr)
    print(format_predictions(results, args.format, args.top_k))
    return 1 if any(r.get("error") for r in results) else 0


def cmd_similar(args: argparse.Namespace, argv: list[str]) -> int:
    from .deploy.predict import expand_inputs
    from .pipeline.similar_run import format_similar, similar

    results = similar(args.run, expand_inputs(args.images), k=args.k)
    print(format_similar(results, args.format))
    return 1 if any(r.get("error") for r in results) else 0


def cmd_export(args: argparse.Namespace, argv: list[str]) -> int:
    from .deploy.export import export
    from .pipeline.evaluation_run import test_images
    from .runs import find_run

    run = find_run(args.run)
    if args.format == "onnx-int8":
        from .pipeline.int8_run import export_int8_run

        export_int8_run(run, calibration_images=args.calibration_images, min_agreement=args.min_agreement,
                        max_accuracy_drop=args.max_accuracy_drop, require_faster=args.require_faster)
        return 0
    try:
        images = test_images(run) if RunDir(run).split.is_file() else None
    except UserError:
        images = None  # the data moved away: the check still runs on seeded synthetic inputs
    export(run, fmt=args.format, opset=args.opset, dynamic_batch=args.dynamic_batch, parity_images=images)
    return 0


def cmd_serve(args: argparse.Namespace, argv: list[str]) -> int:
    from .deploy.serve import serve

    serve(args.run, host=args.host, port=args.port, workers=args.workers, backend=args.backend,
          log_path=args.log, store_inputs=args.store_inputs, max_body_bytes=int(args.max_body_mb * 2**20),
          max_pixels=args.max_pixels, store_cap_mb=args.store_cap_mb, device=args.device,
          read_timeout=args.read_timeout, max_uploads=args.max_uploads)
    return 0


def cmd_sweep(args: argparse.Namespace, argv: list[str]) -> int:
    from .compare.sweep import sweep

    result = sweep(args.data, args.grid, repeats=args.repeats, jobs=args.jobs, command=_cmdline(argv),
                   **_overrides(args))
    print(result["table"])
    print(f"comparison: {result['dir']}/comparison.html")
    return 0


def cmd_tune(args: argparse.Namespace, argv: list[str]) -> int:
    from .compare.tune import tune

    result = tune(args.data, args.trials, budget_minutes=args.budget_minutes, space=args.space or None,
                  pruner=args.pruner, command=_cmdline(argv), **_overrides(args))
    best = result["best"]
    if best:
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
        test = f", test {best['test']:.4f}" if best.get("test") is not None else ""
        print(f"best trial {best['number']}: val {best['value']:.4f}{test}  ({params})  run {result['dir']}/"
              f"{best['run']}")
    else:
        print("no trial finished")
    print(f"report: {result['dir']}/tune.html")
    return 0 if best else 1


def cmd_lr_find(args: argparse.Namespace, argv: list[str]) -> int:
    from .pipeline.lr_find_run import lr_find

    r = lr_find(args.data, **_overrides(args))
    print(f"suggested lr: {r['suggested_lr']:.2e}   plot: {r.get('plot', '')}")
    return 0


def cmd_runs(args: argparse.Namespace, argv: list[str]) -> int:
    from .compare.table import format_runs
    from .runs import list_runs

    print(format_runs(list_runs(args.dir), args.format, args.sort))
    return 0


def cmd_monitor(args: argparse.Namespace, argv: list[str]) -> int:
    from .monitor import monitor

    r = monitor(args.run, log=args.log, out=args.out, export_relabel=args.export_relabel,
                low_confidence=args.low_confidence)
    drift = r.get("drift", {})
    print(f"{r['predictions']} predictions; drift PSI {drift.get('psi', float('nan')):.3f} "
          f"({drift.get('level', 'unknown')})")
    u = r.get("unknown") or {}
    if u.get("decided"):
        print(f"unknown answers: {u['unknown']} of {u['decided']} ({u['share']:.1%}), first half "
              f"{u['early_share'] or 0:.1%} → second half {u['late_share'] or 0:.1%}"
              + (" — rising: the inputs drift from the training images" if u["rising"] else ""))
    for path in r.get("files", []):
        print(f"report: {path}")
    return 0


def cmd_doctor(args: argparse.Namespace, argv: list[str]) -> int:
    from .doctor import diagnose, doctor_text, export_relabel
    from .runs import find_run

    run = find_run(args.run)
    result = diagnose(run, target_accuracy=args.target_accuracy, class_recall_target=args.class_recall)
    print(json.dumps(result, indent=1) if args.format == "json" else doctor_text(result))
    if args.export_relabel:
        n = export_relabel(run, args.export_relabel)
        print(f"copied {n} images to check into {args.export_relabel}")
    return 0


def cmd_models(args: argparse.Namespace, argv: list[str]) -> int:
    from .models import has_pretrained, list_models

    for name in list_models(args.pattern):
        print(name + ("  (pretrained weights)" if has_pretrained(name) else ""))
    return 0


