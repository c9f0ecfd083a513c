-- replicate_null: a deterministic sample of non-replicate correlations (treatment wells of different
-- perturbations on the same plate), the null distribution drawn next to replicate correlations.
-- requires: well_profiles
-- params: plate (VARCHAR; NULL = every plate), feature_set (VARCHAR), n (INTEGER: sample size)
WITH s AS (
    SELECT
        plate,
        well,
        perturbation_id,
        CAST(features AS DOUBLE[]) AS x,
        len(features) AS n,
        list_sum(CAST(features AS DOUBLE[])) AS sx,
        list_dot_product(CAST(features AS DOUBLE[]), CAST(features AS DOUBLE[])) AS sxx
    FROM well_profiles
    WHERE feature_set = $feature_set
      AND perturbation_id IS NOT NULL
      AND control_type IS NULL
      AND ($plate IS NULL OR plate = $plate)
),
null_size AS (  -- the same deterministic sample as replicate_correlation.sql
    SELECT least(1.0, 50000.0 / nullif(sum(n * (n - 1) / 2), 0)) AS keep
    FROM (SELECT plate, count(*) AS n FROM s GROUP BY plate)
)
SELECT
    a.plate,
    a.well AS well_a,
    b.well AS well_b,
    (a.n * list_dot_product(a.x, b.x) - a.sx * b.sx)
        / sqrt(nullif((a.n * a.sxx - a.sx * a.sx) * (b.n * b.sxx - b.sx * b.sx), 0)) AS r
FROM s a
JOIN s b
  ON a.plate = b.plate AND a.well < b.well AND a.perturbation_id <> b.perturbation_id
CROSS JOIN null_size z
WHERE hash(a.plate, a.well, b.well) % 1000000 < z.keep * 1000000
ORDER BY hash(a.plate, a.well, b.well), a.plate, a.well, b.well
LIMIT $n
