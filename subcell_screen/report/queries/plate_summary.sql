-- plate_summary: one row per plate: layout, format, wells in the layout, sites by status, the pixel size used
-- and where it came from (config, instrument metadata, TIFF tags).
-- requires: plates
-- uses: wells, sites
-- params: plate (VARCHAR; NULL = every plate)
WITH well_counts AS (
    SELECT plate, count(*) AS n_wells
    FROM wells
    GROUP BY plate
),
site_counts AS (
    SELECT
        plate,
        count(*) AS n_sites,
        count(*) FILTER (WHERE status = 'ok') AS sites_ok,
        count(*) FILTER (WHERE status = 'failed') AS sites_failed,
        count(*) FILTER (WHERE status IS NULL OR status NOT IN ('ok', 'failed')) AS sites_pending,
        string_agg(DISTINCT CASE WHEN pixel_size_um IS NULL THEN 'not set'
                                 ELSE printf('%.4g', pixel_size_um) END, ', ') AS pixel_size_um,
        string_agg(DISTINCT pixel_size_source, '; ') AS pixel_size_source
    FROM sites
    GROUP BY plate
)
SELECT
    p.plate,
    p.layout,
    p.plate_format,
    p.batch,
    p.cell_line,
    p.timepoint,
    coalesce(w.n_wells, 0) AS n_wells,
    coalesce(s.n_sites, 0) AS n_sites,
    coalesce(s.sites_ok, 0) AS sites_ok,
    coalesce(s.sites_failed, 0) AS sites_failed,
    coalesce(s.sites_pending, 0) AS sites_pending,
    s.pixel_size_um,
    s.pixel_size_source
FROM plates p
LEFT JOIN well_counts w USING (plate)
LEFT JOIN site_counts s USING (plate)
WHERE $plate IS NULL OR p.plate = $plate
ORDER BY p.plate
