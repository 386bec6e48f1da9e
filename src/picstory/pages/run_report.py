"""report.html and its companions (curves.png, confusion_matrix.png, errors.png, per_class.csv) for a run.

The page is self-contained — figures and thumbnails are data URIs, CSS is inline, nothing is fetched — so it can
be mailed or archived as one file. Every string that comes from data (class names, paths, config) is escaped.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Mapping

import numpy as np
import yaml

from .. import doctor
from ..files import atomic_write
from . import figures as plots
from . import model_card
from .confidence_page import confidence_figures, confidence_section
from .html import e as _e
from .html import img as _img
from .html import page


def per_class_rows(run: Mapping) -> list[dict]:
    """eval.json's per-class metrics (multi-label: per label, with AP and threshold), else computed from the
    validation confusion matrix of the best epoch."""
    per_label = (run.get("eval") or {}).get("per_label")
    if per_label:
        return [{"class": r["label"], **r} for r in per_label]
    per_class = (run.get("eval") or {}).get("per_class")
    if per_class:
        return [dict(r) for r in per_class]
    cm, _ = doctor.run_confusion(run)
    classes = doctor.run_classes(run)
    if not cm or len(cm) != len(classes):
        return []
    cm = np.asarray(cm, dtype=float)
    tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    prec = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    rec = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros_like(tp), where=prec + rec > 0)
    return [{"class": c, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for c, p, r, f, s in zip(classes, prec, rec, f1, support)]


def _per_class_csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    multilabel = any("threshold" in r for r in rows)
    w.writerow(["class", "precision", "recall", "f1", "support"] + (["ap", "threshold"] if multilabel else []))
    for r in rows:
        w.writerow([r["class"], f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}", r["support"]]
                   + ([_num(r.get("ap")), f"{r['threshold']:.4f}"] if multilabel else []))
    return buf.getvalue().encode()


def _num(x: object) -> str:
    return "" if x is None else f"{float(x):.4f}"


def _multilabel(run: Mapping) -> bool:
    return (run.get("eval") or {}).get("task") == "multilabel" or (run.get("summary") or {}).get("task") == \
        "multilabel"


def _figures(run: Mapping) -> dict[str, bytes]:
    s = run.get("summary") or {}
    metrics = run.get("metrics") or []
    cm, where = doctor.run_confusion(run)
    classes = doctor.run_classes(run)
    mistakes = (run.get("eval") or {}).get("mistakes") or []
    multilabel = _multilabel(run)
    figs = {
        "curves.png": plots.curves_figure(metrics, s.get("best_epoch")) if metrics
        else plots.placeholder_figure("No metrics.csv: no training curves."),
        "confusion_matrix.png": plots.confusion_figure(cm, classes) if cm and len(cm) == len(classes)
        else plots.placeholder_figure("Multi-label: no confusion matrix (see the per-label table)." if multilabel
                                      else "No confusion matrix recorded."),
        "errors.png": plots.placeholder_figure("Multi-label: see the false positive / negative galleries.")
        if multilabel else plots.errors_figure(mistakes) if run.get("eval")
        else plots.placeholder_figure("No eval.json: no mistakes gallery."),
    }
    out = {name: plots.figure_png(fig) for name, fig in figs.items()}
    if run.get("lr_find"):
        out["lr_find"] = plots.figure_png(plots.lr_find_figure(run["lr_find"]))  # embedded only
    out.update(confidence_figures(run))
    return out


def write_report(run_dir: str | Path, target_accuracy: float | None = None,
                 class_recall_target: float | None = None) -> Path:
    """Write report.html, curves.png, confusion_matrix.png, errors.png and per_class.csv into the run directory."""
    run = doctor.load_run(run_dir)
    out = Path(run_dir)
    diagnosis = doctor.diagnose_loaded(run, target_accuracy, class_recall_target)
    pngs = _figures(run)
    rows = per_class_rows(run)
    for name, data in pngs.items():
        if name.endswith(".png"):
            atomic_write(out / name, data)
    atomic_write(out / "per_class.csv", _per_class_csv(rows))
    page = render_html(run, diagnosis, pngs, rows)
    atomic_write(out / "report.html", page.encode())
    model_card.write_card(run, diagnosis, rows)
    return out / "report.html"


def render_html(run: Mapping, diagnosis: dict, pngs: Mapping[str, bytes], rows: list[dict]) -> str:
    parts = [_header(run, diagnosis), _diagnosis(diagnosis), _curves(run, pngs), _confusion_section(run, pngs),
             confidence_section(run, pngs),
             _per_label(run, rows) if _multilabel(run) else _per_class(rows), _by_group(run), _gallery(run, "mistakes"),
             _label_gallery(run, "false_positives"), _label_gallery(run, "false_negatives"), _gallery(run, "suspects"),
             _data(run),
             _timing(run), _config(run), model_card.to_html(model_card.card_sections(run, diagnosis, rows,
                                                                                    model_card.bundle_meta(run)))]
    title = f"picstory report — {Path(run.get('dir') or 'run').name}"
    return page(title, "".join(p for p in parts if p), "run-report")


def _pct(x: object) -> str:
    return "–" if x is None else f"{100 * float(x):.1f}%"


def _header(run: Mapping, diagnosis: dict) -> str:
    s = run.get("summary") or {}
    name = Path(run.get("dir") or "run").name
    meta = " · ".join(_e(x) for x in (
        f"model {s.get('model') or doctor.cfg_value(run, 'model', 'model', '?')}", f"data {doctor.data_spec(run)}",
        f"{s.get('img_size')} px" if s.get("img_size") else "", f"{len(doctor.run_classes(run))} classes") if x)
    acc, split = diagnosis.get("accuracy"), diagnosis.get("split") or "test"
    val = f"validation {_pct(s.get('val_accuracy'))}" if s.get("val_accuracy") is not None else ""
    best = f" · best epoch {s['best_epoch']}" if s.get("best_epoch") else ""
    b = doctor.baselines(run)
    base = (f"balanced accuracy {_pct(b['balanced_accuracy'])} · majority baseline {_pct(b['majority_baseline'])} "
            f"(always {b['majority_class']!r})") if b else ""
    return (f'<section class="hero"><div class="big">{_pct(acc)}<small>{_e(split)} accuracy</small></div>'
            f'<div><h1>{_e(name)}</h1><div class="meta">{meta}</div>'
            f'<div class="meta">{_e(val)}{_e(best)}</div><div class="meta">{_e(base)}</div></div></section>')


def _diagnosis(d: dict) -> str:
    cls = {"ready to deploy": "ready", "ready with a caveat": "ready", "not yet": "notyet"}.get(d["verdict"], "none")
    out = [f'<section><h2>Diagnosis</h2><p class="verdict"><span class="badge {cls}">{_e(d["verdict"])}</span> '
           f'{_e(d["summary"])}</p><p class="next"><b>Next step</b><code>{_e(d["next_step"])}</code></p>']
    for f in d["findings"]:
        steps = "".join(f"<li><code>{_e(s)}</code></li>" if s.startswith("picstory ") else f"<li>{_e(s)}</li>"
                        for s in f["next_steps"])
        out.append(f'<div class="finding sev-{_e(f["severity"])}"><span class="badge {_e(f["severity"])}">'
                   f'{_e(f["severity"])}</span> <b>{_e(f["title"])}</b><p>{_e(f["evidence"])}</p>'
                   f'<ul>{steps}</ul></div>')
    if not d["findings"]:
        out.append("<p>No findings: the curves and the data look healthy.</p>")
    return "".join(out) + "</section>"


def _curves(run: Mapping, pngs: Mapping[str, bytes]) -> str:
    s, rows = run.get("summary") or {}, run.get("metrics") or []
    sizes = sorted({int(r["img_size"]) for r in rows if r.get("img_size")})
    notes = [f"Stopped: {s['stop_reason']}." if s.get("stop_reason") else "",
             f"The green dashed line marks the best epoch ({s['best_epoch']}), whose weights were kept."
             if s.get("best_epoch") else "",
             f"Progressive resizing: {' → '.join(f'{x} px' for x in sizes)} (shaded bands, sizes on top)."
             if len(sizes) > 1 else ""]
    lr = _img(pngs["lr_find"], "learning-rate finder", "fig small") if "lr_find" in pngs else ""
    return (f'<section><h2>Training curves</h2><p>{_e(" ".join(n for n in notes if n))}</p>'
            f'{_img(pngs["curves.png"], "training curves")}{lr}</section>')


def _confusion_section(run: Mapping, pngs: Mapping[str, bytes]) -> str:
    if _multilabel(run):
        return ""
    _, where = doctor.run_confusion(run)
    note = f"On the {where}. Rows are the true class, columns the prediction." if where else ""
    return f'<section><h2>Confusion matrix</h2><p>{_e(note)}</p>{_img(pngs["confusion_matrix.png"], "confusion")}' \
           f"</section>"


def _per_class(rows: list[dict]) -> str:
    if not rows:
        return ""
    macro = sum(r["f1"] for r in rows) / len(rows)
    limit = max(0.5, macro - 0.1)
    body = "".join(
        f'<tr class="{"weak" if r["f1"] < limit else ""}"><td>{_e(r["class"])}</td><td>{r["precision"]:.3f}</td>'
        f'<td>{r["recall"]:.3f}</td><td>{r["f1"]:.3f}</td><td>{int(r["support"])}</td></tr>' for r in rows)
    weak = sum(r["f1"] < limit for r in rows)
    note = (f"{doctor.plural(weak, 'weak class')} highlighted (F1 below {limit:.2f}; the macro-average F1 is "
            f"{macro:.3f})." if weak else f"Macro-average F1 {macro:.3f}; no class stands out as weak.")
    return (f'<section><h2>Per-class metrics</h2><p>{_e(note)}</p><div class="scroll"><table><tr><th>class</th>'
            f'<th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>{body}</table></div></section>')


def _per_label(run: Mapping, rows: list[dict]) -> str:
    """Multi-label: precision / recall / F1 at each label's tuned threshold, AP, support; the set-level figures."""
    if not rows:
        return ""
    ev = run.get("eval") or {}
    body = "".join(
        f'<tr class="{"weak" if r["f1"] < 0.5 else ""}"><td>{_e(r["class"])}</td><td>{r["precision"]:.3f}</td>'
        f'<td>{r["recall"]:.3f}</td><td>{r["f1"]:.3f}</td><td>{_num(r.get("ap"))[:5] or "–"}</td>'
        f'<td>{int(r["support"])}</td><td>{r["threshold"]:.3f}</td></tr>' for r in rows)
    mean_ap = ev.get("mAP")
    note = (f"On the {ev.get('split') or 'evaluated'} split ({ev.get('n', 0)} images): micro-F1 "
            f"{ev.get('micro_f1', 0):.3f}, macro-F1 {ev.get('macro_f1', 0):.3f}, mAP "
            f"{'–' if mean_ap is None else f'{mean_ap:.3f}'}, exact match {ev.get('exact_match', 0):.3f}. Each "
            "label's threshold was tuned on the validation split for the best F1; labels with F1 below 0.5 are "
            "highlighted.")
    return (f'<section><h2>Per-label metrics</h2><p>{_e(note)}</p><div class="scroll"><table><tr><th>label</th>'
            f'<th>precision</th><th>recall</th><th>F1</th><th>AP</th><th>support</th><th>threshold</th></tr>{body}'
            "</table></div></section>")


