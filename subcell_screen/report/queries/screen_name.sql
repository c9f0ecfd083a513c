-- screen_name: the screen's name for the report title: [screen].name in the configuration of the newest run
-- that gives one (no row: the reports are titled with the screen folder's name).
-- requires: runs
SELECT
    trim(json_extract_string(config, '$.screen.name')) AS screen_name,
    run_id
FROM runs
WHERE nullif(trim(json_extract_string(config, '$.screen.name')), '') IS NOT NULL
ORDER BY started_at DESC NULLS LAST
LIMIT 1
