"""Average precision and mean average precision with copairs 0.5 semantics, streamed in blocks.

Agreement with copairs (tested in ``tests/test_score_map.py``)
--------------------------------------------------------------
* Pairs: row ``i`` pairs with ``j != i`` when every ``*_sameby`` column is equal and every ``*_diffby`` column
  differs (copairs' DuckDB join); a pair that is both positive and negative counts in both lists, as in copairs.
* Similarities are computed in float64 and rounded to float32, the precision copairs stores them in; ranks use
  copairs' key ``float32(1) - sim`` with positives ranked before negatives on ties (its stable lexsort over the
  concatenated positive-then-negative pair lists). AP = (1/P) * sum over positives of precision at their rank.
* AP and normalized AP agree with copairs to ~1e-15 for float64 features (the only difference is the order of
  float64 additions); ``n_pos_pairs``/``n_total_pairs`` are identical.
* **Tie rule.** Similarities are always computed in float64 (float32 features are upcast first), then rounded
  to float32; pairs with equal rounded similarity rank positives first. So the AP of float32 features equals
  the AP of the same values as float64, and copairs' AP on float64. copairs computes float32 features' cosines
  in float32, where exactly tied similarities (e.g. scaled copies of a profile) come out in a rounding-noise
  order: on such ties its AP differs (0.5 instead of 0.75 in
  ``tests/test_score_compat.py::test_tied_similarities_rank_positives_first_whatever_the_feature_dtype``).
* mAP is the Kahan-summed group mean (as pandas' groupby mean); p-values use copairs' exact null draws (see
  :mod:`._null`), so for the same ``seed`` and ``null_size`` they are *equal* to copairs' with a fresh cache.
  BH correction: :func:`._multitest.fdr_bh`, bitwise equal to statsmodels' ``multipletests(method="fdr_bh")``
  (which copairs uses) without importing statsmodels.
* Query-string entries in the column lists (``"Metadata_x != 'y'"``) filter rows (meta and feats) and pair on
  the named column. copairs 0.5.5 accepts such entries but then fails (row-count check, DuckDB parse error).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import polars as pl

from ..profiles import frames as fr
from ._engine import PairRule, run_engine, validate_distance
from ._multitest import fdr_bh, fdr_bh_reject
from ._null import NullCache, kahan_group_mean

logger = logging.getLogger(__name__)

__all__ = ["average_precision", "multilabel_average_precision", "mean_average_precision",
           "mean_average_precision_hierarchical", "fraction_retrieved", "expected_ap", "normalize_ap",
           "UnpairedException"]


class UnpairedException(ValueError):
    """No positive (or no negative) pair exists under the given pair rules (copairs' exception of that name)."""


def _as_list(x: str | Sequence[str] | None, name: str) -> list[str]:
    if x is None:
        return []
    if isinstance(x, str):
        return [x]
    out = list(x)
    if not all(isinstance(c, str) for c in out):
        raise TypeError(f"{name} must be a list of column names, got {x!r}")
    return out


def _expected_ap(m: np.ndarray, n_neg: np.ndarray) -> np.ndarray:
    """copairs ``normalization.expected_ap`` vectorised (same float64 operation order)."""
    m = m.astype(np.int64)
    length = m + n_neg.astype(np.int64)
    out = np.zeros(len(m), dtype=np.float64)
    lmax = int(length.max()) if len(length) else 0
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, lmax + 1, dtype=np.float64))])
    h = harmonic[np.maximum(length, 0)]
    lf = length.astype(np.float64)
    mf = m.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = (1.0 / lf) * (((mf - 1.0) / (lf - 1.0)) * (lf - h) + h)
    out[:] = mu
    out[length == 1] = np.where(m[length == 1] == 1, 1.0, 0.0)
    out[(m == 0) & (length != 1)] = 0.0
    out[(m == length) & (length > 1)] = 1.0
    return out


def _normalize_ap(ap: np.ndarray, n_pos: np.ndarray, n_neg: np.ndarray, eps: float = 1e-10) -> np.ndarray:
    mu0 = _expected_ap(n_pos, n_neg)
    den = np.maximum(1 - mu0, eps)
    with np.errstate(invalid="ignore"):
        return np.clip((ap - mu0) / den, -1.0, 1.0)


