"""comparison.html of a sweep: the table of cells (best one marked), the cells that did not finish, the figures."""

from __future__ import annotations

from .html import e, img, page


def render_html(name: str, data: str, n_runs: int, best: str | None, options: str, command: str,
                columns: list[str], rows: list[tuple[bool, list[tuple[str, bool]]]],
                failed: list[tuple[str, str]], pngs: dict[str, bytes]) -> str:
    """``rows``: (is best, [(cell text, is a number)]) per shown row; ``failed``: (cell, why)."""
    head = "".join(f"<th>{e(c)}</th>" for c in columns)
    body = "".join(
        ('<tr class="best">' if is_best else "<tr>")
        + "".join(f'<td class="num">{e(t)}</td>' if num else f"<td>{e(t)}</td>" for t, num in cells) + "</tr>"
        for is_best, cells in rows)
    figures = "".join(f"<section><h2>{e(t)}</h2>{img(pngs[k], t)}</section>"
                      for k, t in (("curves", "Validation curves"), ("heatmap", "Grid")) if k in pngs)
    fails = "".join(f"<li><code>{e(cell)}</code>: {e(why)}</li>" for cell, why in failed)
    best_line = f"best on validation accuracy: <code>{e(best)}</code>" if best else "no cell finished"
    return page(f"sweep {name}", (
        f"<h1>Sweep {e(name)}</h1><p>data <code>{e(data)}</code> · {n_runs} runs · {best_line}</p>"
        f"<p class='muted'>fixed options: {e(options)}<br>command: <code>{e(command)}</code></p>"
        f"<section><table><tr>{head}</tr>{body}</table></section>"
        + (f"<section><h2>Not finished</h2><ul>{fails}</ul></section>" if fails else "") + figures), "sweep")
