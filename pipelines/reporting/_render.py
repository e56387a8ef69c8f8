"""The report's blocks and the two pages rendered from them: ``report.md`` and ``report.html``.

A report is a list of blocks: ``(kind, text)`` with ``kind`` one of ``"h1"``, ``"h2"``,
``"h3"`` and ``"p"``, a :class:`Table` or a :class:`Figure`. Both pages are rendered from
the same blocks, so they say the same thing; the HTML page embeds its figures and needs no
other file. The value formatters are the ones every section writes its numbers with.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass

__all__ = [
    "TITLE",
    "Figure",
    "Table",
    "to_markdown",
    "to_html",
    "params_text",
    "number",
    "finite",
    "fmt",
]

TITLE = "featurecache report"


@dataclass(frozen=True)
class Figure:
    """A picture: ``figures/<name>.png`` beside ``report.md``, embedded in ``report.html``."""

    name: str
    caption: str
    png: bytes


@dataclass(frozen=True)
class Table:
    """A table of text cells (``**bold**`` and ```code``` allowed)."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


def to_markdown(blocks: list) -> str:
    """``report.md``: figures as links to ``figures/<name>.png``."""
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Figure):
            lines += [f"![{block.name}](figures/{block.name}.png)", "", f"*{block.caption}*", ""]
        elif isinstance(block, Table):
            lines.append("| " + " | ".join(block.header) + " |")
            lines.append("|" + "|".join(" --- " for _ in block.header) + "|")
            lines += [
                "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in block.rows
            ]
            lines.append("")
        else:
            kind, text = block
            prefix = {"h1": "# ", "h2": "## ", "h3": "### ", "p": ""}[kind]
            lines += [prefix + text, ""]
    return "\n".join(lines)


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
figure { margin: 1em 0; }
figure img { max-width: 100%; }
figcaption { font-size: 0.9em; color: #555; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""


def _inline(text: str) -> str:
    """Escape, then render the two bits of markdown the report uses: **bold** and `code`."""
    parts = html.escape(text).split("`")
    out = []
    for k, part in enumerate(parts):
        if k % 2:
            out.append(f"<code>{part}</code>")
        else:
            bold = part.split("**")
            out.append("".join(f"<strong>{b}</strong>" if i % 2 else b for i, b in enumerate(bold)))
    return "".join(out)


def to_html(blocks: list) -> str:
    """``report.html``: one self-contained page, figures embedded as base64 PNG."""
    body: list[str] = []
    for block in blocks:
        if isinstance(block, Figure):
            data = base64.b64encode(block.png).decode()
            body.append(
                f'<figure><img alt="{block.name}" src="data:image/png;base64,{data}">'
                f"<figcaption>{_inline(block.caption)}</figcaption></figure>"
            )
        elif isinstance(block, Table):
            head = "".join(f"<th>{_inline(h)}</th>" for h in block.header)
            rows = "".join(
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>"
                for row in block.rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        else:
            kind, text = block
            body.append(f"<{kind}>{_inline(text)}</{kind}>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{TITLE}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


# -- values ---------------------------------------------------------------------------


def params_text(params: dict) -> str:
    """Chosen hyper-parameters as ``a=1, b=(2, 3)``; ``"defaults"`` when there are none."""
    shown = {k: v for k, v in params.items() if not (k == "pca" and v is None)}
    return ", ".join(f"{k}={_value(v)}" for k, v in sorted(shown.items())) or "defaults"


def _value(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "(" + ", ".join(str(v) for v in value) + (",)" if len(value) == 1 else ")")
    return str(value)


def number(value, default: float = 0.0) -> float:
    """``value`` as a finite float, else ``default`` (a missing CV std counts as 0)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return default
    return x if math.isfinite(x) else default


def finite(value) -> bool:
    """True when ``value`` is a finite number (a missing test score is not)."""
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def fmt(value, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals, or ``"–"`` when it is not a finite number."""
    return f"{float(value):.{digits}f}" if finite(value) else "–"
