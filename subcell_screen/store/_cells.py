"""The cell store: per-cell feature rows in Parquet, site profiles in DuckDB, a manifest that says which file
holds which site's cells, and the compaction of a finished plate's per-site files into one file.

Layout (under ``<screen>/cells/<feature_set>/plate=<plate>/``):

* ``<well>_s<site>.parquet`` -- a *staging* file: one site's cells as its featurization wrote them;
* ``cells-<token>.parquet`` -- a *compacted* file: every kept cell of the plate, site after site (one
  row group per few sites), written when the plate's featurization completes.

The ``cell_files`` table (the manifest) maps every featurized site to the file that holds its current rows (or
to none: no cells, or cells not kept). Readers go through the manifest only, so a file that no row names
(an interrupted compaction's output, a superseded staging file) is never read, and a compacted file whose
site was featurized again (its manifest row now names a new staging file) is read without that site's stale
rows. Every change is a complete file renamed into place followed by one manifest transaction; files that
no manifest row names are deleted afterwards. So a process killed at any point leaves either the old or the
new rows of a site, never both and never part.

Site profiles (``site_profiles``: per site and feature set, the median and the mean over its cells of every
feature, and the mean class probabilities) are computed from the full-precision features before anything is
stored, dropped or rounded; well profiles are built from them, so they are exact whatever the per-cell
storage policy.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from .._errors import StoreError

__all__ = ["KEEP_CELLS", "CompactionJob", "compact_cell_files", "sample_order", "CellStoreMixin",
           "CELL_BYTES"]

logger = logging.getLogger(__name__)

#: Per-cell storage policies (``[embedding].keep_cells``).
KEEP_CELLS: tuple[str, ...] = ("all", "sample", "none")

#: Stored bytes per cell and feature of each ``store_dtype`` (before Parquet compression).
CELL_BYTES: Mapping[str, int] = {"float32": 4, "float16": 2}

_KEY_SCHEMA = {"plate": pl.String, "well": pl.String, "site": pl.Int32}
_ROW_GROUP_BYTES = 64 * 1024**2  # a compacted file's row groups: a few sites of 4,608-wide features
_COMPACTED_PREFIX = "cells-"


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def sample_order(plate: str, well: str, site: np.ndarray, cell_id: np.ndarray) -> np.ndarray:
    """Each cell's place in its well's sample: the cells a well keeps are the ``cells_per_well`` smallest.

    The key is a hash of (plate, well, site, cell_id), so the sample is random across the well's sites, the
    same on every run, and a site featurized again with the same cells keeps the same cells.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` uint64.
    """
    seed = np.uint64(zlib.crc32(f"{plate}\x00{well}".encode()))
    site = np.asarray(site).astype(np.uint64)
    cell = np.asarray(cell_id).astype(np.uint64)
    with np.errstate(over="ignore"):
        return _splitmix64((seed << np.uint64(32)) ^ (site << np.uint64(20)) ^ cell)


@dataclass(frozen=True)
class CompactionJob:
    """What a compaction of one plate reads and writes (pure data: a Ray worker can run it).

    Attributes
    ----------
    root : str
        The screen folder.
    feature_set, plate : str
    sources : tuple of (str, tuple of (str, int))
        Files (relative to ``root``) with the ``(well, site)`` keys whose current rows each holds, staging
        files after compacted ones.
    target : str
        The new compacted file (relative to ``root``); written under a temporary name and renamed.
    keep : {"all", "sample"}
    cells_per_well : int
        Cells a well keeps with ``keep = "sample"``.
    """

    root: str
    feature_set: str
    plate: str
    sources: tuple[tuple[str, tuple[tuple[str, int], ...]], ...]
    target: str
    keep: str = "all"
    cells_per_well: int = 200

    @property
    def keys(self) -> list[tuple[str, int]]:
        return [k for _f, keys in self.sources for k in keys]


def _key_filter(keys: Iterable[tuple[str, int]]) -> pl.Expr:
    wanted = [f"{w}\x00{s}" for w, s in keys]
    return (pl.col("well") + pl.lit("\x00") + pl.col("site").cast(pl.String)).is_in(wanted)


def _encodings(schema: Any) -> dict[str, Any]:
    """Dictionary-encode the key strings only; float arrays byte-stream-split (zstd then packs exponents and
    mantissas separately: ~8 % smaller on Gaussian float32, more on real embeddings)."""
    import pyarrow as pa

    floats = [f"{f.name}.list.element" for f in schema if (pa.types.is_list(f.type) or
                                                             pa.types.is_fixed_size_list(f.type))
              and pa.types.is_floating(f.type.value_type)]
    keys = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    return {"use_dictionary": keys, "use_byte_stream_split": floats}


def _append(writer: Any, tmp: Path, table: Any, pending: list) -> Any:
    """Queue ``table`` for the compacted file (opening its writer on the first table)."""
    import pyarrow.parquet as pq

    if writer is None:
        writer = pq.ParquetWriter(tmp, table.schema, compression="zstd", write_statistics=True,
                                  **_encodings(table.schema))
    elif table.schema != writer.schema:
        table = table.cast(writer.schema)
    pending.append(table)
    return writer


def compact_cell_files(job: CompactionJob) -> dict[tuple[str, int], int]:
    """Write the compacted file of ``job`` (streaming: one row group in memory at a time).

    Returns
    -------
    dict
        ``(well, site)`` -> rows the new file holds for that site (0: none kept, or no cells).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(job.root)
    kept_by_source: dict[str, np.ndarray] = {}
    if job.keep == "sample":  # pass 1: keys only, to choose each well's sample across its sites
        parts = []
        for i, (rel, keys) in enumerate(job.sources):
            path = root / rel
            if not pq.read_schema(path).names:
                continue
            k = pl.read_parquet(path, columns=["well", "site", "cell_id"]).with_row_index("_row")
            k = k.filter(_key_filter(keys))
            parts.append(k.with_columns(pl.lit(i).alias("_src")))
        if parts:
            allk = pl.concat(parts)
            order = np.empty(allk.height, dtype=np.uint64)
            for (well,), g in allk.with_row_index("_i").group_by("well"):
                idx = g["_i"].to_numpy()
                order[idx] = sample_order(job.plate, str(well), g["site"].to_numpy(), g["cell_id"].to_numpy())
            allk = allk.with_columns(pl.Series("_order", order))
            chosen = (allk.with_columns(pl.col("_order").rank("ordinal").over("well").alias("_rank"))
                      .filter(pl.col("_rank") <= job.cells_per_well))
            for (src,), g in chosen.group_by("_src"):
                kept_by_source[job.sources[int(src)][0]] = np.sort(g["_row"].to_numpy())
        for rel, _keys in job.sources:
            kept_by_source.setdefault(rel, np.empty(0, dtype=np.int64))

    target = root / job.target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    rows: dict[tuple[str, int], int] = {k: 0 for k in job.keys}
    writer = None
    pending: list[pa.Table] = []
    pending_bytes = 0
    try:
        for rel, keys in job.sources:
            pf = pq.ParquetFile(root / rel)
            if not pf.schema_arrow.names or pf.metadata.num_rows == 0:
                continue
            if len(keys) == 1 and not Path(rel).name.startswith(_COMPACTED_PREFIX):
                # a staging file: one site, all of its rows current (no per-row filtering)
                out = pf.read()
                if job.keep == "sample":
                    out = out.take(kept_by_source[rel])
                rows[keys[0]] += out.num_rows
                if out.num_rows:
                    writer = _append(writer, tmp, out, pending)
                    pending_bytes += out.nbytes
                    if pending_bytes >= _ROW_GROUP_BYTES:
                        writer.write_table(pa.concat_tables(pending), row_group_size=1 << 30)
                        pending, pending_bytes = [], 0
                continue
            offset = 0
            for i in range(pf.num_row_groups):  # a compacted source is read one row group at a time
                frame = pl.from_arrow(pf.read_row_group(i)).with_row_index("_row", offset=offset)
                offset += frame.height
                frame = frame.filter(_key_filter(keys))
                if job.keep == "sample":
                    frame = frame.filter(pl.col("_row").is_in(kept_by_source[rel]))
                frame = frame.drop("_row")
                if frame.height == 0:
                    continue
                for well, site, n in frame.group_by(["well", "site"]).len().iter_rows():
                    rows[(str(well), int(site))] += int(n)
                out = frame.to_arrow()
                writer = _append(writer, tmp, out, pending)
                pending_bytes += out.nbytes
                if pending_bytes >= _ROW_GROUP_BYTES:
                    writer.write_table(pa.concat_tables(pending), row_group_size=1 << 30)
                    pending, pending_bytes = [], 0
        if writer is not None:
            if pending:
                writer.write_table(pa.concat_tables(pending), row_group_size=1 << 30)
            writer.close()
            writer = None
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, target)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return rows


def _compacted_arrays(path: Path, keys: Sequence[tuple[str, int]], column: str) -> Any:
    """:class:`~subcell_screen.profiles.SiteArrays` of a compacted file's rows of ``keys`` (each site's rows
    are contiguous there; a file written otherwise is regrouped)."""
    import pyarrow.parquet as pq

    from ..profiles import SiteArrays

    table = pq.read_table(path, columns=["plate", "well", "site", column])
    if table.num_rows == 0:
        return None
    col = table.column(column).combine_chunks()
    if col.null_count or not hasattr(col.type, "list_size"):
        raise ValueError(f"{path}: column {column!r} must be a fixed-width array without nulls")
    x = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
    k = pl.from_arrow(table.select(["plate", "well", "site"])).with_columns(pl.col("site").cast(pl.Int64))
    runs = (k.with_columns(((pl.col("well") != pl.col("well").shift()) | (pl.col("site") != pl.col("site").shift()))
                           .fill_null(True).cum_sum().alias("_run")).with_row_index("_row")
            .group_by("_run", maintain_order=True)
            .agg(pl.col("plate").first(), pl.col("well").first(), pl.col("site").first(),
                 pl.col("_row").first().alias("start"), pl.len().alias("n_cells")))
    runs = runs.filter(_key_filter(keys))
    if runs.select("plate", "well", "site").is_duplicated().any():  # a site in pieces: regroup it
        order = k.with_row_index("_row").filter(_key_filter(keys)).sort(["plate", "well", "site"], maintain_order=True)
        rows = order["_row"].to_numpy()
        sites = order.group_by(["plate", "well", "site"], maintain_order=True).len().rename({"len": "n_cells"})
        return SiteArrays(sites=sites.with_columns(pl.col("n_cells").cast(pl.Int64)), x=x[rows])
    start, n = runs["start"].to_numpy(), runs["n_cells"].to_numpy()
    if runs.height and (n.sum() != len(x)):
        x = np.concatenate([x[a:a + b] for a, b in zip(start, n)])
    return SiteArrays(sites=runs.select("plate", "well", "site", pl.col("n_cells").cast(pl.Int64)), x=x)


class CellStoreMixin:
    """Per-cell files, their manifest, compaction and site profiles (part of :class:`ScreenStore`)."""

    path: Path
    read_only: bool

    # -- paths ---------------------------------------------------------------------------------------------

    def cells_dir(self, feature_set: str, plate: str | None = None) -> Path:
        """Folder of a feature set's Parquet files (of one plate if given)."""
        from ._store import safe_name

        base = self.path / "cells" / safe_name(feature_set)
        return base / f"plate={safe_name(plate)}" if plate is not None else base

    def staging_file(self, feature_set: str, plate: str, well: str, site: int) -> Path:
        """Where one site's cells are written before its plate is compacted."""
        from ._store import safe_name

        return self.cells_dir(feature_set, plate) / f"{safe_name(well)}_s{int(site)}.parquet"

    def _rel(self, path: Path) -> str:
        return Path(os.path.relpath(path, self.path)).as_posix()

    # -- manifest ------------------------------------------------------------------------------------------

    def _manifest_rows(self, feature_set: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Replace the manifest rows of ``rows``' sites (one transaction)."""
        from ._store import utc_now

        if not rows:
            return
        df = pl.DataFrame([{**r, "feature_set": feature_set, "updated_at": utc_now()} for r in rows],
                          schema_overrides={"file": pl.String, "n_rows": pl.Int32, "site": pl.Int32})
        self.replace_rows("cell_files", df, keys=["feature_set", "plate", "well", "site"])

    def write_cell_features(self, feature_set: str, df: pl.DataFrame, *, plate: str, well: str,
                            site: int) -> Path:
        """Atomically write one site's per-cell rows and record the file as the site's (replacing any earlier
        rows of that site, staged or compacted).

        ``df`` holds key columns (``plate``, ``well``, ``site``, ``cell_id``) and feature columns, typically
        a fixed-width ``features`` array plus optional ``probabilities``. An empty frame is written too, so
        that "this site has no cells" is recorded.
        """
        from ._store import write_parquet_atomic

        path = write_parquet_atomic(df, self.staging_file(feature_set, plate, well, site))
        self._manifest_rows(feature_set, [{"plate": str(plate), "well": str(well), "site": int(site),
                                           "file": self._rel(path), "n_rows": df.height, "kept": "all",
                                           "compacted": False}])
        return path

    def adopt_cell_file(self, feature_set: str, source: str | Path, *, plate: str, well: str, site: int,
                        n_rows: int) -> Path:
        """Move a per-site file written elsewhere (a Ray worker's output) into the store as the site's rows.

        The bytes are moved (renamed on one filesystem, copied and renamed across filesystems), never
        parsed: the driver of a cluster run does not read cells.
        """
        source = Path(source)
        dest = self.staging_file(feature_set, plate, well, site)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            try:
                os.replace(source, tmp)
            except OSError:  # another filesystem
                shutil.copyfile(source, tmp)
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        self._manifest_rows(feature_set, [{"plate": str(plate), "well": str(well), "site": int(site),
                                           "file": self._rel(dest), "n_rows": int(n_rows), "kept": "all",
                                           "compacted": False}])
        return dest

    def write_site_cells(self, feature_set: str, keys: Sequence[tuple[str, str, int]],
                         frames: Sequence[pl.DataFrame | None], *, keep: str = "all") -> None:
        """Store per-site cell frames under a ``[embedding].keep_cells`` policy.

        ``frames[i]`` holds site ``keys[i]``'s cells (None or empty: no cells; nothing is written for it).
        With ``keep = "none"`` only the manifest rows are written; ``"sample"`` writes every cell now and
        keeps the sample when the plate is compacted (it needs all of a well's sites).
        """
        if keep not in KEEP_CELLS:
            raise ValueError(f"keep must be one of {KEEP_CELLS}, got {keep!r}")
        from ._store import write_parquet_atomic

        rows = []
        for (plate, well, site), frame in zip(keys, frames):
            row = {"plate": str(plate), "well": str(well), "site": int(site), "file": None, "n_rows": 0,
                   "kept": keep, "compacted": False}
            if frame is not None and frame.height and keep != "none":
                path = write_parquet_atomic(frame, self.staging_file(feature_set, plate, well, site))
                row.update(file=self._rel(path), n_rows=frame.height)
            rows.append(row)
        self._manifest_rows(feature_set, rows)  # one transaction for the batch, after its files

    def record_cells_not_kept(self, feature_set: str, sites: Sequence[tuple[str, str, int]], *,
                              kept: str = "none") -> None:
        """Record that these sites' cells are not stored (``keep_cells = "none"``, or no cells)."""
        self._manifest_rows(feature_set, [{"plate": str(p), "well": str(w), "site": int(s), "file": None,
                                           "n_rows": 0, "kept": kept, "compacted": False} for p, w, s in sites])

    def cell_file_table(self, feature_set: str, *, plate: str | None = None,
                        done_only: bool = True) -> pl.DataFrame:
        """The manifest: ``plate, well, site, file`` (relative), ``n_rows``, ``kept``, ``compacted``.

        ``done_only``: leave out sites whose featurization is recorded failed or pending (rows of a site
        written outside a run, without a stage record, are kept).
        """
        where, params = "m.feature_set = ?", [feature_set]
        if plate is not None:
            where += " AND m.plate = ?"
            params.append(plate)
        if done_only:  # a site whose featurization failed or is pending since (rows written outside a run count)
            where += (" AND NOT EXISTS (SELECT 1 FROM site_stages s WHERE s.plate = m.plate AND s.well = m.well AND "
                      "s.site = m.site AND s.stage = ? AND s.status <> 'ok')")
            params.append(f"embed:{feature_set}")
        return self.sql(f"SELECT m.plate, m.well, m.site, m.file, m.n_rows, m.kept, m.compacted FROM cell_files m "
                        f"WHERE {where} ORDER BY m.plate, m.well, m.site", params)

    def cell_feature_file(self, feature_set: str, plate: str, well: str, site: int) -> Path:
        """The Parquet file holding one site's per-cell rows (its staging file when none is recorded)."""
        rows = self.sql("SELECT file FROM cell_files WHERE feature_set = ? AND plate = ? AND well = ? AND site = ?",
                        [feature_set, plate, well, int(site)])
        if rows.height and rows["file"][0] is not None:
            return self.path / rows["file"][0]
        return self.staging_file(feature_set, plate, well, site)

    def cell_feature_files(self, feature_set: str, *, plate: str | None = None) -> list[Path]:
        """Files holding the current per-cell rows of a feature set (all plates, or one), in plate order."""
        m = self.cell_file_table(feature_set, plate=plate).filter(pl.col("file").is_not_null())
        return [self.path / f for f in m["file"].unique(maintain_order=True).to_list()]

    def _sources(self, feature_set: str, plate: str | None) -> list[tuple[Path, list[tuple[str, int]], bool]]:
        m = self.cell_file_table(feature_set, plate=plate).filter(pl.col("file").is_not_null())
        out = []
        for (rel,), g in m.group_by("file", maintain_order=True):
            out.append((self.path / rel, list(zip(g["well"].to_list(), g["site"].to_list())),
                        bool(g["compacted"].any())))
        return out

    def scan_cell_features(self, feature_set: str, *, plate: str | None = None) -> pl.LazyFrame:
        """Lazy frame over a feature set's current per-cell rows (all plates, or one).

        Raises
        ------
        StoreError
            When no per-cell rows are stored (none featurized, or ``keep_cells = "none"``).
        """
        sources = self._sources(feature_set, plate)
        frames = []
        for path, keys, compacted in sources:
            if not pl.read_parquet_schema(path):
                continue
            lf = pl.scan_parquet(path, hive_partitioning=False)
            if compacted:  # a compacted file may still hold rows of sites featurized again since
                lf = lf.filter(_key_filter(keys))
            frames.append(lf)
        if not frames:
            if not sources and self.sql("SELECT 1 FROM cell_files WHERE feature_set = ? AND kept <> 'all' LIMIT 1",
                                        [feature_set]).height:
                raise StoreError(f"per-cell features of {feature_set!r} were not kept ([embedding].keep_cells); "
                                 "well profiles, scores and reports are complete, per-cell exports are not possible")
            if sources:  # only empty files: the schema of one of them
                return pl.scan_parquet(sources[0][0], hive_partitioning=False)
            raise StoreError(f"no per-cell data for feature set {feature_set!r}"
                             + (f" on plate {plate!r}" if plate else "") + f" under {self.cells_dir(feature_set)}")
        return frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical_relaxed")

    def read_cell_features(self, feature_set: str, *, plate: str | None = None,
                           columns: Sequence[str] | None = None) -> pl.DataFrame:
        """Per-cell rows of a feature set as a DataFrame."""
        lf = self.scan_cell_features(feature_set, plate=plate)
        if columns is not None:
            lf = lf.select(list(columns))
        return lf.collect()

    def cell_arrays(self, feature_set: str, *, plate: str | None = None, column: str = "features") -> Any:
        """The current per-cell ``column`` arrays as :class:`~subcell_screen.profiles.SiteArrays`, site by
        site (staging files through the store's fast reader, compacted files through pyarrow; rows of sites
        featurized again since a compaction are left out)."""
        from ..profiles import SiteArrays, read_site_arrays

        sources = self._sources(feature_set, plate)
        staged = [p for p, _k, c in sources if not c]
        parts = []
        if staged:
            parts.append(read_site_arrays(staged, column=column, progress=False))
        for path, keys, compacted in sources:
            if compacted:
                parts.append(_compacted_arrays(path, keys, column))
        parts = [a for a in parts if a is not None and a.sites.height]
        if not parts:
            return read_site_arrays([], column=column, progress=False)
        if len(parts) == 1:
            return parts[0]
        widths = {a.x.shape[1] for a in parts}
        if len(widths) > 1:
            raise ValueError(f"column {column!r} has different widths in the files of {feature_set!r}: {widths}")
        return SiteArrays(sites=pl.concat([a.sites for a in parts]),
                          x=np.concatenate([a.x for a in parts]) if len(parts) > 1 else parts[0].x)

    def damaged_cell_feature_files(self, feature_set: str, sites: Iterable[tuple[str, str, int]] | None = None, *,
                                   read_footers: bool = True) -> dict[tuple[str, str, int], str]:
        """Sites whose per-cell rows should be stored but whose file is missing or unreadable.

        Parameters
        ----------
        feature_set
            Feature set.
        sites
            Sites to check (default: every site whose featurization is recorded done).
        read_footers
            Also read each file's Parquet footer (False: only check that the files exist, a stat per file).

        Returns
        -------
        dict
            ``(plate, well, site)`` -> what is wrong, naming the file.
        """
        done = {(p, w, int(s)): n for p, w, s, n in self.sql(
            "SELECT plate, well, site, n_cells FROM site_stages WHERE stage = ? AND status = 'ok'",
            [f"embed:{feature_set}"]).rows()}
        manifest = {(p, w, int(s)): (f, kept) for p, w, s, f, kept in self.sql(
            "SELECT plate, well, site, file, kept FROM cell_files WHERE feature_set = ?", [feature_set]).rows()}
        checked: dict[str, str | None] = {}
        bad: dict[tuple[str, str, int], str] = {}
        for key in (done if sites is None else [tuple(k) for k in sites]):
            key = (str(key[0]), str(key[1]), int(key[2]))
            rel, kept = manifest.get(key, (None, None))
            if rel is None:
                if kept is None and done.get(key):  # cells recorded, no file recorded and none said not kept
                    bad[key] = f"{self.staging_file(feature_set, *key)} is missing"
                continue
            path = self.path / rel
            if rel not in checked:
                why = None
                if not path.is_file():
                    why = f"{path} is missing"
                elif read_footers:
                    try:
                        pl.read_parquet_schema(path)
                    except Exception as exc:  # noqa: BLE001 - any unreadable footer
                        why = f"{path} is unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
                checked[rel] = why
            if checked[rel] is not None:
                bad[key] = checked[rel]
        return bad

    # -- compaction ----------------------------------------------------------------------------------------

    def plates_to_compact(self, feature_set: str) -> list[str]:
        """Plates with staging files (or compacted files holding stale rows) of a feature set."""
        df = self.sql("SELECT DISTINCT plate FROM cell_files WHERE feature_set = ? AND file IS NOT NULL AND "
                      "NOT compacted ORDER BY plate", [feature_set])
        return df["plate"].to_list()

    def compaction_job(self, feature_set: str, plate: str, *, keep: str = "all",
                       cells_per_well: int = 200) -> CompactionJob | None:
        """What compacting ``plate`` reads and writes (None: nothing to compact)."""
        if keep not in ("all", "sample"):
            raise ValueError(f"keep must be 'all' or 'sample' to compact, got {keep!r}")
        m = self.cell_file_table(feature_set, plate=plate, done_only=False).filter(pl.col("file").is_not_null())
        if m.height == 0 or m["compacted"].all() and m["file"].n_unique() == 1:
            return None
        m = m.sort(["compacted", "well", "site"], descending=[True, False, False])
        sources = tuple((rel, tuple(zip(g["well"].to_list(), [int(s) for s in g["site"].to_list()])))
                        for (rel,), g in m.group_by("file", maintain_order=True))
        target = self._rel(self.cells_dir(feature_set, plate) / f"{_COMPACTED_PREFIX}{uuid.uuid4().hex[:12]}.parquet")
        return CompactionJob(root=str(self.path), feature_set=feature_set, plate=plate, sources=sources,
                             target=target, keep=keep, cells_per_well=int(cells_per_well))

    def commit_compaction(self, job: CompactionJob, rows: Mapping[tuple[str, int], int]) -> int:
        """Point the manifest at ``job``'s new file (for sites still held by the job's sources), then delete
        the files no manifest row names. Returns the files deleted."""
        from ._store import utc_now

        src_of = {k: rel for rel, keys in job.sources for k in keys}
        kept = "sample" if job.keep == "sample" else "all"
        upd = pl.DataFrame({"plate": [job.plate] * len(src_of), "well": [k[0] for k in src_of],
                            "site": [int(k[1]) for k in src_of], "old": list(src_of.values()),
                            "file": [job.target if rows.get(k, 0) else None for k in src_of],
                            "n_rows": [int(rows.get(k, 0)) for k in src_of]},
                           schema={"plate": pl.String, "well": pl.String, "site": pl.Int32, "old": pl.String,
                                   "file": pl.String, "n_rows": pl.Int32})
        with self._transaction():
            self.con.register("_compacted", upd.to_arrow())
            try:
                self.con.execute(
                    "UPDATE cell_files m SET file = u.file, n_rows = u.n_rows, compacted = TRUE, kept = ?, "
                    "updated_at = ? FROM _compacted u WHERE m.feature_set = ? AND m.plate = u.plate AND "
                    "m.well = u.well AND m.site = u.site AND m.file = u.old", [kept, utc_now(), job.feature_set])
            finally:
                self.con.unregister("_compacted")
        return self._sweep_plate(job.feature_set, job.plate)

    def _sweep_plate(self, feature_set: str, plate: str) -> int:
        """Delete a plate's Parquet files that no manifest row names (superseded or orphaned)."""
        folder = self.cells_dir(feature_set, plate)
        if not folder.is_dir():
            return 0
        named = set(self.sql("SELECT DISTINCT file FROM cell_files WHERE feature_set = ? AND plate = ? AND "
                             "file IS NOT NULL", [feature_set, plate])["file"].to_list())
        n = 0
        for path in folder.glob("*.parquet"):
            if self._rel(path) not in named:
                path.unlink(missing_ok=True)
                n += 1
        return n

    def compact_cells(self, feature_set: str, *, plates: Sequence[str] | None = None, keep: str = "all",
                      cells_per_well: int = 200) -> dict[str, int]:
        """Compact the per-site files of ``plates`` (default: every plate with staging files) in this process.

        Returns
        -------
        dict
            plate -> files removed.
        """
        self._require_writable()
        out = {}
        for plate in (self.plates_to_compact(feature_set) if plates is None else plates):
            job = self.compaction_job(feature_set, plate, keep=keep, cells_per_well=cells_per_well)
            if job is None:
                continue
            out[plate] = self.commit_compaction(job, compact_cell_files(job))
            logger.debug("compacted %s plate %s: %d file(s) -> 1", feature_set, plate, out[plate])
        return out

    # -- site profiles -------------------------------------------------------------------------------------

    def write_site_profiles(self, feature_set: str, profiles: pl.DataFrame, *,
                            sites: Sequence[tuple[str, str, int]]) -> int:
        """Replace the site profiles of ``sites`` with ``profiles`` (sites without a row end with none).

        ``profiles``: ``plate, well, site, n_cells, median, mean`` (float64 lists or arrays of one width) and
        optionally ``probabilities``.
        """
        keys = pl.DataFrame({"feature_set": [feature_set] * len(sites), "plate": [str(k[0]) for k in sites],
                             "well": [str(k[1]) for k in sites], "site": [int(k[2]) for k in sites]},
                            schema={"feature_set": pl.String, **_KEY_SCHEMA}).unique()
        typed = self._typed("site_profiles", profiles.with_columns(pl.lit(feature_set).alias("feature_set")))
        with self._transaction():
            self._delete_keys("site_profiles", keys, ["feature_set", "plate", "well", "site"])
            self._insert("site_profiles", typed)
        return typed.height

    def read_site_profiles(self, feature_set: str, *, plate: str | None = None, method: str = "median",
                           probabilities: bool = False) -> pl.DataFrame:
        """Site profiles (of sites not recorded failed or pending since): ``plate, well, site, n_cells`` and
        ``features`` (the ``method`` over each site's cells, float64 list); with ``probabilities``, the mean
        class probabilities instead."""
        col = "probabilities" if probabilities else {"median": "median", "mean": "mean"}[method]
        where, params = "p.feature_set = ?", [feature_set]
        if plate is not None:
            where += " AND p.plate = ?"
            params.append(plate)
        params.append(f"embed:{feature_set}")
        return self.sql(
            f"SELECT p.plate, p.well, p.site, p.n_cells, p.{col} AS features FROM site_profiles p WHERE {where} "
            "AND NOT EXISTS (SELECT 1 FROM site_stages s WHERE s.plate = p.plate AND s.well = p.well AND "
            "s.site = p.site AND s.stage = ? AND s.status <> 'ok') ORDER BY p.plate, p.well, p.site", params)

    def sites_without_profiles(self, feature_set: str) -> list[tuple[str, str, int]]:
        """Featurized sites with cells but no site profile (written by an older version, or by
        :func:`~subcell_screen.embed.write_embeddings` outside a run)."""
        stage = f"embed:{feature_set}"
        rows = self.sql(
            "SELECT k.plate, k.well, k.site FROM ("
            " SELECT plate, well, site FROM site_stages WHERE stage = ? AND status = 'ok' AND coalesce(n_cells, 1) > 0"
            " UNION SELECT plate, well, site FROM cell_files m WHERE feature_set = ? AND file IS NOT NULL AND "
            " n_rows > 0 AND NOT EXISTS (SELECT 1 FROM site_stages s WHERE s.plate = m.plate AND s.well = m.well "
            " AND s.site = m.site AND s.stage = ?)) k "
            "WHERE NOT EXISTS (SELECT 1 FROM site_profiles p WHERE p.feature_set = ? AND p.plate = k.plate AND "
            "p.well = k.well AND p.site = k.site) ORDER BY ALL", [stage, feature_set, stage, feature_set])
        return [(p, w, int(s)) for p, w, s in rows.rows()]

    # -- storage accounting --------------------------------------------------------------------------------

    def cell_storage(self, feature_set: str | None = None) -> pl.DataFrame:
        """Files and bytes of the per-cell store per feature set and plate (what ``du`` would say)."""
        rows = []
        base = self.path / "cells"
        for fs_dir in sorted(base.glob("*")) if base.is_dir() else []:
            if feature_set is not None and fs_dir.name != feature_set:
                continue
            for plate_dir in sorted(fs_dir.glob("plate=*")):
                files = list(plate_dir.glob("*.parquet"))
                rows.append({"feature_set": fs_dir.name, "plate": plate_dir.name[len("plate="):],
                             "files": len(files), "bytes": sum(f.stat().st_size for f in files)})
        return pl.DataFrame(rows, schema={"feature_set": pl.String, "plate": pl.String, "files": pl.Int64,
                                          "bytes": pl.Int64})
