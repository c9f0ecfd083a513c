-- map_enrichment_significant: annotation terms over-represented in clusters (hypergeometric test, BH q-values
-- across every test of the map) with q below q_threshold, most significant first.
-- requires: map_enrichment
-- params: q_threshold (DOUBLE), top (INTEGER; NULL = all)
SELECT
    resolution,
    cluster,
    annotation,
    term,
    n_in_cluster,
    cluster_size,
    n_term,
    n_items,
    p_value,
    q_value
FROM map_enrichment
WHERE q_value < $q_threshold
ORDER BY q_value, p_value, resolution, cluster, annotation, term
LIMIT coalesce($top, 1000000000)