def _pair_counts(n_pos: Any, n_neg: Any) -> tuple[np.ndarray, np.ndarray]:
    m = np.atleast_1d(np.asarray(n_pos))
    n = np.atleast_1d(np.asarray(n_neg))
    for name, v in (("n_pos", m), ("n_neg", n)):
        if v.dtype.kind not in "iuf" or (v.dtype.kind == "f" and not np.all(v == np.round(v))):
            raise ValueError(f"{name} must hold whole numbers of pairs, got {v!r}")
    m, n = np.broadcast_arrays(m.astype(np.int64), n.astype(np.int64))
    bad = (m < 0) | (n < 0) | (m + n < 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"invalid pair counts n_pos={int(m[i])}, n_neg={int(n[i])}: need n_pos, n_neg >= 0 and "
                         "n_pos + n_neg >= 1")
    return m, n


def expected_ap(n_pos: Any, n_neg: Any) -> Any:
    """Expected average precision of a random ranking (copairs ``expected_ap``, exact finite-sample formula).

    ``E[AP] = (1/L) * ((M - 1)/(L - 1) * (L - H_L) + H_L)`` with ``M = n_pos``, ``L = n_pos + n_neg`` and
    ``H_L`` the L-th harmonic number (1 when every item is positive, 0 without positives).

    Parameters
    ----------
    n_pos, n_neg : int or array of int
        Positive and negative pairs of each ranked list (broadcast against each other).

    Returns
    -------
    float or numpy.ndarray
        A float for scalar inputs, else a float64 array.

    Raises
    ------
    ValueError
        A negative count, or an empty list (``n_pos + n_neg < 1``).
    """
    scalar = np.isscalar(n_pos) and np.isscalar(n_neg)
    m, n = _pair_counts(n_pos, n_neg)
    out = _expected_ap(m.ravel(), n.ravel()).reshape(m.shape)
    return float(out[0]) if scalar else out


def normalize_ap(ap: Any, n_pos: Any, n_neg: Any, *, eps: float = 1e-10) -> Any:
    """Chance-corrected AP ``(AP - E[AP]) / (1 - E[AP])``, clipped to [-1, 1] (copairs ``normalize_ap``).

    0 is chance level, 1 a perfect ranking, negative worse than chance; this is the
    ``normalized_average_precision`` column of :func:`average_precision`.

    Parameters
    ----------
    ap : float or array
        Average precision(s).
    n_pos, n_neg : int or array of int
        Positive and negative pairs behind each AP (broadcast against ``ap``).
    eps : float
        Floor of the denominator (``E[AP]`` close to 1).

    Returns
    -------
    float or numpy.ndarray
    """
    scalar = np.isscalar(ap) and np.isscalar(n_pos) and np.isscalar(n_neg)
    m, n = _pair_counts(n_pos, n_neg)
    a, m, n = np.broadcast_arrays(np.atleast_1d(np.asarray(ap, dtype=np.float64)), m, n)
    out = _normalize_ap(a.ravel(), m.ravel(), n.ravel(), eps).reshape(a.shape)
    return float(out[0]) if scalar else out


def _encode(df: Any, col: str) -> np.ndarray:
    """Integer codes (int64, 0..n_levels-1) of one metadata column; equal values share a code.

    Raises
    ------
    ValueError
        If the column holds missing values (naming the column and the first offending row).
    """
    if isinstance(df, pl.DataFrame):
        s = df.get_column(col)
        bad = s.is_null()
        if s.dtype.is_float():
            bad = bad | s.is_nan()
        if bool(bad.any()):
            row = int(bad.arg_max())
            raise ValueError(f"metadata column {col!r} has missing values (first at row {row}); "
                             "pair columns must be complete (copairs rule)")
        if s.dtype == pl.Boolean:
            s = s.cast(pl.UInt8)
        if isinstance(s.dtype, pl.List | pl.Array | pl.Struct | pl.Object):
            raise ValueError(f"metadata column {col!r} holds lists; pass it as multilabel_col")
        return (s.rank("dense").cast(pl.Int64) - 1).to_numpy()
    import pandas as pd

    s = df[col]
    codes, _ = pd.factorize(s, use_na_sentinel=True)
    if (codes < 0).any():
        row = int(np.flatnonzero(codes < 0)[0])
        raise ValueError(f"metadata column {col!r} has missing values (first at row {row}); "
                         "pair columns must be complete (copairs rule)")
    return codes.astype(np.int64)


