"""Feature selection, pycytominer-exact (same features excluded on the same input).

Operations run in the order given; each one sees only the features that survived the previous ones, and the
excluded features are dropped at the end (pycytominer ``feature_select``). The operations and their rules, as
in pycytominer 1.7.1 (the installed reference):

=========================  ===================================================================================
operation                  excludes a feature when
=========================  ===================================================================================
``variance_threshold``     its population variance (ddof 0, missing values skipped) is ``<= min_variance``
                           (sklearn ``VarianceThreshold``; with ``min_variance = 0`` the variance is
                           ``min(var, max - min)``). **Changed in pycytominer 1.7**: up to 1.6 this name meant
                           the frequency/uniqueness test below
``frequency_threshold``    count(2nd most common value) / count(most common value) ``< freq_cut`` (0 when
                           fewer than two distinct values) **or** n_unique / n_rows ``< unique_cut``
                           (pycytominer <= 1.6 ``variance_threshold``; note *or*, unlike caret)
``correlation_threshold``  among all pairs with Pearson (or Spearman/Kendall) correlation ``> corr_threshold``
                           (signed, not absolute), the member with the larger total ``sum_j |corr|`` is dropped;
                           all flagged pairs are processed at once (not iteratively)
``drop_na_columns``        its fraction of missing values ``> na_cutoff``
``blocklist``              it is listed (pycytominer's packaged default blocklist, read from the installed
                           pycytominer, unless ``blocklist`` or ``blocklist_name`` say otherwise); any listed
                           column of the frame is dropped, feature or not, as pycytominer does
``drop_outliers``          ``max |x| > outlier_cutoff`` (intended after normalisation)
``noise_removal``          the mean over perturbation groups of the within-group sd (ddof 0) ``>``
                           ``noise_removal_stdev_cutoff``
=========================  ===================================================================================

The correlation step never builds pycytominer's ``d (d - 1) / 2``-row pair table. It standardises the
columns once, then screens pairs exactly: with ``Q`` an orthonormal basis of 128 of the columns, every pair's
correlation is at most ``b_i . b_j + |r_i| |r_j|`` (projections ``b = Q^T z``, residual norms ``r``), so only
pairs whose bound reaches the threshold can be flagged; the rows of the correlation matrix of their members are
computed exactly (float64), giving the flagged pairs and, for their members, the exact ``sum |corr|`` that
decides which one is dropped (``n d (128 + |F|)`` flops instead of ``n d^2 / 2``). When the screen is not
selective (over 40 % of the features are candidates) or two members of a flagged pair have equal sums, the full
matrix is formed instead (one BLAS syrk up to 8192 features; beyond that upper-triangular blocks of
``block_size`` columns so the ``d x d`` matrix is never held), as pycytominer ranks ties by its sort order.
Decisions equal those of the full float64 matrix; pairs whose correlation lies within float64 rounding
(~1e-12) of the threshold can differ between any two float64 implementations, pycytominer's included. Missing
values use pairwise-complete observations as pandas does; Kendall, infinite values and Spearman with missing
values fall back to pandas (pycytominer's own path). ``frequency_threshold`` sorts only the columns whose
values may repeat often enough to be excluded (a hash of the values bounds the largest count).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from .frames import (
    as_frame,
    as_list,
    columns_of,
    feature_frame,
    format_names,
    in_threads,
    infer_features,
    is_pandas,
    pick_columns,
    polars_view,
    row_mask,
)

__all__ = ["feature_select", "features_to_exclude", "default_blocklist", "read_blocklist", "calculate_frequency",
           "FEATURE_SELECT_OPERATIONS"]

logger = logging.getLogger(__name__)

FEATURE_SELECT_OPERATIONS = ("variance_threshold", "frequency_threshold", "correlation_threshold",
                             "drop_na_columns", "blocklist", "drop_outliers", "noise_removal")
CORRELATION_METHODS = ("pearson", "spearman", "kendall")

#: Up to this many features the correlation matrix is formed by one BLAS syrk (d x d float64, 512 MB at the
#: limit) and scanned in row blocks; above it, upper-triangular blocks of ``block_size`` columns.
_FULL_GRAM_MAX = 8192

#: Exact screen of the correlation step (:func:`_screened_corr`): rank of the basis, slack added to the bound
#: (its own float64 rounding is ~1e-12), and the fraction of candidate features above which the full matrix
#: is cheaper.
_SCREEN_RANK = 128
_SCREEN_MARGIN = 1e-6
_SCREEN_MAX_FRACTION = 0.4


def feature_select(
    profiles: Any,
    *,
    operation: str | Sequence[str] = "variance_threshold",
    features: Sequence[str] | Literal["infer"] = "infer",
    image_features: bool = False,
    samples: Any = None,
    na_cutoff: float = 0.05,
    corr_threshold: float = 0.9,
    corr_method: str = "pearson",
    freq_cut: float = 0.05,
    unique_cut: float = 0.01,
    min_variance: float = 1e-6,
    blocklist: str | Sequence[str] | None = None,
    blocklist_name: str | Sequence[str] | None = None,
    blocklist_file: str | os.PathLike | None = None,
    outlier_cutoff: float = 500.0,
    noise_removal_perturb_groups: str | Sequence[Any] | None = None,
    noise_removal_stdev_cutoff: float | None = None,
    block_size: int = 1024,
) -> Any:
    """Drop uninformative features (pycytominer ``feature_select`` semantics, see the module docstring).

    Parameters
    ----------
    profiles : polars.DataFrame, pandas.DataFrame or path
        Wide profiles (``Metadata_*`` columns plus features); a CSV/TSV/Parquet path is read with
        :func:`~subcell_screen.profiles.frames.load_profiles`.
    operation : str or list of str
        Operations from :data:`FEATURE_SELECT_OPERATIONS`, applied in order. Once earlier operations have
        excluded every feature, the later ones exclude nothing (the result keeps the other columns).
    features : list of str or "infer"
        Candidate features; ``"infer"`` as pycytominer (see
        :func:`~subcell_screen.profiles.frames.infer_features`).
    image_features : bool
        Also consider numeric ``Image_*`` columns (with ``features="infer"``).
    samples : polars.Expr, mapping, query string or boolean mask, optional
        Rows the statistics are computed on (pycytominer ``samples``, e.g.
        ``"Metadata_treatment != 'control'"``); ``None`` or ``"all"`` = all rows.
    na_cutoff, corr_threshold, corr_method, freq_cut, unique_cut, min_variance, outlier_cutoff
        As pycytominer.
    blocklist : str or list of str, optional
        Features to block (``operation`` must include ``blocklist``); default pycytominer's default list.
    blocklist_name : str or list of str, optional
        Named lists of pycytominer's packaged ``default_blocklists.yaml``.
    blocklist_file : str or path-like, optional
        A CSV file with a ``blocklist`` column of feature names (pycytominer ``blocklist_file``); used when
        ``blocklist`` is not given.
    noise_removal_perturb_groups : str or sequence
        Column name (or per-row labels of the ``samples`` rows) defining perturbation groups.
    noise_removal_stdev_cutoff : float
        Cut-off of ``noise_removal``.
    block_size : int
        Columns per block of the correlation computation (memory ``~ 8 * block_size**2`` bytes per block).

    Returns
    -------
    polars.DataFrame or pandas.DataFrame
        ``profiles`` without the excluded feature columns (other columns and row order unchanged; polars for
        a path).
    """
    profiles = as_frame(profiles)
    excluded = features_to_exclude(
        profiles, operation=operation, features=features, image_features=image_features, samples=samples,
        na_cutoff=na_cutoff, corr_threshold=corr_threshold, corr_method=corr_method, freq_cut=freq_cut,
        unique_cut=unique_cut, min_variance=min_variance, blocklist=blocklist, blocklist_name=blocklist_name,
        blocklist_file=blocklist_file, outlier_cutoff=outlier_cutoff,
        noise_removal_perturb_groups=noise_removal_perturb_groups,
        noise_removal_stdev_cutoff=noise_removal_stdev_cutoff, block_size=block_size)
    drop = {f for fs in excluded.values() for f in fs}
    logger.info("feature_select: %d column(s) excluded (%s)", len(drop),
                ", ".join(f"{op}: {len(fs)}" for op, fs in excluded.items()))
    if is_pandas(profiles):
        return profiles.drop(columns=[c for c in profiles.columns if c in drop])
    return profiles.drop([c for c in profiles.columns if c in drop])


def features_to_exclude(
    profiles: Any,
    *,
    operation: str | Sequence[str] = "variance_threshold",
    features: Sequence[str] | Literal["infer"] = "infer",
    image_features: bool = False,
    samples: Any = None,
    na_cutoff: float = 0.05,
    corr_threshold: float = 0.9,
    corr_method: str = "pearson",
    freq_cut: float = 0.05,
    unique_cut: float = 0.01,
    min_variance: float = 1e-6,
    blocklist: str | Sequence[str] | None = None,
    blocklist_name: str | Sequence[str] | None = None,
    blocklist_file: str | os.PathLike | None = None,
    outlier_cutoff: float = 500.0,
    noise_removal_perturb_groups: str | Sequence[Any] | None = None,
    noise_removal_stdev_cutoff: float | None = None,
    block_size: int = 1024,
) -> dict[str, list[str]]:
    """The columns each operation of :func:`feature_select` excludes, in operation order.

    Returns
    -------
    dict of str to list of str
        Operation -> excluded column names (in column order), for the operations that ran.
    """
    profiles = as_frame(profiles)
    ops = as_list(operation)
    unknown = [op for op in ops if op not in FEATURE_SELECT_OPERATIONS]
    if unknown:
        raise ValueError(f"unknown operation(s) {unknown}; choose from {FEATURE_SELECT_OPERATIONS}")
    if "noise_removal" in ops and (noise_removal_perturb_groups is None or noise_removal_stdev_cutoff is None):
        raise ValueError("noise_removal needs noise_removal_perturb_groups and noise_removal_stdev_cutoff")
    feats = infer_features(profiles, features, image_features=image_features)
    mask = row_mask(profiles, samples, name="samples")
    if mask.all():
        rows = profiles
    else:
        rows = profiles[mask] if is_pandas(profiles) else profiles.filter(pl.Series(mask))
    values = feature_frame(rows, feats)
    remaining = list(feats)
    out: dict[str, list[str]] = {}
    for op in ops:
        cur = pick_columns(values, remaining)
        if op != "blocklist" and not remaining:
            exc = []  # earlier operations excluded every feature (pycytominer returns the metadata)
        elif op == "variance_threshold":
            exc = _variance_threshold(cur, min_variance)
        elif op == "frequency_threshold":
            exc = _frequency_threshold(cur, freq_cut, unique_cut)
        elif op == "drop_na_columns":
            exc = _drop_na_columns(cur, na_cutoff)
        elif op == "correlation_threshold":
            exc = _correlation_threshold(cur, corr_threshold, corr_method, block_size)
        elif op == "blocklist":
            listed = set(_resolve_blocklist(blocklist, blocklist_name, blocklist_file))
            exc = [c for c in columns_of(profiles) if c in listed]
        elif op == "drop_outliers":
            exc = _drop_outliers(cur, outlier_cutoff)
        else:
            exc = _noise_removal(cur, rows, noise_removal_perturb_groups, noise_removal_stdev_cutoff)
        out[op] = out.get(op, []) + [c for c in exc if c not in out.get(op, [])]  # an operation may repeat
        gone = set(exc)
        remaining = [f for f in remaining if f not in gone]
    return out


# -- operations -------------------------------------------------------------------------------------------


def _check_finite(values: pl.DataFrame, op: str) -> None:
    inf = values.select(pl.all().is_infinite().any())
    bad = [c for c in inf.columns if inf[c][0]]
    if bad:
        raise ValueError(f"{op}: feature(s) contain infinite values: {format_names(bad)}")


def _variance_threshold(values: pl.DataFrame, min_variance: float) -> list[str]:
    if not isinstance(min_variance, (int, float)) or min_variance < 0:
        raise ValueError(f"min_variance must be a non-negative number, got {min_variance!r}")
    if values.width == 0:
        return []
    _check_finite(values, "variance_threshold")
    var = values.select(pl.all().var(ddof=0)).row(0)
    v = np.array([np.nan if x is None else x for x in var], dtype=np.float64)
    if min_variance == 0:  # sklearn uses min(var, peak-to-peak) against precision problems
        stats = values.select(pl.all().max() - pl.all().min(), pl.all().null_count().name.suffix("__n"))
        ptp = np.array([np.nan if stats[c][0] is None or stats[f"{c}__n"][0] else stats[c][0]
                        for c in values.columns], dtype=np.float64)
        v = np.where(np.isnan(ptp), v, np.fmin(v, ptp))
    keep = v > min_variance
    if not keep.any():
        raise ValueError(f"variance_threshold: no feature has variance > {min_variance} (all {values.width} "
                         "would be excluded)")
    return [c for c, k in zip(values.columns, keep) if not k]


def _frequency_threshold(values: pl.DataFrame, freq_cut: float, unique_cut: float) -> list[str]:
    if not 0 <= freq_cut <= 1:
        raise ValueError("freq_cut must be between 0 and 1")
    if not 0 <= unique_cut <= 1:
        raise ValueError("unique_cut must be between 0 and 1")
    n, d = values.height, values.width
    if d == 0 or n == 0:
        return list(values.columns) if n == 0 else []
    names = values.columns
    nulls = np.array(values.null_count().row(0), dtype=np.int64)
    nonnull = n - nulls
    n_unique = np.zeros(d, dtype=np.int64)
    ratio = np.ones(d)
    # A column can only be excluded if some value occurs more than ``most`` times: ratio < freq_cut needs
    # count(most common) > 1 / freq_cut, and n_unique / n < unique_cut needs it > 1 / unique_cut (columns
    # without missing values). Hashing the values into buckets bounds that count from above, so columns whose
    # fullest bucket holds at most ``most`` values are kept without sorting them.
    cuts = [1.0 / c for c in (freq_cut, unique_cut) if c > 0]
    most = math.floor(min(cuts) * (1 - 1e-12)) if cuts else n
    screen = n > most
    buckets = 1 << max(10, min(20, (2 * n).bit_length()))

    def sure_kept(x: np.ndarray) -> bool:
        bits = np.add(x, 0.0).view(np.uint64)  # -0.0 + 0.0 = +0.0: one bit pattern per value
        h = (bits * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - buckets.bit_length() + 1)
        return int(np.bincount(h.astype(np.intp), minlength=buckets).max()) <= most

    def work(cols: range) -> None:
        # distinct values and the two largest value counts from sorted columns (missing values sort last);
        # -0.0 == 0.0 as in pandas' value_counts
        todo = []
        for j in cols:
            if screen and nulls[j] == 0 and sure_kept(values.get_column(names[j]).to_numpy()):
                n_unique[j] = n  # not excluded; the exact count is not needed (n_unique / n >= unique_cut)
            else:
                todo.append(j)
        if not todo:
            return
        block = np.empty((n, len(todo)), order="F")
        for k, j in enumerate(todo):
            block[:, k] = values.get_column(names[j]).to_numpy()
        block.sort(axis=0)
        new = block[1:] != block[:-1]
        del block
        for k, j in enumerate(todo):
            m = int(nonnull[j])
            if m == 0:
                continue
            starts = np.flatnonzero(new[:m - 1, k]) + 1 if m > 1 else np.zeros(0, dtype=np.int64)
            n_unique[j] = starts.size + 1
            if n_unique[j] < 2:
                ratio[j] = 0.0
            elif n_unique[j] < m:  # some value repeats: count(2nd most common) / count(most common)
                runs = np.diff(np.concatenate([[0], starts, [m]]))
                top = np.partition(runs, runs.size - 2)[-2:]
                ratio[j] = top.min() / top.max()

    in_threads(work, d)
    ratio[nonnull == 0] = 0.0
    exclude = (ratio < freq_cut) | (n_unique / n < unique_cut)
    return [c for c, e in zip(names, exclude) if e]


def calculate_frequency(values: Any) -> float:
    """Count of the second most common value over count of the most common one (pycytominer
    ``calculate_frequency``, the statistic of ``frequency_threshold``).

    Parameters
    ----------
    values : array-like, polars.Series or pandas.Series
        One feature's values; missing values (null, NaN) are ignored.

    Returns
    -------
    float
        In [0, 1]; 0.0 when fewer than two distinct values are present.
    """
    s = values if isinstance(values, pl.Series) else pl.Series("v", np.asarray(
        values.to_numpy() if hasattr(values, "to_numpy") else values))
    if s.dtype.is_float():
        s = s.fill_nan(None) + 0.0  # -0.0 and 0.0 count as one value, as in pandas
    counts = np.sort(s.drop_nulls().value_counts().get_column("count").to_numpy())
    if counts.size < 2:
        return 0.0
    return float(counts[-2] / counts[-1])


def _drop_na_columns(values: pl.DataFrame, cutoff: float) -> list[str]:
    if not 0 <= cutoff <= 1:
        raise ValueError("na_cutoff must be between 0 and 1")
    if values.height == 0:
        return []
    frac = np.array(values.null_count().row(0), dtype=np.float64) / values.height
    return [c for c, f in zip(values.columns, frac) if f > cutoff]


def _drop_outliers(values: pl.DataFrame, cutoff: float) -> list[str]:
    if values.width == 0:
        return []
    hi = values.select(pl.all().max().abs()).row(0)
    lo = values.select(pl.all().min().abs()).row(0)
    return [c for c, a, b in zip(values.columns, hi, lo)
            if (a is not None and a > cutoff) or (b is not None and b > cutoff)]


def _noise_removal(values: pl.DataFrame, rows: Any, groups: Any, cutoff: float | None) -> list[str]:
    if groups is None or cutoff is None:
        raise ValueError("noise_removal needs noise_removal_perturb_groups and noise_removal_stdev_cutoff")
    if isinstance(groups, str):
        if groups not in columns_of(rows):
            raise ValueError(f"noise_removal_perturb_groups column {groups!r} not in the profiles")
        labels = polars_view(rows, [groups])[groups]
    else:
        labels = pl.Series(list(groups))
        if labels.len() != values.height:
            raise ValueError(f"noise_removal_perturb_groups has {labels.len()} labels for {values.height} rows")
    df = values.with_columns(labels.alias("__group")).filter(pl.col("__group").is_not_null())
    sd = df.group_by("__group").agg(pl.all().std(ddof=0)).drop("__group")
    mean_sd = sd.select(pl.all().mean()).row(0)
    return [c for c, m in zip(values.columns, mean_sd) if m is not None and m > cutoff]


# -- blocklist --------------------------------------------------------------------------------------------


@cache
def _pycytominer_blocklists() -> dict[str, list[str]]:
    spec = importlib.util.find_spec("pycytominer")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the default blocklist is read from pycytominer's package data; install pycytominer "
                          "or pass blocklist=[...]")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "default_blocklists.yaml"
    import yaml

    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    return {str(k): [str(x) for x in v] for k, v in data.items()}


def default_blocklist(name: str = "default") -> list[str]:
    """pycytominer's packaged blocklist ``name`` (``default``: 55 noisy CellProfiler features)."""
    lists = _pycytominer_blocklists()
    if name not in lists:
        raise ValueError(f"unknown blocklist {name!r}; pycytominer ships {sorted(lists)}")
    return list(lists[name])


