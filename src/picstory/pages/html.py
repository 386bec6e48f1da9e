"""The frame of every HTML page picstory writes: one stylesheet (style.css), escaping, embedded images."""

from __future__ import annotations

import html
from functools import lru_cache
from importlib import resources

from ..files import data_uri


@lru_cache(maxsize=1)
def stylesheet() -> str:
    return resources.files(__package__).joinpath("style.css").read_text(encoding="utf-8")


def e(x: object) -> str:
    return html.escape(str(x))


def img(data: bytes, alt: str, cls: str = "fig", mime: str = "image/png") -> str:
    return f'<img class="{cls}" alt="{e(alt)}" src="{data_uri(data, mime)}">'


def page(title: str, body: str, kind: str) -> str:
    """A complete, self-contained document; ``kind`` (run-report, data-check, sweep, monitor) is the body class
    that scopes the page's own rules in the stylesheet."""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{stylesheet()}</style>'
            f'</head><body class="{kind}"><main>{body}</main></body></html>\n')
