-- dose_response_fits_unranked: 4-parameter logistic fits per perturbation, when no scores exist.
-- requires: dose_response
SELECT
    perturbation_id,
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
FROM dose_response
ORDER BY status = 'fit' DESC, perturbation_id
