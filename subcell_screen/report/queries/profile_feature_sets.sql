-- profile_feature_sets: feature sets with normalised well profiles, and their size.
-- requires: well_profiles
-- params: plate (VARCHAR; NULL = every plate)
SELECT
    feature_set,
    count(*) AS n_wells,
    count(DISTINCT plate) AS n_plates,
    max(len(features)) AS n_features
FROM well_profiles
WHERE $plate IS NULL OR plate = $plate
GROUP BY feature_set
ORDER BY feature_set