def read_blocklist(path: str | os.PathLike) -> list[str]:
    """Feature names of a blocklist file: a CSV with a ``blocklist`` column (pycytominer ``blocklist_file``).

    Raises
    ------
    ValueError
        The file has no ``blocklist`` column (the message names the file and its columns).
    """
    table = pl.read_csv(path, infer_schema=False)
    if "blocklist" not in table.columns:
        raise ValueError(f"blocklist file {str(path)!r} has no 'blocklist' column (columns: "
                         f"{format_names(table.columns)})")
    return [str(x) for x in table.get_column("blocklist").drop_nulls().to_list()]


def _resolve_blocklist(blocklist: str | Sequence[str] | None, names: str | Sequence[str] | None,
                       path: str | os.PathLike | None = None) -> list[str]:
    if blocklist is not None and path is not None:
        raise ValueError("give blocklist or blocklist_file, not both")
    if blocklist is not None:
        return [blocklist] if isinstance(blocklist, str) else [str(b) for b in blocklist]
    if path is not None:
        return read_blocklist(path)
    out: list[str] = []
    for name in as_list(names) or ["default"]:
        out += default_blocklist(name)
    return out


# -- correlation ------------------------------------------------------------------------------------------


def _correlation_threshold(values: pl.DataFrame, threshold: float, method: str, block_size: int) -> list[str]:
    if method not in CORRELATION_METHODS:
        raise ValueError(f"corr_method must be one of {CORRELATION_METHODS}, got {method!r}")
    if not 0 <= threshold <= 1:
        raise ValueError("corr_threshold must be between 0 and 1")
    names = values.columns
    d = len(names)
    if d < 2:
        return []
    has_nan = any(values.null_count().row(0))  # feature_frame turned NaN into null
    has_inf = bool(values.select(pl.any_horizontal(pl.all().is_infinite().any())).item()) if values.height else False
    if method == "kendall" or has_inf or (method == "spearman" and has_nan):
        logger.info("correlation_threshold: %s%s uses pandas' correlation (pycytominer's path)", method,
                    " with infinite values" if has_inf else "")
        x = values.to_numpy(order="fortran").astype(np.float64, copy=False)
        sums, pairs = _pandas_corr(x, names, method, threshold)
        return _choose(names, sums, pairs)
    if has_nan:
        x = values.to_numpy(order="fortran", writable=True).astype(np.float64, copy=False)
        sums, pairs = _blocked_corr_pairwise(x, threshold, block_size)
        return _choose(names, sums, pairs)
    z, const = _standardized(values, rank=method == "spearman")
    screened = _screened_corr(z, const, threshold, block_size)
    if screened is not None:
        sums, pairs = screened
        a, b = pairs[:, 0], pairs[:, 1]
        sa, sb = sums[a], sums[b]
        if not (np.abs(sa - sb) <= 1e-9 * np.maximum(np.abs(sa), np.abs(sb))).any():
            drop = np.where(sa > sb, a, b)
            keep = np.zeros(d, dtype=bool)
            keep[drop] = True
            return [n for n, k in zip(names, keep) if k]
        logger.debug("correlation_threshold: (near-)tie in sum |corr| within a pair; full matrix for the ranking")
    sums, pairs = _gram_corr(z, threshold, block_size)
    return _choose(names, sums, pairs)


