-- sample_sites: a few segmented sites for overlays: one per control type first, then more, deterministically.
-- requires: masks, sites
-- uses: wells, cells
-- params: plate (VARCHAR; NULL = every plate), n (INTEGER)
WITH candidates AS (
    SELECT
        m.plate,
        m.well,
        m.site,
        m.method,
        coalesce(w.control_type, 'treatment') AS control_type,
        w.perturbation_id,
        s.channels,
        s.pixel_size_um
    FROM masks m
    JOIN sites s ON s.plate = m.plate AND s.well = m.well AND s.site = m.site
    LEFT JOIN wells w ON w.plate = m.plate AND w.well = m.well
    WHERE ($plate IS NULL OR m.plate = $plate)
      AND s.status IS DISTINCT FROM 'failed'
),
picked AS (
    SELECT
        *,
        row_number() OVER (PARTITION BY control_type ORDER BY hash(plate, well, site), plate, well, site) AS pick
    FROM candidates
    ORDER BY pick,
             CASE control_type WHEN 'negcon' THEN 0 WHEN 'poscon' THEN 1 WHEN 'treatment' THEN 2 ELSE 3 END,
             plate, well, site
    LIMIT $n
)
SELECT
    p.plate,
    p.well,
    p.site,
    p.control_type,
    p.perturbation_id,
    p.method,
    (SELECT count(*) FROM cells c WHERE c.plate = p.plate AND c.well = p.well AND c.site = p.site) AS n_cells,
    p.pixel_size_um,
    p.channels
FROM picked p
ORDER BY p.pick,
         CASE p.control_type WHEN 'negcon' THEN 0 WHEN 'poscon' THEN 1 WHEN 'treatment' THEN 2 ELSE 3 END,
         p.plate, p.well, p.site
