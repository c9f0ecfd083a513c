-- map_levels: per resolution of the phenotypic map: clusters of active items, clusters with an enriched
-- label, the largest cluster, items in the inactive cluster, and significant enrichment tests.
-- requires: map_cluster_summary
-- uses: map_enrichment
-- params: q_threshold (DOUBLE; significance of enrichment q-values)
SELECT
    s.resolution,
    s.level,
    count(*) FILTER (WHERE NOT s.inactive) AS n_clusters,
    count(*) FILTER (WHERE NOT s.inactive AND s.label IS NOT NULL) AS n_labelled,
    max(s.n_items) FILTER (WHERE NOT s.inactive) AS largest_cluster,
    coalesce(sum(s.n_items) FILTER (WHERE s.inactive), 0) AS n_inactive_items,
    (SELECT count(*) FROM map_enrichment e
      WHERE e.resolution = s.resolution AND e.q_value < $q_threshold) AS n_significant_tests
FROM map_cluster_summary s
GROUP BY s.resolution, s.level
ORDER BY s.level