_QUERY_COL = re.compile(r"(\w+)\s*[=<>!]+")


def _split_filters(specs: Sequence[str], available: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split copairs-style column lists into plain column names and query-string filters.

    Returns ``(columns, queries)``: each entry that is not a column name must be a pandas-query filter such as
    ``"Metadata_x != 'y'"``; the column(s) it names join ``columns``.
    """
    cols: list[str] = []
    queries: list[str] = []
    for spec in specs:
        if spec in available:
            cols.append(spec)
            continue
        named = [c for c in _QUERY_COL.findall(spec) if c in available]
        if not named:
            raise ValueError(f"{spec!r} is neither a metadata column nor a query on one; available: "
                             f"{sorted(available)[:40]}")
        queries.append(spec)
        cols.extend(named)
    return cols, queries


def _eval_queries(df: Any, queries: Sequence[str]) -> np.ndarray:
    """Boolean row mask of the AND of pandas-query filters (evaluated with pandas on the named columns)."""
    if not queries:
        return np.ones(fr.n_rows(df), dtype=bool)
    import pandas as pd

    pdf = df.to_pandas() if isinstance(df, pl.DataFrame) else df.reset_index(drop=True)
    expr = " & ".join(f"({q})" for q in queries)
    try:
        mask = pdf.eval(expr)
    except Exception as exc:  # pandas raises many kinds
        raise ValueError(f"invalid query filter {expr!r}: {exc}") from exc
    mask = np.asarray(pd.Series(mask).to_numpy(), dtype=bool)
    if not mask.any():
        raise ValueError(f"no rows match the query filter {expr!r}")
    return mask


def _prepare(meta: Any, feats: Any, specs: dict[str, list[str]], multilabel_col: str | None
             ) -> tuple[Any, np.ndarray, dict[str, list[str]]]:
    """Apply query filters, validate inputs; return (filtered meta, feats matrix, plain column lists)."""
    fr.check_frame(meta)
    available = fr.columns_of(meta)
    plain: dict[str, list[str]] = {}
    queries: list[str] = []
    for key, cols in specs.items():
        c, q = _split_filters(cols, available)
        plain[key] = c
        queries.extend(q)
    n0 = fr.n_rows(meta)
    x = fr.as_matrix(feats)
    keep = _eval_queries(meta, queries)
    if queries:
        meta = fr.take(meta, np.flatnonzero(keep))
        if x.shape[0] == n0:
            x = x[keep]
    elif fr.is_pandas(meta):
        meta = meta.reset_index(drop=True)
    if x.shape[0] != fr.n_rows(meta):
        raise ValueError(f"feats has {x.shape[0]} rows but meta has {fr.n_rows(meta)} (after filters)")
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise ValueError(f"features should not have NaN or infinite values (first at row {bad})")
    for which in ("pos", "neg"):
        same, diff = plain[f"{which}_sameby"], plain[f"{which}_diffby"]
        if set(same) & set(diff):
            raise ValueError(f"{which}_sameby and {which}_diffby must be disjoint lists "
                             f"(both hold {sorted(set(same) & set(diff))})")
        if not same and not diff:
            raise ValueError(f"{which}_sameby, {which}_diffby: at least one should be provided")
        if multilabel_col is not None and multilabel_col not in same + diff:
            raise ValueError(f"multilabel_col {multilabel_col!r} must be in {which}_sameby or {which}_diffby")
    if multilabel_col is not None and multilabel_col not in plain["pos_sameby"]:
        raise ValueError(f"multilabel_col {multilabel_col!r} must be in pos_sameby (positives share a label)")
    return meta, x, plain


def _encode_rules(meta: Any, plain: dict[str, list[str]], multilabel_col: str | None
                  ) -> tuple[np.ndarray, PairRule, PairRule, list[str]]:
    cols: list[str] = []
    for key in ("pos_sameby", "pos_diffby", "neg_sameby", "neg_diffby"):
        for c in plain[key]:
            if c != multilabel_col and c not in cols:
                cols.append(c)
    codes = (np.column_stack([_encode(meta, c) for c in cols]) if cols
             else np.zeros((fr.n_rows(meta), 0), dtype=np.int64))
    ix = {c: i for i, c in enumerate(cols)}

    def rule(same: list[str], diff: list[str], *, positive: bool) -> PairRule:
        ml = None
        if multilabel_col is not None:
            if multilabel_col in same:
                ml = "same" if positive else "same_any"
            elif multilabel_col in diff:
                ml = "diff"
        return PairRule(same=tuple(ix[c] for c in same if c != multilabel_col),
                        diff=tuple(ix[c] for c in diff if c != multilabel_col), ml=ml)

    pos = rule(plain["pos_sameby"], plain["pos_diffby"], positive=True)
    neg = rule(plain["neg_sameby"], plain["neg_diffby"], positive=False)
    return codes, pos, neg, cols


def average_precision(
    meta: Any,
    feats: Any,
    *,
    pos_sameby: Sequence[str],
    pos_diffby: Sequence[str],
    neg_sameby: Sequence[str],
    neg_diffby: Sequence[str],
    batch_size: int | None = None,
    distance: str | Callable = "cosine",
    progress_bar: bool | None = None,
    backend: str = "auto",
    device: Any = None,
) -> Any:
    """Average precision of every profile against its positive and negative pairs (copairs-compatible).

    Parameters
    ----------
    meta : polars.DataFrame or pandas.DataFrame, N rows
        Metadata. The pair-rule columns must have no missing values.
    feats : (N, D) array-like of float
        Profiles, row-aligned with ``meta`` (ndarray, frame or torch tensor).
    pos_sameby, pos_diffby : list of str
        Positive pairs share every ``pos_sameby`` column and differ in every ``pos_diffby`` column.
    neg_sameby, neg_diffby : list of str
        Negative pairs share every ``neg_sameby`` column and differ in every ``neg_diffby`` column.
    batch_size : int, optional
        Query rows per block (default: from a ~4M-element block budget; copairs' meaning, pairs per batch,
        does not apply because pairs are never listed).
    distance : str or callable
        ``"cosine"`` (default), ``"abs_cosine"``, ``"correlation"``, ``"euclidean"``, ``"manhattan"``,
        ``"chebyshev"`` (similarity ``1 / (1 + d)``), any scipy ``cdist`` metric, or a copairs-style callable
        ``f(x_rows, y_rows) -> (n,) similarities``.
    progress_bar : bool, optional
        tqdm bar over blocks: None (default) when stderr is a terminal, True always, False never.
    backend : {"auto", "numpy", "torch"}
        ``"auto"``: torch on CUDA when a GPU is present, numpy otherwise.
    device : str or torch.device, optional
        Torch device (e.g. ``"cuda:1"``).

    Returns
    -------
    DataFrame (same type as ``meta``)
        ``meta`` (after query filters; pandas gets a fresh RangeIndex) plus ``n_pos_pairs`` and
        ``n_total_pairs`` (int64), ``average_precision`` and ``normalized_average_precision`` (float64; NaN for
        rows without positive pairs), in copairs' column order.

    Raises
    ------
    UnpairedException
        If there is no positive or no negative pair at all.
    ValueError
        On missing values in a pair column or non-finite features (the message names the column/row).

    Notes
    -----
    Agreement with ``copairs.map.average_precision`` (0.5.5): see the module docstring; AP within 1e-12 in the
    tests on the LINCS plate and simulated plates. Memory is O(block x candidates), not O(pairs).
    """
    specs = {"pos_sameby": _as_list(pos_sameby, "pos_sameby"), "pos_diffby": _as_list(pos_diffby, "pos_diffby"),
             "neg_sameby": _as_list(neg_sameby, "neg_sameby"), "neg_diffby": _as_list(neg_diffby, "neg_diffby")}
    validate_distance(distance)
    meta, x, plain = _prepare(meta, feats, specs, None)
    codes, pos, neg, _ = _encode_rules(meta, plain, None)
    # put the positive ``same`` columns first so that blocks hold whole positive groups
    res = run_engine(x, codes, pos, neg, distance=distance, batch_size=batch_size, backend=backend, device=device,
                     progress=progress_bar)
    if res.n_pos.sum() == 0:
        raise UnpairedException("Unable to find positive pairs.")
    if res.n_neg.sum() == 0:
        raise UnpairedException("Unable to find negative pairs.")
    n_total = res.n_pos + res.n_neg
    napx = np.where(n_total > 0, _normalize_ap(res.ap, res.n_pos, res.n_neg), np.nan)
    new = {"n_pos_pairs": res.n_pos.astype(np.int64), "n_total_pairs": n_total.astype(np.int64),
           "average_precision": res.ap, "normalized_average_precision": napx}
    return fr.with_columns(meta, new)


def multilabel_average_precision(
    meta: Any,
    feats: Any,
    *,
    pos_sameby: Sequence[str],
    pos_diffby: Sequence[str],
    neg_sameby: Sequence[str],
    neg_diffby: Sequence[str],
    multilabel_col: str,
    batch_size: int | None = None,
    distance: str | Callable = "cosine",
    progress_bar: bool | None = None,
    backend: str = "auto",
    device: Any = None,
) -> Any:
    """Average precision with a list-valued label column (targets, MoAs), like ``copairs.map.multilabel``.

    Positive pairs are formed *per label*: rows ``i`` and ``j`` are a positive pair under label ``l`` when both
    lists contain ``l`` (and the other ``pos_*`` rules hold); each (row, label) with at least one positive pair
    is one output row, ranked against the row's negative pairs (deduplicated; with ``multilabel_col`` in
    ``neg_diffby`` a negative partner shares no label).

    Parameters
    ----------
    meta, feats, pos_sameby, pos_diffby, neg_sameby, neg_diffby, batch_size, distance, progress_bar, backend,
    device
        As :func:`average_precision`; ``multilabel_col`` must be in ``pos_sameby`` and in ``neg_sameby`` or
        ``neg_diffby``.
    multilabel_col : str
        Column of label lists (pandas object column of lists, or polars ``List``).

    Returns
    -------
    DataFrame (same type as ``meta``)
        One row per (row, label): ``meta`` columns except ``multilabel_col``, then ``average_precision``,
        ``normalized_average_precision``, ``n_pos_pairs``, ``n_total_pairs`` and ``multilabel_col`` holding
        the single label, ordered by row then label (copairs' order; pandas keeps copairs' index).
    """
    specs = {"pos_sameby": _as_list(pos_sameby, "pos_sameby"), "pos_diffby": _as_list(pos_diffby, "pos_diffby"),
             "neg_sameby": _as_list(neg_sameby, "neg_sameby"), "neg_diffby": _as_list(neg_diffby, "neg_diffby")}
    validate_distance(distance)
    fr.check_frame(meta)
    fr.require_columns(meta, [multilabel_col])
    meta, x, plain = _prepare(meta, feats, specs, multilabel_col)
    codes, pos, neg, _ = _encode_rules(meta, plain, multilabel_col)
    lists = fr.column_numpy(meta, multilabel_col)
    bad = fr.null_mask(lists) if lists.dtype == object else np.zeros(len(lists), bool)
    if bad.any():
        raise ValueError(f"multilabel column {multilabel_col!r} has missing values (first at row "
                         f"{int(np.flatnonzero(bad)[0])})")
    sets: list[tuple] = []
    for i, v in enumerate(lists):
        if isinstance(v, str) or not hasattr(v, "__iter__"):
            raise ValueError(f"multilabel column {multilabel_col!r} row {i} is {v!r}, not a list of labels "
                             "(split strings first, e.g. targets on '|')")
        sets.append(tuple(sorted(set(v))))
    labels = sorted({lab for s in sets for lab in s})
    lab_ix = {lab: i for i, lab in enumerate(labels)}
    set_ix: dict[tuple, int] = {}
    labelset = np.array([set_ix.setdefault(s, len(set_ix)) for s in sets], dtype=np.int64)
    label_sets = np.zeros((len(set_ix), max(len(labels), 1)), dtype=bool)
    for s, k in set_ix.items():
        for lab in s:
            label_sets[k, lab_ix[lab]] = True
    res = run_engine(x, codes, pos, neg, labelset=labelset, label_sets=label_sets,
                     distance=distance, batch_size=batch_size, backend=backend, device=device,
                     progress=progress_bar)
    if len(res.row) == 0:
        raise UnpairedException("Unable to find positive pairs.")
    if res.n_neg.sum() == 0:
        raise UnpairedException("Unable to find any negative pairs.")
    # copairs orders by row, then label; its pandas index is the position in (label, row) order
    order = np.lexsort((res.label, res.row))
    rows, labs = res.row[order], res.label[order]
    ap, n_pos, n_neg = res.ap[order], res.n_pos[order], res.n_neg[order]
    napx = _normalize_ap(ap, n_pos, n_neg)
    base = fr.take(meta, rows)
    lab_values = [labels[i] for i in labs]
    if fr.is_pandas(base):
        base = base.drop(columns=[multilabel_col])
        idx = np.empty(len(rows), dtype=np.int64)
        idx[np.lexsort((rows, labs))] = np.arange(len(rows))
        out = fr.with_columns(base, {"average_precision": ap, "normalized_average_precision": napx,
                                     "n_pos_pairs": n_pos.astype(np.uint32),
                                     "n_total_pairs": (n_pos + n_neg).astype(np.uint32),
                                     multilabel_col: np.asarray(lab_values, dtype=object)}, index=idx)
        return out
    base = base.drop(multilabel_col)
    return base.with_columns(pl.Series("average_precision", ap), pl.Series("normalized_average_precision", napx),
                             pl.Series("n_pos_pairs", n_pos.astype(np.int64)),
                             pl.Series("n_total_pairs", (n_pos + n_neg).astype(np.int64)),
                             pl.Series(multilabel_col, lab_values))


def _group_ids(df: Any, sameby: list[str]) -> tuple[np.ndarray, Any]:
    """Group id per row (-1 for a missing key) in sorted-key order, and a frame of the group keys."""
    if fr.is_pandas(df):
        g = df.groupby(sameby, observed=True, sort=True)
        gid = g.ngroup().to_numpy()
        keys = g.size().reset_index()[sameby]
        return gid.astype(np.int64), keys
    pdf = df.select(sameby).with_row_index("_row")
    valid = pdf.drop_nulls(sameby)
    for c in sameby:
        if valid[c].dtype.is_float():
            valid = valid.filter(~pl.col(c).is_nan())
    keys = valid.select(sameby).unique().sort(sameby, nulls_last=True).with_row_index("_gid")
    joined = valid.join(keys, on=sameby, how="left", nulls_equal=False)
    gid = np.full(df.height, -1, dtype=np.int64)
    gid[joined["_row"].to_numpy()] = joined["_gid"].to_numpy()
    return gid, keys.drop("_gid")


def mean_average_precision(
    ap: Any,
    *,
    sameby: str | Sequence[str],
    null_size: int,
    threshold: float,
    seed: int | None,
    progress_bar: bool | None = None,
    max_workers: int | None = None,
    cache_dir: Any = None,
) -> Any:
    """Mean AP per group with permutation p-values and Benjamini–Hochberg q-values (copairs-compatible).

    Parameters
    ----------
    ap : DataFrame
        Output of :func:`average_precision` (or copairs'): needs ``average_precision``, ``n_pos_pairs``,
        ``n_total_pairs`` and the ``sameby`` columns; ``normalized_average_precision`` is averaged when present.
    sameby : str or list of str
        Group columns (e.g. the perturbation id). Rows with missing keys are dropped (pandas' groupby rule).
    null_size : int
        Random rank lists per (n_pos, n_total) configuration.
    threshold : float
        Significance level for ``below_p`` / ``below_corrected_p``.
    seed : int or None
        Seed of copairs' null generator.
    progress_bar : bool, optional
        tqdm bar over groups: None (default) when stderr is a terminal, True always, False never.
    max_workers, cache_dir
        Accepted for copairs compatibility and ignored (nothing is cached).

    Returns
    -------
    DataFrame (same type as ``ap``)
        One row per group, sorted by the group keys: ``sameby`` columns, ``mean_average_precision``,
        ``indices`` (row positions in the filtered AP table, as copairs), ``mean_normalized_average_precision``
        (if available), ``p_value``, ``corrected_p_value`` (BH), ``below_p``, ``below_corrected_p``.

    Notes
    -----
    Rows with NaN AP or no positive pair are dropped first. A group's null is the element-wise mean of its
    members' null draws (one draw per member's configuration); ``p = (#{null > mAP} + 1) / (null_size + 1)``,
    compared in float32 as copairs does (its mAP reaches the comparison as a Python float, which NumPy 2 casts to
    the float32 null's precision).
    The draws reproduce copairs' generator exactly (:mod:`subcell_screen.score._null`), so p-values are *equal*
    to copairs' for the same ``seed``/``null_size`` when copairs starts from an empty ``cache_dir``.
    """
    del max_workers, cache_dir
    fr.check_frame(ap, name="ap")
    sameby = _as_list(sameby, "sameby")
    fr.require_columns(ap, ["average_precision", "n_pos_pairs", "n_total_pairs", *sameby], name="ap")
    apv = np.asarray(fr.column_numpy(ap, "average_precision"), dtype=np.float64)
    npos = np.asarray(fr.column_numpy(ap, "n_pos_pairs"), dtype=np.float64)
    ntot = np.asarray(fr.column_numpy(ap, "n_total_pairs"), dtype=np.float64)
    keep = ~np.isnan(apv) & (np.nan_to_num(npos) > 0)
    sub = fr.take(ap, np.flatnonzero(keep))
    apv, npos, ntot = apv[keep], npos[keep].astype(np.int64), ntot[keep].astype(np.int64)
    has_norm = "normalized_average_precision" in fr.columns_of(sub)
    if not len(apv):
        raise ValueError("no AP values with positive pairs to average")
    confs, rev = np.unique(np.column_stack([npos, ntot]), axis=0, return_inverse=True)
    rev = rev.reshape(-1)
    gid, keys = _group_ids(sub, sameby)
    valid = gid >= 0
    n_groups = int(gid.max()) + 1 if valid.any() else 0
    gmap = kahan_group_mean(apv[valid], gid[valid], n_groups)
    gnorm = (kahan_group_mean(np.asarray(fr.column_numpy(sub, "normalized_average_precision"),
                                         dtype=np.float64)[valid], gid[valid], n_groups) if has_norm else None)
    members = [np.flatnonzero(gid == g) for g in range(n_groups)]
    cache = NullCache(confs, null_size, seed)
    pvals = np.empty(n_groups, dtype=np.float64)
    order = sorted(range(n_groups), key=lambda g: (int(rev[members[g][0]]), g))
    it = order
    if progress_bar is not False:
        from tqdm.auto import tqdm

        it = tqdm(order, desc="mAP p-values", unit="group",
                  disable=None if progress_bar is None else not progress_bar)
    for g in it:
        idx = members[g]
        stack = np.stack([cache.get(int(c)) for c in rev[idx]])
        null = stack.mean(axis=0)
        # copairs compares against a Python float, which NumPy 2 casts to the array's float32 (NEP 50)
        num = (null > np.float32(gmap[g])).sum()
        pvals[g] = (num + 1) / (null_size + 1)
    corrected = fdr_bh(pvals)
    cols: dict[str, Any] = {}
    if fr.is_pandas(ap):
        import pandas as pd

        out = keys.reset_index(drop=True).copy()
        out["mean_average_precision"] = gmap
        out["indices"] = pd.Series([list(m) for m in members], dtype=object)
        if has_norm:
            out["mean_normalized_average_precision"] = gnorm
        out["p_value"] = pvals
        out["corrected_p_value"] = corrected
        out["below_p"] = pvals < threshold
        out["below_corrected_p"] = corrected < threshold
        return out
    cols = {"mean_average_precision": gmap, "indices": [m.tolist() for m in members]}
    if has_norm:
        cols["mean_normalized_average_precision"] = gnorm
    cols.update({"p_value": pvals, "corrected_p_value": corrected, "below_p": pvals < threshold,
                 "below_corrected_p": corrected < threshold})
    return keys.with_columns([pl.Series(k, v) for k, v in cols.items()])


def mean_average_precision_hierarchical(
    ap: Any,
    *,
    sameby: str | Sequence[str],
    null_size: int,
    threshold: float,
    seed: int | None,
    hierarchical_by: str | Sequence[str],
    progress_bar: bool | None = None,
    max_workers: int | None = None,
    cache_dir: Any = None,
) -> Any:
    """Mean AP with two-stage (hierarchical) FDR control, for dose series (copairs 0.5.5
    ``mean_average_precision_hierarchical``).

    mAP and p-values are :func:`mean_average_precision`'s. Stage 1: the smallest p-value of each
    ``hierarchical_by`` group (e.g. a compound over its doses) is BH-corrected across groups; a group passes
    when that q-value is <= 0.05 (statsmodels' ``multipletests`` default, as copairs; ``threshold`` only sets
    ``below_p``/``below_corrected_p``). Stage 2: within each passing group the members' p-values are
    BH-corrected (a single member keeps its p-value); members of other groups get ``corrected_p_value = 1``.

    Parameters
    ----------
    ap : DataFrame
        As :func:`mean_average_precision`.
    sameby : str or list of str
        mAP groups, e.g. ``["Metadata_compound", "Metadata_dose"]``.
    hierarchical_by : str or list of str
        A proper subset of ``sameby``, e.g. ``["Metadata_compound"]``.
    null_size, threshold, seed, progress_bar, max_workers, cache_dir
        As :func:`mean_average_precision`.

    Returns
    -------
    DataFrame (same type as ``ap``)
        :func:`mean_average_precision`'s columns with ``stage1_p_value``, ``stage1_corrected_p_value`` and
        ``stage1_significant`` inserted before ``corrected_p_value`` (copairs' column order).

    Raises
    ------
    ValueError
        ``hierarchical_by`` is not a proper subset of ``sameby``.
    """
    sameby = _as_list(sameby, "sameby")
    hier = _as_list(hierarchical_by, "hierarchical_by")
    if not set(hier) <= set(sameby):
        raise ValueError(f"hierarchical_by columns {hier} must be a subset of sameby columns {sameby}")
    if set(hier) == set(sameby):
        raise ValueError(f"hierarchical_by columns {hier} must be a proper subset of sameby columns {sameby}; "
                         "for one level use mean_average_precision")
    m = mean_average_precision(ap, sameby=sameby, null_size=null_size, threshold=threshold, seed=seed,
                               progress_bar=progress_bar, max_workers=max_workers, cache_dir=cache_dir)
    pvals = np.asarray(fr.column_numpy(m, "p_value"), dtype=np.float64)
    gid, _ = _group_ids(m, hier)
    n_groups = int(gid.max()) + 1 if len(gid) else 0
    stage1 = np.full(n_groups, np.inf)
    np.minimum.at(stage1, gid, pvals)
    stage1_q = fdr_bh(stage1)
    passed = fdr_bh_reject(stage1, alpha=0.05)
    corrected = np.ones(len(pvals))
    for g in np.flatnonzero(passed):
        rows = np.flatnonzero(gid == g)
        corrected[rows] = pvals[rows] if len(rows) == 1 else fdr_bh(pvals[rows])
    base = [c for c in fr.columns_of(m) if c not in ("corrected_p_value", "below_p", "below_corrected_p")]
    out = m[base] if fr.is_pandas(m) else m.select(base)
    return fr.with_columns(out, {"stage1_p_value": stage1[gid], "stage1_corrected_p_value": stage1_q[gid],
                                 "stage1_significant": passed[gid], "corrected_p_value": corrected,
                                 "below_p": pvals < threshold, "below_corrected_p": corrected < threshold})


def fraction_retrieved(map_table: Any, *, threshold: float | None = None) -> float:
    """Share of groups retrieved: ``below_corrected_p`` (or ``corrected_p_value < threshold`` when given).

    Parameters
    ----------
    map_table : DataFrame
        Output of :func:`mean_average_precision`.
    threshold : float, optional
        Recompute the call at this q-value threshold instead of using ``below_corrected_p``.

    Returns
    -------
    float
        In [0, 1]; NaN for an empty table.
    """
    if threshold is None:
        calls = np.asarray(fr.column_numpy(map_table, "below_corrected_p"), dtype=bool)
    else:
        calls = np.asarray(fr.column_numpy(map_table, "corrected_p_value"), dtype=np.float64) < threshold
    return float(calls.mean()) if len(calls) else float("nan")
