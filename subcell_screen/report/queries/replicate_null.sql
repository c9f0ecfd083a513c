-- replicate_null: a deterministic sample of non-replicate correlations (treatment wells of different
-- perturbations on the same plate), the null distribution drawn next to replicate correlations.
-- requires: well_profiles
-- params: plate (VARCHAR; NULL = every plate), feature_set (VARCHAR), n (INTEGER: sample size)

-- The same sample as replicate_correlation.sql (_macros.sql); at most $n pairs of it, in hash order.
SELECT plate, well_a, well_b, r
FROM replicate_null_pairs($feature_set, $plate)
ORDER BY sample_key, plate, well_a, well_b
LIMIT $n
