-- replicate_correlation: median Pearson correlation between replicate wells (same perturbation and
-- concentration; any plates, negative controls within plates) of each perturbation, against a null of
-- non-replicate pairs (treatment wells of different perturbations on the same plate; at most ~50,000 pairs,
-- a deterministic hash sample). replicating = median above the null's 95th percentile.
-- requires: well_profiles
-- params: plate (VARCHAR; NULL = every plate), feature_set (VARCHAR)

-- Pairs, the null sample and Pearson r: _macros.sql.
WITH threshold AS (
    SELECT quantile_cont(r, 0.95) AS null_p95 FROM replicate_null_pairs($feature_set, $plate)
)
SELECT
    p.perturbation_id,
    p.concentration,
    p.control_type,
    count(*) AS n_pairs,
    median(p.r) AS median_correlation,
    any_value(t.null_p95) AS null_p95,
    median(p.r) > any_value(t.null_p95) AS replicating
FROM replicate_pairs($feature_set, $plate) p
CROSS JOIN threshold t
GROUP BY p.perturbation_id, p.concentration, p.control_type
ORDER BY median_correlation DESC, p.perturbation_id, p.concentration
