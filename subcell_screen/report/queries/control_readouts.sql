-- control_readouts: per-well readouts of the control wells (the values behind zprime).
-- requires: well_profiles
-- params: plate (VARCHAR; NULL = every plate), feature_set (VARCHAR)
SELECT
    plate,
    well,
    control_type,
    profile_distance(features) AS profile_distance,
    n_cells
FROM well_profiles
WHERE feature_set = $feature_set
  AND control_type IN ('negcon', 'poscon')
  AND ($plate IS NULL OR plate = $plate)
ORDER BY plate, control_type, well
