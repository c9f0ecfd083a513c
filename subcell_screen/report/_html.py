"""A small self-contained HTML page builder: sections, tables of query results, embedded PNG figures."""

from __future__ import annotations

import base64
import datetime as _dt
import io
import logging
import math
import re
from collections.abc import Mapping, Sequence
from html import escape
from importlib import resources
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any

import polars as pl

from ._queries import NotComputed, load_query

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["Page", "format_value", "column_kind"]

logger = logging.getLogger(__name__)

_P_COLUMNS = re.compile(r"(^|_)(p_value|q_value)$")
_FRACTION_COLUMNS = re.compile(r"(^|_)fraction$")
_COUNT_COLUMNS = re.compile(r"^(n|rank|position|n_.*|.*_n|sites_.*|.*_sites|.*_wells|.*_cells|.*_plates|cells|wells|"
                            r"sites|.*cells_per_(well|site))$")


def column_kind(column: str) -> str:
    """How values of a column are displayed: ``"p"`` (p- and q-values), ``"fraction"``, ``"count"`` or
    ``"number"`` (anything else, e.g. effect sizes, mAP, EC50s, intensities); see :func:`format_value`."""
    if _P_COLUMNS.search(column):
        return "p"
    if _FRACTION_COLUMNS.search(column):
        return "fraction"
    if _COUNT_COLUMNS.match(column):
        return "count"
    return "number"


def _significant(value: float, digits: int = 3) -> str:
    """``value`` with at least ``digits`` significant digits, without an exponent between 0.001 and 10^6
    (``478``, ``-22.3``, ``0.0123``, ``1234``); scientific notation outside (``1.20e-04``)."""
    if value == 0:
        return "0"
    a = abs(value)
    if a < 1e-3 or a >= 1e6:
        return f"{value:.{digits - 1}e}"
    decimals = max(0, digits - 1 - math.floor(math.log10(a)))
    text = f"{value:.{decimals}f}"
    return "0" if float(text) == 0 else text


def format_value(value: Any, *, column: str = "") -> str:
    """Display text of one table cell, the same for every column of a kind (:func:`column_kind`).

    ``—`` for null and NaN, ``yes``/``no`` for booleans. Numbers by column kind:

    * p- and q-values (``p_value``, ``q_value``, ``corrected_p_value``, ...): scientific notation below 0.001
      (``1.20e-04``), else 3 significant digits (``0.0123``, ``0.500``);
    * fractions (``*_fraction``): 2 decimals (``0.48``); a nonzero fraction below 0.005 in scientific
      notation (``3.0e-04``) so that it does not read as 0;
    * counts (``n_*``, ``rank``, ``*_wells``, ``*_cells``, ``sites_*``, ...): integers (a non-integer count
      such as a median of two wells gets one decimal);
    * any other number (effect sizes, mAP, EC50, intensities): 3 significant digits, no exponent between
      0.001 and 10^6 (``478``, ``-22.3``, ``0.953``, ``1234``).
    """
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        kind = column_kind(column)
        if kind == "fraction":
            return f"{value:.1e}" if 0 < abs(value) < 0.005 else f"{value:.2f}"
        if kind == "count":
            return f"{value:.0f}" if value == round(value) else f"{value:.1f}"
        return _significant(value)
    if isinstance(value, _dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, list | tuple):
        return ", ".join(format_value(v) for v in value)
    return str(value)


#: Cells with more characters than this get class "long" (they wrap anywhere, see report.css).
_LONG_CELL = 24


def _template(name: str) -> str:
    return resources.files("subcell_screen.report").joinpath("templates", name).read_text(encoding="utf-8")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


