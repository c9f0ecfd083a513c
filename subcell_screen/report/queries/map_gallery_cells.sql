-- map_gallery_cells: example cells of one cluster of the phenotypic map: cells of its items' wells (items
-- matched to wells by perturbation and concentration, or by plate and well), not touching the border, at
-- most per_site cells from each site, in a deterministic pseudo-random order, with their site's image paths.
-- requires: map_clusters, map_items, cells, sites, wells
-- params: resolution (DOUBLE), cluster (INTEGER), n (INTEGER), per_site (INTEGER)
WITH members AS (
    SELECT i.item, i.perturbation_id, i.concentration,
           json_extract_string(i.key, '$.Metadata_Plate') AS key_plate,
           json_extract_string(i.key, '$.Metadata_Well') AS key_well
    FROM map_clusters k
    JOIN map_items i USING (item)
    WHERE k.resolution = $resolution AND k.cluster = $cluster
),
member_wells AS (
    SELECT DISTINCT m.item, w.plate, w.well, w.perturbation_id, w.concentration
    FROM members m
    JOIN wells w
      ON (m.perturbation_id IS NOT NULL AND w.perturbation_id = m.perturbation_id
          AND (m.concentration IS NULL OR w.concentration = m.concentration))
      OR (m.key_plate IS NOT NULL AND w.plate = m.key_plate AND w.well = m.key_well)
),
candidates AS (
    SELECT
        mw.item,
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
        mw.perturbation_id,
        mw.concentration,
        s.channels,
        s.pixel_size_um,
        row_number() OVER (PARTITION BY c.plate, c.well, c.site
                           ORDER BY hash(c.plate, c.well, c.site, c.cell_id), c.cell_id) AS pick
    FROM member_wells mw
    JOIN cells c ON c.plate = mw.plate AND c.well = mw.well
    JOIN sites s ON s.plate = c.plate AND s.well = c.well AND s.site = c.site
    WHERE NOT coalesce(c.touches_border, FALSE)
      AND s.status IS DISTINCT FROM 'failed'
)
SELECT item, plate, well, site, cell_id, centroid_y, centroid_x, bbox_y0, bbox_x0, bbox_y1, bbox_x1,
       perturbation_id, concentration, channels, pixel_size_um
FROM candidates
WHERE pick <= $per_site
ORDER BY hash(item, plate, well, site), item, plate, well, site, pick
LIMIT $n
