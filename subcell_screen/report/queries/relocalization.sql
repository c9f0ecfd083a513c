-- relocalization: protein relocalization calls (from -> to localization class) per readout. Within a readout,
-- the significant calls (q_value < q_threshold) come first, by absolute effect size (largest first), then the
-- others by q-value; effect sizes of different readouts are in different units (see docs/reports.md).
-- applies: whether the readout applies to the featurizer of the run. The "probabilities" and "embedding"
-- readouts need SubCell (localization probabilities; the protein-sensitive embedding): when the features
-- behind the final profiles are classical, "embedding" is the classical profile, which is not specific to
-- the protein, so these rows do not apply. With no feature set recorded, every row applies.
-- requires: relocalization
-- uses: feature_sets, profile_sets, wells
-- params: q_threshold (DOUBLE; NULL = 0.05)
WITH used_sets AS (
    SELECT feature_set FROM profile_sets WHERE final
),
kinds AS (
    SELECT kind
    FROM feature_sets
    WHERE feature_set IN (SELECT feature_set FROM used_sets) OR NOT EXISTS (SELECT 1 FROM used_sets)
),
featurizer AS (
    SELECT count(*) = 0 OR bool_or(kind = 'subcell') AS subcell FROM kinds
)
SELECT
    r.readout,
    r.protein,
    r.perturbation_id,
    n.perturbation_name,
    r.from_class,
    r.to_class,
    r.effect_size,
    r.p_value,
    r.q_value,
    coalesce(r.q_value < coalesce($q_threshold, 0.05), FALSE) AS significant,
    r.readout NOT IN ('probabilities', 'embedding') OR f.subcell AS applies
FROM relocalization r
CROSS JOIN featurizer f
LEFT JOIN perturbation_names() n USING (perturbation_id)
ORDER BY
    CASE r.readout WHEN 'probabilities' THEN 1 WHEN 'embedding' THEN 2 WHEN 'nuc_cyto_ratio' THEN 3 ELSE 4 END,
    r.readout,
    significant DESC,
    CASE WHEN significant THEN -abs(r.effect_size) END NULLS LAST,
    r.q_value NULLS LAST,
    r.p_value NULLS LAST,
    r.protein,
    r.perturbation_id
