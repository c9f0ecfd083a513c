-- map_cluster_localization: mean SubCell localization probabilities (31 classes) of the clusters of one
-- resolution: per item the mean over its wells of the wells' mean per-cell probabilities, then the mean
-- over the cluster's items.
-- requires: map_cluster_localization
-- params: resolution (DOUBLE)
SELECT resolution, cluster, class_index, class_name, mean_probability, n_items
FROM map_cluster_localization
WHERE resolution = $resolution
ORDER BY cluster, class_index
