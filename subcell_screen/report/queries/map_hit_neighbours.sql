-- map_hit_neighbours: "what looks like this hit?": the most similar items of every hit item (cosine similarity
-- of consensus profiles; p against non-replicate item pairs; q across the item's comparisons).
-- requires: map_neighbours, map_items, scores
-- params: k (INTEGER; neighbours per item), top (INTEGER; hit items shown)
WITH hit_items AS (
    SELECT i.item, min(s.rank) AS hit_rank
    FROM map_items i
    JOIN scores s ON s.perturbation_id = i.perturbation_id
    WHERE s.is_hit
    GROUP BY i.item
    ORDER BY hit_rank, i.item
    LIMIT $top
)
SELECT h.hit_rank, n.item, n.rank, n.neighbour, n.similarity, n.p_value, n.q_value
FROM hit_items h
JOIN map_neighbours n USING (item)
WHERE n.rank <= $k
ORDER BY h.hit_rank, n.item, n.rank
