-- qc_flagged_sites: sites out of focus (robust z of focus within plate and channel below focus_z)
-- or saturated (saturated_fraction above saturation).
-- requires: site_qc
-- params: plate (VARCHAR; NULL = every plate), focus_z (DOUBLE, e.g. -3), saturation (DOUBLE, e.g. 0.01)
WITH z AS (
    SELECT
        *,
        (focus - median(focus) OVER (PARTITION BY plate, channel))
            / nullif(1.4826 * mad(focus) OVER (PARTITION BY plate, channel), 0) AS focus_robust_z
    FROM site_qc
    WHERE $plate IS NULL OR plate = $plate
)
SELECT
    plate,
    well,
    site,
    channel,
    focus,
    round(focus_robust_z, 2) AS focus_robust_z,
    saturated_fraction,
    concat_ws(', ',
        CASE WHEN focus_robust_z < $focus_z THEN 'out of focus' END,
        CASE WHEN saturated_fraction > $saturation THEN 'saturated' END) AS flag
FROM z
WHERE focus_robust_z < $focus_z OR saturated_fraction > $saturation
ORDER BY plate, well, site, channel
