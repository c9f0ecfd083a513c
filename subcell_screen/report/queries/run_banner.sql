-- run_banner: the latest run that recorded which featurizer and segmenter ran, or fallbacks (report banner).
-- requires: runs
-- Reads runs.summary JSON keys "featurizer", "segmenter" and "fallbacks" (a list of strings).
SELECT
    run_id,
    command,
    status,
    package_version,
    started_at,
    finished_at,
    json_extract_string(summary, '$.featurizer') AS featurizer,
    json_extract_string(summary, '$.segmenter') AS segmenter,
    CAST(coalesce(json_extract(summary, '$.fallbacks'), '[]') AS VARCHAR[]) AS fallbacks
FROM runs
WHERE json_extract(summary, '$.featurizer') IS NOT NULL
   OR json_extract(summary, '$.segmenter') IS NOT NULL
   OR json_array_length(json_extract(summary, '$.fallbacks')) > 0
ORDER BY started_at DESC NULLS LAST
LIMIT 1
