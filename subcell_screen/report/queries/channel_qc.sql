-- channel_qc: intensity, saturation and focus per channel over all sites (medians over sites).
-- requires: site_qc
-- params: plate (VARCHAR; NULL = every plate), saturation (DOUBLE: a site counts as saturated above this fraction)
SELECT
    channel,
    count(*) AS n_sites,
    median(mean) AS median_mean_intensity,
    median(median) AS median_median_intensity,
    median(p01) AS median_p01,
    median(p99) AS median_p99,
    max(saturated_fraction) AS max_saturated_fraction,
    count(*) FILTER (WHERE saturated_fraction > $saturation) AS saturated_sites,
    median(focus) AS median_focus,
    min(focus) AS min_focus
FROM site_qc
WHERE $plate IS NULL OR plate = $plate
GROUP BY channel
ORDER BY channel
