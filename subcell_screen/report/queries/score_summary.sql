-- score_summary: perturbations scored, hits, cytotoxic hits and the best activity.
-- requires: scores
SELECT
    count(*) AS n_perturbations,
    count(*) FILTER (WHERE control_type IS NULL) AS n_treatments,
    count(*) FILTER (WHERE is_hit) AS n_hits,
    count(*) FILTER (WHERE is_hit AND control_type IS NULL) AS n_treatment_hits,
    count(*) FILTER (WHERE is_hit AND cytotoxic) AS n_cytotoxic_hits,
    max(mean_average_precision) AS max_mean_average_precision,
    min(corrected_p_value) AS min_corrected_p_value
FROM scores
