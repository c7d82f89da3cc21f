"""The pieces every report page is made of: one HTML file with its styles, script and images inside it.

Nothing is fetched: images are PNGs embedded as base64 data URIs, and the page's Content-Security-Policy forbids
every other source, so a report opened offline (or mailed) shows exactly what it showed when written. Tables with
the `sortable` class sort by a click on a column heading (numbers by value, text alphabetically).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222;
padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.sub{color:#666;margin-top:0}table{border-collapse:collapse;font-size:.9em;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}td.n{text-align:right;
font-variant-numeric:tabular-nums}th{background:#f4f4f4}table.sortable th{cursor:pointer}
table.sortable th:after{content:" \\2195";color:#aaa}.pos{color:#1a7f37}.neg{color:#c62828}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px}
.card b{display:block;font-size:1.4em}img{max-width:100%;height:auto}.scroll{max-height:520px;overflow:auto}
details{margin:6px 0}summary{cursor:pointer}.note{color:#666;font-size:.9em}
"""

SORT_SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0], rows = Array.from(body.rows);
      var up = th.dataset.dir !== 'up'; th.dataset.dir = up ? 'up' : 'down';
      var key = function (row) { var c = row.cells[col]; var v = c.dataset.v;
        return v !== undefined ? parseFloat(v) : c.textContent.toLowerCase(); };
      rows.sort(function (a, b) { var x = key(a), y = key(b); return (x < y ? -1 : x > y ? 1 : 0) * (up ? 1 : -1); });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, subtitle: str, sections: Sequence[str]) -> str:
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>", f'<p class="sub">{esc(subtitle)}</p>',
        *sections, f"<script>{SORT_SCRIPT}</script>", "</body></html>", ""])


def section(anchor: str, title: str, *body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>\n' + "\n".join(body) + "\n</section>"


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def cards(items: Sequence[tuple[str, str]]) -> str:
    inner = "".join(f'<div class="card">{esc(k)}<b>{esc(v)}</b></div>' for k, v in items)
    return f'<div class="cards">{inner}</div>'


def number_cell(value: float | int | None, digits: int = 4, signed: bool = False) -> str:
    """A right-aligned cell that sorts by value; None (a class one run does not have) sorts first."""
    if value is None:
        return '<td class="n" data-v="-1e9">–</td>'
    text = f"{value:+.{digits}f}" if signed else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))
    tone = (' pos' if value > 0 else ' neg' if value < 0 else '') if signed else ''
    return f'<td class="n{tone}" data-v="{float(value)!r}">{text}</td>'


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], sortable: bool = False) -> str:
    """`rows` hold ready cells (`<td>...</td>`, from `text_cell` or `number_cell`)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(cells) + "</tr>" for cells in rows)
    return (f'<table{" class=sortable" if sortable else ""}><thead><tr>{head}</tr></thead>'
            f"<tbody>\n{body}\n</tbody></table>")


def text_cell(value: Any) -> str:
    return f"<td>{esc(value)}</td>"


def png_file(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def png_figure(fig, alt: str, dpi: int = 100) -> str:
    """A matplotlib figure as an embedded PNG; the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
