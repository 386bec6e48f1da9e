"""cv.html of a cross-validation: mean ± std of every metric over the folds, each fold's figures, out-of-fold."""

from __future__ import annotations

from .html import e, page


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.4g}"


def cv_page(result: dict) -> str:
    metrics, folds = result["metrics"], result["per_fold"]
    names = list(metrics)
    head = "<tr><th>metric</th><th>mean ± std</th><th>min</th><th>max</th>" + "".join(
        f"<th>fold {k}</th>" for k in range(1, len(folds) + 1)) + "</tr>"
    body = "".join(
        f"<tr><td>{e(m)}</td><td class='num'>{_num(metrics[m]['mean'])} ± {_num(metrics[m]['std'])}</td>"
        f"<td class='num'>{_num(metrics[m]['min'])}</td><td class='num'>{_num(metrics[m]['max'])}</td>"
        + "".join(f"<td class='num'>{_num(f.get(m))}</td>" for f in folds) + "</tr>" for m in names)
    oof = result["oof"]

    def stat(label: str, key: str) -> str:
        m = metrics.get(key)
        value = f"{m['mean']:.4f} <small>± {m['std']:.4f}</small>" if m else "–"
        return f"<div class='stat'><b>{value}</b>{e(label)}</div>"

    stats = (stat("validation accuracy (held-out fold)", "val_accuracy") + stat("test accuracy", "test_accuracy")
             + stat("validation macro F1", "val_macro_f1")
             + f"<div class='stat'><b>{oof['accuracy']:.4f}</b>out-of-fold accuracy ({oof['n']} images)</div>")
    return page(f"cross-validation {result['data']}", (
        f"<h1>{result['folds']}-fold cross-validation</h1>"
        f"<p>data <code>{e(result['data'])}</code> · model <code>{e(result['model'])}</code> · "
        f"{oof['n']} training images in {result['folds']} folds · {result['test_images']} test images held out "
        "from every fold</p>"
        f"<section class='stats'>{stats}</section>"
        "<section><h2>Every metric over the folds</h2><p class='muted'>val_*: each fold's model on its own held-out "
        "fold; test_*: on the shared test split; std is the sample standard deviation over the folds.</p>"
        f"<table>{head}{body}</table></section>"
        "<section><h2>Out-of-fold probabilities</h2><p><code>oof.csv</code> / <code>oof.npz</code> hold each "
        "training image's probabilities from the fold model that never trained on it; "
        "<code>picstory data issues RUN</code> ranks likely label errors from them.</p></section>"), "cv")
