"""The :class:`ScreenStore`: lifecycle, generic SQL and the typed writers of every stage."""

from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import os
import socket
import uuid
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from .._errors import StoreError, StoreVersionError
from ._cells import CellStoreMixin
from ._schema import SCHEMA_VERSION, TABLES, ddl, polars_type, table

__all__ = ["ScreenStore", "SCHEMA_VERSION", "EXAMPLE_QUERIES", "encode_array", "decode_array",
           "write_parquet_atomic", "safe_name", "utc_now", "STAGE_ORDER"]

logger = logging.getLogger(__name__)

DB_NAME = "screen.duckdb"

#: Per-site stages in data-flow order (``embed:<feature set>`` stages sort after ``segment``).
STAGE_ORDER: tuple[str, ...] = ("load", "segment", "embed")

#: Readable example SQL against a store (parameters as ``?``).
EXAMPLE_QUERIES: Mapping[str, str] = {
    "cells_per_well": "SELECT well, count(*) AS n_cells FROM cells WHERE plate = ? GROUP BY well ORDER BY well",
    "failed_sites": "SELECT plate, well, site, error FROM sites WHERE status = 'failed' ORDER BY ALL",
    "negcon_wells": "SELECT plate, well FROM wells WHERE control_type = 'negcon' ORDER BY ALL",
    "runs": "SELECT run_id, command, status, started_at, finished_at FROM runs ORDER BY started_at",
}


def utc_now() -> _dt.datetime:
    """Now in UTC as a naive datetime (the store's timestamps)."""
    return _dt.datetime.now(_dt.UTC).replace(tzinfo=None)


_now = utc_now


def encode_array(array: np.ndarray) -> bytes:
    """Serialise an array (dtype and shape kept) as zlib-compressed ``.npy`` bytes."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return zlib.compress(buf.getvalue(), 3)


def decode_array(blob: bytes) -> np.ndarray:
    """Inverse of :func:`encode_array`."""
    return np.load(io.BytesIO(zlib.decompress(blob)), allow_pickle=False)


def write_parquet_atomic(df: pl.DataFrame, path: str | Path) -> Path:
    """Write ``df`` to ``path`` as zstd Parquet so that readers only ever see a complete file.

    The file is written to a hidden temp file in the same folder (``.<name>.<random>.tmp``, which globs for
    ``*.parquet`` do not match), synced, and renamed into place; an existing file is replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        df.write_parquet(tmp, compression="zstd", statistics=True)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def safe_name(value: object) -> str:
    """``value`` as a file-name part (plates, wells and feature sets name files and folders).

    Raises
    ------
    StoreError
        For an empty name, ``.``/``..``, or one with a path separator or a character Windows forbids.
    """
    from ..layouts import UNSTORABLE_CHARS  # the rule the plates table is checked against when it is read

    text = str(value)
    bad = set(UNSTORABLE_CHARS) | {os.sep}
    if not text or text in {".", ".."} or any(c in bad for c in text):
        raise StoreError(f"{value!r} cannot be used in a file name (plate, well and feature-set names must "
                         "not contain / \\ : * ? \" < > |)")
    return text


