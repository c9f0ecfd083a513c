-- map_overview: the phenotypic map in numbers: items, active items, features, resolutions, distinct enriched
-- terms per annotation (q below q_threshold at any resolution, as one JSON object).
-- requires: map_info, map_items
-- uses: map_enrichment
-- params: q_threshold (DOUBLE)
SELECT
    (SELECT count(*) FROM map_items) AS n_items,
    (SELECT count(*) FILTER (WHERE active) FROM map_items) AS n_active,
    (SELECT count(*) FILTER (WHERE is_control) FROM map_items) AS n_control_items,
    (SELECT CAST(value AS INTEGER) FROM map_info WHERE key = 'n_features') AS n_features,
    (SELECT json_array_length(CAST(value AS JSON)) FROM map_info WHERE key = 'resolutions') AS n_resolutions,
    (SELECT json_extract_string(value, '$') FROM map_info WHERE key = 'activity_source') AS activity_source,
    (SELECT count(DISTINCT annotation || chr(31) || term) FROM map_enrichment WHERE q_value < $q_threshold)
        AS n_enriched_terms,
    (SELECT CAST(json_group_object(annotation, n) AS VARCHAR) FROM (
        SELECT annotation, count(DISTINCT term) AS n FROM map_enrichment WHERE q_value < $q_threshold
        GROUP BY annotation ORDER BY annotation)) AS enriched_terms_by_annotation
