"""The report's "Calibration and unknown inputs" section: reliability diagram, before/after figures, the
risk–coverage curve and the accepted accuracy at 90 / 95 / 99 % coverage (from eval.json)."""

from __future__ import annotations

from typing import Mapping

from . import figures as plots
from .html import e as _e
from .html import img as _img


def confidence_figures(run: Mapping) -> dict[str, bytes]:
    ev = run.get("eval") or {}
    cal, rc = ev.get("calibration") or {}, ev.get("risk_coverage") or {}
    out = {}
    if cal.get("reliability_before"):
        out["reliability.png"] = plots.figure_png(plots.reliability_figure(cal["reliability_before"],
                                                                           cal["reliability_after"]))
    if rc.get("coverage"):
        rule = (ev["coverage"], ev.get("accepted_accuracy"), ev.get("unknown_score")) if "coverage" in ev else None
        out["risk_coverage.png"] = plots.figure_png(plots.risk_coverage_figure(rc["coverage"], rc["accuracy"], rule))
    return out


def _fmt(x: object) -> str:
    return "–" if not isinstance(x, (int, float)) else f"{x:.4f}"


def confidence_section(run: Mapping, pngs: Mapping[str, bytes]) -> str:
    ev = run.get("eval") or {}
    cal = ev.get("calibration") or {}
    if not cal:
        return ""
    meta_cal = ((run.get("meta") or {}).get("calibration") or {})
    t = ev.get("temperature")
    intro = (f"Temperature scaling (one scalar fitted by LBFGS on the validation logits, Guo et al. 2017): "
             f"T = {t:.3f}. " if t is not None else
             f"{ev.get('calibration_note') or meta_cal.get('skipped') or 'No temperature stored.'} ")
    intro += f"ECE over {ev.get('ece_bins', '15 equal-width')} confidence bins, on the {ev.get('split', 'test')} split."
    b, a = cal.get("before") or {}, cal.get("after") or {}
    table = ("<table><tr><th></th><th>ECE</th><th>NLL</th><th>Brier</th></tr>"
             + "".join(f"<tr><td>{name}</td><td>{_fmt(m.get('ece'))}</td><td>{_fmt(m.get('nll'))}</td>"
                       f"<td>{_fmt(m.get('brier'))}</td></tr>" for name, m in (("before", b), ("after", a)))
             + "</table>")
    rc = ev.get("risk_coverage") or {}
    at = rc.get("accepted_accuracy") or {}
    cover = ", ".join(f"{float(c):.0%} → {v:.2%}" for c, v in at.items())
    unknown = ""
    if "unknown_rate" in ev:
        unknown = (f"<p>Unknown inputs: the <b>{_e(ev['unknown_score'])}</b> score above "
                   f"{ev['unknown_threshold']:.4g} (chosen to accept 95 % of the validation images) answers "
                   f"{ev['unknown_rate']:.1%} of the test images \"unknown\"; the accuracy of the rest is "
                   f"{_fmt(ev.get('accepted_accuracy'))}.</p>")
    return (f"<section><h2>Calibration and unknown inputs</h2><p>{_e(intro)}</p>{table}"
            + (_img(pngs["reliability.png"], "reliability diagram") if "reliability.png" in pngs else "")
            + unknown + f"<p>Accuracy of the most confident answers at coverage {_e(cover)}.</p>"
            + (_img(pngs["risk_coverage.png"], "risk-coverage curve") if "risk_coverage.png" in pngs else "")
            + "</section>")


__all__ = ["confidence_figures", "confidence_section"]
