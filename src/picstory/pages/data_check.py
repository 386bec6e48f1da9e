"""report.html of ``picstory data check``: self-contained, every name from the data escaped."""

from __future__ import annotations

import html
import io
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from ..config import plural
from ..data.audit import Audit, Seen
from ..data.decode import DecodeError, decode_image
from ..data.records import Source
from ..files import data_uri
from .html import page

THUMB_PX = 120
SAMPLES_PER_CLASS, CLASSES_SHOWN, GROUPS_SHOWN, MEMBERS_SHOWN, BAD_SHOWN = 6, 60, 24, 6, 500
esc = html.escape


def render_html(audit: Audit, report: dict) -> str:
    samples = _samples(audit)
    groups = {"Exact duplicates": [("", g) for g in audit.duplicates], "Near duplicates": [("", g) for g in audit.near],
              "Leaks across splits": audit.leaks}
    shown = sorted({i for idx in samples.values() for i in idx}
                   | {i for gs in groups.values() for _, g in gs[:GROUPS_SHOWN] for i in g[:MEMBERS_SHOWN]})
    with ThreadPoolExecutor(2) as ex:
        thumbs = dict(zip(shown, ex.map(lambda i: _thumbnail(audit.source, i), shown)))
    parts = [_header(report), _class_bars(report) if report["classes"] else "", _multilabel(report)]
    if any(samples.values()):
        parts.append(_section("Samples", "".join(
            f'<div class="class-row"><h3>{esc(c)} <small>{report["classes"][c]}</small></h3><div class="thumbs">'
            + "".join(_figure(audit, i, thumbs) for i in idx) + "</div></div>" for c, idx in samples.items())))
    if report["bad_files"]:
        rows = "".join(f'<tr><td class="path">{esc(b["path"])}</td><td>{esc(b["reason"])}</td></tr>'
                       for b in report["bad_files"][:BAD_SHOWN])
        parts.append(_section(f"Bad files <small>{len(report['bad_files'])}</small>",
                              f"<table><tr><th>file</th><th>reason</th></tr>{rows}</table>"
                              + _more(len(report["bad_files"]) - BAD_SHOWN)))
    for title, gs in groups.items():
        if gs:
            body = "".join(_group(audit, g, thumbs, kind) for kind, g in gs[:GROUPS_SHOWN])
            parts.append(_section(f"{title} <small>{plural(len(gs), 'group')}</small>",
                                  body + _more(len(gs) - GROUPS_SHOWN)))
    parts.append(_sizes_section(report))
    footer = "<footer>picstory data check · nothing in the data folder was changed</footer>"
    return page(f"Data check · {report['data']}", "\n".join(parts) + footer, "data-check")


def _multilabel(r: dict) -> str:
    """Multi-label data: labels per image and the pairs of labels that occur together most."""
    m = r.get("multilabel")
    if not m:
        return ""
    per = ", ".join(f"{k} label{'s' if k != '1' else ''}: {n}" for k, n in m["labels_per_image"].items())
    rows = "".join(f'<tr><td>{esc(" + ".join(p["labels"]))}</td><td>{p["images"]}</td></tr>'
                   for p in m["co_occurrence"])
    table = f"<table><tr><th>labels together</th><th>images</th></tr>{rows}</table>" if rows else ""
    return _section("Multi-label", f"<p>Images by number of labels — {esc(per)} (mean {m['mean_labels']}).</p>"
                    + table)


def _more(n: int) -> str:
    return f'<p class="muted">… and {n} more in report.json</p>' if n > 0 else ""


def _section(title: str, body: str, cls: str = "") -> str:
    return f'<section class="{cls}"><h2>{title}</h2>{body}</section>'


def _header(r: dict) -> str:
    verdict = '<div class="verdict ok">Usable</div>' if r["usable"] else '<div class="verdict bad">Not usable</div>'
    reasons = "".join(f"<li>{esc(x)}</li>" for x in r["unusable_reasons"])
    stats = [(r["total"], "images", not r["total"]), (len(r["classes"]), "classes", len(r["classes"]) < 2),
             (len(r["bad_files"]), "bad files", bool(r["bad_files"])),
             (len(r["duplicates"]), "duplicate groups", bool(r["duplicates"])),
             (len(r["near_duplicates"]), "near-duplicate groups", False),
             (len(r["leaks"]), "cross-split leaks", bool(r["leaks"])),
             (f"{r['imbalance_ratio']:g}:1" if r["imbalance_ratio"] else "–", "imbalance", False)]
    cards = "".join(f'<div class="stat{" alert" if alert else ""}"><b>{esc(str(v))}</b><span>{k}</span></div>'
                    for v, k, alert in stats)
    warn = "".join(f"<li>{esc(w)}</li>" for w in r["warnings"])
    return (f'<section><div class="top"><div><h1>Data check</h1><p class="spec">{esc(r["data"])} · {esc(r["kind"])}'
            f'</p></div>{verdict}</div>{f"<ul class=reasons>{reasons}</ul>" if reasons else ""}'
            f'<div class="stats">{cards}</div></section>'
            + (_section("Warnings", f"<ul>{warn}</ul>", "warnings") if warn else ""))


def _legend(names) -> str:
    return '<p class="legend">' + "".join(f'<i class="s-{esc(n)}"></i>{esc(n)}' for n in names) + "</p>"