def _label_gallery(run: Mapping, key: str) -> str:
    """Multi-label: the most confident false positives (label predicted, not true) or false negatives."""
    items = (run.get("eval") or {}).get(key) or []
    if not items:
        return ""
    if key == "false_positives":
        title = "Most confident false positives"
        intro = "A label the image does not have, predicted with the highest probability."
    else:
        title, intro = "Most confident false negatives", "A label the image has, given the lowest probability."
    tiles = "".join(
        f'<div class="tile" title="{_e(m.get("path", ""))}">{_thumb(m.get("thumb"))}'
        f'<div>{_e(m["label"])}: <b>{_pct(m.get("prob"))}</b> (threshold {float(m["threshold"]):.2f})</div>'
        f'<div class="p">true: {_e(", ".join(m.get("true") or []) or "none")}</div>'
        f'<div class="p">pred: {_e(", ".join(m.get("pred") or []) or "none")}</div>'
        f'<div class="path">{_e(m.get("path", ""))}</div></div>' for m in items)
    return f'<section><h2>{title}</h2><p>{_e(intro)}</p><div class="gallery">{tiles}</div></section>'


def _by_group(run: Mapping) -> str:
    """eval.json's per-group metrics (--group-col / --report-by): accuracy and per-class recall per value."""
    ev = run.get("eval") or {}
    g = ev.get("by_group")
    if not g or not g.get("groups"):
        return ""
    classes = [c for c in (ev.get("classes") or []) if any(c in r["recall"] for r in g["groups"])]
    weighted = any("weighted_accuracy" in r for r in g["groups"])
    head = "".join(f"<th>recall {_e(c)}</th>" for c in classes)
    body = "".join(
        f'<tr class="{"weak" if r["value"] == g.get("worst") and len(g["groups"]) > 1 else ""}">'
        f'<td>{_e(r["value"] or "(empty)")}</td><td>{r["n"]}</td><td>{r["accuracy"]:.3f}</td>'
        + (f'<td>{r.get("weighted_accuracy", float("nan")):.3f}</td>' if weighted else "")
        + "".join(f'<td>{r["recall"][c]:.3f}</td>' if c in r["recall"] else "<td>–</td>" for c in classes)
        + "</tr>" for r in g["groups"])
    lo, hi = g.get("accuracy_range") or (0, 0)
    note = (f"Accuracy on the {ev.get('split') or 'evaluated'} images for each value of '{g['column']}': from "
            f"{lo:.3f} to {hi:.3f}; the weakest value is highlighted.")
    return (f'<section><h2>Metrics by {_e(g["column"])}</h2><p>{_e(note)}</p><div class="scroll"><table><tr>'
            f'<th>{_e(g["column"])}</th><th>images</th><th>accuracy</th>'
            + ("<th>weighted accuracy</th>" if weighted else "") + f'{head}</tr>{body}</table></div></section>')


