-- perturbation_labels: how plots and galleries name each perturbation of the layout: perturbation_name alone
-- when it names one id only, "name (id)" when names are shared, the id when there is no name (the macro
-- perturbation_names() in _macros.sql).
-- requires: wells
SELECT perturbation_id, perturbation_name, label
FROM perturbation_names()
ORDER BY perturbation_id
