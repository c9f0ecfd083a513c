"""Replicate correlation and percent replicating (copairs 0.5 ``copairs.replicating``).

:func:`corr_between_replicates` gives the median Pearson correlation between the replicate pairs of each group;
:func:`correlation_test` adds copairs' null of median correlations between random non-replicate pairs, from
which :meth:`CorrelationTestResult.percent_score` is "percent replicating" (the share of groups whose median
replicate correlation exceeds the null's 95th percentile).

Pairs, their orientation and the null draws follow copairs' ``Matcher`` step by step (its ``numpy`` uniform
stream with seed 0 and its Python-set iteration order), so the numbers equal copairs' on the same input.
Correlations are computed in float64 and stored in float32, as copairs does.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import polars as pl

from ..profiles import frames as fr

__all__ = ["corr_between_replicates", "correlation_test", "CorrelationTestResult"]

#: copairs' similarity batch size (pairs per block); only memory depends on it.
_BATCH = 20000


def _pair_corr(x: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row pair, copairs' ``pairwise_corr`` arithmetic, stored as float32."""
    out = np.empty(len(pairs), dtype=np.float32)
    for i in range(0, len(pairs), _BATCH):
        a = x[pairs[i:i + _BATCH, 0]]
        b = x[pairs[i:i + _BATCH, 1]]
        ac = a - a.mean(axis=1, keepdims=True)
        bc = b - b.mean(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[i:i + len(a)] = (ac * bc).sum(axis=1) / np.sqrt((ac ** 2).sum(axis=1) * (bc ** 2).sum(axis=1))
    return out


class _Matcher:
    """copairs' ``Matcher`` for plain column lists: same groups, pair orientation and random stream."""

    def __init__(self, meta: Any, columns: Sequence[str], seed: int = 0) -> None:
        import pandas as pd

        pdf = fr.to_polars(meta).select(list(columns)).to_pandas() if not fr.is_pandas(meta) else \
            meta[list(columns)].reset_index(drop=True)
        self.values = pdf.to_numpy()
        self.col_to_ix = {c: i for i, c in enumerate(columns)}
        self.reverse: dict[str, dict[Any, set]] = {}
        n_pairs: dict[str, int] = {}
        for c in columns:
            idx = pdf[c].groupby(pdf[c], observed=True).indices  # missing values form no group (pandas)
            self.reverse[c] = {k: set(v) for k, v in idx.items()}
            n_pairs[c] = sum(math.comb(len(v), 2) for v in idx.values())
        order = sorted(n_pairs, key=n_pairs.get)
        self.col_order = {c: i for i, c in enumerate(order)}
        self.frozen_valid = frozenset(range(len(self.values)))
        self._pd_isna = pd.isna
        self._rng = np.random.default_rng(seed)
        self._rand = iter(())

    def _uniform(self) -> float:
        try:
            return next(self._rand)
        except StopIteration:
            self._rand = iter(self._rng.uniform(size=int(1e6)))
            return next(self._rand)

    def _integers(self, lo: int, hi: int) -> int:
        return int(self._uniform() * (hi - lo + 1) + lo)

    def _filter_diffby(self, idx: int, diffby: Sequence[str], valid: set) -> set:
        row = self.values[idx]
        for col in diffby:
            val = row[self.col_to_ix[col]]
            if self._pd_isna(val):
                continue
            valid = valid - self.reverse[col][val]
        return valid

    def _pairs_single(self, col: str, diffby: Sequence[str]) -> dict[Any, list[tuple[int, int]]]:
        pairs: dict[Any, list[tuple[int, int]]] = {}
        for key, rows in self.reverse[col].items():
            processed: set = set()
            for id1 in rows:
                valid = set(rows)
                processed.add(id1)
                valid -= processed
                valid = self._filter_diffby(id1, diffby, valid)
                for id2 in valid:
                    pairs.setdefault(key, []).append((id1, id2))
        return pairs

    def all_pairs(self, sameby: Sequence[str], diffby: Sequence[str]) -> dict[tuple, list[tuple[int, int]]]:
        """Replicate pairs per sameby key (a tuple of the key values), in copairs' order and orientation."""
        if len(sameby) == 1:
            return {(k,): v for k, v in self._pairs_single(sameby[0], diffby).items()}
        cols = sorted(sameby, key=self.col_order.get)
        ix = [self.col_to_ix[c] for c in cols[1:]]
        out: dict[tuple, list[tuple[int, int]]] = {}
        for key, cand in self._pairs_single(cols[0], diffby).items():
            for id1, id2 in cand:
                r1, r2 = self.values[id1], self.values[id2]
                if np.all(r1[ix] == r2[ix]):
                    named = dict(zip(cols, (key, *r1[ix])))
                    out.setdefault(tuple(named[c] for c in sameby), []).append((id1, id2))
        return out

    def null_pair(self, diffby: Sequence[str], n_tries: int = 5) -> tuple[int, int]:
        for _ in range(n_tries):
            valid = set(self.frozen_valid)
            id1 = self._integers(0, len(valid) - 1)
            valid.remove(id1)
            valid = self._filter_diffby(id1, diffby, valid)
            if valid:
                items = list(valid)
                return id1, items[self._integers(0, len(items) - 1)]
        raise ValueError(f"no row differs from the sampled rows in all of {list(diffby)} (tried {n_tries} times)")


def _check(meta: Any, feats: Any, sameby: Sequence[str] | str, diffby: Sequence[str] | str
           ) -> tuple[np.ndarray, list[str], list[str]]:
    fr.check_frame(meta, name="meta")
    same = fr.as_list(sameby)
    diff = fr.as_list(diffby)
    if not same:
        raise ValueError("sameby must name at least one column")
    if set(same) & set(diff):
        raise ValueError("sameby and diffby must be disjoint lists")
    fr.require_columns(meta, [*same, *diff])
    x = fr.as_matrix(feats, n=fr.n_rows(meta))
    return x, same, diff


def _replicate_table(meta: Any, x: np.ndarray, same: list[str], diff: list[str]) -> tuple[Any, int]:
    pairs = _Matcher(meta, [*same, *diff]).all_pairs(same, diff)
    if not pairs:
        raise ValueError(f"no replicate pairs: no two rows share {same} and differ in {diff}")
    keys = sorted(pairs, key=lambda k: tuple((v is None, str(type(v)), v) for v in k))
    pair_ix = np.asarray([p for k in keys for p in pairs[k]], dtype=np.int64)
    corr = _pair_corr(x, pair_ix)
    bounds = np.cumsum([0] + [len(pairs[k]) for k in keys])
    spans = list(itertools.pairwise(bounds))
    med = np.array([np.nanmedian(corr[a:b]) if (~np.isnan(corr[a:b])).any() else np.nan for a, b in spans],
                   dtype=np.float64)
    count = np.array([int((~np.isnan(corr[a:b])).sum()) for a, b in spans])
    first = np.array([len(set(pair_ix[a:b, 0].tolist())) for a, b in spans])
    n_rep = int(np.median(first))
    cols = {c: [k[j] for k in keys] for j, c in enumerate(same)}
    if fr.is_pandas(meta):
        import pandas as pd

        table = pd.DataFrame(cols)
        for c in same:
            table[c] = table[c].astype(meta[c].dtype, errors="ignore")
        table["median"] = med
        table["count"] = count
    else:
        schema = fr.to_polars(meta).select(same).schema
        table = pl.DataFrame(cols, schema=schema).with_columns(pl.Series("median", med),
                                                               pl.Series("count", count, dtype=pl.Int64))
    return table, n_rep


def corr_between_replicates(
    meta: Any,
    feats: Any,
    *,
    sameby: str | Sequence[str],
    diffby: str | Sequence[str] = (),
    progress_bar: bool | None = None,
) -> tuple[Any, int]:
    """Median Pearson correlation between replicate profiles, per group (copairs ``corr_between_replicates``).

    Replicates share every ``sameby`` column and differ in every ``diffby`` column (rows with a missing
    ``sameby`` value pair with nothing; a missing ``diffby`` value does not restrict).

    Parameters
    ----------
    meta : DataFrame, N rows
        Metadata (polars or pandas).
    feats : (N, D) array
        Profiles.
    sameby, diffby : str or list of str
    progress_bar : bool, optional
        Accepted for copairs compatibility (no effect).

    Returns
    -------
    (DataFrame, int)
        One row per group with replicate pairs, sorted by key: the ``sameby`` columns, ``median`` (median
        pair correlation, float64 of the float32 pair values) and ``count`` (pairs); and copairs' "median
        number of replicates" (the median over groups of the number of distinct first members of the pairs,
        ``k - 1`` for a group of ``k`` replicates without ``diffby``). copairs returns the same numbers as a
        pandas frame indexed by the ``"_"``-joined key.
    """
    del progress_bar
    x, same, diff = _check(meta, feats, sameby, diffby)
    return _replicate_table(meta, x, same, diff)


@dataclass(frozen=True)
class CorrelationTestResult:
    """Replicate correlations and their null (copairs ``CorrelationTestResult``).

    Attributes
    ----------
    corr_df : DataFrame
        :func:`corr_between_replicates`' table.
    corr_dist : numpy.ndarray
        ``(G,)`` median replicate correlation per group (``corr_df["median"]``).
    null_dist : numpy.ndarray
        ``(n_samples,)`` medians of the correlations of ``n_replicates`` random non-replicate pairs.
    """

    corr_df: Any = field(repr=False)
    corr_dist: np.ndarray = field(repr=False)
    null_dist: np.ndarray = field(repr=False)

    def percent_score(self, how: Literal["left", "right", "both"] = "right"
                      ) -> tuple[float, float | None, float | None]:
        """Share of groups beyond the null's 5th/95th percentile: ``(score, left_threshold, right_threshold)``.

        ``"right"`` (percent replicating): median correlation above the 95th percentile; ``"left"``: below the
        5th; ``"both"``: the sum of the two shares.
        """
        corr = self.corr_dist[~np.isnan(self.corr_dist)]
        left = right = None
        if how in ("left", "both"):
            left = float(np.nanpercentile(self.null_dist, 5))
        if how in ("right", "both"):
            right = float(np.nanpercentile(self.null_dist, 95))
        if how not in ("left", "right", "both"):
            raise ValueError(f"how must be 'left', 'right' or 'both', got {how!r}")
        score = 0.0
        if right is not None:
            score += float(np.nanmean((corr > right).astype(float)))
        if left is not None:
            score += float(np.nanmean((corr < left).astype(float)))
        return score, left, right

    def wasserstein_distance(self) -> float:
        """Wasserstein distance between the null and the replicate-correlation distributions."""
        from scipy.stats import wasserstein_distance

        return float(wasserstein_distance(self.null_dist, self.corr_dist))


def correlation_test(
    meta: Any,
    feats: Any,
    *,
    sameby: str | Sequence[str],
    diffby: str | Sequence[str] = (),
    n_samples: int = 1000,
    progress_bar: bool | None = None,
) -> CorrelationTestResult:
    """Replicate correlations against a null of random non-replicate pairs (copairs ``correlation_test``).

    The null holds ``n_samples`` medians, each over ``n_replicates = min(median number of replicates, 50)``
    correlations of random pairs that differ in every ``sameby`` and ``diffby`` column, drawn as copairs draws
    them (seed 0), so :meth:`CorrelationTestResult.percent_score` equals copairs'.

    Parameters
    ----------
    meta, feats, sameby, diffby
        As :func:`corr_between_replicates`.
    n_samples : int
        Size of the null.
    progress_bar : bool, optional
        Accepted for copairs compatibility (no effect).

    Returns
    -------
    CorrelationTestResult
    """
    del progress_bar
    x, same, diff = _check(meta, feats, sameby, diffby)
    table, n_rep = _replicate_table(meta, x, same, diff)
    n_rep = min(n_rep, 50)
    if n_rep < 1:
        raise ValueError("the median group has no replicate pair; cannot size the null")
    cols = [*same, *diff]
    matcher = _Matcher(meta, cols)
    null_pairs = np.asarray([matcher.null_pair(cols) for _ in range(n_rep * int(n_samples))], dtype=np.int64)
    corr = _pair_corr(x, null_pairs).reshape(-1, n_rep)
    null = np.nanmedian(corr, axis=1)
    return CorrelationTestResult(corr_df=table, corr_dist=np.asarray(fr.column_numpy(table, "median"),
                                                                     dtype=np.float64), null_dist=null)
