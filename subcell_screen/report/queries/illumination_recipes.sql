-- illumination_recipes: one row per plate with illumination functions: the channels corrected (in acquisition
-- order), the function size (px) and the recipe that computed them (subcell_screen.io.compute_illumination: a
-- robust per-pixel average over the plate's sites, Gaussian smoothing, scaled so the robust_percentile-th
-- percentile is 1, applied by division).
-- requires: illumination
-- uses: channels
-- params: plate (VARCHAR; NULL = every plate)
SELECT
    i.plate,
    string_agg(i.channel, ', ' ORDER BY c.position NULLS LAST, i.channel) AS channels,
    any_value(i.height) AS height,
    any_value(i.width) AS width,
    any_value(json_extract_string(recipe, '$.method')) AS method,
    any_value(CAST(json_extract(recipe, '$.n_sites') AS INTEGER)) AS n_sites,
    any_value(CAST(json_extract(recipe, '$.n_excluded') AS INTEGER)) AS n_sites_excluded,
    any_value(CAST(json_extract(recipe, '$.downsample') AS INTEGER)) AS downsample,
    any_value(CAST(json_extract(recipe, '$.sigma_px') AS DOUBLE)) AS smoothing_sigma_px,
    any_value(CAST(json_extract(recipe, '$.robust_percentile') AS DOUBLE)) AS robust_percentile,
    any_value(CAST(json_extract(recipe, '$.version') AS INTEGER)) AS recipe_version
FROM illumination i
LEFT JOIN channels c USING (channel)
WHERE $plate IS NULL OR i.plate = $plate
GROUP BY i.plate
ORDER BY i.plate
