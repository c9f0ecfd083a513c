-- dose_points: activity at each tested concentration (the points behind the dose-response fits).
-- requires: dose_points
SELECT perturbation_id, concentration, activity, n_wells
FROM dose_points
ORDER BY perturbation_id, concentration