def _choose(names: list[str], sums: np.ndarray, pairs: np.ndarray) -> list[str]:
    """pycytominer's rule: rank all features by total |corr| (pandas sort_values = numpy quicksort) and drop
    the member of every flagged pair ranked higher."""
    if pairs.shape[0] == 0:
        return []
    d = len(names)
    pos = np.empty(d, dtype=np.int64)
    pos[np.argsort(sums, kind="quicksort")] = np.arange(d)
    a, b = pairs[:, 0], pairs[:, 1]
    drop = np.where(pos[a] > pos[b], a, b)
    keep = np.zeros(d, dtype=bool)
    keep[drop] = True
    return [n for n, k in zip(names, keep) if k]


def _blocks(d: int, size: int) -> list[slice]:
    size = max(1, int(size))
    return [slice(i, min(i + size, d)) for i in range(0, d, size)]


def _standardized(values: pl.DataFrame, *, rank: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Centred, unit-norm feature columns (ranks first with ``rank``) for the correlation step.

    Returns
    -------
    z : numpy.ndarray
        ``(n, d)`` float64, Fortran order; a constant column is all zeros (its correlations are NaN in
        numpy/pandas and skipped by pycytominer's ``|corr|`` sums).
    const : numpy.ndarray
        ``(d,)`` bool, the constant columns.
    """
    n, d = values.shape
    # one Fortran array filled column by column from polars' zero-copy column views, each column then
    # standardised while in cache (polars' own to_numpy(order="fortran") is ~10x slower than the copy; fresh
    # temporaries of the matrix size are slow to fault in)
    z = np.empty((n, d), dtype=np.float64, order="F")
    columns = values.get_columns()
    const = np.zeros(d, dtype=bool)
    if rank:
        from scipy.stats import rankdata

    def work(cols: range) -> None:
        for j in cols:
            zj = z[:, j]
            zj[:] = columns[j].to_numpy()
            if rank:
                zj[:] = rankdata(zj, method="average")
            zj -= zj.mean()
            norm = math.sqrt(float(np.einsum("i,i->", zj, zj)))  # not BLAS: may thread inside threads
            if norm == 0 or zj.max() == zj.min():
                zj[:] = 0.0
                const[j] = True
            else:
                zj /= norm

    in_threads(work, d)
    return z, const


def _gram_corr(z: np.ndarray, threshold: float, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairwise Pearson correlations of the standardised columns ``z``: ``sum |corr|`` of every feature
    and the pairs above ``threshold`` (rows ``(later, earlier)``)."""
    n, d = z.shape
    sums = np.zeros(d)
    pairs = []
    blocks = _blocks(d, block_size)
    if d <= _FULL_GRAM_MAX:
        # one symmetric rank-n update (BLAS syrk: half the flops of a general product); then row blocks
        c = z.T @ z
        np.clip(c, -1.0, 1.0, out=c)
        for bi in blocks:
            rows = c[bi]
            sums[bi] = np.abs(rows).sum(axis=1)
            ii, jj = np.nonzero(np.triu(rows > threshold, k=bi.start + 1))  # global column > row
            pairs.append(np.stack([jj, ii + bi.start], axis=1).astype(np.int64))
        return sums, np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
    for i, bi in enumerate(blocks):
        zi = z[:, bi]
        for bj in blocks[i:]:
            c = zi.T @ z[:, bj]
            np.clip(c, -1.0, 1.0, out=c)
            a = np.abs(c)
            sums[bi] += a.sum(axis=1)
            if bj.start != bi.start:
                sums[bj] += a.sum(axis=0)
            pairs.append(_upper_pairs(c, bi, bj, threshold))
    return sums, np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)


def _screened_corr(z: np.ndarray, const: np.ndarray, threshold: float,
                   block_size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Pairs above ``threshold`` and ``sum |corr|`` of their members, without the full ``d x d`` product.

    An exact screen: with ``Q`` an orthonormal basis of ``k`` columns of ``z``, every unit column splits into
    ``z_i = Q b_i + r_i`` with ``r_i`` orthogonal to ``Q``, so ``corr_ij = b_i . b_j + r_i . r_j
    <= b_i . b_j + |r_i| |r_j|`` (Cauchy-Schwarz) with ``|r_i|^2 = 1 - |b_i|^2``. Only pairs whose bound
    exceeds ``threshold - _SCREEN_MARGIN`` can be flagged; their members' rows of the correlation matrix are
    computed exactly (float64, one product ``n x |F| x d``), which gives the flagged pairs and, for their
    members, the exact ``sum |corr|`` that decides which member is dropped. Cost ``n d (k + |F|)`` instead
    of ``n d^2 / 2``; returns ``None`` (use the full matrix) when the screen is not selective enough (more
    than ``_SCREEN_MAX_FRACTION`` of the features are candidates), or ``d`` is small.

    Returns
    -------
    (sums, pairs) or None
        ``sums`` ``(d,)`` with NaN for features not in any flagged pair; ``pairs`` ``(m, 2)`` rows
        ``(later, earlier)``.
    """
    n, d = z.shape
    live = np.flatnonzero(~const)
    if d < 4 * _SCREEN_RANK or live.size < 2:
        return None
    pick = np.unique(live[np.linspace(0, live.size - 1, min(_SCREEN_RANK, live.size)).round().astype(np.int64)])
    q, _ = np.linalg.qr(z[:, pick])
    orth = float(np.abs(q.T @ q - np.eye(q.shape[1])).max())
    if not orth < 1e-10:  # Householder QR is orthonormal to ~1e-15; anything else: do not trust the bound
        return None
    b = q.T @ z  # (k, d)
    del q
    sq_z = np.einsum("ij,ij->j", z, z)  # 1 (0 for constant columns) up to rounding
    sq_b = np.einsum("ij,ij->j", b, b)
    r = np.sqrt(np.maximum(sq_z - sq_b, 0.0) + 4 * orth)
    cut = threshold - _SCREEN_MARGIN
    max_feats = int(_SCREEN_MAX_FRACTION * d)
    involved = np.zeros(d, dtype=bool)
    cand = []
    for bi in _blocks(d, block_size):
        g = b[:, bi].T @ b
        g += r[bi, None] * r[None, :]
        ii, jj = np.nonzero(np.triu(g > cut, k=bi.start + 1))
        if ii.size:
            ii += bi.start
            involved[ii] = True
            involved[jj] = True
            if involved.sum() > max_feats:
                logger.debug("correlation_threshold: screen not selective (> %d candidate features)", max_feats)
                return None
            cand.append((ii, jj))
    sums = np.full(d, np.nan)
    if not cand:
        return sums, np.zeros((0, 2), dtype=np.int64)
    ci = np.concatenate([c[0] for c in cand])
    cj = np.concatenate([c[1] for c in cand])
    feats = np.flatnonzero(involved)
    rows = z[:, feats].T @ z  # exact rows of the correlation matrix, (|F|, d)
    np.clip(rows, -1.0, 1.0, out=rows)
    loc = np.full(d, -1, dtype=np.int64)
    loc[feats] = np.arange(feats.size)
    hit = rows[loc[ci], cj] > threshold
    pairs = np.stack([cj[hit], ci[hit]], axis=1).astype(np.int64)  # (later, earlier)
    sums[feats] = np.abs(rows).sum(axis=1)
    logger.debug("correlation_threshold: screen kept %d candidate pair(s) over %d feature(s); %d flagged",
                 ci.size, feats.size, pairs.shape[0])
    return sums, pairs


def _upper_pairs(c: np.ndarray, bi: slice, bj: slice, threshold: float) -> np.ndarray:
    """Pairs above ``threshold`` in block ``(bi, bj)`` with global row < column, as (later, earlier)."""
    hit = c > threshold
    if bi.start == bj.start:
        hit = np.triu(hit, k=1)
    ii, jj = np.nonzero(hit)
    return np.stack([jj + bj.start, ii + bi.start], axis=1).astype(np.int64)


def _blocked_corr_pairwise(x: np.ndarray, threshold: float, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pearson on pairwise-complete observations (pandas ``DataFrame.corr`` with missing values)."""
    n, d = x.shape
    m = ~np.isnan(x)
    x = x - np.nanmean(np.where(m, x, np.nan), axis=0, keepdims=True) if m.any() else x
    x0 = np.where(m, x, 0.0)
    mf = m.astype(np.float64)
    x2 = x0 * x0
    sums = np.zeros(d)
    pairs = []
    blocks = _blocks(d, block_size)
    for i, bi in enumerate(blocks):
        for bj in blocks[i:]:
            nn = mf[:, bi].T @ mf[:, bj]
            sx = x0[:, bi].T @ mf[:, bj]
            sy = mf[:, bi].T @ x0[:, bj]
            sxx = x2[:, bi].T @ mf[:, bj]
            syy = mf[:, bi].T @ x2[:, bj]
            sxy = x0[:, bi].T @ x0[:, bj]
            with np.errstate(invalid="ignore", divide="ignore"):
                cov = sxy - sx * sy / nn
                vx = sxx - sx * sx / nn
                vy = syy - sy * sy / nn
                tiny = 64 * np.finfo(np.float64).eps
                vx = np.where(vx <= tiny * sxx, 0.0, vx)
                vy = np.where(vy <= tiny * syy, 0.0, vy)
                den = np.sqrt(vx * vy)
                c = np.where((nn > 0) & (den > 0), cov / den, np.nan)
            a = np.nan_to_num(np.abs(c), nan=0.0)
            sums[bi] += a.sum(axis=1)
            if bj.start != bi.start:
                sums[bj] += a.sum(axis=0)
            pairs.append(_upper_pairs(np.nan_to_num(c, nan=-np.inf), bi, bj, threshold))
    return sums, np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)


def _pandas_corr(x: np.ndarray, names: list[str], method: str, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    cor = pd.DataFrame(x, columns=names).corr(method=method).to_numpy()
    sums = np.nansum(np.abs(cor), axis=0)
    with np.errstate(invalid="ignore"):
        hit = np.tril(np.nan_to_num(cor, nan=-np.inf), k=-1) > threshold
    ii, jj = np.nonzero(hit)  # row ii > column jj: pair_a = ii (later), pair_b = jj
    return sums, np.stack([ii, jj], axis=1).astype(np.int64)
