-- percent_replicating: share of treatment perturbations (perturbation x concentration with >= 2 wells) whose
-- median replicate correlation exceeds the 95th percentile of non-replicate pairs; also the median
-- replicate correlation of negative and positive controls. Same definitions (pairs, null sample) as
-- replicate_correlation.sql.
-- requires: well_profiles
-- params: plate (VARCHAR; NULL = every plate), feature_set (VARCHAR)
WITH s AS (
    SELECT
        plate,
        well,
        perturbation_id,
        concentration,
        coalesce(control_type, 'treatment') AS control_type,
        CAST(features AS DOUBLE[]) AS x,
        len(features) AS n,
        list_sum(CAST(features AS DOUBLE[])) AS sx,
        list_dot_product(CAST(features AS DOUBLE[]), CAST(features AS DOUBLE[])) AS sxx
    FROM well_profiles
    WHERE feature_set = $feature_set
      AND perturbation_id IS NOT NULL
      AND ($plate IS NULL OR plate = $plate)
),
pairs AS (
    SELECT
        a.perturbation_id,
        a.concentration,
        a.control_type,
        (a.n * list_dot_product(a.x, b.x) - a.sx * b.sx)
            / sqrt(nullif((a.n * a.sxx - a.sx * a.sx) * (b.n * b.sxx - b.sx * b.sx), 0)) AS r
    FROM s a
    JOIN s b
      ON a.perturbation_id = b.perturbation_id
     AND a.concentration IS NOT DISTINCT FROM b.concentration
     AND (a.plate < b.plate OR (a.plate = b.plate AND a.well < b.well))
     AND (a.control_type <> 'negcon' OR a.plate = b.plate)  -- negcon pairs within plates only
),
null_size AS (  -- keep at most ~50,000 null pairs (a deterministic hash sample)
    SELECT least(1.0, 50000.0 / nullif(sum(n * (n - 1) / 2), 0)) AS keep
    FROM (SELECT plate, count(*) AS n FROM s WHERE control_type = 'treatment' GROUP BY plate)
),
null_pairs AS (
    SELECT
        (a.n * list_dot_product(a.x, b.x) - a.sx * b.sx)
            / sqrt(nullif((a.n * a.sxx - a.sx * a.sx) * (b.n * b.sxx - b.sx * b.sx), 0)) AS r
    FROM s a
    JOIN s b
      ON a.plate = b.plate AND a.well < b.well AND a.perturbation_id <> b.perturbation_id
    CROSS JOIN null_size z
    WHERE a.control_type = 'treatment' AND b.control_type = 'treatment'
      AND hash(a.plate, a.well, b.well) % 1000000 < z.keep * 1000000
),
threshold AS (
    SELECT quantile_cont(r, 0.95) AS null_p95, count(*) AS n_null_pairs FROM null_pairs
),
groups AS (
    SELECT perturbation_id, concentration, control_type, median(r) AS median_r
    FROM pairs
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
