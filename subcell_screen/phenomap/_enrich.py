"""Annotation enrichment of clusters: hypergeometric tests with Benjamini-Hochberg q-values, cluster labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

__all__ = ["cluster_enrichment", "cluster_labels", "ENRICHMENT_SCHEMA"]

#: Columns of the enrichment table.
ENRICHMENT_SCHEMA: dict[str, pl.DataType] = {
    "resolution": pl.Float64, "cluster": pl.Int32, "annotation": pl.String, "term": pl.String,
    "n_in_cluster": pl.Int32, "cluster_size": pl.Int32, "n_term": pl.Int32, "n_items": pl.Int32,
    "p_value": pl.Float64, "q_value": pl.Float64,
}


def cluster_enrichment(
    labels: np.ndarray,
    resolutions: Sequence[float],
    terms: Mapping[str, Sequence[frozenset[str]]],
    *,
    min_cluster_size: int = 2,
    min_overlap: int = 2,
) -> pl.DataFrame:
    """Hypergeometric enrichment of every annotation term in every cluster, BH-corrected across all tests.

    For a cluster of ``n`` items among ``N`` items of the map, a term carried by ``K`` items, ``k`` of them
    in the cluster: ``p = P(X >= k)``, ``X ~ Hypergeometric(N, K, n)`` (one-sided, over-representation).
    Tested are clusters of ``min_cluster_size`` items or more that are not the whole map, terms carried by
    two or more items, and (cluster, term) pairs with ``k >= min_overlap`` (a term seen once in a cluster says
    nothing about items looking alike). q-values are Benjamini-Hochberg over every test of the map (all
    resolutions, clusters, annotations and terms together).

    Parameters
    ----------
    labels : ndarray, (n_resolutions, n_items), int
        Cluster of each item per resolution.
    resolutions : sequence of float
        The resolution of each row of ``labels``.
    terms : mapping of str to sequence of frozenset
        Annotation column -> the terms of each item (an item without terms simply carries none; it still
        counts in ``N`` and in its cluster's ``n``).
    min_cluster_size, min_overlap
        See above.

    Returns
    -------
    polars.DataFrame
        :data:`ENRICHMENT_SCHEMA` columns: ``n_in_cluster`` = ``k``, ``cluster_size`` = ``n``, ``n_term`` =
        ``K``, ``n_items`` = ``N``; sorted by q, p, resolution, cluster, annotation, term.
    """
    from scipy import sparse
    from scipy.stats import hypergeom
    from statsmodels.stats.multitest import multipletests

    labels = np.asarray(labels, dtype=np.int64)
    n_items = labels.shape[1] if labels.ndim == 2 else 0
    rows: dict[str, list] = {c: [] for c in ENRICHMENT_SCHEMA}
    for annotation, per_item in terms.items():
        if len(per_item) != n_items:
            raise ValueError(f"annotation {annotation!r}: {len(per_item)} items, labels have {n_items}")
        vocab = sorted(set().union(*per_item)) if per_item else []
        if not vocab:
            continue
        col = {t: j for j, t in enumerate(vocab)}
        pairs = [(i, col[t]) for i, ts in enumerate(per_item) for t in ts]
        ii, tt = (np.asarray(v, dtype=np.int64) for v in zip(*pairs))
        inc = sparse.csr_matrix((np.ones(ii.size, np.int64), (ii, tt)), shape=(n_items, len(vocab)))
        n_term = np.asarray(inc.sum(axis=0)).ravel()
        for res, lab in zip(resolutions, labels):
            n_clusters = int(lab.max()) + 1
            size = np.bincount(lab, minlength=n_clusters)
            member = sparse.csr_matrix((np.ones(n_items, np.int64), (lab, np.arange(n_items))),
                                       shape=(n_clusters, n_items))
            overlap = (member @ inc).tocoo()
            c, t, k = overlap.row, overlap.col, overlap.data
            ok = (size[c] >= min_cluster_size) & (size[c] < n_items) & (n_term[t] >= 2) & (k >= min_overlap)
            c, t, k = c[ok], t[ok], k[ok]
            o = np.lexsort((t, c))
            c, t, k = c[o], t[o], k[o]
            rows["resolution"] += [float(res)] * c.size
            rows["cluster"] += c.tolist()
            rows["annotation"] += [annotation] * c.size
            rows["term"] += [vocab[j] for j in t.tolist()]
            rows["n_in_cluster"] += k.tolist()
            rows["cluster_size"] += size[c].tolist()
            rows["n_term"] += n_term[t].tolist()
            rows["n_items"] += [n_items] * c.size
    k = np.asarray(rows["n_in_cluster"], dtype=np.int64)
    p = hypergeom.sf(k - 1, np.asarray(rows["n_items"]), np.asarray(rows["n_term"]),
                     np.asarray(rows["cluster_size"])) if k.size else np.zeros(0)
    p = np.clip(p, 0.0, 1.0)
    rows["p_value"] = p.tolist()
    rows["q_value"] = (multipletests(p, method="fdr_bh")[1] if p.size else np.zeros(0)).tolist()
    df = pl.DataFrame(rows, schema=ENRICHMENT_SCHEMA)
    return df.sort(["q_value", "p_value", "resolution", "cluster", "annotation", "term"])


def cluster_labels(
    enrichment: pl.DataFrame,
    *,
    q_threshold: float = 0.05,
    max_terms: int = 2,
    annotations: Sequence[str] | None = None,
) -> pl.DataFrame:
    """Each cluster's label: its most specific significant terms.

    Among the cluster's terms with ``q < q_threshold``, the most specific are those carried by the fewest
    items of the map (smallest ``n_term``; ties by smaller q, then annotation order, then term).

    Returns
    -------
    polars.DataFrame
        ``resolution``, ``cluster``, ``label`` (up to ``max_terms`` terms joined by ``"; "``),
        ``label_annotation`` (annotation of the first term), ``label_q_value`` (its q), ``n_significant``
        (significant terms of the cluster). Only clusters with a significant term.
    """
    order = {a: i for i, a in enumerate(annotations or sorted(set(enrichment["annotation"].to_list())))}
    sig = enrichment.filter(pl.col("q_value") < q_threshold).with_columns(
        pl.col("annotation").replace_strict(order, default=len(order), return_dtype=pl.Int32).alias("_ann"))
    sig = sig.sort(["resolution", "cluster", "n_term", "q_value", "_ann", "term"])
    out = sig.group_by(["resolution", "cluster"], maintain_order=True).agg(
        pl.col("term").head(max_terms).str.join("; ").alias("label"),
        pl.col("annotation").first().alias("label_annotation"),
        pl.col("q_value").first().alias("label_q_value"),
        pl.len().cast(pl.Int32).alias("n_significant"),
    )
    return out.select("resolution", pl.col("cluster").cast(pl.Int32), "label", "label_annotation",
                      "label_q_value", "n_significant")
