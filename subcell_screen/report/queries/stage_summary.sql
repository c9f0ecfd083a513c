-- stage_summary: per stage, sites finished / failed, cells and compute time recorded by the pipeline.
-- requires: site_stages
-- params: plate (VARCHAR; NULL = every plate)
SELECT
    stage,
    count(*) FILTER (WHERE status = 'ok') AS sites_ok,
    count(*) FILTER (WHERE status = 'failed') AS sites_failed,
    sum(n_cells) FILTER (WHERE status = 'ok') AS n_cells,
    round(sum(seconds), 1) AS total_seconds,
    round(median(seconds), 3) AS median_seconds_per_site
FROM site_stages
WHERE $plate IS NULL OR plate = $plate
GROUP BY stage
ORDER BY CASE stage WHEN 'load' THEN 0 WHEN 'segment' THEN 1 WHEN 'embed' THEN 2 ELSE 3 END, stage
