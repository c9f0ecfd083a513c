-- map_top_neighbours: the most similar items of the most active items (smallest activity q-value; all items
-- when activity was not tested): the similarity search when there are no hit calls.
-- requires: map_neighbours, map_items
-- params: k (INTEGER; neighbours per item), top (INTEGER; query items shown)
WITH queries AS (
    SELECT item, row_number() OVER (ORDER BY active DESC, activity_q_value NULLS LAST, item) AS query_rank
    FROM map_items
    WHERE NOT is_control
    QUALIFY query_rank <= $top
)
SELECT q.query_rank, n.item, n.rank, n.neighbour, n.similarity, n.p_value, n.q_value
FROM queries q
JOIN map_neighbours n USING (item)
WHERE n.rank <= $k
ORDER BY q.query_rank, n.rank