def _class_bars(r: dict) -> str:
    """One bar per class, stacked by split when the data declares splits; all bars share one scale."""
    splits = r.get("split_counts") or {"all": r["classes"]}
    scale = max(1, *r["classes"].values())
    out = []
    for c in r["classes"]:
        parts = {s: counts.get(c, 0) for s, counts in splits.items()}
        segs = "".join(f'<i class="s-{esc(s)}" style="width:{100 * n / scale:.2f}%" title="{esc(s)}: {n}"></i>'
                       for s, n in parts.items() if n)
        detail = f" ({' / '.join(map(str, parts.values()))})" if len(parts) > 1 else ""
        out.append(f'<span class="label" title="{esc(c)}">{esc(c)}</span><span class="bar">{segs}</span>'
                   f'<span class="n">{r["classes"][c]}{detail}</span>')
    legend = _legend(splits) if "all" not in splits else ""
    return _section(f"Classes <small>{len(r['classes'])}</small>", f'{legend}<div class="bars">{"".join(out)}</div>')


def _sizes_section(r: dict) -> str:
    """A vertical histogram (width and height side by side per bin) and the decoding facts."""
    if not r["sizes"]:
        return ""
    s, hist = r["sizes"], r["sizes"]["histogram"]
    e, top = hist["edges"], max(1, *hist["width"], *hist["height"])
    span = [f"{e[b]:.0f}" if f"{e[b]:.0f}" == f"{e[b + 1]:.0f}" else f"{e[b]:.0f}–{e[b + 1]:.0f}"
            for b in range(len(e) - 1)]
    bins = "".join('<div class="bin">' + "".join(
        f'<i class="s-{k}" style="height:{max(100 * hist[k][b] / top, 1.5 * bool(hist[k][b])):.1f}%" '
        f'title="{k} {span[b]} px: {hist[k][b]}"></i>' for k in ("width", "height")) + "</div>"
        for b in range(len(span)))
    labels = "".join(f"<span>{x.replace('–', '–<br>')}</span>" for x in span)
    facts = [(f"{k} min / median / max", f"{s[k]['min']} / {s[k]['median']:g} / {s[k]['max']} px")
             for k in ("width", "height")]
    facts += [("modes", ", ".join(f"{m}: {n}" for m, n in r["modes"].items())),
              ("channels decoded", ", ".join(f"{c}: {n}" for c, n in r["channels"].items())),
              ("EXIF-rotated", str(r["exif_rotated"])), ("animated", str(r["animated"])),
              ("files / non-images skipped", f"{r['files']} / {r['ignored']}")]
    table = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts)
    return _section("Image sizes", f'<div class="cols"><div>{_legend(["width", "height"])}<div class="hist">{bins}'
                                   f'</div><div class="hist-labels">{labels}</div></div><table>{table}</table></div>')


def _samples(audit: Audit) -> dict[str, list[int]]:
    """A few readable images per class, spread over the class (neighbouring files are often near-identical)."""
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(audit.seen):
        if isinstance(s, Seen):
            rec = audit.source.records[i]
            for label in rec.tags if audit.source.multilabel else (rec.label,):
                by_class[label].append(i)
    return {c: sorted({idx[k] for k in np.linspace(0, len(idx) - 1, SAMPLES_PER_CLASS).astype(int)}) if idx else []
            for c in audit.source.classes[:CLASSES_SHOWN] for idx in [by_class.get(c, [])]}


def _figure(audit: Audit, i: int, thumbs: dict[int, str | None], tagged: bool = False) -> str:
    rec = audit.source.records[i]
    uri, pixel = thumbs.get(i), ' class="pixel"' if audit.source.in_memory else ""
    img = f'<img src="{uri}"{pixel} alt="">' if uri else '<div class="missing"></div>'
    tag = f'<span class="tag s-{esc(rec.split)}">{esc(rec.split)}</span>' if tagged and rec.split else ""
    tag += f"<b>{esc(rec.label)}</b> " if tagged else ""
    return f"<figure>{img}<figcaption>{tag}{esc(audit.source.display_path(rec))}</figcaption></figure>"


def _group(audit: Audit, group: list[int], thumbs: dict, kind: str) -> str:
    figs = "".join(_figure(audit, i, thumbs, tagged=True) for i in group[:MEMBERS_SHOWN])
    more = f'<span class="more">+{len(group) - MEMBERS_SHOWN} more</span>' if len(group) > MEMBERS_SHOWN else ""
    return f'<div class="group">{figs}{more}{f"<span class=more>{esc(kind)}</span>" if kind else ""}</div>'


def _thumbnail(source: Source, i: int) -> str | None:
    """A data URI for record i: JPEG for photos, PNG (scaled up, pixelated in CSS) for tiny in-memory images."""
    try:
        if source.in_memory:
            arr = source.arrays[int(source.records[i].ref)]
            im, fmt = Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr), "PNG"
        else:
            arr = decode_image(source.records[i].ref, channels=3, draft=(THUMB_PX * 2, THUMB_PX * 2))
            im, fmt = Image.fromarray(arr), "JPEG"
            im.thumbnail((THUMB_PX * 2, THUMB_PX * 2), Image.Resampling.LANCZOS)  # 2x for sharp high-DPI screens
    except (DecodeError, OSError, ValueError):
        return None
    buf = io.BytesIO()
    im.save(buf, format=fmt, quality=82)
    return data_uri(buf.getvalue(), f"image/{fmt.lower()}")
