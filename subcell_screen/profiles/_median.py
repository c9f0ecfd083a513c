"""Exact grouped medians with a compiled sorting-network kernel (numba), vectorised across features.

Per-cell aggregation takes the median of ~10-1000 rows per group for each of ~1536-4608 features. Sorting every
(group, feature) column separately (numpy, pandas) spends most of its time on per-column overhead and
branches. Here the rows of one group are copied into a ``(k, w)`` block of ``w`` feature lanes and a
Batcher odd-even merge sorting network for ``k`` inputs, pruned to the comparators the median positions depend
on, runs across all ``w`` lanes at once: every comparator is one vector min and one vector max over a row pair.

Floats are compared as order-preserving integer keys (``bits ^ ((bits >> 31) & 0x7fffffff)``; signed order of
the keys = numeric order of the floats, ``-0.0`` just below ``+0.0``). Integer min/max vectorise without the
masked stores a compiler emits for float min/max written back in place, and keys convert back bit-exactly,
so the medians equal numpy's/pandas': the middle value (odd ``k``) or the float64 mean of the two middle values
(even ``k``). Groups with a missing value (NaN) are reported back and reduced elsewhere.

The kernel is compiled on first use (cached on disk by numba) and releases the GIL, so callers run disjoint
groups on threads. Without numba :func:`available` is false and callers use numpy.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

#: Largest group size the network kernel takes; Batcher networks grow as k log^2 k, beyond this numpy's sort wins.
MAX_NETWORK_SIZE = 2048
#: Bytes of one working block ``(k, w)``, sized to stay in the L2 cache of current x86/ARM cores.
_BLOCK_BYTES = 96 << 10


@dataclass(frozen=True)
class Rows:
    """Rows of an ``(n, d)`` float matrix held as row blocks in memory (e.g. one per Parquet file), in place.

    Attributes
    ----------
    bases : numpy.ndarray
        ``(n_blocks,)`` int64 address of each block's first row; a block's rows follow each other.
    lengths : numpy.ndarray
        ``(n_blocks,)`` int64 rows per block.
    width : int
        ``d``, values per row.
    dtype : numpy.dtype
        float32 or float64.
    owner : object
        What keeps the memory alive (numpy arrays, Arrow arrays).
    """

    bases: np.ndarray
    lengths: np.ndarray
    width: int
    dtype: np.dtype
    owner: object

    @classmethod
    def of(cls, blocks: np.ndarray | Sequence[np.ndarray]) -> Rows:
        """Row blocks of one array or a sequence of arrays (same width and dtype; copied if not C-contiguous)."""
        if isinstance(blocks, Rows):
            return blocks
        blocks = (blocks,) if isinstance(blocks, np.ndarray) else tuple(blocks)
        if not blocks:
            raise ValueError("no row blocks")
        d, dtype = blocks[0].shape[-1], blocks[0].dtype
        for b in blocks:
            if b.ndim != 2 or b.shape[1] != d or b.dtype != dtype:
                raise ValueError(f"row blocks must be 2-D {dtype} with {d} columns, got {b.dtype} {b.shape}")
        blocks = tuple(np.ascontiguousarray(b) for b in blocks)
        return cls(bases=np.array([b.ctypes.data for b in blocks], dtype=np.int64),
                   lengths=np.array([b.shape[0] for b in blocks], dtype=np.int64), width=int(d),
                   dtype=np.dtype(dtype), owner=blocks)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.lengths.sum()), self.width

    def addresses(self) -> np.ndarray:
        """``(n,)`` int64 address of every row."""
        first = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        within = np.arange(self.shape[0], dtype=np.int64) - np.repeat(first, self.lengths)
        return np.repeat(self.bases, self.lengths) + within * (self.width * self.dtype.itemsize)

    def stack(self) -> np.ndarray:
        """The ``(n, d)`` matrix (a new array)."""
        import ctypes

        out = np.empty(self.shape, dtype=self.dtype)
        dst, row_bytes = out.ctypes.data, self.width * self.dtype.itemsize
        for base, n in zip(self.bases.tolist(), self.lengths.tolist()):
            ctypes.memmove(dst, base, n * row_bytes)
            dst += n * row_bytes
        return out


@functools.cache
def _kernel():
    """The compiled kernel, or None without numba (imported, and loaded from numba's disk cache or compiled,
    on first use)."""
    try:
        from ._median_kernel import median_keys
    except ImportError:  # optional accelerator; numpy path instead
        logger.debug("numba not installed: grouped medians use numpy's sort")
        return None
    return median_keys


def available() -> bool:
    """Whether the compiled kernel can be used (numba importable)."""
    return _kernel() is not None


@functools.lru_cache(maxsize=16)
def _batcher_pow2(p2: int) -> np.ndarray:
    """``(m, 2)`` int64 comparators ``(i, j)``, ``i < j``, of Batcher's odd-even merge sort on ``p2`` (a power
    of two) inputs, in order."""
    pairs = []
    p = 1
    while p < p2:
        k = p
        while k >= 1:
            for j in range(k % p, p2 - k, 2 * k):
                for i in range(min(k, p2 - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    out = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    out.flags.writeable = False
    return out


def _batcher_pairs(n: int) -> np.ndarray:
    """Batcher's network for the next power of two, cut to ``n`` wires: inputs beyond ``n`` would hold +inf
    and never move, so their comparators are no-ops and are left out."""
    p2 = 1
    while p2 < n:
        p2 *= 2
    full = _batcher_pow2(p2)
    return full[full[:, 1] < n]


def _prune_py(pairs: np.ndarray, a: int, b: int) -> np.ndarray:
    need = np.zeros(int(pairs.max(initial=max(a, b))) + 1, dtype=bool)
    need[[a, b]] = True
    keep = np.zeros(len(pairs), dtype=bool)
    for q in range(len(pairs) - 1, -1, -1):
        i, j = pairs[q]
        if need[i] or need[j]:
            keep[q] = need[i] = need[j] = True
    return keep


@functools.lru_cache(maxsize=4096)
def median_network(n: int) -> np.ndarray:
    """``(m, 2)`` int64 comparators that put the order statistics ``(n-1)//2`` and ``n//2`` in place.

    Batcher's network pruned backwards: a comparator is kept when one of its outputs is still needed.
    """
    pairs = _batcher_pairs(n)
    if len(pairs) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    kernel = _kernel()
    prune = _prune_py if kernel is None else _prune_numba()
    out = np.ascontiguousarray(pairs[prune(pairs, (n - 1) // 2, n // 2)])
    out.flags.writeable = False
    return out


def _prune_numba():
    from ._median_kernel import prune_network

    return prune_network


def grouped_median_network(blocks, order: np.ndarray, starts: np.ndarray, counts: np.ndarray,
                           groups: np.ndarray, *, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Medians of the groups ``groups`` with the compiled kernel.

    Parameters
    ----------
    blocks : numpy.ndarray, sequence of numpy.ndarray or Rows
        The rows: one ``(n, d)`` array, or row blocks ``(n_i, d)`` read as their concatenation (not built);
        float32 or float64, C-contiguous.
    order : numpy.ndarray
        ``(n,)`` int64 row indices sorted by group.
    starts, counts : numpy.ndarray
        ``(n_groups,)`` int64: rows of group ``g`` are ``order[starts[g]:starts[g] + counts[g]]``.
    groups : numpy.ndarray
        int64 indices of the groups to reduce (each ``1 <= counts[g] <= MAX_NETWORK_SIZE``).
    threads : int
        Threads over disjoint group ranges (the kernel releases the GIL).

    Returns
    -------
    medians : numpy.ndarray
        ``(len(groups), d)`` float64, the row order of ``groups`` (rows of NaN groups are undefined).
    nan_groups : numpy.ndarray
        ``(len(groups),)`` bool: the group has a NaN; its median was not computed.
    """
    kernel = _kernel()
    if kernel is None:
        raise RuntimeError("numba is not available")
    if isinstance(blocks, np.ndarray) and not blocks.flags.c_contiguous:
        raise ValueError("rows must be C-contiguous")  # Rows.of would copy; the caller should decide that
    rows = Rows.of(blocks)
    dtype = rows.dtype
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"rows must be float32 or float64, got {dtype}")
    d = rows.width
    addr = rows.addresses()[order]  # the blocks stay referenced by ``rows`` while the kernel runs
    n_sel = groups.size
    sel_counts = counts[groups].astype(np.int64)
    if n_sel and (sel_counts.min() < 1 or sel_counts.max() > MAX_NETWORK_SIZE):
        raise ValueError(f"group sizes must be within 1..{MAX_NETWORK_SIZE}")
    sizes, net_id = np.unique(sel_counts, return_inverse=True)
    nets = [median_network(int(k)) for k in sizes]
    net_ptr = np.concatenate([[0], np.cumsum([len(m) for m in nets])]).astype(np.int64)
    net = np.concatenate(nets) if nets else np.zeros((0, 2), dtype=np.int64)
    kmax = int(sizes.max()) if sizes.size else 1
    lanes = int(max(16, min(512, _BLOCK_BYTES // (dtype.itemsize * kmax)) // 16 * 16))
    int_type = np.int32 if dtype == np.float32 else np.int64
    lo = np.zeros((n_sel, d), dtype=int_type)  # rows of NaN groups stay 0, not garbage
    hi = np.zeros((n_sel, d), dtype=int_type)
    bad = np.zeros(n_sel, dtype=np.bool_)
    args = (addr, starts[groups].astype(np.int64), sel_counts, net_id.astype(np.int64).ravel(), net_ptr, net, d,
            lanes, kmax, lo, hi, bad)
    threads = max(1, min(threads, n_sel))
    if threads == 1:
        kernel(*args, 0, n_sel)
    else:
        from concurrent.futures import ThreadPoolExecutor

        # small interleaved ranges balance the threads when group sizes vary
        step = max(1, min(64, n_sel // (8 * threads)))
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(lambda a: kernel(*args, a, min(a + step, n_sel)), range(0, n_sel, step)))
    med = lo.view(dtype).astype(np.float64)
    even = np.flatnonzero(sel_counts % 2 == 0)
    if even.size:  # the float64 mean of the two middle values, as numpy and pandas compute it
        med[even] = (med[even] + hi[even].view(dtype).astype(np.float64)) / 2
    return med, bad