def _thumb(uri: object) -> str:
    uri = str(uri or "")
    return f'<img alt="" src="{uri}">' if plots.DATA_URI.match(uri) else '<div class="path">no thumbnail</div>'


def _gallery(run: Mapping, key: str) -> str:
    items = (run.get("eval") or {}).get(key) or []
    if key == "mistakes":
        title = "Most confident mistakes"
        intro = "Images of the evaluated split that the model got wrong with the highest confidence."
    else:
        title = "Likely mislabelled training images"
        intro = ("Training images with the highest loss where the model confidently predicts another class. "
                 f"Export them for checking: picstory doctor {run.get('dir') or 'RUN'} --export-relabel DIR")
    if not items:
        return ""
    tiles = []
    for m in items:
        truth = m.get("true", m.get("label"))
        loss = f" · loss {float(m['loss']):.2f}" if m.get("loss") is not None else ""
        image = _thumb(m.get("thumb")) if "neighbours" not in m else _with_heatmap(m)
        tiles.append(f'<div class="tile" title="{_e(m.get("path", ""))}">{image}'
                     f'<div>{"label" if key == "suspects" else "true"}: <b>{_e(truth)}</b></div>'
                     f'<div class="p">pred: <b>{_e(m.get("pred"))}</b> ({_pct(m.get("confidence"))}{loss})</div>'
                     f'<div class="path">{_e(m.get("path", ""))}</div>{_neighbours(m)}</div>')
    wide, note = any("neighbours" in m for m in items), ""
    if wide:
        note = (" Beside each image, its Grad-CAM heat map for the predicted class (red: what the model looked at); "
                "below, its three nearest training images in the model's feature space, with their labels — a "
                "mislabelled or ambiguous training image shows up there.")
    return (f'<section><h2>{title}</h2><p>{_e(intro + note)}</p><div class="gallery{" wide" if wide else ""}">'
            f'{"".join(tiles)}</div></section>')


