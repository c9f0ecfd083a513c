-- map_cluster_tree: every cluster at every resolution with its parent (nesting: each cluster lies inside its
-- parent at the next coarser resolution) and its label.
-- requires: map_cluster_summary
SELECT resolution, level, cluster, parent, n_items, inactive, label, label_q_value
FROM map_cluster_summary
ORDER BY level, cluster
