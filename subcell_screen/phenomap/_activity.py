"""Which items differ from the negative controls: the distance of a consensus profile from the controls' centre,
against consensus profiles of random negative-control rows.

Why the map needs it: cosine similarity ignores magnitude, so an inactive perturbation (its consensus is noise
around the controls) still gets a direction, and a few inactive items always land together in some cluster by
chance. Their annotation terms would then be tested like anyone else's, and with many genuinely enriched
clusters in the same Benjamini-Hochberg family such chance co-clusterings pass. Only active items carry terms
in the enrichment tests (they all stay on the map and in its clusters).
"""

from __future__ import annotations

import numpy as np

__all__ = ["activity_test", "replicate_test"]


def activity_test(
    x: np.ndarray,
    n_rows: np.ndarray,
    controls: np.ndarray,
    *,
    size: int = 1000,
    seed: int = 0,
    method: str = "median",
) -> np.ndarray:
    """p-value of each item's distance from the negative controls.

    Statistic: the Euclidean norm of the item's consensus profile (profiles normalised against the controls
    are centred on them). Null: norms of pseudo-items, each the ``method`` consensus of ``r`` control rows
    drawn without replacement, where ``r`` is the item's number of rows capped at half the control rows (a
    pseudo-item of more rows would be nearly the same every draw; an item with more rows than that is
    judged conservatively). ``p = (1 + #{null >= norm}) / (1 + size)``.

    Parameters
    ----------
    x : ndarray, (n_items, n_features)
        Consensus profiles.
    n_rows : ndarray, (n_items,), int
        Rows combined into each item.
    controls : ndarray, (m, n_features)
        Negative-control rows (finite), ``m >= 2``.
    size, seed, method
        Pseudo-items per distinct ``r``, random seed, ``median`` or ``mean``.

    Returns
    -------
    ndarray, (n_items,), float64
    """
    m = controls.shape[0]
    if m < 2:
        raise ValueError(f"the activity test needs at least 2 negative-control rows, got {m}")
    reduce = np.median if method == "median" else np.mean
    norms = np.linalg.norm(x, axis=1)
    r_eff = np.minimum(np.maximum(np.asarray(n_rows, dtype=np.int64), 1), max(1, m // 2))
    p = np.empty(len(norms))
    for r in np.unique(r_eff):
        rng = np.random.default_rng([seed, int(r)])
        null = np.sort(np.linalg.norm(
            np.stack([reduce(controls[rng.choice(m, int(r), replace=False)], axis=0) for _ in range(size)]), axis=1))
        sel = r_eff == r
        ge = size - np.searchsorted(null, norms[sel], side="left")
        p[sel] = (1.0 + ge) / (1.0 + size)
    return p


def replicate_test(
    rows_unit: np.ndarray,
    item_rows: list[np.ndarray],
    pool: np.ndarray,
    pool_items: np.ndarray,
    *,
    size: int = 1000,
    seed: int = 0,
    max_rows: int = 16,
) -> np.ndarray:
    """p-value of each item's replicate consistency (how alike its own rows are).

    Statistic: the mean cosine similarity over pairs of the item's rows. Null: the same statistic for sets of
    as many rows drawn from *different* items of the pool (non-replicates), so that anything all rows share
    (a plate's residual offset after normalisation, a batch) is in the null too; this is the idea of
    "percent replicating", as a p-value per item. An item of more than ``max_rows`` rows is represented by
    ``max_rows`` of them (a seeded draw; at most as many rows as the pool has items). Items with one row get
    NaN (not testable).

    Parameters
    ----------
    rows_unit : ndarray, (n_rows, n_features)
        Unit-norm rows of the input frame (non-finite rows as zeros).
    item_rows : list of ndarray
        Rows of each item.
    pool : ndarray, (m,), int
        Rows the null draws from (e.g. every non-control row).
    pool_items : ndarray, (m,), int
        Item of each pool row (a null set never holds two rows of one item).
    size, seed, max_rows
        Null sets per set size, random seed, cap on rows per item.

    Returns
    -------
    ndarray, (n_items,), float64
    """
    rng = np.random.default_rng(seed)
    uniq_items = np.unique(pool_items)
    by_item = {it: pool[pool_items == it] for it in uniq_items}
    max_rows = min(max_rows, uniq_items.size)  # a null set takes one row from each of r different items

    def stat(rows: np.ndarray) -> float:
        u = rows_unit[rows]
        g = u @ u.T
        r = len(rows)
        return float((g.sum() - np.trace(g)) / (r * (r - 1)))

    picked = []
    for rows in item_rows:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size > max_rows:
            rows = np.sort(rng.choice(rows, max_rows, replace=False))
        picked.append(rows)
    observed = np.array([stat(r) if r.size >= 2 else np.nan for r in picked])
    p = np.full(len(picked), np.nan)
    sizes = sorted({r.size for r in picked if r.size >= 2})
    for r in sizes:
        null = np.empty(size)
        for b in range(size):
            chosen = rng.choice(uniq_items, r, replace=False)
            null[b] = stat(np.array([rng.choice(by_item[it]) for it in chosen]))
        null.sort()
        sel = np.array([x.size == r for x in picked])
        ge = size - np.searchsorted(null, observed[sel], side="left")
        p[sel] = (1.0 + ge) / (1.0 + size)
    return p
