-- dose_response_fits: 4-parameter logistic fits per perturbation (status 'fit' or 'no fit' with a reason),
-- ordered by the perturbation's rank in scores when scores exist (see dose_response_fits_unranked.sql).
-- requires: dose_response, scores
-- uses: wells
SELECT
    d.perturbation_id,
    n.perturbation_name,
    s.rank,
    d.status,
    d.reason,
    d.ec50,
    d.ec50_ci_low,
    d.ec50_ci_high,
    d.concentration_unit,
    d.hill,
    d.bottom,
    d.top,
    d.n_doses
FROM dose_response d
LEFT JOIN scores s USING (perturbation_id)
LEFT JOIN perturbation_names() n USING (perturbation_id)
ORDER BY s.rank NULLS LAST, d.status = 'fit' DESC, d.perturbation_id
