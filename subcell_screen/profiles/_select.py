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

The correlation step never builds pycytominer's ``d (d - 1) / 2``-row pair table: it standardises the
columns once, forms ``Z^T Z`` with one BLAS syrk (up to 8192 features; beyond that in upper-triangular blocks of
``block_size`` columns so the ``d x d`` matrix is never held) and keeps only the per-feature ``sum |corr|`` and
the pairs above the threshold. Missing values use
pairwise-complete observations as pandas does; Kendall, infinite values and Spearman with missing values fall
back to pandas (pycytominer's own path).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ._frame import (
    _names,
    as_list,
    check_frame,
    columns_of,
    feature_frame,
    infer_features,
    is_pandas,
    polars_view,
    row_mask,
)

__all__ = ["feature_select", "features_to_exclude", "default_blocklist", "FEATURE_SELECT_OPERATIONS"]

logger = logging.getLogger(__name__)

FEATURE_SELECT_OPERATIONS = ("variance_threshold", "frequency_threshold", "correlation_threshold",
                             "drop_na_columns", "blocklist", "drop_outliers", "noise_removal")
CORRELATION_METHODS = ("pearson", "spearman", "kendall")

#: Up to this many features the correlation matrix is formed by one BLAS syrk (d x d float64, 512 MB at the
#: limit) and scanned in row blocks; above it, upper-triangular blocks of ``block_size`` columns.
_FULL_GRAM_MAX = 8192


