-- relocalization: protein relocalization calls (from -> to localization class) by significance.
-- requires: relocalization
SELECT
    protein,
    perturbation_id,
    readout,
    from_class,
    to_class,
    effect_size,
    p_value,
    q_value
FROM relocalization
ORDER BY q_value NULLS LAST, p_value NULLS LAST, abs(effect_size) DESC NULLS LAST, protein, perturbation_id
