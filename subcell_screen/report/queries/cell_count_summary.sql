-- cell_count_summary: per plate, the distribution of cells per imaged well, by control type.
-- requires: sites, cells
-- uses: wells
-- params: plate (VARCHAR; NULL = every plate)
WITH per_well AS (
    SELECT s.plate, s.well, count(c.cell_id) AS n_cells
    FROM (SELECT DISTINCT plate, well FROM sites) s
    LEFT JOIN cells c USING (plate, well)
    GROUP BY s.plate, s.well
)
SELECT
    p.plate,
    coalesce(w.control_type, 'treatment') AS control_type,
    count(*) AS n_wells,
    sum(p.n_cells) AS n_cells,
    min(p.n_cells) AS min_cells_per_well,
    median(p.n_cells) AS median_cells_per_well,
    max(p.n_cells) AS max_cells_per_well,
    count(*) FILTER (WHERE p.n_cells = 0) AS wells_without_cells
FROM per_well p
LEFT JOIN wells w USING (plate, well)
WHERE $plate IS NULL OR p.plate = $plate
GROUP BY ALL
ORDER BY p.plate, control_type
