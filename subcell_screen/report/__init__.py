"""QC and hit reports from SQL on the screen store.

Every number in a report is the result of a SQL query on the screen store; the queries are readable ``.sql``
files in ``subcell_screen/report/queries/`` (documented in its ``README.md``), loaded by name with
:func:`load_query` and run with :func:`run_query` (which returns a Polars frame, shown as a table in
notebooks). Plot functions live in :mod:`subcell_screen.report.plots`; they return matplotlib Figures and
never save.

Examples
--------
>>> from subcell_screen import ScreenStore
>>> from subcell_screen.report import build_reports, run_query
>>> with ScreenStore.open("demo_out", read_only=True) as store:  # doctest: +SKIP
...     run_query(store, "ranked_hits", top=10)                  # a polars DataFrame
...     build_reports(store, "reports/demo")                     # [qc_report.html, hit_report.html]
"""

from __future__ import annotations

from ._build import build_hit_report, build_qc_report, build_reports
from ._queries import NotComputed, Query, list_queries, load_query, run_query, table_state

__all__ = [
    "build_qc_report",
    "build_hit_report",
    "build_reports",
    "load_query",
    "list_queries",
    "run_query",
    "table_state",
    "Query",
    "NotComputed",
]
