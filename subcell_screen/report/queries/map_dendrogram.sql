-- map_dendrogram: the nodes of the active items' dendrogram (Paris hierarchical clustering of the kNN
-- graph): leaves carry an item, merges their two children and height (Infinity joins disconnected parts).
-- requires: map_dendrogram
SELECT node, item, left_node, right_node, height, size
FROM map_dendrogram
ORDER BY node
