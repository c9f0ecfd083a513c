"""The report's SQL, kept as readable ``.sql`` files in ``subcell_screen/report/queries/``.

Each file starts with a comment header::

    -- <name>: what the query returns.
    -- requires: table_a, table_b     (must exist and hold rows, else the section says "not computed")
    -- uses: table_c                  (must exist, may be empty)
    -- params: plate (VARCHAR; NULL = every plate), ...

Parameters are DuckDB named parameters (``$plate``) found in the SQL text; :func:`run_query` passes exactly
those.

SQL shared by several queries lives once, as DuckDB temporary macros, in ``queries/_macros.sql``; a query that
calls one of them gets that file put before its text, so :attr:`Query.sql` always runs on its own.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

import polars as pl

from .._errors import SubcellScreenError

if TYPE_CHECKING:  # pragma: no cover
    from ..store import ScreenStore

__all__ = ["Query", "NotComputed", "load_query", "list_queries", "run_query", "table_state"]

logger = logging.getLogger(__name__)

_PARAM_RE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_MACRO_RE = re.compile(r"\bCREATE\s+OR\s+REPLACE\s+TEMP(?:ORARY)?\s+MACRO\s+([A-Za-z_][A-Za-z0-9_]*)",
                       re.IGNORECASE)
#: The file of shared macros in ``queries/`` (not a query itself).
_MACROS_FILE = "_macros.sql"


class NotComputed(SubcellScreenError):
    """A query's input tables are missing or empty: the stage that writes them did not run.

    Attributes
    ----------
    query : str
        Query name.
    missing : tuple of str
        Tables or views that do not exist (or cannot be read).
    empty : tuple of str
        Tables or views that exist but hold no rows.
    """

    def __init__(self, query: str, *, missing: tuple[str, ...] = (), empty: tuple[str, ...] = ()) -> None:
        self.query = query
        self.missing = tuple(missing)
        self.empty = tuple(empty)
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing))
        if empty:
            parts.append("empty " + ", ".join(empty))
        super().__init__(f"query {query!r}: not computed ({'; '.join(parts)})")

    @property
    def reason(self) -> str:
        """Human-readable reason, e.g. ``table scores is missing``."""
        parts = []
        for names, what in ((self.missing, "missing"), (self.empty, "empty")):
            if names:
                noun = "table" if len(names) == 1 else "tables"
                verb = "is" if len(names) == 1 else "are"
                parts.append(f"{noun} {', '.join(names)} {verb} {what}")
        return "; ".join(parts)


@dataclass(frozen=True)
class Query:
    """One named report query.

    Attributes
    ----------
    name : str
        File stem in ``report/queries/``.
    sql : str
        The SQL that runs: the shared macros (``_macros.sql``) when the query calls one of them, then the full
        text of the file (comment header included; DuckDB ignores comments).
    description : str
        The header's first line (after ``<name>:``) and following free comment lines.
    requires : tuple of str
        Tables/views that must exist and hold rows.
    uses : tuple of str
        Tables/views that must exist (may be empty).
    params : tuple of str
        Named parameters (``$name``) in the SQL, in order of first use.
    macros : tuple of str
        Shared macros of ``_macros.sql`` that the query calls.
    """

    name: str
    sql: str
    description: str
    requires: tuple[str, ...]
    uses: tuple[str, ...]
    params: tuple[str, ...]
    macros: tuple[str, ...] = ()

    def run(self, store: ScreenStore, **params: Any) -> pl.DataFrame:
        """Shorthand for :func:`run_query` ``(store, self.name, **params)``."""
        return run_query(store, self.name, **params)

    def _repr_html_(self) -> str:  # notebooks: the description and the SQL
        from html import escape

        return (f"<p><b>{escape(self.name)}</b>: {escape(self.description)}</p>"
                f"<pre>{escape(self.sql)}</pre>")

    def __str__(self) -> str:
        return self.sql


def _queries_dir() -> Any:
    return resources.files("subcell_screen.report").joinpath("queries")


def list_queries() -> list[str]:
    """Names of all report queries (the ``.sql`` files shipped in the package, but ``_macros.sql``)."""
    return sorted(p.name[:-4] for p in _queries_dir().iterdir()
                  if p.name.endswith(".sql") and not p.name.startswith("_"))


@cache
def _shared_macros() -> tuple[str, tuple[str, ...]]:
    """Text of ``_macros.sql`` and the names of the macros it defines."""
    text = _queries_dir().joinpath(_MACROS_FILE).read_text(encoding="utf-8")
    names = tuple(_MACRO_RE.findall(_code_only(text)))
    if "$" in _code_only(text):
        raise ValueError(f"{_MACROS_FILE}: shared macros take arguments, not $parameters")
    return text, names


def _code_only(sql: str) -> str:
    """``sql`` without comments (``--``, ``/* */``), string literals and quoted identifiers."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif ch in "'\"":
            j = i + 1
            while j < n:
                if sql[j] == ch:
                    if j + 1 < n and sql[j + 1] == ch:  # doubled quote inside the literal
                        j += 2
                        continue
                    break
                j += 1
            out.append(" ")
            i = j + 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _split_names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


