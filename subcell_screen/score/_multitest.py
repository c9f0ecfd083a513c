"""Benjamini–Hochberg q-values, the same arithmetic as statsmodels' ``multipletests(method="fdr_bh")``.

mAP scoring needs only this one correction; computing it here (same operations in the same order, so the
results are bitwise equal to statsmodels', checked in ``tests/test_score_multitest.py``) keeps scoring from
importing statsmodels, which pulls in pandas and SciPy (~130 MB of resident memory for a few lines of numpy).
"""

from __future__ import annotations

import numpy as np

__all__ = ["fdr_bh", "fdr_bh_reject"]


def fdr_bh(pvals: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values).

    Parameters
    ----------
    pvals : array_like, shape (n,)
        p-values in [0, 1].

    Returns
    -------
    numpy.ndarray, shape (n,), float64
        ``min_{j >= i} p_(j) * n / j`` in sorted order, capped at 1, returned in the input order. Equal to
        ``statsmodels.stats.multitest.multipletests(pvals, method="fdr_bh")[1]``.

    Raises
    ------
    ValueError
        On a p-value that is NaN or outside [0, 1] (statsmodels would return all-NaN or silently wrong
        q-values).
    """
    p = np.asarray(pvals, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p-values must be 1-D, got shape {p.shape}")
    if p.size == 0:
        return np.zeros(0)
    bad = np.flatnonzero(~((p >= 0) & (p <= 1)))
    if bad.size:
        raise ValueError(f"p-values must lie in [0, 1]; entry {int(bad[0])} is {float(p[bad[0]])} "
                         f"({bad.size} invalid in all)")
    order = np.argsort(p)
    p_sorted = np.take(p, order)
    ecdf = np.arange(1, p.size + 1) / float(p.size)
    q_sorted = np.minimum.accumulate((p_sorted / ecdf)[::-1])[::-1]
    q_sorted[q_sorted > 1] = 1
    q = np.empty_like(q_sorted)
    q[order] = q_sorted
    return q


def fdr_bh_reject(pvals: np.ndarray, *, alpha: float = 0.05) -> np.ndarray:
    """Benjamini–Hochberg rejections at level ``alpha``: statsmodels' ``multipletests(pvals, alpha,
    method="fdr_bh")[0]`` (the step-up rule ``p_(i) <= i / n * alpha``, largest such ``i`` and all below).

    Parameters
    ----------
    pvals : array_like, shape (n,)
        p-values in [0, 1].
    alpha : float

    Returns
    -------
    numpy.ndarray, shape (n,), bool
        In the input order.
    """
    p = np.asarray(pvals, dtype=np.float64)
    fdr_bh(p)  # validates
    if p.size == 0:
        return np.zeros(0, dtype=bool)
    order = np.argsort(p)
    ecdf = np.arange(1, p.size + 1) / float(p.size)
    rej = np.take(p, order) <= ecdf * alpha
    if rej.any():
        rej[:int(np.flatnonzero(rej).max())] = True
    out = np.empty(p.size, dtype=bool)
    out[order] = rej
    return out
