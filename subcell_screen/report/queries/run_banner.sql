-- run_banner: the latest run that produced the cells and features (it ran the segment or embed stage) and
-- recorded which featurizer and segmenter ran, or fallbacks (report banner). Runs of later stages only
-- (profile, score, report) are not it: they load no model, so the featurizer they record is the configured
-- one, not necessarily the one that made the data.
-- requires: runs
-- Reads runs.summary JSON keys "featurizer", "segmenter" and "fallbacks" (a list of strings),
-- runs.parameters JSON key "stages" (runs without it are taken as they are), and runs.models
-- "subcell.weights.unverified": weight files not matched against a published SHA-256.
SELECT
    run_id,
    command,
    status,
    package_version,
    started_at,
    finished_at,
    json_extract_string(summary, '$.featurizer') AS featurizer,
    json_extract_string(summary, '$.segmenter') AS segmenter,
    CAST(coalesce(json_extract(summary, '$.fallbacks'), '[]') AS VARCHAR[]) AS fallbacks,
    CAST(coalesce(json_extract(models, '$.subcell.weights.unverified'), '[]') AS VARCHAR[]) AS unverified_weights
FROM runs
WHERE (json_extract(summary, '$.featurizer') IS NOT NULL
       OR json_extract(summary, '$.segmenter') IS NOT NULL
       OR json_array_length(json_extract(summary, '$.fallbacks')) > 0)
  AND (json_extract(parameters, '$.stages') IS NULL
       OR list_has_any(CAST(json_extract(parameters, '$.stages') AS VARCHAR[]), ['segment', 'embed']))
ORDER BY started_at DESC NULLS LAST
LIMIT 1
