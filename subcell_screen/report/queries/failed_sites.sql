-- failed_sites: sites that failed to load, segment or embed, with the stage and the error.
-- requires: sites
-- uses: site_stages, wells
-- params: plate (VARCHAR; NULL = every plate)
SELECT
    s.plate,
    s.well,
    s.site,
    w.perturbation_id,
    string_agg(DISTINCT st.stage, ', ' ORDER BY st.stage) AS failed_stages,
    coalesce(s.error, string_agg(DISTINCT st.error, '; ')) AS error
FROM sites s
LEFT JOIN site_stages st
    ON st.plate = s.plate AND st.well = s.well AND st.site = s.site AND st.status = 'failed'
LEFT JOIN wells w
    ON w.plate = s.plate AND w.well = s.well
WHERE (s.status = 'failed' OR st.stage IS NOT NULL)
  AND ($plate IS NULL OR s.plate = $plate)
GROUP BY s.plate, s.well, s.site, w.perturbation_id, s.error
ORDER BY s.plate, s.well, s.site
