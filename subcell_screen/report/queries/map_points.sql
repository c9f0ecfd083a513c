-- map_points: every item of the phenotypic map with its 2-D coordinates and its cluster (and the cluster's
-- label) at one resolution: the points of the map plot.
-- requires: map_items, map_coordinates, map_clusters, map_cluster_summary
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
    s.label
FROM map_items i
JOIN map_coordinates c USING (item)
JOIN map_clusters k ON k.item = i.item AND k.resolution = $resolution
JOIN map_cluster_summary s ON s.resolution = k.resolution AND s.cluster = k.cluster
ORDER BY k.cluster, i.item
