"""Cosine kNN graph and nested multiscale clusters (Paris hierarchical graph clustering).

Why Paris (Bonald, de Lara, Lutz & Charpentier 2018, "Hierarchical graph clustering using node pair
sampling"): it is the agglomerative counterpart of modularity (Louvain/Leiden) on the same kNN graph. Two
clusters ``a``, ``b`` are at distance ``d(a, b) = p(a) p(b) / p(a, b)`` (node and edge weights as sampling
probabilities); merging them raises modularity at resolution ``γ`` exactly when ``d(a, b) < 1/γ``. The
distance is *reducible* (``d(a∪b, c) >= min(d(a, c), d(b, c))``), so the nearest-neighbour-chain algorithm
builds the same dendrogram as greedy global merging, in near-linear time on a sparse graph, with monotone
merge heights. Cutting that one dendrogram at ``1/γ`` for several ``γ`` gives partitions that are nested by
construction (a coarse cluster is a union of finer ones), deterministic (no random seed), and whose sizes
track Leiden's at the same resolution. Running Leiden once per resolution would need a nesting repair step;
average linkage on raw cosine distances ignores the graph and is the baseline the map is compared with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["unit_rows", "knn", "knn_graph", "paris_linkage", "cut_linkage", "nested_clusters"]

#: Rows per block when similarities are computed blockwise (bounds memory at ``block x n`` floats).
_BLOCK = 2048


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit Euclidean norm (float64); a zero row raises ``ValueError``."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1)
    bad = np.flatnonzero(~(norms > 0) | ~np.isfinite(norms))
    if bad.size:
        raise ValueError(f"{bad.size} profile(s) are all zero or not finite (first: row {int(bad[0])}); cosine "
                         "similarity is undefined for them")
    return x / norms[:, None]


def knn(unit: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most cosine-similar other rows of every row.

    Parameters
    ----------
    unit : ndarray, (n, d)
        Unit-norm rows (:func:`unit_rows`).
    k : int
        Neighbours per row (at most ``n - 1``).

    Returns
    -------
    index : ndarray, (n, k), int64
        Neighbour rows, most similar first; ties broken by the lower row index.
    similarity : ndarray, (n, k), float64
        Their cosine similarities.
    """
    n = unit.shape[0]
    k = int(min(k, n - 1))
    if k < 1:
        return np.zeros((n, 0), np.int64), np.zeros((n, 0))
    index = np.empty((n, k), np.int64)
    sim = np.empty((n, k))
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        s = unit[start:stop] @ unit.T
        rows = np.arange(stop - start)
        s[rows, rows + start] = -np.inf  # never one's own neighbour
        part = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < n - 1 else np.argsort(-s, axis=1)[:, :k]
        vals = np.take_along_axis(s, part, axis=1)
        # a value tied with the k-th largest may have been cut arbitrarily: choose those rows' set exactly
        kth = vals.min(axis=1)
        for r in np.flatnonzero((s >= kth[:, None]).sum(axis=1) > k):
            cand = np.flatnonzero(s[r] >= kth[r])
            cand = cand[np.lexsort((cand, -s[r, cand]))[:k]]
            part[r], vals[r] = cand, s[r, cand]
        order = np.lexsort((part, -vals), axis=1)  # most similar first, ties by row index
        index[start:stop] = np.take_along_axis(part, order, axis=1)
        sim[start:stop] = np.take_along_axis(vals, order, axis=1)
    return index, sim


def knn_graph(unit: np.ndarray, *, k: int = 15):
    """Symmetric weighted kNN graph on cosine similarity.

    Edge ``i — j`` exists when ``j`` is among the ``k`` nearest rows of ``i`` or vice versa; its weight is
    ``max(s_ij, 0)`` counted once per direction (mutual neighbours weigh double). Negative similarities give
    weight 0 (the edge is dropped): anti-correlated profiles are not "alike".

    Returns
    -------
    scipy.sparse.csr_matrix, (n, n), float64
        Symmetric, zero diagonal.
    """
    from scipy import sparse

    n = unit.shape[0]
    index, sim = knn(unit, k)
    rows = np.repeat(np.arange(n), index.shape[1])
    w = np.clip(sim.ravel(), 0.0, None)
    a = sparse.coo_matrix((w, (rows, index.ravel())), shape=(n, n)).tocsr()
    g = (a + a.T).tocsr()
    g.eliminate_zeros()
    return g


