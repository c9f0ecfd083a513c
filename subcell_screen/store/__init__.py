"""The screen store: one screen = one folder.

::

    <screen>/
      screen.duckdb                      every table declared in :mod:`subcell_screen.store._schema`
      cells/<feature_set>/plate=<plate>/cells-<token>.parquet    per-cell features of a finished plate
      cells/<feature_set>/plate=<plate>/<well>_s<site>.parquet   per-site staging files during a run
      logs/

DuckDB holds everything small enough to query interactively, including the site profiles (each site's cells
reduced where they were featurized); per-cell feature vectors (1536-4608 floats per cell) live in Parquet
partitioned by plate: one staging file per site while a plate is being featurized, one compacted file per
plate once it is done, with the ``cell_files`` manifest saying which file holds which site (see
:mod:`subcell_screen.store._cells`). The store owns its schema: every table is declared (:data:`TABLES`, with :data:`VIEWS`), created with
the database, and every write is cast to the declared columns. Every write is atomic and idempotent:

* DuckDB writes replace the rows of one key (a site, a plate, a feature set) inside one transaction, so
  re-running a stage never duplicates rows and a process killed mid-write leaves the previous state.
* Parquet files are written to a hidden temp file in the same folder and renamed into place; readers only
  see complete files.
* A site's status changes in one place (:meth:`ScreenStore.record_site_stages`).

Opening a store written by another schema version raises :class:`~subcell_screen.StoreVersionError`.

Example queries (see also :data:`EXAMPLE_QUERIES`)::

    with ScreenStore.open("screens/demo") as store:
        store.sql("SELECT well, count(*) AS n_cells FROM cells WHERE plate = ? GROUP BY well ORDER BY well",
                  ["P1"])
"""

from __future__ import annotations

from ._cells import CELL_BYTES, KEEP_CELLS, CompactionJob, compact_cell_files, sample_order
from ._schema import SCHEMA_VERSION, TABLES, VIEWS, Table, View
from ._store import (
    EXAMPLE_QUERIES,
    STAGE_ORDER,
    ScreenStore,
    decode_array,
    encode_array,
    safe_name,
    utc_now,
    write_parquet_atomic,
)

__all__ = ["ScreenStore", "SCHEMA_VERSION", "TABLES", "VIEWS", "Table", "View", "EXAMPLE_QUERIES", "STAGE_ORDER",
           "encode_array", "decode_array", "write_parquet_atomic", "safe_name", "utc_now", "KEEP_CELLS",
           "CELL_BYTES", "CompactionJob", "compact_cell_files", "sample_order"]
