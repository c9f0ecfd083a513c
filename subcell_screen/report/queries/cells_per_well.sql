-- cells_per_well: cells, sites and failed sites of every well (plate-layout heatmap).
-- requires: sites, cells
-- uses: wells
-- params: plate (VARCHAR; NULL = every plate)
-- n_cells is NULL for a layout well that has no imaged site, 0 for an imaged well without cells.
WITH site_counts AS (
    SELECT
        plate,
        well,
        count(*) AS n_sites,
        count(*) FILTER (WHERE status = 'failed') AS n_failed_sites
    FROM sites
    GROUP BY plate, well
),
cell_counts AS (
    SELECT plate, well, count(*) AS n_cells
    FROM cells
    GROUP BY plate, well
),
all_wells AS (
    SELECT plate, well FROM wells
    UNION
    SELECT plate, well FROM site_counts
)
SELECT
    a.plate,
    a.well,
    w.perturbation_id,
    w.control_type,
    coalesce(s.n_sites, 0) AS n_sites,
    coalesce(s.n_failed_sites, 0) AS n_failed_sites,
    CASE WHEN s.n_sites IS NULL THEN NULL ELSE coalesce(c.n_cells, 0) END AS n_cells
FROM all_wells a
LEFT JOIN wells w USING (plate, well)
LEFT JOIN site_counts s USING (plate, well)
LEFT JOIN cell_counts c USING (plate, well)
WHERE $plate IS NULL OR a.plate = $plate
ORDER BY a.plate, a.well
