-- scoring_coverage: every perturbation in the profiles: wells and plates it has, whether it was scored, and if
-- not, why (replicates are pooled across plates; negative controls are the reference; counts as found).
-- requires: scoring_coverage
-- params: (none)
SELECT
    perturbation_id,
    perturbation_name,
    coalesce(control_type, 'treatment') AS control_type,
    n_wells,
    n_plates,
    scored,
    reason
FROM scoring_coverage
ORDER BY scored, CASE coalesce(control_type, 'treatment') WHEN 'negcon' THEN 2 ELSE 1 END, perturbation_id
