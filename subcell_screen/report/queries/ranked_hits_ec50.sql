-- ranked_hits_ec50: ranked_hits.sql plus the EC50 (with its confidence interval) of perturbations whose
-- dose response was fitted.
-- requires: scores, dose_response
-- params: top (INTEGER; NULL = all)
SELECT
    s.rank,
    s.perturbation_id,
    s.perturbation_name,
    s.control_type,
    s.n_wells,
    s.mean_average_precision,
    s.p_value,
    s.corrected_p_value,
    s.effect_size,
    s.effect_ci_low,
    s.effect_ci_high,
    s.cell_count_fraction,
    s.cytotoxic,
    s.is_hit,
    d.ec50,
    d.ec50_ci_low,
    d.ec50_ci_high,
    d.concentration_unit
FROM scores s
LEFT JOIN dose_response d
  ON d.perturbation_id = s.perturbation_id AND d.status = 'fit'
ORDER BY s.rank NULLS LAST, s.corrected_p_value NULLS LAST, s.mean_average_precision DESC NULLS LAST,
         s.perturbation_id
LIMIT $top
