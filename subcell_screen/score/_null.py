"""Null distributions of average precision, drawn exactly as copairs 0.5 draws them.

copairs (``compute.get_null_dists``) takes the distinct ``(n_pos_pairs, n_total_pairs)`` configurations of the
AP table, sorted (``np.unique(axis=0)``), draws one integer seed per configuration with
``default_rng(seed).integers(8096, size=n_confs)``, and for configuration ``i`` ranks ``null_size`` random lists:
``rng = default_rng(seeds[i])``; a ``(null_size, total)`` matrix of ``arange(total)`` rows is shuffled row-wise
with ``rng.permuted(axis=1)``; the first ``n_pos`` entries of each row (sorted) are the ranks of the positives;
``AP = sum(arange(1, k + 1, float32) / (rank + 1)) / k`` in float32.

We reproduce those draws bit for bit (``Generator.permuted`` consumes the stream row by row, so the matrix can be
generated in row chunks with bounded memory). copairs also caches each configuration's null on disk under
``~/.copairs/seed{seed}/ns{null_size}/n{total}_k{n_pos}.npy`` and reuses it in later runs, even when the
configuration had a different seed index there; we never cache, so our p-values equal copairs' run with an empty
(fresh) ``cache_dir``.
"""

from __future__ import annotations

import numpy as np

__all__: list[str] = []

_CHUNK_ELEMS = 1 << 22


def null_seeds(seed: int | None, n_confs: int) -> np.ndarray:
    """Per-configuration seeds (copairs: ``default_rng(seed).integers(8096, size=n_confs)``)."""
    return np.random.default_rng(seed).integers(8096, size=n_confs)


def random_ap(null_size: int, num_pos: int, total: int, seed: int | np.integer) -> np.ndarray:
    """``null_size`` AP values of random rank lists with ``num_pos`` positives among ``total`` (float32, copairs)."""
    rng = np.random.default_rng(seed)
    dtype = np.uint16 if total < 2**16 else np.uint32
    out = np.empty(null_size, dtype=np.float32)
    chunk = max(1, _CHUNK_ELEMS // max(int(total), 1))
    ranks = np.arange(1, num_pos + 1, dtype=np.float32)
    num_pos_np = np.int64(num_pos)
    for s in range(0, null_size, chunk):
        m = min(chunk, null_size - s)
        idx = np.tile(np.arange(total, dtype=dtype), (m, 1))
        rng.permuted(idx, axis=1, out=idx)
        rel_k = np.sort(idx[:, :num_pos], axis=1)
        pr_k = ranks / (rel_k + 1)
        # copairs divides the float32 sum by a numpy integer scalar (float64 division), then casts to float32
        out[s:s + m] = (pr_k.sum(axis=1) / num_pos_np).astype(np.float32)
    return out


class NullCache:
    """On-demand null distributions per configuration index, with a memory cap (LRU eviction)."""

    def __init__(self, confs: np.ndarray, null_size: int, seed: int | None, *, max_bytes: int = 1 << 29) -> None:
        self.confs = confs
        self.null_size = int(null_size)
        self.seeds = null_seeds(seed, len(confs))
        self.max_items = max(1, max_bytes // max(4 * self.null_size, 1))
        self._cache: dict[int, np.ndarray] = {}

    def get(self, i: int) -> np.ndarray:
        hit = self._cache.pop(i, None)
        if hit is None:
            num_pos, total = (int(v) for v in self.confs[i])
            hit = random_ap(self.null_size, num_pos, total, self.seeds[i])
        self._cache[i] = hit
        while len(self._cache) > self.max_items:
            self._cache.pop(next(iter(self._cache)))
        return hit


def kahan_group_mean(values: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Per-group mean with pandas' compensated (Kahan) summation, rows taken in order.

    Matches ``DataFrame.groupby(...).mean()`` (pandas' ``group_mean``) bit for bit, which is how copairs averages
    AP into mAP.
    """
    order = np.argsort(group, kind="stable")
    g_sorted = group[order]
    v_sorted = values[order]
    counts = np.bincount(group, minlength=n_groups)
    starts = np.zeros(n_groups + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    pos_in_group = np.arange(len(order)) - starts[g_sorted]
    sumx = np.zeros(n_groups)
    comp = np.zeros(n_groups)
    for t in range(int(counts.max()) if len(counts) else 0):
        sel = pos_in_group == t
        g = g_sorted[sel]
        val = v_sorted[sel]
        y = val - comp[g]
        tt = sumx[g] + y
        c = tt - sumx[g] - y
        comp[g] = np.where(np.isnan(c), 0.0, c)
        sumx[g] = tt
    with np.errstate(invalid="ignore", divide="ignore"):
        return sumx / counts
