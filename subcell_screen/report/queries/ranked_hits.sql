-- ranked_hits: perturbations by rank (best first): phenotypic activity mAP, p and corrected p (q),
-- effect size with its confidence interval, cell count relative to controls, cytotoxicity and hit call.
-- requires: scores
-- params: top (INTEGER; NULL = all)
SELECT
    rank,
    perturbation_id,
    perturbation_name,
    control_type,
    n_wells,
    mean_average_precision,
    p_value,
    corrected_p_value,
    effect_size,
    effect_ci_low,
    effect_ci_high,
    cell_count_fraction,
    cytotoxic,
    is_hit
FROM scores
ORDER BY rank NULLS LAST, corrected_p_value NULLS LAST, mean_average_precision DESC NULLS LAST, perturbation_id
LIMIT $top
