-- percent_replicating: share of treatment perturbations (perturbation x concentration with >= 2 wells) whose
-- median replicate correlation exceeds the 95th percentile of non-replicate pairs; also the median
-- replicate correlation of negative and positive controls. Same pairs and null sample as
-- replicate_correlation.sql (_macros.sql).
-- requires: well_profiles
-- params: plate (VARCHAR; NULL = every plate), feature_set (VARCHAR)
WITH threshold AS (
    SELECT quantile_cont(r, 0.95) AS null_p95, count(*) AS n_null_pairs
    FROM replicate_null_pairs($feature_set, $plate)
),
groups AS (
    SELECT perturbation_id, concentration, control_type, median(r) AS median_r
    FROM replicate_pairs($feature_set, $plate)
    GROUP BY ALL
)
SELECT
    count(*) FILTER (WHERE g.control_type = 'treatment') AS n_treatments,
    any_value(t.n_null_pairs) AS n_null_pairs,
    any_value(t.null_p95) AS null_p95,
    count(*) FILTER (WHERE g.control_type = 'treatment' AND g.median_r > t.null_p95) AS n_replicating,
    100.0 * count(*) FILTER (WHERE g.control_type = 'treatment' AND g.median_r > t.null_p95)
        / nullif(count(*) FILTER (WHERE g.control_type = 'treatment'), 0) AS percent_replicating,
    median(g.median_r) FILTER (WHERE g.control_type = 'treatment') AS treatment_median_correlation,
    median(g.median_r) FILTER (WHERE g.control_type = 'negcon') AS negcon_median_correlation,
    median(g.median_r) FILTER (WHERE g.control_type = 'poscon') AS poscon_median_correlation
FROM groups g
CROSS JOIN threshold t
