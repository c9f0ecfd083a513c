-- well_profile_vectors: normalised well profiles with their metadata (PCA of well profiles); at most
-- max_wells wells (every control well first, then treatments in a deterministic hash order).
-- requires: well_profiles
-- params: plate (VARCHAR; NULL = every plate), feature_set (VARCHAR), max_wells (INTEGER; NULL = all)
SELECT
    plate,
    well,
    perturbation_id,
    coalesce(control_type, 'treatment') AS control_type,
    concentration,
    n_cells,
    features
FROM well_profiles
WHERE feature_set = $feature_set
  AND ($plate IS NULL OR plate = $plate)
QUALIFY $max_wells IS NULL
     OR row_number() OVER (ORDER BY coalesce(control_type, 'treatment') = 'treatment', hash(plate, well),
                              plate, well) <= $max_wells
ORDER BY plate, well
