"""The model card: MODEL_CARD.md in the bundle and the same content as a section of report.html.

Model cards (Mitchell et al., 2019; the Hugging Face template) tell whoever receives a model what it is for, what it
was trained on, how well it does per class and where it is weak. Every fact here comes from the run directory, so
the card is rebuilt whenever the report is; missing facts say how to supply them rather than being left out.

One structure (a list of sections of paragraphs, bullet lists and tables) renders to both Markdown and HTML, so the
two cannot disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from .. import doctor
from ..files import atomic_write, read_json
from .html import e as _e

CARD_NAME = "MODEL_CARD.md"
WEAK_CLASSES = 3
CALIBRATION_KEYS = ("ece", "calibration", "temperature", "unknown_rate", "unknown_threshold")


def _pct(x: object) -> str:
    return "–" if x is None else f"{100 * float(x):.1f}%"


def _nums(xs: object) -> str:
    return "[" + ", ".join(f"{float(x):.4f}" for x in xs) + "]" if isinstance(xs, list) else str(xs)


def card_sections(run: Mapping, diagnosis: dict, rows: list[dict], meta: Mapping | None = None) -> list[tuple]:
    """[(heading, [block, …])] where a block is ``("p", text)``, ``("ul", [text])`` or ``("table", head, rows)``."""
    return [s for s in (_model(run, meta), _intended_use(run), _data(run), _recipe(run), _metrics(run, rows),
                        _calibration(run), _weaknesses(run, diagnosis, rows), _exports(meta),
                        _licence(run)) if s]


def _model(run: Mapping, meta: Mapping | None) -> tuple:
    s, m = run.get("summary") or {}, meta or {}
    size = m.get("img_size") or s.get("img_size")
    facts = [f"architecture: {m.get('arch') or s.get('model') or doctor.cfg_value(run, 'model', 'model', '?')}",
             f"input: {m.get('in_chans', '?')}×{size}×{size} px, fit `{m.get('fit', 'crop')}`, normalised with "
             f"mean {_nums(m.get('mean'))} and std {_nums(m.get('std'))}" if m else f"input: {size} px",
             f"classes ({len(doctor.run_classes(run))}): {', '.join(doctor.run_classes(run)[:30])}"
             + (" …" if len(doctor.run_classes(run)) > 30 else ""),
             f"parameters: {s['params']:,}" if isinstance(s.get("params"), int) else "",
             f"picstory {m.get('picstory_version') or (run.get('env') or {}).get('picstory', '?')}, trained "
             f"{s.get('finished', '?')}"]
    return ("Model", [("ul", [f for f in facts if f])])


def _intended_use(run: Mapping) -> tuple:
    text = doctor.cfg_value(run, "run", "description", "") or ""
    blocks = [("p", text)] if text else [("p", "Not stated. Train with `--description \"what this model is for and "
                                                "what it is not for\"` to record it here.")]
    blocks.append(("p", "The model only knows the classes above: every input gets one of them, including images "
                        "of something else. Check it on data like your own before relying on it."))
    return ("Intended use", blocks)


def _data(run: Mapping) -> tuple:
    d, s, env = run.get("data") or {}, run.get("summary") or {}, run.get("env") or {}
    counts = d.get("class_counts") or s.get("class_counts") or {}
    splits = [k for k in ("train", "val", "test") if k in counts]
    classes = doctor.run_classes(run) or sorted({c for v in counts.values() for c in v})
    leaks = d.get("leaks") or []
    dups = d.get("duplicates")
    facts = [f"source: `{d.get('spec') or doctor.data_spec(run)}`" + (f" ({d['kind']})" if d.get("kind") else ""),
             f"fingerprint: `{env['data_fingerprint']}`" if env.get("data_fingerprint") else "",
             f"unreadable files skipped: {len(d.get('bad_files') or [])}" if d else "",
             f"duplicate images: {len(dups) if isinstance(dups, list) else dups}" if dups is not None else "",
             (f"images shared between splits (leaks): {len(leaks)}"
              + (" — test accuracy may be optimistic" if leaks else "")) if d else ""]
    blocks: list = [("ul", [f for f in facts if f])]
    if counts:
        table = [[c, *[str(counts[k].get(c, 0)) for k in splits], str(sum(counts[k].get(c, 0) for k in splits))]
                 for c in classes]
        table.append(["all", *[str(sum(counts[k].values())) for k in splits],
                      str(sum(sum(counts[k].values()) for k in splits))])
        blocks.append(("table", ["class", *splits, "total"], table))
    for lk in leaks[:5]:
        blocks.append(("ul", [f"leak ({', '.join(lk.get('splits', []))}): "
                              + " = ".join(f"`{p}`" for p in lk.get("paths", []))]))
    return ("Data", blocks)


def _recipe(run: Mapping) -> tuple:
    s, env, cfg = run.get("summary") or {}, run.get("env") or {}, run.get("config") or {}
    t, m, a = cfg.get("train") or {}, cfg.get("model") or {}, cfg.get("augment") or {}
    aug = ", ".join(f"{k} {v}" for k, v in a.items() if v not in (0, 0.0, False, "", None)) or "none"
    from ..models import has_pretrained

    name = str(m.get("model", s.get("model")))
    start = "pretrained weights" if m.get("pretrained") and has_pretrained(name) else "random initialisation"
    start = f"initial weights `{m['weights']}`" if m.get("weights") else start
    facts = [f"model `{name}`, started from {start}",
             f"{s.get('epochs_run', '?')} epochs ({s.get('stop_reason', '?')}), best epoch {s.get('best_epoch', '?')}"
             f", {s.get('train_seconds', '?')} s on {s.get('device') or env.get('device', '?')} "
             f"({s.get('precision', '?')})",
             f"optimizer {t.get('optimizer', s.get('optimizer'))}, peak LR {s.get('lr', t.get('lr'))}, schedule "
             f"{t.get('schedule')}, weight decay {t.get('weight_decay')}, label smoothing {t.get('label_smoothing')}, "
             f"batch {t.get('batch_size')}, image size {s.get('img_size')} px, seed {t.get('seed')}",
             f"augmentation: {aug}",
             f"reproduce: `picstory train --config {Path(str(run.get('dir') or 'RUN')) / 'config.yaml'}`"]
    return ("Training recipe", [("ul", facts)])


def _metrics(run: Mapping, rows: list[dict]) -> tuple:
    ev, s = run.get("eval") or {}, run.get("summary") or {}
    split = ev.get("split", "test")
    head = (f"{split} accuracy {_pct(ev.get('accuracy', s.get('test_accuracy')))} on {ev.get('n', '?')} images; "
            f"validation accuracy {_pct(s.get('val_accuracy'))}.")
    if ev.get("task") == "multilabel":
        mean_ap = "–" if ev.get("mAP") is None else f"{ev['mAP']:.3f}"
        head = (f"Multi-label: {split} micro-F1 {ev['micro_f1']:.3f}, macro-F1 {ev['macro_f1']:.3f}, mAP "
                f"{mean_ap}, exact match "
                f"{_pct(ev.get('exact_match'))} on {ev.get('n', '?')} images; a label is predicted at its own "
                "threshold (tuned on the validation split, in model.json).")
    if ev.get("loss") is not None:
        head += f" {split} loss {float(ev['loss']):.4f}."
    blocks: list = [("p", head)]
    if rows and "threshold" in rows[0]:
        blocks.append(("table", ["label", "precision", "recall", "F1", "AP", "support", "threshold"],
                       [[r["class"], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}",
                         "–" if r.get("ap") is None else f"{r['ap']:.3f}", str(int(r["support"])),
                         f"{r['threshold']:.3f}"] for r in rows]))
    elif rows:
        blocks.append(("table", ["class", "precision", "recall", "F1", "support"],
                       [[r["class"], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}",
                         str(int(r["support"]))] for r in rows]))
    return ("Metrics", blocks)


def _calibration(run: Mapping) -> tuple | None:
    ev, s = run.get("eval") or {}, run.get("summary") or {}
    found = [f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for src in (ev, s)
             for k, v in src.items() if k in CALIBRATION_KEYS and not isinstance(v, (dict, list))]
    kind = "per-label sigmoid" if ev.get("task") == "multilabel" else "softmax"
    text = [("ul", found)] if found else [("p", f"Not measured for this run: the probabilities are the {kind} "
                                                "outputs, uncalibrated, and there is no unknown-input threshold.")]
    return ("Calibration and unknown inputs", text)


def _weaknesses(run: Mapping, diagnosis: dict, rows: list[dict]) -> tuple:
    items = [f"{f['title']} ({f['severity']}): {f['evidence']}" for f in diagnosis.get("findings", [])]
    weakest = sorted(rows, key=lambda r: r["f1"])[:WEAK_CLASSES]
    if weakest:
        items.append("weakest classes: " + ", ".join(f"{r['class']} (F1 {r['f1']:.2f}, recall {r['recall']:.2f})"
                                                      for r in weakest))
    blocks: list = [("p", f"Doctor's verdict: {diagnosis.get('verdict', '?')}. {diagnosis.get('summary', '')}")]
    blocks.append(("ul", items or ["the doctor found nothing that stands out"]))
    return ("Known weaknesses", blocks)


def _exports(meta: Mapping | None) -> tuple | None:
    exports = (meta or {}).get("exports") or {}
    if not exports:
        return None
    items = []
    for fmt, rec in exports.items():
        line = f"`{rec.get('file')}` ({fmt}), sha256 `{str(rec.get('sha256', ''))[:16]}…`"
        g = rec.get("gate")
        if g:
            line += (f"; int8 gate on {g['images']} {g.get('split', 'test')} images: agreement "
                     f"{_pct(g['top1_agreement'])}, accuracy {_pct(g['fp32_accuracy'])} → {_pct(g['int8_accuracy'])}"
                     f", batch-1 {g['fp32_latency_ms']:.2f} → {g['int8_latency_ms']:.2f} ms")
        items.append(line)
    return ("Exported files", [("ul", items)])


def _licence(run: Mapping) -> tuple:
    text = doctor.cfg_value(run, "run", "licence", "") or ""
    return ("Licence", [("p", text or "Not stated (train with `--licence NAME`). Pretrained weights and the "
                                      "training data carry their own licences.")])


# ---------------------------------------------------------------- rendering


def to_markdown(title: str, sections: list[tuple]) -> str:
    out = [f"# Model card: {title}", ""]
    for heading, blocks in sections:
        out += [f"## {heading}", ""]
        for b in blocks:
            if b[0] == "p":
                out += [b[1], ""]
            elif b[0] == "ul":
                out += [f"- {x}" for x in b[1]] + [""]
            else:
                out += ["| " + " | ".join(b[1]) + " |", "|" + "---|" * len(b[1])]
                out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in b[2]] + [""]
    return "\n".join(out)


def _inline(text: str) -> str:
    """Escaped text with Markdown `code` spans as <code>."""
    parts = str(text).split("`")
    return "".join(f"<code>{_e(p)}</code>" if i % 2 else _e(p) for i, p in enumerate(parts))


def to_html(sections: list[tuple]) -> str:
    out = ['<section id="model-card"><h2>Model card</h2><p>The same as <code>model/MODEL_CARD.md</code>.</p>']
    for heading, blocks in sections:
        out.append(f"<h3>{_e(heading)}</h3>")
        for b in blocks:
            if b[0] == "p":
                out.append(f"<p>{_inline(b[1])}</p>")
            elif b[0] == "ul":
                out.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in b[1]) + "</ul>")
            else:
                head = "".join(f"<th>{_e(h)}</th>" for h in b[1])
                body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in b[2])
                out.append(f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>')
    return "".join(out) + "</section>"


def bundle_meta(run: Mapping) -> dict:
    path = Path(str(run.get("dir") or "")) / "model" / "model.json"
    return (read_json(path) or {}) if path.is_file() else {}


def write_card(run: Mapping, diagnosis: dict, rows: list[dict]) -> Path | None:
    """MODEL_CARD.md into the run's bundle (when it has one); returns its path."""
    bundle = Path(str(run.get("dir") or "")) / "model"
    if not bundle.is_dir():
        return None
    sections = card_sections(run, diagnosis, rows, bundle_meta(run))
    atomic_write(bundle / CARD_NAME, to_markdown(Path(str(run["dir"])).name, sections))
    return bundle / CARD_NAME
