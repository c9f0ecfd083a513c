"""The numba kernel of :mod:`._median` (imported only when a grouped median runs; needs numba).

One function serves float32 and float64 rows (numba compiles one specialisation per key type, int32 or int64,
and caches both on disk); the key constants follow from the element size and fold at compile time.
"""

from __future__ import annotations

import numba
import numpy as np
from numba.core import types
from numba.extending import intrinsic

__all__ = ["median_keys"]


@intrinsic
def _row_pointer(typingctx, address, like):
    """An int64 address as a pointer to ``like``'s element type (rows may lie in many arrays: no copy)."""
    ptr = types.CPointer(like.dtype)
    sig = ptr(types.int64, like)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(ptr))

    return sig, codegen


@numba.njit(nogil=True, cache=True, boundscheck=False)
def median_keys(addr, starts, counts, net_id, net_ptr, net, d, lanes, kmax, lo, hi, bad, g0, g1):
    """Middle order statistics of groups ``g0:g1`` as float bit patterns.

    Row ``r`` of group ``g`` starts at byte address ``addr[starts[g] + r]`` and holds ``d`` floats, read as
    signed integers of ``lo``'s type (int32 for float32, int64 for float64). For each group the rows are copied
    ``lanes`` features at a time into a ``(k, lanes)`` block of order-preserving keys, the group's network
    (``net[net_ptr[net_id[g]]:net_ptr[net_id[g] + 1]]``) runs across the lanes, and rows ``(k-1)//2`` and
    ``k//2`` are written back as float bits to ``lo[g]`` and ``hi[g]``. A group with a NaN is flagged in
    ``bad[g]`` and left unfinished.
    """
    shift = lo.itemsize * 8 - 1
    mag = ~(-1 << shift)  # all bits but the sign
    inf_bits = 0x7F800000 if lo.itemsize == 4 else 0x7FF0000000000000
    buf = np.empty(kmax * lanes, dtype=lo.dtype)
    # indices in the inner loops are unsigned: numba then emits no negative-index wraparound, which would
    # keep LLVM from vectorising them
    for g in range(g0, g1):
        k = counts[g]
        if k == 0:
            continue
        s = starts[g]
        p0 = net_ptr[net_id[g]]
        p1 = net_ptr[net_id[g] + 1]
        nan_found = False
        for c0 in range(0, d, lanes):
            w = np.uint64(min(lanes, d - c0))
            off = np.uint64(c0)
            for r in range(k):
                row = _row_pointer(addr[s + r], lo)
                base = np.uint64(r) * w
                flag = False
                for c in range(w):
                    b = row[off + c]
                    flag |= (b & mag) > inf_bits  # NaN: magnitude bits above +inf's
                    buf[base + c] = b ^ ((b >> shift) & mag)
                if flag:
                    nan_found = True
                    break
            if nan_found:
                break
            for q in range(p0, p1):
                i = np.uint64(net[q, 0]) * w
                j = np.uint64(net[q, 1]) * w
                for c in range(w):
                    a = buf[i + c]
                    b = buf[j + c]
                    small = min(a, b)
                    buf[i + c] = small
                    buf[j + c] = a ^ b ^ small  # the other one; no compare-and-store for the compiler
            i = np.uint64((k - 1) // 2) * w
            j = np.uint64(k // 2) * w
            lo_g = lo[g]
            hi_g = hi[g]
            for c in range(w):
                a = buf[i + c]
                b = buf[j + c]
                lo_g[off + c] = a ^ ((a >> shift) & mag)
                hi_g[off + c] = b ^ ((b >> shift) & mag)
        if nan_found:
            bad[g] = True


@numba.njit(cache=True)
def prune_network(pairs, a, b):
    """Comparators of ``pairs`` (in order) that outputs ``a`` and ``b`` depend on (a backward pass)."""
    need = np.zeros(max(pairs.max(), a, b) + 1, dtype=np.bool_)
    need[a] = True
    need[b] = True
    keep = np.zeros(pairs.shape[0], dtype=np.bool_)
    for q in range(pairs.shape[0] - 1, -1, -1):
        i = pairs[q, 0]
        j = pairs[q, 1]
        if need[i] or need[j]:
            keep[q] = True
            need[i] = True
            need[j] = True
    return keep