def feature_select(
    profiles: Any,
    *,
    operation: str | Sequence[str] = "variance_threshold",
    features: Sequence[str] | None = None,
    samples: pl.Expr | np.ndarray | None = None,
    na_cutoff: float = 0.05,
    corr_threshold: float = 0.9,
    corr_method: str = "pearson",
    freq_cut: float = 0.05,
    unique_cut: float = 0.01,
    min_variance: float = 1e-6,
    blocklist: str | Sequence[str] | None = None,
    blocklist_name: str | Sequence[str] | None = None,
    outlier_cutoff: float = 500.0,
    noise_removal_perturb_groups: str | Sequence[Any] | None = None,
    noise_removal_stdev_cutoff: float | None = None,
    block_size: int = 1024,
) -> Any:
    """Drop uninformative features (pycytominer ``feature_select`` semantics, see the module docstring).

    Parameters
    ----------
    profiles : polars.DataFrame or pandas.DataFrame
        Wide profiles (``Metadata_*`` columns plus numeric features).
    operation : str or list of str
        Operations from :data:`FEATURE_SELECT_OPERATIONS`, applied in order.
    features : list of str, optional
        Candidate features; default every numeric column not prefixed ``Metadata_``.
    samples : polars.Expr or boolean mask, optional
        Rows the statistics are computed on (pycytominer ``samples``); ``None`` = all rows.
    na_cutoff, corr_threshold, corr_method, freq_cut, unique_cut, min_variance, outlier_cutoff
        As pycytominer.
    blocklist : str or list of str, optional
        Features to block (``operation`` must include ``blocklist``); default pycytominer's default list.
    blocklist_name : str or list of str, optional
        Named lists of pycytominer's packaged ``default_blocklists.yaml``.
    noise_removal_perturb_groups : str or sequence
        Column name (or per-row labels of the ``samples`` rows) defining perturbation groups.
    noise_removal_stdev_cutoff : float
        Cut-off of ``noise_removal``.
    block_size : int
        Columns per block of the correlation computation (memory ``~ 8 * block_size**2`` bytes per block).

    Returns
    -------
    polars.DataFrame or pandas.DataFrame
        ``profiles`` without the excluded feature columns (other columns and row order unchanged).
    """
    excluded = features_to_exclude(
        profiles, operation=operation, features=features, samples=samples, na_cutoff=na_cutoff,
        corr_threshold=corr_threshold, corr_method=corr_method, freq_cut=freq_cut, unique_cut=unique_cut,
        min_variance=min_variance, blocklist=blocklist, blocklist_name=blocklist_name,
        outlier_cutoff=outlier_cutoff, noise_removal_perturb_groups=noise_removal_perturb_groups,
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
    features: Sequence[str] | None = None,
    samples: pl.Expr | np.ndarray | None = None,
    na_cutoff: float = 0.05,
    corr_threshold: float = 0.9,
    corr_method: str = "pearson",
    freq_cut: float = 0.05,
    unique_cut: float = 0.01,
    min_variance: float = 1e-6,
    blocklist: str | Sequence[str] | None = None,
    blocklist_name: str | Sequence[str] | None = None,
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
    check_frame(profiles)
    ops = as_list(operation)
    unknown = [op for op in ops if op not in FEATURE_SELECT_OPERATIONS]
    if unknown:
        raise ValueError(f"unknown operation(s) {unknown}; choose from {FEATURE_SELECT_OPERATIONS}")
    feats = infer_features(profiles, features)
    mask = row_mask(profiles, samples, name="samples")
    if mask.all():
        rows = profiles
    else:
        rows = profiles[mask] if is_pandas(profiles) else profiles.filter(pl.Series(mask))
    values = feature_frame(rows, feats)
    remaining = list(feats)
    out: dict[str, list[str]] = {}
    for op in ops:
        cur = values.select(remaining)
        if op == "variance_threshold":
            exc = _variance_threshold(cur, min_variance)
        elif op == "frequency_threshold":
            exc = _frequency_threshold(cur, freq_cut, unique_cut)
        elif op == "drop_na_columns":
            exc = _drop_na_columns(cur, na_cutoff)
        elif op == "correlation_threshold":
            exc = _correlation_threshold(cur, corr_threshold, corr_method, block_size)
        elif op == "blocklist":
            listed = set(_resolve_blocklist(blocklist, blocklist_name))
            exc = [c for c in columns_of(profiles) if c in listed]
        elif op == "drop_outliers":
            exc = _drop_outliers(cur, outlier_cutoff)
        else:
            exc = _noise_removal(cur, rows, noise_removal_perturb_groups, noise_removal_stdev_cutoff)
        out[op] = exc
        gone = set(exc)
        remaining = [f for f in remaining if f not in gone]
    return out


# -- operations -------------------------------------------------------------------------------------------


def _check_finite(values: pl.DataFrame, op: str) -> None:
    inf = values.select(pl.all().is_infinite().any())
    bad = [c for c in inf.columns if inf[c][0]]
    if bad:
        raise ValueError(f"{op}: feature(s) contain infinite values: {_names(bad)}")


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
    n = values.height
    if values.width == 0 or n == 0:
        return list(values.columns) if n == 0 else []
    canon = values  # polars hashes -0.0 and 0.0 as one value, as pandas' value_counts does
    nulls = np.array(canon.select(pl.all().null_count()).row(0), dtype=np.int64)
    n_unique = np.array(canon.select(pl.all().n_unique()).row(0), dtype=np.int64) - (nulls > 0)
    nonnull = n - nulls
    ratio = np.where(n_unique >= 2, 1.0, 0.0)  # every value unique: counts 1 and 1
    dup = [j for j in range(values.width) if n_unique[j] >= 2 and n_unique[j] < nonnull[j]]
    if dup:
        names = [values.columns[j] for j in dup]
        top = canon.select([pl.col(c).drop_nulls().unique_counts().top_k(2).implode() for c in names]).row(0)
        for j, counts in zip(dup, top):
            ratio[j] = counts[1] / counts[0] if counts[0] >= counts[1] else counts[0] / counts[1]
    exclude = (ratio < freq_cut) | (n_unique / n < unique_cut)
    return [c for c, e in zip(values.columns, exclude) if e]


def _drop_na_columns(values: pl.DataFrame, cutoff: float) -> list[str]:
    if not 0 <= cutoff <= 1:
        raise ValueError("na_cutoff must be between 0 and 1")
    if values.height == 0:
        return []
    frac = np.array(values.select(pl.all().null_count()).row(0), dtype=np.float64) / values.height
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


def _resolve_blocklist(blocklist: str | Sequence[str] | None, names: str | Sequence[str] | None) -> list[str]:
    if blocklist is not None:
        return [blocklist] if isinstance(blocklist, str) else [str(b) for b in blocklist]
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
    x = values.to_numpy(order="fortran", writable=True).astype(np.float64, copy=False)
    has_nan = bool(np.isnan(x).any())
    has_inf = bool(np.isinf(x).any())
    if method == "kendall" or has_inf or (method == "spearman" and has_nan):
        logger.info("correlation_threshold: %s%s uses pandas' correlation (pycytominer's path)", method,
                    " with infinite values" if has_inf else "")
        sums, pairs = _pandas_corr(x, names, method, threshold)
    else:
        if method == "spearman":
            from scipy.stats import rankdata

            x = np.asfortranarray(rankdata(x, method="average", axis=0))
        if has_nan:
            sums, pairs = _blocked_corr_pairwise(x, threshold, block_size)
        else:
            sums, pairs = _blocked_corr(x, threshold, block_size)
    if pairs.shape[0] == 0:
        return []
    # pycytominer: rank features by total |corr| (pandas sort_values = numpy quicksort), drop the higher rank
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


def _blocked_corr(x: np.ndarray, threshold: float, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pearson without missing values; ``x`` ``(n, d)`` float64 (modified in place)."""
    n, d = x.shape
    x -= x.mean(axis=0)
    norm = np.sqrt((x * x).sum(axis=0))
    const = (x.max(axis=0) == x.min(axis=0)) | (norm == 0)
    norm[const] = 1.0
    x /= norm
    x[:, const] = 0.0  # constant columns: correlation NaN in numpy/pandas, skipped by the |corr| sums
    sums = np.zeros(d)
    pairs = []
    blocks = _blocks(d, block_size)
    if d <= _FULL_GRAM_MAX:
        # one symmetric rank-n update (BLAS syrk: half the flops of a general product); then row blocks
        c = x.T @ x
        np.clip(c, -1.0, 1.0, out=c)
        for bi in blocks:
            rows = c[bi]
            sums[bi] = np.abs(rows).sum(axis=1)
            ii, jj = np.nonzero(np.triu(rows > threshold, k=bi.start + 1))  # global column > row
            pairs.append(np.stack([jj, ii + bi.start], axis=1).astype(np.int64))
        return sums, np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
    for i, bi in enumerate(blocks):
        xi = x[:, bi]
        for bj in blocks[i:]:
            c = xi.T @ x[:, bj]
            np.clip(c, -1.0, 1.0, out=c)
            a = np.abs(c)
            sums[bi] += a.sum(axis=1)
            if bj.start != bi.start:
                sums[bj] += a.sum(axis=0)
            pairs.append(_upper_pairs(c, bi, bj, threshold))
    return sums, np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)


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
