-- map_points_hits: map_points plus the score stage's hit call of each item's perturbation (to highlight hits).
-- requires: map_items, map_coordinates, map_clusters, map_cluster_summary, scores
-- params: resolution (DOUBLE)
SELECT
    i.item,
    i.perturbation_id,
    i.concentration,
    i.is_control,
    i.active,
    c.x,
    c.y,
    k.cluster,
    s.inactive,
    s.label,
    coalesce(h.is_hit, FALSE) AS is_hit
FROM map_items i
JOIN map_coordinates c USING (item)
JOIN map_clusters k ON k.item = i.item AND k.resolution = $resolution
JOIN map_cluster_summary s ON s.resolution = k.resolution AND s.cluster = k.cluster
LEFT JOIN (SELECT perturbation_id, bool_or(is_hit) AS is_hit FROM scores GROUP BY perturbation_id) h
    ON h.perturbation_id = i.perturbation_id
ORDER BY k.cluster, i.item
