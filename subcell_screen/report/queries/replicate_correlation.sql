-- replicate_correlation: median Pearson correlation between replicate wells (same perturbation and
-- concentration; any plates, negative controls within plates) of each perturbation, against a null of
-- non-replicate pairs (treatment wells of different perturbations on the same plate; at most ~50,000 pairs,
-- a deterministic hash sample). replicating = median above the null's 95th percentile.
-- requires: well_profiles
-- params: plate (VARCHAR; NULL = every plate), feature_set (VARCHAR)
-- Pearson r from sums: (n Sxy - Sx Sy) / sqrt((n Sxx - Sx^2) (n Syy - Sy^2)), in DOUBLE.
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
    SELECT quantile_cont(r, 0.95) AS null_p95 FROM null_pairs
)
SELECT
    p.perturbation_id,
    p.concentration,
    p.control_type,
    count(*) AS n_pairs,
    median(p.r) AS median_correlation,
    any_value(t.null_p95) AS null_p95,
    median(p.r) > any_value(t.null_p95) AS replicating
FROM pairs p
CROSS JOIN threshold t
GROUP BY p.perturbation_id, p.concentration, p.control_type
ORDER BY median_correlation DESC, p.perturbation_id, p.concentration