def paris_linkage(graph) -> np.ndarray:
    """Paris hierarchical clustering of a weighted graph, as a SciPy-style linkage matrix.

    Parameters
    ----------
    graph : scipy.sparse matrix, (n, n)
        Symmetric non-negative weights (the diagonal is ignored).

    Returns
    -------
    ndarray, (n - 1, 4), float64
        Row ``i`` merges clusters ``Z[i, 0]`` and ``Z[i, 1]`` (ids ``< n`` are items, ``n + j`` the cluster of
        row ``j``) at height ``Z[i, 2] = d(a, b) = p(a) p(b) / p(a, b)`` into a cluster of ``Z[i, 3]`` items.
        Rows are in non-decreasing height. Connected components of the graph are joined last at height
        ``inf`` (largest component first): they never share a cluster at any finite resolution.
    """
    from scipy import sparse

    g = sparse.csr_matrix(graph, dtype=np.float64)
    n = g.shape[0]
    if g.shape != (n, n):
        raise ValueError(f"graph must be square, got {g.shape}")
    if n == 0:
        return np.zeros((0, 4))
    g = g.tolil()
    g.setdiag(0)
    g = g.tocsr()
    g.eliminate_zeros()
    if (g.data < 0).any():
        raise ValueError("graph weights must be non-negative")
    total = float(g.sum())
    nbr: dict[int, dict[int, float]] = {}
    for i in range(n):
        lo, hi = g.indptr[i], g.indptr[i + 1]
        nbr[i] = {int(j): float(w) / total for j, w in zip(g.indices[lo:hi], g.data[lo:hi])} if total > 0 else {}
    p = {i: sum(nbr[i].values()) for i in range(n)}
    size = dict.fromkeys(range(n), 1)
    merges: list[tuple[int, int, float, int, int]] = []  # (a, b, height, size, new id)
    components: list[int] = []
    remaining = set(range(n))
    next_id = n
    chain: list[int] = []
    while remaining:
        if not chain:
            a = min(remaining)
            if not nbr[a]:  # nothing left to merge with in its component
                remaining.discard(a)
                components.append(a)
                continue
            chain.append(a)
        a = chain[-1]
        prev = chain[-2] if len(chain) > 1 else -1
        best, best_d = -1, math.inf
        pa = p[a]
        for b, pab in nbr[a].items():
            d = pa * p[b] / pab
            # ties: keep the previous chain element (guarantees termination), else the lowest id
            if d < best_d or (d == best_d and (b == prev or (best != prev and b < best))):
                best, best_d = b, d
        if best == prev:
            chain.pop()
            chain.pop()
            b = best
            c = next_id
            next_id += 1
            na, nb = nbr.pop(a), nbr.pop(b)
            merged: dict[int, float] = {}
            for x, w in na.items():
                if x != b:
                    merged[x] = merged.get(x, 0.0) + w
            for x, w in nb.items():
                if x != a:
                    merged[x] = merged.get(x, 0.0) + w
            for x, w in merged.items():
                nx = nbr[x]
                nx.pop(a, None)
                nx.pop(b, None)
                nx[c] = w
            nbr[c] = merged
            p[c] = p[a] + p[b]
            size[c] = size[a] + size[b]
            remaining.discard(a)
            remaining.discard(b)
            remaining.add(c)
            merges.append((min(a, b), max(a, b), best_d, size[c], c))
        else:
            chain.append(best)
    # join connected components at infinite height, largest first (ties: lowest id)
    components.sort(key=lambda c: (-size[c], c))
    if components:
        current = components[0]
        for other in components[1:]:
            c = next_id
            next_id += 1
            size[c] = size[current] + size[other]
            merges.append((min(current, other), max(current, other), math.inf, size[c], c))
            current = c
    return _ordered_linkage(merges, n)


def _ordered_linkage(merges: list[tuple[int, int, float, int, int]], n: int) -> np.ndarray:
    """Rows sorted by height (children before parents) with cluster ids renumbered to SciPy's convention."""
    if not merges:
        return np.zeros((0, 4))
    height = {}
    for a, b, h, _, c in merges:  # heights are monotone in exact arithmetic; make it exact in floating point
        height[c] = max(h, height.get(a, -math.inf), height.get(b, -math.inf))
    order = sorted(range(len(merges)), key=lambda i: (height[merges[i][4]], i))
    new_id = {merges[i][4]: n + r for r, i in enumerate(order)}
    out = np.empty((len(merges), 4))
    for r, i in enumerate(order):
        a, b, _, s, c = merges[i]
        a2, b2 = new_id.get(a, a), new_id.get(b, b)
        out[r] = (min(a2, b2), max(a2, b2), height[c], s)
    return out


def cut_linkage(linkage: np.ndarray, threshold: float, *, n: int | None = None) -> np.ndarray:
    """Flat clusters: apply every merge of height ``< threshold``.

    Parameters
    ----------
    linkage : ndarray, (n - 1, 4)
        From :func:`paris_linkage` (rows in non-decreasing height).
    threshold : float
        Merges at this height or above are not applied.
    n : int, optional
        Number of items (default ``len(linkage) + 1``).

    Returns
    -------
    ndarray, (n,), int64
        Cluster of each item, numbered ``0..K-1`` by decreasing size (ties: the cluster holding the lower item
        index first).
    """
    n = int(len(linkage) + 1 if n is None else n)
    parent = np.arange(2 * n, dtype=np.int64)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for r, (a, b, h, _) in enumerate(linkage):
        if not h < threshold:
            break
        c = n + r
        parent[find(int(a))] = c
        parent[find(int(b))] = c
    roots = np.fromiter((find(i) for i in range(n)), np.int64, n)
    return _relabel(roots)


def _relabel(groups: np.ndarray) -> np.ndarray:
    """Renumber group ids 0..K-1 by decreasing size, ties by first member index."""
    uniq, first, inverse, counts = np.unique(groups, return_index=True, return_inverse=True, return_counts=True)
    order = np.lexsort((first, -counts))
    rank = np.empty(len(uniq), np.int64)
    rank[order] = np.arange(len(uniq))
    return rank[inverse.ravel()]


def nested_clusters(linkage: np.ndarray, resolutions: Sequence[float], *, n: int | None = None) -> np.ndarray:
    """Cluster labels at several modularity resolutions ``γ`` (cut at height ``1/γ``).

    Parameters
    ----------
    linkage : ndarray, (n - 1, 4)
        Paris linkage.
    resolutions : sequence of float
        Resolutions ``γ > 0``; larger is finer.

    Returns
    -------
    ndarray, (len(resolutions), n), int64
        Labels per resolution, in the order given. For ``γ1 < γ2`` every cluster at ``γ2`` lies inside one
        cluster at ``γ1``.
    """
    res = [float(r) for r in resolutions]
    bad = [r for r in res if not (r > 0 and math.isfinite(r))]
    if bad:
        raise ValueError(f"resolutions must be positive and finite, got {bad}")
    return np.stack([cut_linkage(linkage, 1.0 / r, n=n) for r in res]) if res else \
        np.zeros((0, int(len(linkage) + 1 if n is None else n)), np.int64)