def _with_heatmap(m: Mapping) -> str:
    heat = _thumb(m["heatmap"]).replace('alt=""', 'alt="Grad-CAM heat map"') if m.get("heatmap") else ""
    return f'<div class="pair">{_thumb(m.get("thumb"))}{heat}</div>'


def _neighbours(m: Mapping) -> str:
    """The nearest training images of a mistake: thumbnail, label and cosine similarity each."""
    if not m.get("neighbours"):
        return ""
    cells = "".join(f'<figure title="{_e(n.get("path", ""))}">{_thumb(n.get("thumb"))}<figcaption>'
                    f'<b>{_e(n.get("label"))}</b> · {float(n.get("similarity", 0)):.2f}</figcaption></figure>'
                    for n in m["neighbours"])
    return f'<div class="nn"><div class="path">nearest training images</div>{cells}</div>'


def _data(run: Mapping) -> str:
    d, s = run.get("data") or {}, run.get("summary") or {}
    counts = d.get("class_counts") or s.get("class_counts") or {}
    splits = [k for k in ("train", "val", "test") if k in counts] + [k for k in counts if k not in
                                                                     ("train", "val", "test")]
    classes = doctor.run_classes(run) or sorted({c for v in counts.values() for c in v})
    if not counts and not d:
        return ""
    head = "".join(f"<th>{_e(k)}</th>" for k in splits)
    body = "".join(f"<tr><td>{_e(c)}</td>" + "".join(f"<td>{counts[k].get(c, 0)}</td>" for k in splits) +
                   f"<td>{sum(counts[k].get(c, 0) for k in splits)}</td></tr>" for c in classes)
    dups = d.get("duplicates")
    facts = [("data", d.get("spec") or doctor.data_spec(run)), ("kind", d.get("kind")),
             ("imbalance (largest / smallest class)", f"{d['imbalance_ratio']:.1f}" if d.get("imbalance_ratio")
              else None), ("duplicate images", len(dups) if isinstance(dups, list) else dups),
             ("unreadable files", len(d.get("bad_files") or []) if d else None),
             ("images shared between splits", len(d.get("leaks") or []) if d else None)]
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts if v is not None)
    bad = "".join(f"<li><code>{_e(b.get('path'))}</code> — {_e(b.get('reason'))}</li>"
                  for b in (d.get("bad_files") or [])[:20])
    leaks = "".join(f"<li>{_e(', '.join(lk.get('splits', [])))}: "
                    f"{' = '.join(f'<code>{_e(p)}</code>' for p in lk.get('paths', []))}</li>"
                    for lk in (d.get("leaks") or [])[:20])
    return (f'<section><h2>Data</h2><dl>{dl}</dl><h3>Images per class</h3><div class="scroll"><table><tr>'
            f'<th>class</th>{head}<th>total</th></tr>{body}</table></div>'
            + (f"<h3>Unreadable files (skipped)</h3><ul>{bad}</ul>" if bad else "")
            + (f"<h3>Identical images in more than one split</h3><ul>{leaks}</ul>" if leaks else "")
            + "</section>")


