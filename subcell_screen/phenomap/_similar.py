"""Similarity search: nearest items by cosine similarity, with p-values against a null of unrelated pairs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["nonreplicate_null", "negcon_null", "empirical_p", "neighbour_table_arrays", "NULLS"]

#: Null distributions for similarity p-values.
NULLS = ("nonreplicate", "negcon")

_BLOCK = 1024


def nonreplicate_null(unit: np.ndarray, groups: np.ndarray, *, size: int = 100_000, seed: int = 0) -> np.ndarray:
    """Cosine similarities of item pairs that are not replicates of each other, sorted ascending.

    Parameters
    ----------
    unit : ndarray, (n, d)
        Unit-norm consensus profiles.
    groups : ndarray, (n,), int
        Replicate group of each item (e.g. the perturbation, when items are perturbation x dose); pairs within
        a group are not part of the null.
    size : int
        All pairs are used when there are at most ``size`` of them; otherwise ``size`` pairs drawn uniformly
        (with a seeded generator) among the non-replicate pairs.
    seed : int
        Random seed.

    Returns
    -------
    ndarray, (m,), float64
    """
    n = unit.shape[0]
    groups = np.asarray(groups)
    n_pairs = n * (n - 1) // 2
    if n_pairs <= size:
        i, j = np.triu_indices(n, 1)
        keep = groups[i] != groups[j]
        i, j = i[keep], j[keep]
    else:
        rng = np.random.default_rng(seed)
        i = np.empty(0, np.int64)
        j = np.empty(0, np.int64)
        while i.size < size:  # rejection of self and replicate pairs
            a = rng.integers(0, n, 2 * size)
            b = rng.integers(0, n, 2 * size)
            keep = (a != b) & (groups[a] != groups[b])
            i, j = np.concatenate([i, a[keep]]), np.concatenate([j, b[keep]])
        i, j = i[:size], j[:size]
    return np.sort(np.einsum("ij,ij->i", unit[i], unit[j]))


def negcon_null(query: np.ndarray, negcon: np.ndarray, *, n_rows: int, size: int = 1000, seed: int = 0,
                method: str = "median") -> np.ndarray:
    """Per query, cosine similarities to consensus profiles of random negative-control rows, sorted.

    A pseudo-item is the ``method`` consensus of ``n_rows`` negative-control rows drawn without replacement;
    under the null "the neighbour is an inactive perturbation", the query's similarity to a neighbour is
    distributed like its similarity to such pseudo-items.

    Parameters
    ----------
    query : ndarray, (q, d)
        Unit-norm query profiles.
    negcon : ndarray, (m, d)
        Negative-control profiles (raw rows, e.g. wells).
    n_rows : int
        Rows per pseudo-item (typically the median number of rows per item; at most ``m``).
    size, seed, method
        Pseudo-items drawn, random seed, ``median`` or ``mean``.

    Returns
    -------
    ndarray, (q, size), float64
        Sorted ascending per row.
    """
    m = negcon.shape[0]
    if m < 2:
        raise ValueError(f"a negcon null needs at least 2 negative-control rows, got {m}")
    k = int(min(max(n_rows, 1), m))
    rng = np.random.default_rng(seed)
    reduce = np.median if method == "median" else np.mean
    pseudo = np.stack([reduce(negcon[rng.choice(m, k, replace=False)], axis=0) for _ in range(size)])
    norms = np.linalg.norm(pseudo, axis=1)
    pseudo = pseudo[norms > 0] / norms[norms > 0, None]
    return np.sort(query @ pseudo.T, axis=1)


def empirical_p(similarity: np.ndarray, null_sorted: np.ndarray) -> np.ndarray:
    """One-sided empirical p-values ``(1 + #{null >= s}) / (1 + m)``.

    ``null_sorted`` is 1-D (one null for all) or 2-D with one sorted null per row of ``similarity``.
    """
    s = np.asarray(similarity, dtype=np.float64)
    if null_sorted.ndim == 1:
        m = null_sorted.size
        ge = m - np.searchsorted(null_sorted, s, side="left")
        return (1.0 + ge) / (1.0 + m)
    m = null_sorted.shape[1]
    out = np.empty_like(s)
    for r in range(s.shape[0]):
        out[r] = (1.0 + m - np.searchsorted(null_sorted[r], s[r], side="left")) / (1.0 + m)
    return out


def neighbour_table_arrays(
    unit: np.ndarray,
    query_rows: Sequence[int] | np.ndarray,
    *,
    k: int,
    groups: np.ndarray,
    null_sorted: np.ndarray,
    exclude_replicates: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` most similar other items of each query row, with p- and q-values.

    q-values are Benjamini-Hochberg over all the query's comparisons (every other item), so they do not
    depend on ``k``.

    Parameters
    ----------
    unit : ndarray, (n, d)
        Unit-norm profiles of all items.
    query_rows : sequence of int
        Rows of ``unit`` to query.
    k : int
        Neighbours per query (at most ``n - 1``).
    groups : ndarray, (n,)
        Replicate group per item (used with ``exclude_replicates``).
    null_sorted : ndarray
        Sorted null: 1-D, or 2-D with one row per query (see :func:`empirical_p`).
    exclude_replicates : bool
        Leave out items of the query's own group (e.g. other doses of the same compound).

    Returns
    -------
    query, neighbour, rank, similarity, p_value, q_value : ndarrays of one length
        Flattened rows, ``rank`` 1 = most similar; ties in similarity ordered by item row.
    """
    from statsmodels.stats.multitest import multipletests

    q_rows = np.asarray(query_rows, dtype=np.int64)
    n = unit.shape[0]
    out: list[list[np.ndarray]] = [[], [], [], [], [], []]
    for start in range(0, q_rows.size, _BLOCK):
        block = q_rows[start:start + _BLOCK]
        s = unit[block] @ unit.T
        for r, qi in enumerate(block):
            mask = np.ones(n, bool)
            mask[qi] = False
            if exclude_replicates:
                mask &= groups != groups[qi]
            cand = np.flatnonzero(mask)
            if cand.size == 0:
                continue
            sims = s[r, cand]
            null = null_sorted if null_sorted.ndim == 1 else null_sorted[start + r]
            p = empirical_p(sims, null)
            q = multipletests(p, method="fdr_bh")[1]
            order = np.lexsort((cand, -sims))[:k]
            out[0].append(np.full(order.size, qi))
            out[1].append(cand[order])
            out[2].append(np.arange(1, order.size + 1))
            out[3].append(sims[order])
            out[4].append(p[order])
            out[5].append(q[order])
    if not out[0]:
        return tuple(np.zeros(0, t) for t in (np.int64, np.int64, np.int64, float, float, float))  # type: ignore[return-value]
    return tuple(np.concatenate(part) for part in out)  # type: ignore[return-value]