class Page:
    """Builder of one report page; figures are written as PNG next to the HTML and embedded as data URIs.

    Parameters
    ----------
    out_dir
        Output folder (created).
    stem
        File stem of the page (``qc_report``): the page is ``<stem>.html``, figures ``<stem>_<name>.png``.
    title
        Page title.
    dpi
        Figure resolution.
    """

    def __init__(self, out_dir: Path, *, stem: str, title: str, dpi: int = 100) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.stem = stem
        self.title = title
        self.dpi = dpi
        self.sections: list[tuple[str, str, list[str]]] = []
        self.toc: list[tuple[str, str]] = []
        self.queries: list[str] = []
        self.figures: list[Path] = []
        self._anchors: set[str] = set()

    # -- structure ---------------------------------------------------------------------------------------

    def section(self, title: str) -> None:
        """Start a new top-level section (listed in the contents)."""
        anchor = _slug(title)
        while anchor in self._anchors:
            anchor += "-x"
        self._anchors.add(anchor)
        self.toc.append((anchor, title))
        self.sections.append((anchor, title, []))

    def add(self, html: str) -> None:
        """Append raw HTML to the current section."""
        if not self.sections:
            self.section(self.title)
        self.sections[-1][2].append(html)

    def heading(self, text: str) -> None:
        self.add(f"<h3>{escape(text)}</h3>")

    def paragraph(self, text: str, *, html: bool = False) -> None:
        self.add(f"<p>{text if html else escape(text)}</p>")

    def use_query(self, name: str) -> None:
        """Record that the page shows results of query ``name`` (listed in the footer with its SQL)."""
        if name not in self.queries:
            self.queries.append(name)

    def not_computed(self, what: str, exc: NotComputed | str) -> None:
        """A "not computed" note: ``exc`` is the :class:`NotComputed` raised by the query, or a reason."""
        reason = exc.reason if isinstance(exc, NotComputed) else str(exc)
        if isinstance(exc, NotComputed):
            self.use_query(exc.query)
        self.add(f'<p class="not-computed">{escape(what)}: not computed ({escape(reason)}).</p>')

    def stats(self, items: Sequence[tuple[str, Any, str]], *, query: str) -> None:
        """A row of headline numbers: ``(label, value, column)`` triples from one query's result."""
        self.use_query(query)
        lis = "".join(
            f'<li><span class="value" data-query="{escape(query)}" data-col="{escape(col)}">'
            f'{escape(format_value(value, column=col))}</span><span class="label">{escape(label)}</span></li>'
            for label, value, col in items)
        self.add(f'<ul class="stats">{lis}</ul>')

    def table(self, df: pl.DataFrame, *, query: str, caption: str | None = None, max_rows: int = 500,
              collapsed: str | None = None, columns: Sequence[str] | None = None,
              tooltips: Mapping[str, str] | None = None) -> None:
        """A query result as an HTML table (``data-query`` names the query, ``data-col`` each column).

        Parameters
        ----------
        df
            Result of query ``query`` (possibly with columns dropped, never with computed values).
        query
            Query name.
        caption
            Caption below the table.
        max_rows
            Rows shown; a note says how many were left out.
        collapsed
            If given, the table sits in a closed ``<details>`` with this summary text.
        columns
            Columns to show (default all).
        tooltips
            Column -> header tooltip (``title``); default and fallback: what the column means and its unit
            (``report/_columns.py``).
        """
        from ._columns import column_help

        self.use_query(query)
        cols = list(columns) if columns is not None else df.columns
        shown = df.head(max_rows)
        head = []
        for c in cols:
            text = column_help(query, c) if tooltips is None else tooltips.get(c, column_help(query, c))
            title = f' title="{escape(text)}"' if text else ""
            # long snake_case headers may break after an underscore rather than widen the table
            head.append(f'<th data-col="{escape(c)}"{title}>{escape(c).replace("_", "_<wbr>")}</th>')
        head = "".join(head)
        numeric = {c for c in cols if df.schema[c].is_numeric()}
        body = []
        for row in shown.select(cols).iter_rows():
            cells = []
            for c, v in zip(cols, row):
                text = format_value(v, column=c)
                # long text (names, errors, paths) may break anywhere; short words and numbers never do
                cls = ' class="num"' if c in numeric else ' class="long"' if len(text) > _LONG_CELL else ""
                cells.append(f'<td data-col="{escape(c)}"{cls}>{escape(text)}</td>')
            body.append("<tr>" + "".join(cells) + "</tr>")
        note = []
        if caption:
            note.append(escape(caption))
        if df.height > max_rows:
            note.append(f"showing the first {max_rows} of {df.height} rows")
        # the caption sits below the scrolling box, not in it: it stays readable when a wide table scrolls
        cap = (f'<p class="table-caption" data-query="{escape(query)}">{" — ".join(note)}</p>' if note else "")
        html = (f'<div class="table-wrap"><table class="data" data-query="{escape(query)}" '
                f'data-rows="{df.height}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
                f"</table></div>{cap}")
        if collapsed:
            html = f"<details><summary>{escape(collapsed)}</summary>{html}</details>"
        self.add(html)

    def figure(self, fig: Figure, *, name: str, caption: str, alt: str | None = None) -> Path:
        """Save ``fig`` as ``<stem>_<name>.png`` next to the page and embed it (base64 data URI)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        if fig.canvas is None or not isinstance(fig.canvas, FigureCanvasAgg):
            FigureCanvasAgg(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=self.dpi, facecolor="white", metadata={"Software": None})
        data = buf.getvalue()
        path = self.out_dir / f"{self.stem}_{_slug(name).replace('-', '_')}.png"
        path.write_bytes(data)
        self.figures.append(path)
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        self.add(f'<figure><img src="{uri}" alt="{escape(alt or caption)}" data-file="{escape(path.name)}">'
                 f"<figcaption>{escape(caption)}</figcaption></figure>")
        return path

    # -- output ------------------------------------------------------------------------------------------

    def render(self, *, banner: str, meta: str, store_path: str) -> str:
        """The whole page as HTML text."""
        from .. import __version__

        body = "\n".join(f'<section id="{a}"><h2>{escape(t)}</h2>\n' + "\n".join(parts) + "\n</section>"
                         for a, t, parts in self.sections)
        toc = "\n".join(f'<li><a href="#{a}">{escape(t)}</a></li>' for a, t in self.toc)
        qparts = []
        for name in self.queries:
            q = load_query(name)
            qparts.append(f'<details id="query-{escape(name)}"><summary><code>{escape(name)}.sql</code> — '
                          f"{escape(q.description)}</summary><pre>{escape(q.sql)}</pre></details>")
        return Template(_template("report.html")).substitute(
            title=escape(self.title), css=_template("report.css"), version=escape(__version__),
            generated=escape(_dt.datetime.now().strftime("%Y-%m-%d %H:%M")), meta=meta, banner=banner,
            toc=toc, body=body, queries="\n".join(qparts), store=escape(store_path))

    def write(self, *, banner: str, meta: str, store_path: str) -> Path:
        """Write ``<stem>.html`` atomically and return its path."""
        path = self.out_dir / f"{self.stem}.html"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.render(banner=banner, meta=meta, store_path=store_path), encoding="utf-8")
        tmp.replace(path)
        return path
