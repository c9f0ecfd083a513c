"""Aggregation of per-cell features into site/well profiles, consensus profiles, and layout conversions.

Two layouts are supported and converted into each other:

* the **array layout** of the screen store: one row per cell (or site, well) with key columns and a
  fixed-width ``features`` column (``pl.Array(pl.Float32, D)``), feature names kept in the store's
  ``feature_sets`` table;
* pycytominer's **wide layout**: ``Metadata_*`` columns plus one numeric column per feature.

Group medians run in a compiled sorting-network kernel (:mod:`._median`, numba) vectorised across features;
means, groups with missing values and huge groups (or everything, without numba) run on numpy blocks of
equally sized groups (one vectorised reduction per distinct group size, never one Python call per group).
Results are float64 and equal pandas' (and thus pycytominer's) ``groupby().median()`` / ``.mean()`` after
its cast to float; missing values are skipped as pandas does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import polars as pl

from . import _median
from .frames import THREADS as _THREADS
from .frames import (
    as_frame,
    as_list,
    check_frame,
    columns_of,
    feature_frame,
    format_names,
    infer_features,
    is_pandas,
    pick_columns,
    polars_view,
    require_columns,
)

__all__ = ["aggregate", "aggregate_array", "consensus", "to_wide", "from_wide", "well_profiles_from_store",
           "site_profiles", "AGGREGATE_METHODS"]

logger = logging.getLogger(__name__)

AGGREGATE_METHODS = ("median", "mean")

#: Working memory of one block of the grouped reduction (bytes); blocks run on up to ``_THREADS`` threads.
_CHUNK_BYTES = 64 << 20


# -- grouped reduction core -------------------------------------------------------------------------------


def _sorted_groups(keys: pl.DataFrame, by: list[str]) -> tuple[np.ndarray, pl.DataFrame]:
    """Group codes in sorted key order (nulls last, like pandas' groupby) and the key table."""
    uniq = keys.unique().sort(by, nulls_last=True)
    coded = keys.join(uniq.with_row_index("__gid"), on=by, how="left", nulls_equal=True, maintain_order="left")
    return coded["__gid"].to_numpy().astype(np.int64), uniq


def _median_sorted(block: np.ndarray) -> np.ndarray:
    """Median over the last axis of a block without missing values (float64 result)."""
    k = block.shape[-1]
    if k == 1:
        return block[..., 0].astype(np.float64)
    s = np.sort(block, axis=-1)
    lo = s[..., (k - 1) // 2].astype(np.float64)
    if k % 2:
        return lo
    return (lo + s[..., k // 2].astype(np.float64)) / 2


def reduce_groups(x: np.ndarray | Sequence[np.ndarray] | _median.Rows, codes: np.ndarray, n_groups: int,
                  method: str) -> np.ndarray:
    """Per-group median or mean of the rows of ``x``.

    Parameters
    ----------
    x : numpy.ndarray or sequence of numpy.ndarray
        ``(n, d)`` float32 or float64 (or row blocks ``(n_i, d)`` taken as their concatenation); NaN marks
        missing values (skipped).
    codes : numpy.ndarray
        ``(n,)`` group index of every row, ``0 <= code < n_groups``.
    n_groups : int
    method : {"median", "mean"}

    Returns
    -------
    numpy.ndarray
        ``(n_groups, d)`` float64; NaN where a group has no value of a feature (or no rows).
    """
    if method not in AGGREGATE_METHODS:
        raise ValueError(f"method must be one of {AGGREGATE_METHODS}, got {method!r}")
    rows = x if isinstance(x, _median.Rows) else _median.Rows.of(x)
    n, d = rows.shape
    if n == 0:
        return np.full((n_groups, d), np.nan)
    if codes.shape != (n,):
        raise ValueError(f"codes must have one entry per row ({n}), got shape {codes.shape}")
    if codes.min() < 0 or codes.max() >= n_groups:
        raise ValueError(f"codes must lie in 0..{n_groups - 1}, got {codes.min()}..{codes.max()}")
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    todo = counts > 0
    out = np.full((n_groups, d), np.nan)
    if method == "median" and _median.available() and rows.dtype in (np.float32, np.float64):
        # compiled sorting networks for all but huge groups; groups with NaN come back for numpy
        net = np.flatnonzero(todo & (counts <= _median.MAX_NETWORK_SIZE))
        if net.size:
            med, nan_groups = _median.grouped_median_network(rows, order, starts, counts, net, threads=_THREADS)
            if net.size == n_groups and not nan_groups.any():
                return med  # every group done (the usual case)
            out[net[~nan_groups]] = med[~nan_groups]
            todo[net[~nan_groups]] = False
    if not todo.any():
        return out
    x = rows.stack()
    jobs = []
    for k in np.unique(counts[todo]):
        gs = np.flatnonzero(todo & (counts == k))
        per = max(1, _CHUNK_BYTES // int(k * d * 8))
        jobs += [(int(k), gs[c0:c0 + per]) for c0 in range(0, gs.size, per)]

    def run(job: tuple[int, np.ndarray], nan_ok: bool = False) -> bool:
        """Reduce one block; without ``nan_ok`` a block with missing values is left for the serial pass."""
        k, ch = job
        block = x[order[(starts[ch][:, None] + np.arange(k)).ravel()]].reshape(ch.size, k, d)
        if np.isnan(block).any():
            if not nan_ok:
                return False
            with _quiet():
                out[ch] = (np.nanmean(block, axis=1, dtype=np.float64) if method == "mean"
                           else np.nanmedian(block.astype(np.float64), axis=1))
        elif method == "mean":
            out[ch] = block.mean(axis=1, dtype=np.float64)
        else:
            out[ch] = _median_sorted(np.ascontiguousarray(block.transpose(0, 2, 1)))
        return True

    # numpy releases the GIL in copies and sorts: blocks (disjoint output rows) run on a few threads; blocks
    # with missing values run afterwards in this thread (numpy's all-NaN warnings are silenced, not threadsafe)
    workers = min(len(jobs), _THREADS)
    if not jobs:
        return out
    if workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers) as pool:
            done = list(pool.map(run, jobs))
    else:
        done = [run(job) for job in jobs]
    for job, ok in zip(jobs, done):
        if not ok:
            run(job, nan_ok=True)
    return out


class _quiet:
    """Silence numpy's 'all-NaN slice' warnings (the NaN result is reported by the caller)."""

    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


def _warn_missing(result: np.ndarray, names: Sequence[str], what: str) -> None:
    bad = np.isnan(result)
    if bad.any():
        cols = np.flatnonzero(bad.any(axis=0))
        logger.warning("%s: %d group(s) have no value for %d feature(s) (%s); those aggregates are missing",
                       what, int(bad.any(axis=1).sum()), cols.size, format_names([names[j] for j in cols]))


# -- wide layout ------------------------------------------------------------------------------------------


def aggregate(
    cells: Any,
    *,
    by: str | Sequence[str] = ("Metadata_Plate", "Metadata_Well"),
    method: Literal["median", "mean"] = "median",
    features: Sequence[str] | Literal["infer"] = "infer",
    image_features: bool = False,
    compute_object_count: bool = False,
    object_feature: str = "Metadata_ObjectNumber",
    keep_metadata: bool = False,
) -> Any:
    """Aggregate wide per-cell (or per-site) profiles by ``by`` (pycytominer ``aggregate``).

    Parameters
    ----------
    cells : polars.DataFrame, pandas.DataFrame or path
        Wide rows: ``Metadata_*`` columns plus features (a CSV/TSV/Parquet path is read with
        :func:`~subcell_screen.profiles.frames.load_profiles`).
    by : str or list of str
        Grouping columns (pycytominer ``strata``); rows with null keys form their own group.
    method : {"median", "mean"}
        pycytominer ``operation``; missing values are skipped.
    features : list of str or "infer"
        ``"infer"`` (pycytominer's rule): CellProfiler compartment columns (``Cells*``, ``Cytoplasm*``,
        ``Nuclei*``) and SubCell embedding columns (``feat0000``, ``<pass>_feat0000``); see
        :func:`~subcell_screen.profiles.frames.infer_features`. Numbers stored as text are parsed.
    image_features : bool
        Also aggregate numeric ``Image_*`` columns (with ``features="infer"``).
    compute_object_count : bool
        Add ``Metadata_Object_Count``: non-missing values of ``object_feature`` per group (pycytominer). A
        group whose ``by`` key is null gets its count (pycytominer leaves it missing, an artefact of its
        ``groupby`` dropping null keys for the count only).
    object_feature : str
        Column counted by ``compute_object_count``; it must exist.
    keep_metadata : bool
        Also keep the other ``Metadata_*`` columns that are constant within every group (pycytominer keeps
        only ``by``).

    Returns
    -------
    polars.DataFrame or pandas.DataFrame
        One row per group sorted by ``by``: the ``by`` columns, ``Metadata_Object_Count`` (if asked), kept
        metadata, then the features as Float64 (same type as ``cells``; polars for a path). ``ImageNumber``/
        ``ObjectNumber`` feature columns are dropped, as pycytominer does.

    Raises
    ------
    ValueError
        No feature found; a grouping column or ``object_feature`` (with ``compute_object_count``) missing; a
        feature column holding text that is not a number.
    """
    cells = as_frame(cells, name="cells")
    by = as_list(by)
    if not by:
        raise ValueError("aggregate needs at least one grouping column in by")
    require_columns(cells, by, name="cells")
    if compute_object_count:
        require_columns(cells, [object_feature], name="cells (object_feature, for compute_object_count)")
    feats = [f for f in infer_features(cells, features, image_features=image_features) if f not in by]
    keys = polars_view(cells, by)
    codes, uniq = _sorted_groups(keys, by)
    schema = None if is_pandas(cells) else cells.schema  # polars builds the schema on every access
    if schema is not None and feats and all(schema[f] == pl.Float32 for f in feats):
        # float32 features stay float32 (half the memory; the kernel sorts 8 lanes per vector instead of 4);
        # medians and means are still computed in float64, so the numbers are the same
        x = pick_columns(cells, feats).to_numpy()
    else:
        x = feature_frame(cells, feats).to_numpy().astype(np.float64, copy=False)
    agg = reduce_groups(x, codes, uniq.height, method)
    _warn_missing(agg, feats, f"aggregate({method})")
    parts = [uniq]
    if compute_object_count:
        obj = polars_view(cells, [object_feature])[object_feature]
        valid = obj.is_not_null().to_numpy()
        if obj.dtype.is_float():
            valid &= ~obj.is_nan().fill_null(True).to_numpy()
        cnt = np.bincount(codes[valid], minlength=uniq.height)
        parts.append(pl.DataFrame({"Metadata_Object_Count": cnt.astype(np.int64)}))
    if keep_metadata:
        parts.append(_constant_metadata(cells, by, codes, uniq.height))
    keep = [f for f in feats if f not in ("ImageNumber", "ObjectNumber")]
    idx = [feats.index(f) for f in keep]
    parts.append(_wide_from_numpy(agg[:, idx], keep))
    out = pl.concat(parts, how="horizontal")
    return out.to_pandas() if is_pandas(cells) else out


def _constant_metadata(frame: Any, by: list[str], codes: np.ndarray, n_groups: int) -> pl.DataFrame:
    cand = [c for c in columns_of(frame) if c.startswith("Metadata_") and c not in by]
    if not cand:
        return pl.DataFrame()
    view = polars_view(frame, cand).with_columns(pl.Series("__gid", codes))
    agg = view.group_by("__gid").agg(
        [pl.col(c).first().alias(c) for c in cand] + [pl.col(c).n_unique().alias(f"{c}__n") for c in cand]
    ).sort("__gid")
    const = [c for c in cand if (agg[f"{c}__n"] <= 1).all()]
    dropped = [c for c in cand if c not in const]
    if dropped:
        logger.info("aggregate: metadata not constant within groups, not kept: %s", format_names(dropped))
    if agg.height != n_groups:
        raise AssertionError("group count mismatch")
    return agg.select(const)


def _wide_from_numpy(arr: np.ndarray, names: Sequence[str]) -> pl.DataFrame:
    df = pl.DataFrame([pl.Series(n, arr[:, j]) for j, n in enumerate(names)]) if arr.shape[1] else pl.DataFrame()
    if arr.size and np.isnan(arr).any():
        df = df.with_columns(pl.all().fill_nan(None))
    return df


def consensus(
    profiles: Any,
    *,
    by: str | Sequence[str] = ("Metadata_Plate", "Metadata_Well"),
    method: Literal["median", "mean", "modz"] = "median",
    features: Sequence[str] | Literal["infer"] = "infer",
    image_features: bool = False,
    modz_method: Literal["spearman", "pearson"] = "spearman",
    min_weight: float = 0.01,
    precision: int = 4,
    keep_metadata: bool = False,
) -> Any:
    """Consensus profile of replicate rows (pycytominer ``consensus``; ``by`` = ``replicate_columns``).

    ``profiles``, ``features`` and ``image_features`` as in :func:`aggregate`. ``median``/``mean`` are
    :func:`aggregate`. ``modz`` (cmapPy / pycytominer): Spearman correlation between
    the replicates of a group over the features, diagonal dropped, negative correlations set to 0; weight of
    a replicate = its mean correlation, at least ``min_weight``; weights normalised to sum 1 and rounded to
    ``precision`` digits; consensus = weighted sum of the replicates (missing values count as 0, as
    pycytominer's pandas sum does).

    Returns
    -------
    polars.DataFrame or pandas.DataFrame
        One row per group sorted by ``by``: ``by`` columns (kept metadata if asked) then features.
    """
    if method in AGGREGATE_METHODS:
        return aggregate(profiles, by=by, method=method, features=features, image_features=image_features,
                         keep_metadata=keep_metadata)
    if method != "modz":
        raise ValueError(f"method must be 'median', 'mean' or 'modz', got {method!r}")
    if modz_method not in ("spearman", "pearson"):
        raise ValueError(f"modz_method must be 'spearman' or 'pearson', got {modz_method!r}")
    profiles = as_frame(profiles)
    by = as_list(by)
    require_columns(profiles, by, name="profiles (replicate columns)")
    feats = [f for f in infer_features(profiles, features, image_features=image_features) if f not in by]
    codes, uniq = _sorted_groups(polars_view(profiles, by), by)
    x = feature_frame(profiles, feats).to_numpy().astype(np.float64, copy=False)
    out = np.empty((uniq.height, len(feats)))
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(uniq.height + 1))
    for g in range(uniq.height):
        out[g] = _modz(x[order[bounds[g]:bounds[g + 1]]], modz_method, min_weight, precision)
    parts = [uniq]
    if keep_metadata:
        parts.append(_constant_metadata(profiles, by, codes, uniq.height))
    parts.append(_wide_from_numpy(out, feats))
    res = pl.concat(parts, how="horizontal")
    return res.to_pandas() if is_pandas(profiles) else res


def _modz(block: np.ndarray, method: str, min_weight: float, precision: int) -> np.ndarray:
    """MODZ of ``block`` ``(k replicates, d features)``."""
    k = block.shape[0]
    if k == 1:
        return np.nan_to_num(block[0], nan=0.0)
    if np.isnan(block).any():
        import pandas as pd

        # a copy: under copy-on-write (pandas 3, or once pycytominer is imported) the array is read-only
        cor = np.array(pd.DataFrame(block.T).corr(method=method).to_numpy(), dtype=np.float64)
    else:
        if method == "spearman":
            from scipy.stats import rankdata

            vals = rankdata(block, method="average", axis=1)
        else:
            vals = block
        with np.errstate(invalid="ignore", divide="ignore"):
            cor = np.corrcoef(vals)
        cor = np.atleast_2d(cor)
    np.fill_diagonal(cor, np.nan)
    cor = np.where(np.isnan(cor), np.nan, np.maximum(cor, 0.0))
    with _quiet():
        raw = np.nanmean(cor, axis=1)
    raw = np.where(np.isnan(raw), np.nan, np.maximum(raw, min_weight))
    total = np.nansum(raw)
    weights = np.full(k, 1.0 / k) if total == 0 else raw / total
    weights = np.round(weights, precision)
    return np.nansum(block * weights[:, None], axis=0)


# -- array layout -----------------------------------------------------------------------------------------


def _array_rows(df: pl.DataFrame, column: str) -> _median.Rows | np.ndarray:
    """The rows of a fixed-width float array column, read in place.

    A frame read from many files has one chunk per file: concatenating them costs a pass over memory and
    ``Series.to_numpy`` rechunks through a slow generic path, so the chunks' Arrow buffers are used as row
    blocks (``_median.Rows``). Columns with missing inner values (which must read as NaN) or non-float
    elements come back as one numpy array.
    """
    s = df.get_column(column)
    if not isinstance(s.dtype, pl.Array):
        raise ValueError(f"column {column!r} must be a fixed-width pl.Array of floats, got {s.dtype}")
    if s.null_count():
        raise ValueError(f"column {column!r} has {s.null_count()} null rows; every row needs a feature vector")
    width = s.dtype.size
    if df.height == 0:
        return np.zeros((0, width), dtype=np.float32)
    if s.dtype.inner in (pl.Float32, pl.Float64) and width:
        dtype = np.dtype(np.float32 if s.dtype.inner == pl.Float32 else np.float64)
        try:
            import pyarrow as pa

            chunks = pa.chunked_array(s).chunks  # zero-copy through the Arrow C stream interface
        except (TypeError, ValueError, AttributeError, ImportError):
            chunks = None
        if chunks is not None:
            bases, lengths = [], []
            for c in chunks:
                values = c.values  # the child array, without the list array's own offset
                if values.null_count:
                    bases = None
                    break
                if len(c):
                    bases.append(values.buffers()[1].address + (values.offset + c.offset * width) * dtype.itemsize)
                    lengths.append(len(c))
            if bases:
                return _median.Rows(bases=np.asarray(bases, dtype=np.int64), lengths=np.asarray(lengths, np.int64),
                                    width=width, dtype=dtype, owner=chunks)
    x = s.to_numpy()
    return x if x.ndim == 2 else np.stack(x)


def aggregate_array(
    frame: pl.DataFrame | pl.LazyFrame,
    *,
    by: str | Sequence[str] = ("plate", "well"),
    method: Literal["median", "mean"] = "median",
    column: str = "features",
    count_column: str | None = "n_cells",
    sum_columns: Sequence[str] = (),
    dtype: pl.DataType = pl.Float64,
) -> pl.DataFrame:
    """Median or mean of a fixed-width feature-array column per group, without widening to columns.

    Parameters
    ----------
    frame : polars.DataFrame or polars.LazyFrame
        Rows with the ``by`` key columns and ``column`` (``pl.Array(pl.Float32 | pl.Float64, D)``), e.g.
        ``ScreenStore.scan_cell_features(...)``. Only the needed columns are read.
    by : str or list of str
        Grouping keys (e.g. ``["plate", "well", "site"]``).
    method : {"median", "mean"}
    column : str
        The feature-array column.
    count_column : str or None
        Name of the output column counting rows per group (``None``: no count).
    sum_columns : sequence of str
        Numeric columns summed per group (e.g. ``n_cells`` when aggregating sites into wells).
    dtype : polars float type
        Element type of the output array (Float64 keeps pycytominer-exact values).

    Returns
    -------
    polars.DataFrame
        One row per group sorted by ``by``: keys, ``count_column``, ``sum_columns``, ``column`` as
        ``pl.Array(dtype, D)``.
    """
    by = as_list(by)
    need = [*by, *sum_columns, column]
    lf = frame.lazy() if isinstance(frame, pl.DataFrame) else frame
    schema = lf.collect_schema()
    missing = [c for c in need if c not in schema.names()]
    if missing:
        raise ValueError(f"columns not in the frame: {format_names(missing)}")
    # a DataFrame's columns are taken as they are: select() on a frame of many chunks costs more than this
    df = frame if isinstance(frame, pl.DataFrame) else lf.select(need).collect()
    x = _array_rows(df, column)
    codes, uniq = _sorted_groups(pick_columns(df, by).rechunk(), by)
    agg = reduce_groups(x, codes, uniq.height, method)
    _warn_missing(agg, [f"{column}[{j}]" for j in range(agg.shape[1])], f"aggregate_array({method})")
    out = uniq
    if count_column:
        out = out.with_columns(pl.Series(count_column, np.bincount(codes, minlength=uniq.height).astype(np.int64)))
    if sum_columns:
        sums = df.select(sum_columns).with_columns(pl.Series("__gid", codes)).group_by("__gid").agg(
            pl.all().sum()).sort("__gid").drop("__gid")
        out = pl.concat([out, sums], how="horizontal")
    return out.with_columns(pl.Series(column, agg, dtype=pl.Array(pl.Float64, agg.shape[1])).cast(
        pl.Array(dtype, agg.shape[1])))


def to_wide(frame: pl.DataFrame, feature_names: Sequence[str], *, column: str = "features") -> pl.DataFrame:
    """Expand a fixed-width array column into one column per feature (pycytominer's wide layout).

    Parameters
    ----------
    frame : polars.DataFrame
        Rows with ``column`` of type ``pl.Array(float, D)``.
    feature_names : sequence of str
        ``D`` names, in array order.
    column : str

    Returns
    -------
    polars.DataFrame
        ``frame`` with ``column`` replaced (in place) by ``D`` float columns.
    """
    names = list(feature_names)
    dt = frame.schema.get(column)
    if not isinstance(dt, pl.Array):
        raise ValueError(f"column {column!r} must be a pl.Array column, got {dt}")
    if dt.size != len(names):
        raise ValueError(f"column {column!r} holds {dt.size} values per row but {len(names)} names were given")
    clash = [n for n in names if n in frame.columns and n != column]
    if clash:
        raise ValueError(f"feature names clash with existing columns: {format_names(clash)}")
    return frame.with_columns(pl.col(column).arr.to_struct(fields=names)).unnest(column)


def from_wide(profiles: Any, *, features: Sequence[str] | Literal["infer"] = "infer", column: str = "features",
              dtype: pl.DataType = pl.Float32) -> pl.DataFrame:
    """Pack wide feature columns into one fixed-width array column (the store's layout).

    Parameters
    ----------
    profiles : polars.DataFrame or pandas.DataFrame
    features : list of str or "infer"
        Columns to pack, in this order (``"infer"``: see
        :func:`~subcell_screen.profiles.frames.infer_features`).
    column : str
        Name of the array column (appended last).
    dtype : polars float type

    Returns
    -------
    polars.DataFrame
        The other columns, then ``column`` as ``pl.Array(dtype, len(features))``. Missing values become NaN.
    """
    check_frame(profiles)
    feats = infer_features(profiles, features)
    if column in columns_of(profiles) and column not in feats:
        raise ValueError(f"column {column!r} already exists")
    rest = [c for c in columns_of(profiles) if c not in set(feats)]
    base = polars_view(profiles, rest) if rest else pl.DataFrame()
    x = feature_frame(profiles, feats).to_numpy().astype(np.float64, copy=False)
    arr = pl.Series(column, x, dtype=pl.Array(pl.Float64, len(feats))).cast(pl.Array(dtype, len(feats)))
    return base.with_columns(arr) if rest else pl.DataFrame(arr)


# -- store ------------------------------------------------------------------------------------------------


def site_profiles(arrays: Any, *, method: Literal["median", "mean"] = "median", column: str = "features",
                  dtype: pl.DataType = pl.Float64) -> pl.DataFrame:
    """Cells -> site aggregates of :func:`read_site_arrays` output (``aggregate_array`` by plate, well, site).

    Parameters
    ----------
    arrays : SiteArrays
        Per-cell arrays, site by site.
    method : {"median", "mean"}
    column : str
        Name of the output array column.
    dtype : polars float type

    Returns
    -------
    polars.DataFrame
        One row per (plate, well, site) sorted by them: keys, ``n_cells``, ``column`` as ``pl.Array(dtype, D)``
        (equal to ``aggregate_array(cells, by=["plate", "well", "site"], method=method)``).
    """
    by = ["plate", "well", "site"]
    codes, uniq = _sorted_groups(arrays.sites.select(by), by)  # sites with equal keys (never in the store) merge
    rows = codes[arrays.site_codes()]
    agg = reduce_groups(arrays.x, rows, uniq.height, method)
    _warn_missing(agg, [f"{column}[{j}]" for j in range(agg.shape[1])], f"site_profiles({method})")
    return uniq.with_columns(
        pl.Series("n_cells", np.bincount(rows, minlength=uniq.height).astype(np.int64)),
        pl.Series(column, agg, dtype=pl.Array(pl.Float64, agg.shape[1])).cast(pl.Array(dtype, agg.shape[1])))



def well_profiles_from_store(
    store: Any,
    *,
    feature_set: str,
    cell_to_site: Literal["median", "mean"] = "median",
    site_to_well: Literal["median", "mean"] = "mean",
    plates: Sequence[str] | None = None,
    column: str = "features",
    metadata: bool = True,
    progress: bool | None = None,
) -> pl.DataFrame:
    """Wide well profiles from a screen store: site profiles -> wells, plus layout.

    Cells were reduced to site profiles where they were featurized (:func:`site_profile`), so no cell is
    read here; sites whose profile is missing (featurized by an older version, or written outside a run)
    get one from their stored cells first. The result equals ``cells -> sites -> wells`` computed from all
    cells, whatever the per-cell storage policy.

    Parameters
    ----------
    store : ScreenStore
        An open store with featurized sites of ``feature_set``.
    feature_set : str
        Registered feature set; its ``feature_names`` name the output columns.
    cell_to_site, site_to_well : {"median", "mean"}
        Aggregation at each level (site profiles are weighted equally within a well).
    plates : list of str, optional
        Plates to read (default all plates with site profiles); one plate is in memory at a time.
    column : str
        Name of the intermediate array column.
    metadata : bool
        Join the layout (``store.wells(metadata=True)``) onto the profiles.
    progress : bool, optional
        Progress bar over plates: None (default) when stderr is a terminal, True always, False never.

    Returns
    -------
    polars.DataFrame
        One row per (plate, well) with cells: ``Metadata_Plate``, ``Metadata_Well``, layout ``Metadata_*``
        columns, ``Metadata_Site_Count``, ``Metadata_Object_Count`` (cells), then one Float64 column per
        feature.
    """
    from tqdm.auto import tqdm

    from ._site import site_profiles_frame

    if cell_to_site not in AGGREGATE_METHODS:
        raise ValueError(f"cell_to_site must be one of {AGGREGATE_METHODS}, got {cell_to_site!r}")
    names = store.feature_set(feature_set)["feature_names"]
    store.ensure_site_profiles(feature_set)
    missing = store.sites_without_profiles(feature_set)  # a read-only store: computed in memory below
    if plates is None:
        plates = store.sql("SELECT DISTINCT plate FROM site_profiles WHERE feature_set = ? UNION "
                           "SELECT DISTINCT plate FROM cell_files WHERE feature_set = ? ORDER BY 1",
                           [feature_set, feature_set])[:, 0].to_list()
    disable = None if progress is None else not progress  # tqdm: None = only on a terminal
    wells = []
    for plate in tqdm(list(plates), desc="well profiles", unit="plate", disable=disable):
        sp = store.read_site_profiles(feature_set, plate=plate, method=cell_to_site)
        if any(k[0] == plate for k in missing):
            extra = site_profiles_frame(store.cell_arrays(feature_set, plate=plate))
            have = sp.select("plate", "well", pl.col("site").cast(pl.Int64))
            extra = extra.join(have, on=["plate", "well", "site"], how="anti").select(
                "plate", "well", pl.col("site").cast(pl.Int32), pl.col("n_cells").cast(pl.Int32),
                pl.col(cell_to_site).alias("features"))
            sp = pl.concat([sp, extra], how="vertical_relaxed")
        if sp.height == 0:
            continue
        width = len(sp["features"][0])
        sites = sp.select("plate", "well", "site", pl.col("n_cells").cast(pl.Int64),
                          pl.col("features").list.to_array(width).alias(column))
        wells.append(aggregate_array(sites, by=["plate", "well"], method=site_to_well, column=column,
                                     count_column="n_sites", sum_columns=["n_cells"]))
    if not wells:
        raise ValueError(f"no cells of feature set {feature_set!r} on plates {list(plates)}")
    prof = pl.concat(wells).rename({"plate": "Metadata_Plate", "well": "Metadata_Well",
                                    "n_sites": "Metadata_Site_Count", "n_cells": "Metadata_Object_Count"})
    if prof.schema[column].size != len(names):
        raise ValueError(f"feature set {feature_set!r} registers {len(names)} names but the per-cell "
                         f"{column!r} arrays hold {prof.schema[column].size} values")
    if metadata:
        layout = store.wells(metadata=True)
        extra = [c for c in layout.columns if c not in ("Metadata_Plate", "Metadata_Well")]
        layout = layout.select(["Metadata_Plate", "Metadata_Well", *extra])
        prof = prof.join(layout, on=["Metadata_Plate", "Metadata_Well"], how="left", maintain_order="left")
        if layout.height:
            unmatched = prof.join(layout.select("Metadata_Plate", "Metadata_Well"),
                                  on=["Metadata_Plate", "Metadata_Well"], how="anti")
            if unmatched.height:
                logger.warning("well_profiles_from_store: %d well(s) with cells are not in the layout: %s",
                               unmatched.height, format_names([f"{p}/{w}" for p, w in
                                                         unmatched.select("Metadata_Plate", "Metadata_Well")
                                                         .iter_rows()]))
        else:
            logger.warning("well_profiles_from_store: the store has no layout (wells table); no metadata joined")
        meta = ["Metadata_Plate", "Metadata_Well", *extra, "Metadata_Site_Count", "Metadata_Object_Count"]
    else:
        meta = ["Metadata_Plate", "Metadata_Well", "Metadata_Site_Count", "Metadata_Object_Count"]
    return to_wide(prof.select([*meta, column]), names, column=column)
