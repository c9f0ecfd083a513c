-- zprime: Z'-factor per plate between positive and negative controls on two well-level readouts:
--   profile_distance = Euclidean norm of the normalised well profile (its distance from the negcon centre),
--   n_cells = cells in the well (from the profiles' n_cells).
-- Z' = 1 - 3 (sd_poscon + sd_negcon) / |mean_poscon - mean_negcon|  (Zhang et al. 1999); NULL without poscon.
-- requires: well_profiles
-- params: plate (VARCHAR; NULL = every plate), feature_set (VARCHAR)
WITH readout AS (
    SELECT
        plate,
        control_type,
        profile_distance(features) AS profile_distance,
        CAST(n_cells AS DOUBLE) AS n_cells
    FROM well_profiles
    WHERE feature_set = $feature_set
      AND control_type IN ('negcon', 'poscon')
      AND ($plate IS NULL OR plate = $plate)
)
SELECT
    plate,
    count(*) FILTER (WHERE control_type = 'negcon') AS n_negcon,
    count(*) FILTER (WHERE control_type = 'poscon') AS n_poscon,
    avg(profile_distance) FILTER (WHERE control_type = 'negcon') AS negcon_mean_distance,
    avg(profile_distance) FILTER (WHERE control_type = 'poscon') AS poscon_mean_distance,
    1 - 3 * (stddev_samp(profile_distance) FILTER (WHERE control_type = 'poscon')
             + stddev_samp(profile_distance) FILTER (WHERE control_type = 'negcon'))
        / nullif(abs(avg(profile_distance) FILTER (WHERE control_type = 'poscon')
                     - avg(profile_distance) FILTER (WHERE control_type = 'negcon')), 0)
        AS z_prime_profile_distance,
    1 - 3 * (stddev_samp(n_cells) FILTER (WHERE control_type = 'poscon')
             + stddev_samp(n_cells) FILTER (WHERE control_type = 'negcon'))
        / nullif(abs(avg(n_cells) FILTER (WHERE control_type = 'poscon')
                     - avg(n_cells) FILTER (WHERE control_type = 'negcon')), 0)
        AS z_prime_cell_count
FROM readout
GROUP BY plate
ORDER BY plate