@cache
def load_query(name: str) -> Query:
    """Load a report query by name (``load_query("cells_per_well")``).

    Raises
    ------
    KeyError
        If there is no ``queries/<name>.sql``; the message lists the known names.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_]*", name or ""):
        raise KeyError(f"invalid query name {name!r}")
    path = _queries_dir().joinpath(f"{name}.sql")
    if not path.is_file():
        raise KeyError(f"no report query {name!r}; known: {', '.join(list_queries())}")
    sql = path.read_text(encoding="utf-8")
    description: list[str] = []
    requires: tuple[str, ...] = ()
    uses: tuple[str, ...] = ()
    for line in sql.splitlines():
        if not line.startswith("--"):
            break
        text = line[2:].strip()
        key, _, value = text.partition(":")
        key = key.strip().lower()
        if key == "requires":
            requires = _split_names(value)
        elif key == "uses":
            uses = _split_names(value)
        elif key == "params":
            continue
        elif key == name and not description:
            description.append(value.strip())
        elif description:
            description.append(text)
    code = _code_only(sql)
    params = tuple(dict.fromkeys(_PARAM_RE.findall(code)))
    macro_text, macro_names = _shared_macros()
    macros = tuple(m for m in macro_names if re.search(rf"\b{m}\s*\(", code, re.IGNORECASE))
    if macros:
        sql = f"{macro_text.rstrip()}\n\n{sql}"
    return Query(name=name, sql=sql, description=" ".join(description), requires=requires, uses=uses,
                 params=params, macros=macros)


def table_state(store: ScreenStore, name: str) -> str:
    """``"ok"`` (exists, has rows), ``"empty"`` or ``"missing"`` (absent, or a view that cannot be read)."""
    import duckdb

    if not store.has_table(name):
        return "missing"
    try:
        rows = store.con.execute(f'SELECT 1 FROM "{name}" LIMIT 1').fetchall()
    except duckdb.Error as exc:  # e.g. a view over a table that is gone
        logger.info("table %s cannot be read: %s", name, exc)
        return "missing"
    return "ok" if rows else "empty"


def run_query(store: ScreenStore, name: str, **params: Any) -> pl.DataFrame:
    """Run a report query on a screen store.

    Parameters
    ----------
    store
        An open :class:`~subcell_screen.store.ScreenStore` (read-only is fine).
    name
        Query name (see :func:`list_queries`).
    **params
        Values of the query's named parameters. Parameters the query does not use are ignored; a missing one
        is bound to NULL (the queries treat a NULL filter as "all").

    Returns
    -------
    polars.DataFrame
        The result (renders as a table in notebooks).

    Raises
    ------
    NotComputed
        If a required table is missing or empty, or a used table is missing.
    """
    query = load_query(name)
    missing: list[str] = []
    empty: list[str] = []
    for table in query.requires:
        state = table_state(store, table)
        if state == "missing":
            missing.append(table)
        elif state == "empty":
            empty.append(table)
    for table in query.uses:
        if table_state(store, table) == "missing":
            missing.append(table)
    if missing or empty:
        raise NotComputed(name, missing=tuple(missing), empty=tuple(empty))
    bound = {p: params.get(p) for p in query.params}
    logger.debug("report query %s %s", name, bound)
    return store.con.sql(query.sql, params=bound).pl()
