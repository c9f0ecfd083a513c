-- dose_response_fits_unranked: 4-parameter logistic fits per perturbation, when no scores exist.
-- requires: dose_response
-- uses: wells
SELECT
    d.perturbation_id,
    n.perturbation_name,
    CAST(NULL AS INTEGER) AS rank,
    status,
    reason,
    ec50,
    ec50_ci_low,
    ec50_ci_high,
    concentration_unit,
    hill,
    bottom,
    top,
    n_doses
FROM dose_response d
LEFT JOIN perturbation_names() n USING (perturbation_id)
ORDER BY d.status = 'fit' DESC, d.perturbation_id