def _timing(run: Mapping) -> str:
    s, env = run.get("summary") or {}, run.get("env") or {}
    secs, n = s.get("train_seconds"), s.get("epochs_run") or len(run.get("metrics") or [])
    facts = [("training time", f"{secs:.1f} s" if secs is not None else None), ("epochs", n or None),
             ("seconds per epoch", f"{secs / n:.2f}" if secs is not None and n else None),
             ("device", s.get("device") or env.get("device")), ("precision", s.get("precision")),
             ("parameters", f"{s['params']:,}" if isinstance(s.get("params"), int) else s.get("params")),
             ("threads", env.get("threads")), ("seed", env.get("seed")), ("picstory", env.get("picstory")),
             ("torch", env.get("torch")), ("python", env.get("python")), ("command", env.get("command"))]
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts if v is not None)
    return f'<section><h2>Timing and environment</h2><dl class="two">{dl}</dl></section>' if dl else ""


def _config(run: Mapping) -> str:
    cfg = run.get("config")
    if not cfg:
        return ""
    text = yaml.safe_dump(cfg, sort_keys=False)
    return (f"<section><details><summary><b>Config</b> (reproduce with <code>picstory train --config "
            f"{_e(Path(run.get('dir') or 'RUN') / 'config.yaml')}</code>)</summary><pre>{_e(text)}</pre>"
            f"</details></section>")
