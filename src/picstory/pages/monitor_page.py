"""monitor.html: one self-contained page (charts and thumbnails inlined as base64 PNGs, no external URLs)."""

from __future__ import annotations

import html
import io
from pathlib import Path

from matplotlib.figure import Figure

from ..files import data_uri
from .figures import figure_png, new_figure
from .html import page

THUMB_PX = 96
LEVEL_COLOURS = {"stable": "#1a7f37", "moderate": "#b35900", "significant": "#c62828"}

def _png(fig: Figure) -> str:
    return data_uri(figure_png(fig))


def _over_time_chart(over_time: dict) -> str:
    labels, counts = list(over_time["counts"]), list(over_time["counts"].values())
    fig = new_figure(9, 2.8)
    ax = fig.subplots()
    ax.bar(range(len(counts)), counts, color="#4f6bed")
    step = max(1, len(labels) // 12)  # at most ~12 tick labels stay readable
    ax.set_xticks(range(0, len(labels), step), labels[::step], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"predictions per {over_time['unit']}")
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def _distribution_chart(dist: dict) -> str:
    classes = list(dist)
    pred = [dist[c]["predicted"] for c in classes]
    train = [dist[c]["training"] for c in classes]
    fig = Figure(figsize=(9, max(2.5, 0.28 * len(classes) + 1)))
    ax = fig.subplots()
    ys = range(len(classes))
    ax.barh([y + 0.2 for y in ys], train, height=0.4, color="#afb8c1", label="training")
    ax.barh([y - 0.2 for y in ys], pred, height=0.4, color="#4f6bed", label="served (predicted)")
    ax.set_yticks(list(ys), classes, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("fraction of images")
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1), ncol=2, frameon=False)  # above: never over a bar
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def _confidence_chart(conf: dict) -> str:
    hist = conf["histogram"]
    edges, counts = hist["edges"], hist["counts"]
    fig = new_figure(9, 2.8)
    ax = fig.subplots()
    colours = ["#c62828" if e < conf["threshold"] else "#4f6bed" for e in edges[:-1]]
    ax.bar(edges[:-1], counts, width=edges[1] - edges[0], align="edge", color=colours, edgecolor="white")
    ax.axvline(conf["threshold"], color="#1f2328", linestyle="--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel("top-1 probability (red: below the low-confidence threshold)")
    ax.set_ylabel("predictions")
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def _thumbnail(path: str | None) -> str:
    if not path or not Path(path).is_file():
        return ""
    try:
        from ..data.decode import decode_pil

        img = decode_pil(Path(path).read_bytes())
        img.thumbnail((THUMB_PX, THUMB_PX))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
    except Exception:  # a thumbnail is decoration: an unreadable stored file just shows none
        return ""
    return f'<img class="thumb" alt="" src="{data_uri(buf.getvalue())}">'


def _when(iso: str) -> str:
    return html.escape(iso[:16].replace("T", " "))


def _least_confident_rows(items: list[dict]) -> str:
    rows = []
    for it in items:
        alts = ", ".join(f"{html.escape(str(p['label']))} {p['probability']:.0%}" for p in it["topk"][1:4])
        name = html.escape(Path(it["stored_path"]).name) if it["stored_path"] else ""
        stored = f'<code title="{name}">{name[:12]}…{Path(name).suffix}</code>' if name else "not stored"
        prob = "—" if it["probability"] is None else f"{it['probability']:.1%}"
        rows.append(f"<tr><td>{_thumbnail(it['stored_path'])}</td><td><b>{html.escape(str(it['label']))}</b>"
                    f"</td><td>{prob}</td><td class=muted>{alts}</td><td>{it['width']}×{it['height']}</td>"
                    f"<td class=muted>{_when(it['time'])}</td><td>{stored}</td></tr>")
    return "\n".join(rows)


def _unknown_html(u: dict) -> str:
    if not u.get("decided"):
        return f"<p class=muted>{html.escape(u.get('note', 'no unknown verdicts logged'))}</p>"
    exp = "" if u.get("expected_share") is None else f" (validation expects {u['expected_share']:.0%})"
    trend = ("<span class=badge style='background:#c0392b'>rising: the inputs drift from the training images"
             "</span>" if u["rising"] else "<span class=muted>no rising trend</span>")
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v['n']}</td><td>{v['unknown']}</td><td>{v['share']:.1%}</td>"
                   "</tr>" for k, v in list(u["over_time"].items())[-48:])
    return (f"<p><b>{u['unknown']}</b> of {u['decided']} answers were unknown ({u['share']:.1%}){exp}; first half "
            f"{u['early_share'] or 0:.1%}, second half {u['late_share'] or 0:.1%} {trend}</p>"
            f"<table><tr><th>{html.escape(u['unit'])} (UTC)</th><th>answers</th><th>unknown</th><th>share</th></tr>"
            f"{rows}</table>")


def render_html(report: dict, meta: dict) -> str:
    drift, conf = report["drift"], report["confidence"]
    e = html.escape
    colour = LEVEL_COLOURS[drift["level"]]
    relabel = report.get("relabel")
    relabel_html = "" if not relabel else (
        f"<p>Copied {relabel['copied']} low-confidence inputs into <code>{e(relabel['dir'])}</code> "
        f"({relabel['already_there']} already there, {relabel['not_stored']} not stored). Move each file to its "
        "correct class folder, then add the folder to the training data.</p>")
    mean = "—" if conf["mean"] is None else f"{conf['mean']:.1%}"
    return page(f"picstory monitor · {meta['arch']}", f"""
<h1>Monitoring: {e(meta['arch'])}</h1>
<div class=muted>run <code>{e(report['run'])}</code> · log <code>{e(report['log'])}</code> ·
model sha256 <code>{e(meta['sha256'][:16])}</code></div>
<div class="card stats">
<div class=stat><b>{report['predictions']}</b>predictions</div>
<div class=stat><b class=small>{_when(report['first'])}</b>first (UTC)</div>
<div class=stat><b class=small>{_when(report['last'])}</b>last (UTC)</div>
<div class=stat><b>{mean}</b>mean confidence</div>
<div class=stat><b>{conf['below_threshold']}</b>below {conf['threshold']:.0%} confidence</div>
</div>
<h2>Drift of the predicted classes</h2>
<div class=card><p>Population stability index <b>{drift['psi']:.3f}</b>
<span class=badge style="background:{colour}">{e(drift['level'])}</span>
<span class=muted>({e(drift['reading'])})</span></p>
<p class=muted>Training distribution: {e(report['training_distribution_source'])}.
{report['other_models_rows']} logged rows from other models were left out.</p>
<img class=chart alt="predicted vs training classes" src="{_distribution_chart(report['class_distribution'])}">
</div>
<h2>Predictions over time (per {e(report['over_time']['unit'])}, UTC)</h2>
<div class=card><img class=chart alt="predictions over time" src="{_over_time_chart(report['over_time'])}"></div>
<h2>Unknown answers</h2>
<div class=card>{_unknown_html(report.get('unknown') or {})}</div>
<h2>Confidence</h2>
<div class=card><img class=chart alt="confidence histogram" src="{_confidence_chart(conf)}">{relabel_html}</div>
<h2>Least confident inputs</h2>
<div class=card><table><tr><th></th><th>predicted</th><th>probability</th><th>next guesses</th><th>size</th>
<th>time</th><th>stored file</th></tr>
{_least_confident_rows(report['least_confident'])}
</table></div>
""", "monitor")