class ScreenStore(CellStoreMixin):
    """A screen folder: ``screen.duckdb`` plus per-cell Parquet.

    Use :meth:`create` or :meth:`open` (or the constructor), preferably as a context manager.

    Parameters
    ----------
    path
        Screen folder.
    create
        Create the folder and database if missing.
    read_only
        Open DuckDB read-only (many readers may share a store; only one process may write).
    """

    def __init__(self, path: str | Path, *, create: bool = False, read_only: bool = False) -> None:
        import duckdb

        self.path = Path(path)
        self.read_only = read_only
        db = self.path / DB_NAME
        if not db.exists():
            if not create:
                raise StoreError(f"{self.path}: no screen store here ({DB_NAME} not found); run a stage first "
                                 "or create it with ScreenStore.create()")
            if read_only:
                raise StoreError(f"{self.path}: cannot create a store read-only")
            self.path.mkdir(parents=True, exist_ok=True)
        try:
            self.con = duckdb.connect(str(db), read_only=read_only)
        except duckdb.Error as exc:
            raise _open_error(db, exc) from exc
        try:
            self._check_or_init_schema()
        except duckdb.Error as exc:
            self.con.close()
            raise _open_error(db, exc) from exc
        except Exception:
            self.con.close()
            raise
        if not read_only:
            self._remove_stale_temp_files()
            self._mark_interrupted_runs()

    # -- life cycle --------------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path) -> ScreenStore:
        """Open the store at ``path``, creating it if needed."""
        return cls(path, create=True)

    @classmethod
    def open(cls, path: str | Path, *, read_only: bool = False) -> ScreenStore:
        """Open an existing store."""
        return cls(path, read_only=read_only)

    def close(self) -> None:
        """Close the DuckDB connection (idempotent)."""
        try:
            self.con.close()
        except Exception:  # noqa: BLE001 - closing twice is fine
            pass

    def __enter__(self) -> ScreenStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ScreenStore({str(self.path)!r})"

    def _check_or_init_schema(self) -> None:
        tables = {r[0] for r in self.con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()}
        if "meta" in tables:
            rows = self.con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
            row = rows[0] if rows else None
            version = int(row[0]) if row else None
            if version == 2 and not self.read_only:
                self._upgrade_from_2()
                return
            if version == 2:
                raise StoreVersionError(
                    f"{self.path}: screen store has schema version 2; open it once for writing (any "
                    f"`subcell-screen run`, or ScreenStore.open(path)) to upgrade it to version {SCHEMA_VERSION}")
            if version != SCHEMA_VERSION:
                raise StoreVersionError(
                    f"{self.path}: screen store has schema version {version}, this subcell_screen "
                    f"({_package_version()}) reads version {SCHEMA_VERSION}. Use the matching subcell_screen "
                    "version, or re-run the screen into a new folder.")
            return
        if self.read_only:
            raise StoreError(f"{self.path}: {DB_NAME} is not a screen store (no meta table)")
        if tables:
            raise StoreError(f"{self.path}: {DB_NAME} holds tables {sorted(tables)} but is not a screen store")
        self.con.execute("BEGIN TRANSACTION")
        self.con.execute(ddl())
        self.con.execute("INSERT INTO meta VALUES ('schema_version', ?), ('created_at', ?), "
                         "('package_version', ?)", [str(SCHEMA_VERSION), _now().isoformat(), _package_version()])
        self.con.execute("COMMIT")

    def _upgrade_from_2(self) -> None:
        """v2 -> v3: declare the manifest and site profiles, and record the per-site files already stored
        (their site profiles are computed from them when profiles are next built)."""
        import re

        pattern = re.compile(r"^(?P<well>.+)_s(?P<site>-?\d+)\.parquet$")
        rows = []
        base = self.path / "cells"
        for fs_dir in sorted(base.glob("*")) if base.is_dir() else []:
            for plate_dir in sorted(fs_dir.glob("plate=*")):
                for f in sorted(plate_dir.glob("*.parquet")):
                    m = pattern.match(f.name)
                    if m is None:
                        continue
                    try:
                        n = pl.read_parquet_schema(f) and pl.scan_parquet(f).select(pl.len()).collect().item()
                    except Exception:  # noqa: BLE001 - a damaged file: recorded, found damaged by the next run
                        n = 0
                    rows.append({"feature_set": fs_dir.name, "plate": plate_dir.name[len("plate="):],
                                 "well": m["well"], "site": int(m["site"]), "file": self._rel(f),
                                 "n_rows": int(n or 0), "kept": "all", "compacted": False, "updated_at": _now()})
        self.con.execute("BEGIN TRANSACTION")
        try:
            self.con.execute(ddl())
            if rows:
                self._insert("cell_files", self._typed("cell_files", pl.DataFrame(rows)))
            self.con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION)])
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")
        logger.info("%s: screen store upgraded from schema version 2 to %d (%d per-site file(s) recorded)",
                    self.path, SCHEMA_VERSION, len(rows))

    def _remove_stale_temp_files(self) -> None:
        cells = self.path / "cells"
        if cells.is_dir():
            for tmp in cells.rglob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    # -- generic SQL ---------------------------------------------------------------------------------------

    def sql(self, query: str, params: Sequence[Any] | None = None) -> pl.DataFrame:
        """Run a query and return a Polars DataFrame."""
        rel = self.con.sql(query, params=list(params) if params is not None else None)
        if rel is None:  # a statement without a result
            return pl.DataFrame()
        return rel.pl()

    def tables(self) -> list[str]:
        """Names of tables and views in the store."""
        return sorted(r[0] for r in self.con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall())

    def has_table(self, name: str) -> bool:
        """Whether a table or view exists."""
        return name in self.tables()

    def read_table(self, name: str, **where: Any) -> pl.DataFrame:
        """All rows of ``name`` matching ``column=value`` filters (a list value means IN)."""
        self._check_identifier(name)
        clauses, params = self._where(where)
        return self.sql(f'SELECT * FROM "{name}"{clauses}', params)

    def _typed(self, name: str, df: pl.DataFrame) -> pl.DataFrame:
        """``df`` with the declared columns of table ``name``, in table order and cast to their types.

        Columns ``df`` lacks are NULL; a column the table does not declare is an error.
        """
        try:
            decl = table(name)
        except KeyError as exc:
            raise StoreError(str(exc.args[0])) from None
        extra = [c for c in df.columns if c not in decl.types]
        if extra:
            raise StoreError(f"table {name!r} has no column(s) {extra}; it has {decl.names}")
        exprs = []
        for col, typ in decl.columns:
            dtype = polars_type(typ)
            if col not in df.columns:
                exprs.append(pl.lit(None, dtype=dtype).alias(col))
            elif df.schema[col] == dtype:
                exprs.append(pl.col(col))
            elif isinstance(df.schema[col], pl.Array) and isinstance(dtype, pl.List):
                exprs.append(pl.col(col).arr.to_list().cast(dtype))
            else:
                exprs.append(pl.col(col).cast(dtype, strict=True))
        try:
            return df.select(exprs)
        except pl.exceptions.PolarsError as exc:
            for (col, typ), expr in zip(decl.columns, exprs):  # name the column that does not fit
                if col in df.columns:
                    try:
                        df.select(expr)
                    except pl.exceptions.PolarsError:
                        raise StoreError(f"table {name!r}, column {col!r}: cannot store {df.schema[col]} values "
                                         f"as {typ} ({str(exc).splitlines()[0]})") from None
            raise StoreError(f"table {name!r}: rows do not fit its declared columns ({exc})") from None

    def _insert(self, name: str, df: pl.DataFrame) -> None:
        if df.height:
            self.con.register("_new_rows", df.to_arrow())
            try:
                cols = ", ".join(f'"{c}"' for c in df.columns)
                self.con.execute(f'INSERT INTO "{name}" ({cols}) SELECT {cols} FROM _new_rows')
            finally:
                self.con.unregister("_new_rows")

    def _delete_keys(self, name: str, df: pl.DataFrame, keys: Sequence[str] | Mapping[str, Any]) -> None:
        if isinstance(keys, Mapping):
            clauses, params = self._where(dict(keys))
            self.con.execute(f'DELETE FROM "{name}"{clauses}', params)
        elif keys and df.height:
            self.con.register("_keys", df.select(list(keys)).unique().to_arrow())
            try:
                cond = " AND ".join(f't."{k}" IS NOT DISTINCT FROM k."{k}"' for k in keys)
                self.con.execute(f'DELETE FROM "{name}" t WHERE EXISTS (SELECT 1 FROM _keys k WHERE {cond})')
            finally:
                self.con.unregister("_keys")

    def _transaction(self):  # noqa: ANN202 - a context manager
        import contextlib

        @contextlib.contextmanager
        def tx():
            self._require_writable()
            self.con.execute("BEGIN TRANSACTION")
            try:
                yield
            except BaseException:
                self.con.execute("ROLLBACK")
                raise
            self.con.execute("COMMIT")

        return tx()

    def replace_rows(self, table: str, df: pl.DataFrame, *, keys: Sequence[str] | Mapping[str, Any]) -> int:
        """Atomically replace the rows of a declared ``table`` that share ``df``'s key values, then insert ``df``.

        Parameters
        ----------
        table
            A table of :data:`~subcell_screen.store.TABLES`.
        df
            New rows, cast to the table's declared types. Columns missing from ``df`` are NULL; a column the
            table does not declare is an error.
        keys
            Either key column names (every distinct key combination present in ``df`` is deleted first),
            or a ``{column: value}`` mapping naming exactly the rows to delete (use this when ``df`` may be
            empty, e.g. a site with no cells).

        Returns
        -------
        int
            Rows inserted.
        """
        self._check_identifier(table)
        typed = self._typed(table, df)
        with self._transaction():
            self._delete_keys(table, typed, keys)
            self._insert(table, typed)
        return typed.height

    def replace_site_rows(self, table: str, df: pl.DataFrame | None, *, sites: Sequence[tuple[str, str, int]]) -> int:
        """Atomically replace every row of the given sites in a per-site table with ``df``.

        Sites without a row in ``df`` (a site without cells) end with no rows, which key-column replacement
        cannot express. ``df`` may be None (delete only).
        """
        self._check_identifier(table)
        keys = pl.DataFrame({"plate": [str(k[0]) for k in sites], "well": [str(k[1]) for k in sites],
                             "site": [int(k[2]) for k in sites]}, schema={"plate": pl.String, "well": pl.String,
                                                                         "site": pl.Int32}).unique()
        typed = self._typed(table, df) if df is not None else None
        with self._transaction():
            self._delete_keys(table, keys, ["plate", "well", "site"])
            if typed is not None:
                self._insert(table, typed)
        return 0 if typed is None else typed.height

    def write_table(self, table: str, df: pl.DataFrame) -> int:
        """Atomically replace every row of a declared ``table`` with ``df`` (cast to the declared types)."""
        self._check_identifier(table)
        typed = self._typed(table, df)
        with self._transaction():
            self.con.execute(f'DELETE FROM "{table}"')
            self._insert(table, typed)
        return typed.height

    def create_view(self, name: str, query: str) -> None:
        """Create or replace a SQL view."""
        self._check_identifier(name)
        self._require_writable()
        self.con.execute(f'CREATE OR REPLACE VIEW "{name}" AS {query}')

    # -- runs (provenance) ---------------------------------------------------------------------------------

    def start_run(self, *, command: str, config: Mapping[str, Any] | None = None,
                  models: Mapping[str, Any] | None = None, parameters: Mapping[str, Any] | None = None,
                  summary: Mapping[str, Any] | None = None) -> str:
        """Record the start of a run; returns its ``run_id``.

        ``summary`` may already say what the run will do (featurizer, segmenter, fallbacks), so that reports
        rendered while the run is still going can show it; :meth:`finish_run` replaces it.
        """
        run_id = _now().strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        self.replace_rows("runs", pl.DataFrame({
            "run_id": [run_id], "command": [command], "started_at": [_now()], "status": ["running"],
            "package_version": [_package_version()], "config": [json.dumps(config or {}, default=str)],
            "models": [json.dumps(models or {}, default=str)],
            "parameters": [json.dumps(parameters or {}, default=str)],
            "summary": [json.dumps(summary or {}, default=str)], "pid": [os.getpid()],
            "host": [socket.gethostname()],
        }), keys=["run_id"])
        return run_id

    def _mark_interrupted_runs(self) -> None:
        """Runs still ``running`` whose process is gone (killed with ``kill -9``, power loss) become
        ``interrupted``. DuckDB lets one process write at a time, so a run of another process cannot be going
        on while this store is open for writing."""
        stale = self.con.execute("SELECT run_id FROM runs WHERE status = 'running' AND NOT (pid IS NOT DISTINCT "
                                 "FROM ? AND host IS NOT DISTINCT FROM ?)", [os.getpid(), socket.gethostname()]
                                 ).fetchall()
        if stale:
            ids = [r[0] for r in stale]
            self.con.execute("UPDATE runs SET status = 'interrupted', error = coalesce(error, ?) WHERE run_id IN "
                             f"({', '.join('?' for _ in ids)})",
                             [f"the process of this run stopped without recording its end (killed?); found when the "
                              f"store was next opened for writing at {_now().isoformat(timespec='seconds')} UTC",
                              *ids])
            logger.warning("%s: %d run(s) had stopped without recording their end (marked interrupted): %s",
                           self.path, len(ids), ", ".join(ids))

    def finish_run(self, run_id: str, *, status: str = "ok", summary: Mapping[str, Any] | None = None,
                   error: str | None = None, models: Mapping[str, Any] | None = None) -> None:
        """Record the end of a run (``status``: ok, failed, interrupted)."""
        self._require_writable()
        sets = "finished_at = ?, status = ?, summary = ?, error = ?"
        params: list[Any] = [_now(), status, json.dumps(summary or {}, default=str), error]
        if models is not None:
            sets += ", models = ?"
            params.append(json.dumps(models, default=str))
        self.con.execute(f"UPDATE runs SET {sets} WHERE run_id = ?", [*params, run_id])

    def update_run_summary(self, run_id: str, summary: Mapping[str, Any]) -> None:
        """Replace a running run's summary (stage by stage, so that reports built during the run see it)."""
        self._require_writable()
        self.con.execute("UPDATE runs SET summary = ? WHERE run_id = ?", [json.dumps(summary, default=str), run_id])

    # -- plates and wells ----------------------------------------------------------------------------------

    def write_design(self, design: Any) -> None:
        """Store a :class:`~subcell_screen.layouts.ScreenDesign` (plates and per-plate wells), replacing
        the rows of its plates."""
        from ..layouts import STANDARD_COLUMNS

        plates = design.plates
        known = {"plate", "layout", "batch", "cell_line", "timepoint"}
        extra_cols = [c for c in plates.columns if c not in known]
        plate_rows = plates.select(
            pl.col("plate"), pl.col("layout"), pl.lit(design.plate_format, dtype=pl.Int32).alias("plate_format"),
            *[(pl.col(c) if c in plates.columns else pl.lit(None, dtype=pl.String)).alias(c)
              for c in ("batch", "cell_line", "timepoint")],
            (pl.struct(extra_cols).map_elements(lambda s: json.dumps(s), return_dtype=pl.String)
             if extra_cols else pl.lit("{}")).alias("extra"),
        )
        wells = design.wells()
        std = ["plate", *STANDARD_COLUMNS, "protein"]
        w_extra = [c for c in wells.columns if c not in std and c not in plates.columns]
        wells = wells.select(
            *[(pl.col(c) if c in wells.columns else pl.lit(None, dtype=pl.String)).alias(c) for c in std],
            (pl.struct(w_extra).map_elements(lambda s: json.dumps(s), return_dtype=pl.String)
             if w_extra else pl.lit("{}")).alias("extra"),
        )
        self._require_writable()
        self.con.execute("BEGIN TRANSACTION")
        try:
            for table, frame in (("plates", plate_rows), ("wells", wells)):
                self.con.register("_p", plates.select("plate").to_arrow())
                self.con.execute(f"DELETE FROM {table} WHERE plate IN (SELECT plate FROM _p)")
                self.con.unregister("_p")
                self.con.register("_rows", frame.to_arrow())
                cols = ", ".join(frame.columns)
                self.con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _rows")
                self.con.unregister("_rows")
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    def wells(self, *, plate: str | None = None, metadata: bool = False) -> pl.DataFrame:
        """Wells joined with plate metadata; with ``metadata=True`` columns use the ``Metadata_`` prefix."""
        q = ("SELECT w.* EXCLUDE (extra), p.layout, p.batch, p.cell_line, p.timepoint "
             "FROM wells w LEFT JOIN plates p USING (plate)")
        params: list[Any] = []
        if plate is not None:
            q += " WHERE w.plate = ?"
            params.append(plate)
        df = self.sql(q + " ORDER BY w.plate, w.well", params)
        if metadata:
            from ..layouts import to_metadata

            df = to_metadata(df)
        return df

    # -- sites ---------------------------------------------------------------------------------------------

    def register_sites(self, sites: pl.DataFrame) -> None:
        """Insert or update site records (``plate``, ``well``, ``site`` plus any of the ``sites`` columns).

        Existing status of a site is kept unless ``sites`` provides one.
        """
        self._require_writable()
        cols = [c for c in sites.columns if c in
                ("plate", "well", "site", "reader", "channels", "pixel_size_um", "pixel_size_source", "height",
                 "width", "dtype", "status", "error")]
        df = sites.select(cols)
        if "channels" in df.columns and df.schema["channels"] != pl.String:
            df = df.with_columns(pl.col("channels").map_elements(
                lambda v: json.dumps(v if not hasattr(v, "to_list") else v.to_list(), default=str),
                return_dtype=pl.String))
        if "status" not in df.columns:
            existing = self.sql("SELECT plate, well, site, status, error FROM sites")
            df = df.join(existing, on=["plate", "well", "site"], how="left").with_columns(
                pl.col("status").fill_null("pending"))
        df = df.with_columns(pl.lit(_now()).alias("updated_at"))
        self.replace_rows("sites", df, keys=["plate", "well", "site"])

    def record_site_stages(self, rows: pl.DataFrame) -> None:
        """Record per-site stage outcomes, and update the sites' status: the one place that changes it.

        ``rows`` has ``plate``, ``well``, ``site``, ``stage`` (``load``, ``segment``, ``embed:<feature set>``),
        ``status`` (``ok`` or ``failed``) and optionally ``error``, ``n_cells``, ``run_id``, ``seconds``; one
        transaction for any number of sites. Then, per site:

        * a stage recorded ``failed`` fails the site, with ``error = "<stage>: <error>"``;
        * a compute stage recorded ``ok`` makes the site ``ok`` when none of its stages is failed (a re-run
          that succeeds clears an old failure);
        * ``load`` recorded ``ok`` clears a load failure (the site is ``pending`` again) and keeps any other
          status.
        """
        if rows.height == 0:
            return
        rows = rows.with_columns(pl.lit(_now()).alias("updated_at"))
        typed = self._typed("site_stages", rows)
        keys = ["plate", "well", "site"]
        with self._transaction():
            self._delete_keys("site_stages", typed, [*keys, "stage"])
            self._insert("site_stages", typed)
            self.con.register("_stage_rows", typed.to_arrow())
            try:
                now = _now()
                # failures of this batch: the site is failed with its (first, in stage order) error
                self.con.execute(
                    "UPDATE sites SET status = 'failed', error = f.error, updated_at = ? FROM (SELECT plate, well, "
                    "site, arg_min(stage || ': ' || coalesce(error, 'failed'), CASE WHEN stage = 'load' THEN 0 "
                    "WHEN stage = 'segment' THEN 1 ELSE 2 END) AS error FROM _stage_rows WHERE status = 'failed' "
                    "GROUP BY ALL) f WHERE sites.plate = f.plate AND sites.well = f.well AND sites.site = f.site",
                    [now])
                ok_sites = ("SELECT 1 FROM site_stages s WHERE s.plate = sites.plate AND s.well = sites.well AND "
                            "s.site = sites.site AND s.status = 'failed'")
                # a compute stage done: the site is ok unless another of its stages failed
                self.con.execute(
                    "UPDATE sites SET status = 'ok', error = NULL, updated_at = ? FROM (SELECT DISTINCT plate, "
                    "well, site FROM _stage_rows WHERE status = 'ok' AND stage <> 'load') k WHERE sites.plate = "
                    f"k.plate AND sites.well = k.well AND sites.site = k.site AND NOT EXISTS ({ok_sites})", [now])
                # loaded again: a load failure is cleared, any other status kept
                self.con.execute(
                    "UPDATE sites SET status = CASE WHEN status IS NULL OR status = 'failed' THEN 'pending' ELSE "
                    "status END, error = NULL, updated_at = ? FROM (SELECT DISTINCT plate, well, site FROM "
                    "_stage_rows WHERE status = 'ok' AND stage = 'load') k WHERE sites.plate = k.plate AND "
                    "sites.well = k.well AND sites.site = k.site AND (sites.status IS NULL OR sites.status <> "
                    f"'failed' OR sites.error LIKE 'load: %') AND NOT EXISTS ({ok_sites})", [now])
            finally:
                self.con.unregister("_stage_rows")

    def set_site_status(self, plate: str, well: str, site: int, *, stage: str, status: str,
                        error: str | None = None, n_cells: int | None = None, run_id: str | None = None,
                        seconds: float | None = None) -> None:
        """Record the outcome of ``stage`` (e.g. ``segment``, ``embed``) for one site
        (:meth:`record_site_stages` for one row)."""
        self.record_site_stages(pl.DataFrame(
            {"plate": [plate], "well": [well], "site": [int(site)], "stage": [stage], "status": [status],
             "error": [error], "n_cells": [n_cells], "run_id": [run_id], "seconds": [seconds]},
            schema_overrides={"n_cells": pl.Int32, "site": pl.Int32, "error": pl.String, "run_id": pl.String,
                              "seconds": pl.Float64}))

    def sites_with_stage(self, stage: str, *, status: str = "ok", plate: str | None = None) -> set[tuple]:
        """``{(plate, well, site)}`` whose ``stage`` finished with ``status``."""
        q = "SELECT plate, well, site FROM site_stages WHERE stage = ? AND status = ?"
        params: list[Any] = [stage, status]
        if plate is not None:
            q += " AND plate = ?"
            params.append(plate)
        return {tuple(r) for r in self.con.execute(q, params).fetchall()}

    # -- arrays: masks and illumination --------------------------------------------------------------------

    def write_masks(self, plate: str, well: str, site: int, *, nuclei: np.ndarray, cells: np.ndarray,
                    method: str) -> None:
        """Store a site's nucleus and cell label images (compressed), replacing earlier ones."""
        if nuclei.shape != cells.shape or nuclei.ndim != 2:
            raise ValueError(f"label images must be 2-D and of one shape, got {nuclei.shape} and {cells.shape}")
        self.replace_rows("masks", pl.DataFrame({
            "plate": [plate], "well": [well], "site": [int(site)], "height": [nuclei.shape[0]],
            "width": [nuclei.shape[1]], "method": [method], "nuclei": [encode_array(nuclei)],
            "cells": [encode_array(cells)]}, schema_overrides={"site": pl.Int32, "height": pl.Int32,
                                                               "width": pl.Int32}),
            keys=["plate", "well", "site"])

    def read_masks(self, plate: str, well: str, site: int) -> tuple[np.ndarray, np.ndarray]:
        """``(nuclei, cells)`` label images of one site."""
        rows = self.con.execute("SELECT nuclei, cells FROM masks WHERE plate = ? AND well = ? AND site = ?",
                                [plate, well, int(site)]).fetchall()
        row = rows[0] if rows else None
        if row is None:
            raise StoreError(f"no masks stored for plate {plate!r}, well {well!r}, site {site}")
        return decode_array(row[0]), decode_array(row[1])

    def write_illumination(self, plate: str, functions: Mapping[str, np.ndarray], *,
                           recipe: Mapping[str, Any]) -> None:
        """Store per-channel illumination functions of one plate (replacing the plate's earlier ones)."""
        rows = [{"plate": plate, "channel": ch, "height": int(a.shape[0]), "width": int(a.shape[1]),
                 "data": encode_array(np.asarray(a, dtype=np.float32)), "recipe": json.dumps(dict(recipe))}
                for ch, a in functions.items()]
        self.replace_rows("illumination", pl.DataFrame(rows, schema_overrides={
            "height": pl.Int32, "width": pl.Int32, "data": pl.Binary}), keys={"plate": plate})

    def read_illumination(self, plate: str) -> dict[str, np.ndarray]:
        """Channel -> illumination function of one plate (empty dict if none stored)."""
        rows = self.con.execute("SELECT channel, data FROM illumination WHERE plate = ?", [plate]).fetchall()
        return {ch: decode_array(blob) for ch, blob in rows}

    # -- per-cell features (Parquet) -----------------------------------------------------------------------

    def register_feature_set(self, feature_set: str, *, kind: str, feature_names: Sequence[str],
                             model: str | None = None, model_sha256: Mapping[str, str] | None = None,
                             parameters: Mapping[str, Any] | None = None) -> None:
        """Describe a feature set (``kind``: ``subcell`` or ``classical``) and its column names."""
        safe_name(feature_set)
        self.replace_rows("feature_sets", pl.DataFrame({
            "feature_set": [feature_set], "kind": [kind], "n_features": [len(feature_names)],
            "feature_names": [json.dumps(list(feature_names))], "model": [model],
            "model_sha256": [json.dumps(dict(model_sha256 or {}))],
            "parameters": [json.dumps(dict(parameters or {}), default=str)], "created_at": [_now()]},
            schema_overrides={"n_features": pl.Int32, "model": pl.String}), keys=["feature_set"])

    def feature_set(self, feature_set: str) -> dict[str, Any]:
        """The record of a feature set, with ``feature_names`` as a list."""
        df = self.read_table("feature_sets", feature_set=feature_set)
        if df.height == 0:
            known = self.sql("SELECT feature_set FROM feature_sets")["feature_set"].to_list()
            raise StoreError(f"unknown feature set {feature_set!r}; the store has {known or 'none'}")
        rec = df.row(0, named=True)
        rec["feature_names"] = json.loads(rec["feature_names"])
        return rec

    # -- profiles --------------------------------------------------------------------------------------------

    def clear_profiles(self) -> None:
        """Remove every profile set (the profile stage rewrites them as a whole)."""
        self._require_writable()
        self.con.execute("BEGIN TRANSACTION")
        try:
            for table in ("profiles", "profile_features", "profile_sets"):
                self.con.execute(f"DELETE FROM {table}")
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    def write_profiles(self, frame: pl.DataFrame, *, profile_set: str, feature_set: str,
                       final: bool = False) -> None:
        """Store one profile set (wide: ``Metadata_*`` columns + features), replacing a set of that name.

        Sets of any width live side by side (``raw``, ``normalized``, ``feature_selected``, ``consensus``): the
        feature vector is a variable-length list and its names are in ``profile_features``.

        Parameters
        ----------
        frame
            One row per well (``Metadata_Plate``, ``Metadata_Well``, optionally ``Metadata_Count_Cells``) or,
            for ``consensus``, per perturbation (``Metadata_perturbation_id``, ``Metadata_concentration``,
            ``Metadata_n_wells``); every non-``Metadata_`` column is a feature.
        profile_set, feature_set
            Set name and the per-cell feature set it was computed from.
        final
            Whether this is the well-level set scoring uses (the ``well_profiles`` view shows it).
        """
        self._require_writable()
        feats = [c for c in frame.columns if not c.startswith("Metadata_")]
        x = frame.select(feats).to_numpy().astype(np.float32) if feats else np.zeros((frame.height, 0), np.float32)

        def col(name: str, dtype: Any) -> pl.Series:
            return frame[name].cast(dtype) if name in frame.columns else pl.Series([None] * frame.height,
                                                                                   dtype=dtype)

        consensus = "Metadata_Well" not in frame.columns
        rows = pl.DataFrame({
            "profile_set": [profile_set] * frame.height, "feature_set": [feature_set] * frame.height,
            "plate": col("Metadata_Plate", pl.String), "well": col("Metadata_Well", pl.String),
            "perturbation_id": col("Metadata_perturbation_id", pl.String),
            "concentration": col("Metadata_concentration", pl.Float64),
            "n_wells": col("Metadata_n_wells", pl.Int32) if consensus else pl.Series([1] * frame.height,
                                                                                     dtype=pl.Int32),
            "n_cells": col("Metadata_Count_Cells", pl.Int32),
            "features": pl.Series(list(x), dtype=pl.List(pl.Float32)),
        })
        names = pl.DataFrame({"profile_set": [profile_set] * len(feats), "position": list(range(len(feats))),
                              "name": feats}, schema_overrides={"position": pl.Int32, "name": pl.String})
        record = pl.DataFrame({"profile_set": [profile_set], "feature_set": [feature_set],
                               "level": ["consensus" if consensus else "well"], "n_rows": [frame.height],
                               "n_features": [len(feats)], "final": [final]},
                              schema_overrides={"n_rows": pl.Int32, "n_features": pl.Int32})
        key = {"profile_set": profile_set}
        self.replace_rows("profiles", rows, keys=key)
        self.replace_rows("profile_features", names, keys=key)
        self.replace_rows("profile_sets", record, keys=key)
        if final:
            self.con.execute("UPDATE profile_sets SET final = (profile_set = ?)", [profile_set])
            self.create_view("well_profiles",
                             "SELECT p.feature_set, p.n_cells, w.*, p.features FROM profiles p JOIN wells w "
                             f"USING (plate, well) WHERE p.profile_set = '{profile_set.replace(chr(39), '')}'")

    def attach_cell_counts(self, wide: pl.DataFrame) -> pl.DataFrame:
        """``wide`` (``Metadata_Plate``, ``Metadata_Well``, ...) with ``Metadata_Count_Cells`` from the ``cells``
        table (0 for a well without cells), metadata columns first."""
        counts = self.sql("SELECT plate AS Metadata_Plate, well AS Metadata_Well, count(*)::BIGINT AS "
                          "Metadata_Count_Cells FROM cells GROUP BY ALL")
        if "Metadata_Count_Cells" in wide.columns:
            wide = wide.drop("Metadata_Count_Cells")
        out = wide.join(counts, on=["Metadata_Plate", "Metadata_Well"], how="left").with_columns(
            pl.col("Metadata_Count_Cells").fill_null(0))
        meta = [c for c in out.columns if c.startswith("Metadata_")]
        return out.select(meta + [c for c in out.columns if c not in meta])

    def read_profiles(self, *, profile_set: str | None = None) -> pl.DataFrame:
        """A profile set in pycytominer's wide layout (``Metadata_*`` columns, then the named features).

        Parameters
        ----------
        profile_set
            ``raw``, ``normalized``, ``feature_selected`` or ``consensus``; default the well-level set scoring
            uses (the last one the profile stage computed).

        Returns
        -------
        polars.DataFrame
            Well sets: the wells' layout metadata (``Metadata_Plate``, ``Metadata_Well``,
            ``Metadata_perturbation_id``, ...) and ``Metadata_Count_Cells``; ``consensus``: the perturbation's
            id, concentration, ``Metadata_n_wells`` and identity (name, control type, MoA, target).
        """
        if profile_set is None:
            final = self.sql("SELECT profile_set FROM profile_sets WHERE final")
            if final.height == 0:
                raise StoreError(f"{self.path}: no well profiles in the store; run the profile stage first")
            profile_set = final["profile_set"][0]
        names = self.sql("SELECT name FROM profile_features WHERE profile_set = ? ORDER BY position",
                         [profile_set])["name"].to_list()
        prof = self.sql("SELECT plate, well, perturbation_id, concentration, n_wells, n_cells, features FROM "
                        "profiles WHERE profile_set = ? ORDER BY plate, well, perturbation_id, concentration",
                        [profile_set])
        if prof.height == 0:
            known = self.sql("SELECT profile_set FROM profile_sets ORDER BY ALL")["profile_set"].to_list()
            raise StoreError(f"{self.path}: no {profile_set!r} profiles in the store (it has {known or 'none'}); "
                             "run the profile stage first")
        x = np.asarray(prof["features"].to_list(), dtype=np.float64).reshape(prof.height, len(names))
        feats = pl.DataFrame(x, schema=names, orient="row")
        if prof["well"].null_count() == prof.height:  # consensus
            meta = prof.select(pl.col("perturbation_id").alias("Metadata_perturbation_id"),
                               pl.col("concentration").alias("Metadata_concentration"),
                               pl.col("n_wells").cast(pl.Int64).alias("Metadata_n_wells"))
            ident = self.sql("SELECT perturbation_id AS Metadata_perturbation_id, any_value(perturbation_name) "
                             "AS Metadata_perturbation_name, any_value(control_type) AS Metadata_control_type, "
                             "any_value(moa) AS Metadata_moa, any_value(target) AS Metadata_target FROM wells "
                             "GROUP BY ALL")
            meta = meta.join(ident, on="Metadata_perturbation_id", how="left")
            return pl.concat([meta, feats], how="horizontal")
        meta = self.wells(metadata=True).rename({"Metadata_Plate": "plate", "Metadata_Well": "well"})
        meta = prof.select("plate", "well", "n_cells").join(meta, on=["plate", "well"], how="left").rename(
            {"plate": "Metadata_Plate", "well": "Metadata_Well", "n_cells": "Metadata_Count_Cells"})
        return pl.concat([meta, feats], how="horizontal")

    # -- scores -------------------------------------------------------------------------------------------

    #: ScoreTables attribute -> table
    _SCORE_TABLES = {"coverage": "scoring_coverage", "scores": "perturbation_scores",
                     "dose_response": "dose_response", "dose_points": "dose_points",
                     "relocalization": "relocalization_results", "class_shifts": "relocalization_class_shifts"}

    def write_scores(self, tables: Any) -> None:
        """Replace every score table with the score stage's output (one transaction; a table the stage did
        not compute ends empty, so no stale scores remain).

        ``tables`` is a :class:`~subcell_screen.score.ScoreTables`; columns beyond a table's declaration
        (diagnostics of a fit) are not stored.
        """
        with self._transaction():
            for attr, name in self._SCORE_TABLES.items():
                self.con.execute(f'DELETE FROM "{name}"')
                df = getattr(tables, attr)
                if df is not None:
                    decl = table(name)
                    self._insert(name, self._typed(name, df.select([c for c in decl.names if c in df.columns])))

    def write_map_tables(self, tables: Mapping[str, pl.DataFrame]) -> None:
        """Replace the phenotypic map's tables (``map_*``) in one transaction; map tables not given are emptied,
        so the store always holds one map."""
        unknown = [n for n in tables if not n.startswith("map_") or n not in TABLES]
        if unknown:
            raise StoreError(f"not map tables: {unknown}")
        typed = {n: self._typed(n, df) for n, df in tables.items()}
        with self._transaction():
            for name in (n for n in TABLES if n.startswith("map_")):
                self.con.execute(f'DELETE FROM "{name}"')
                if name in typed:
                    self._insert(name, typed[name])

    def well_readouts(self) -> pl.DataFrame:
        """Per-well median of the per-cell protein readouts (``Metadata_Plate``, ``Metadata_Well``,
        ``protein_nuc_cyto_ratio``; finite values only)."""
        return self.sql("SELECT plate AS Metadata_Plate, well AS Metadata_Well, median(protein_nuc_cyto_ratio) AS "
                        "protein_nuc_cyto_ratio FROM cell_readouts WHERE isfinite(protein_nuc_cyto_ratio) "
                        "GROUP BY ALL")

    def well_mean_probabilities(self, feature_set: str) -> pl.DataFrame | None:
        """Per-well mean of the per-cell class probabilities of a SubCell feature set (None without them).

        Computed from the site profiles (each site's mean over its cells, weighted by its cells), so it is
        the mean over all of the well's cells whatever the per-cell storage policy.

        Returns
        -------
        polars.DataFrame or None
            ``Metadata_Plate``, ``Metadata_Well``, ``probabilities`` (list of float64, one per class).
        """
        self.ensure_site_profiles(feature_set)
        df = self.read_site_profiles(feature_set, probabilities=True).filter(pl.col("features").is_not_null())
        if df.height == 0:
            return None
        p = np.asarray(df["features"].to_list(), dtype=np.float64) * df["n_cells"].to_numpy()[:, None]
        codes = df.select(pl.struct("plate", "well").rank("dense").cast(pl.Int64) - 1).to_series().to_numpy()
        n = int(codes.max()) + 1
        sums = np.zeros((n, p.shape[1]))
        np.add.at(sums, codes, p)
        counts = np.bincount(codes, weights=df["n_cells"].to_numpy(), minlength=n)[:, None]
        keys = df.select("plate", "well").with_columns(pl.Series("_c", codes)).unique("_c").sort("_c")
        return keys.select(pl.col("plate").alias("Metadata_Plate"), pl.col("well").alias("Metadata_Well")).with_columns(
            pl.Series("probabilities", list(sums / counts), dtype=pl.List(pl.Float64)))

    def ensure_site_profiles(self, feature_set: str) -> int:
        """Compute the missing site profiles of a feature set from its stored cells (sites featurized by an
        older version, or written with :func:`~subcell_screen.embed.write_embeddings` outside a run).

        Returns the sites computed (0 on a read-only store: they are then computed in memory by readers).
        """
        from ..profiles import site_profiles_frame

        missing = self.sites_without_profiles(feature_set)
        if not missing or self.read_only:
            return 0
        done = 0
        for plate in sorted({k[0] for k in missing}):
            frame = site_profiles_frame(self.cell_arrays(feature_set, plate=plate),
                                        probabilities=self._plate_probabilities(feature_set, plate))
            keys = [k for k in missing if k[0] == plate]
            want = pl.DataFrame(keys, schema={"plate": pl.String, "well": pl.String, "site": pl.Int64}, orient="row")
            frame = frame.join(want, on=["plate", "well", "site"], how="semi")
            self.write_site_profiles(feature_set, frame, sites=keys)
            done += frame.height
        if done:
            logger.info("computed %d site profile(s) of %s from stored cells", done, feature_set)
        return done

    def _plate_probabilities(self, feature_set: str, plate: str) -> Any:
        try:
            lf = self.scan_cell_features(feature_set, plate=plate)
        except StoreError:
            return None
        if "probabilities" not in lf.collect_schema().names():
            return None
        return self.cell_arrays(feature_set, plate=plate, column="probabilities")

    # -- helpers -------------------------------------------------------------------------------------------

    def _require_writable(self) -> None:
        if self.read_only:
            raise StoreError(f"{self.path}: store opened read-only")

    @staticmethod
    def _check_identifier(name: str) -> None:
        if not name.replace("_", "").isalnum():
            raise StoreError(f"invalid table name {name!r}")

    @staticmethod
    def _where(where: Mapping[str, Any]) -> tuple[str, list[Any]]:
        if not where:
            return "", []
        parts, params = [], []
        for col, val in where.items():
            ScreenStore._check_identifier(col)
            if isinstance(val, list | tuple | set):
                vals = list(val)
                parts.append(f'"{col}" IN ({", ".join("?" for _ in vals)})' if vals else "FALSE")
                params.extend(vals)
            elif val is None:
                parts.append(f'"{col}" IS NULL')
            else:
                parts.append(f'"{col}" = ?')
                params.append(val)
        return " WHERE " + " AND ".join(parts), params


def _open_error(db: Path, exc: Exception) -> StoreError:
    """A clear error for a database that cannot be opened: locked by another writer, or damaged."""
    text = str(exc)
    if "lock" in text.lower():
        return StoreError(f"{db}: another process is using this screen store ({text}). DuckDB allows one writer "
                          "at a time: wait for the other run to finish, or open the store read-only.")
    return StoreError(f"{db}: not a readable screen database ({type(exc).__name__}: {text}). The file is damaged "
                      "(e.g. a truncated copy or a full disk) or is not a DuckDB file: restore it from a backup, or "
                      "re-run the screen into a new folder (its per-cell Parquet files under cells/ are separate).")


def _package_version() -> str:
    from .. import __version__

    return __version__

