-- map_clusters_at: the clusters of one resolution (the inactive items' cluster last): size, parent cluster at
-- the next coarser resolution,
-- label (most specific enriched terms) with its q-value, and up to 12 member items.
-- requires: map_cluster_summary, map_clusters
-- params: resolution (DOUBLE)
SELECT
    s.cluster,
    s.inactive,
    s.n_items,
    s.parent,
    s.label,
    s.label_annotation,
    s.label_q_value,
    s.n_significant,
    (SELECT string_agg(item, ', ' ORDER BY item) FROM (
        SELECT k.item FROM map_clusters k
        WHERE k.resolution = s.resolution AND k.cluster = s.cluster ORDER BY k.item LIMIT 12)) AS members
FROM map_cluster_summary s
WHERE s.resolution = $resolution
ORDER BY s.inactive, s.cluster
