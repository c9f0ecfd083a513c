-- gallery_control_cells: negative-control cells from the plates that hold a perturbation (the comparison
-- row of an example gallery), same selection rules as gallery_cells.sql.
-- requires: cells, sites, wells
-- params: perturbation_id (VARCHAR), n (INTEGER), per_site (INTEGER)
WITH candidates AS (
    SELECT
        c.plate,
        c.well,
        c.site,
        c.cell_id,
        c.centroid_y,
        c.centroid_x,
        c.bbox_y0,
        c.bbox_x0,
        c.bbox_y1,
        c.bbox_x1,
        w.perturbation_id,
        w.concentration,
        s.channels,
        s.pixel_size_um,
        row_number() OVER (PARTITION BY c.plate, c.well, c.site
                           ORDER BY hash(c.plate, c.well, c.site, c.cell_id), c.cell_id) AS pick
    FROM cells c
    JOIN wells w ON w.plate = c.plate AND w.well = c.well
    JOIN sites s ON s.plate = c.plate AND s.well = c.well AND s.site = c.site
    WHERE w.control_type = 'negcon'
      AND c.plate IN (SELECT plate FROM wells WHERE perturbation_id = $perturbation_id)
      AND NOT coalesce(c.touches_border, FALSE)
      AND s.status IS DISTINCT FROM 'failed'
)
SELECT plate, well, site, cell_id, centroid_y, centroid_x, bbox_y0, bbox_x0, bbox_y1, bbox_x1,
       perturbation_id, concentration, channels, pixel_size_um
FROM candidates
WHERE pick <= $per_site
ORDER BY hash(plate, well, site), plate, well, site, pick
LIMIT $n
