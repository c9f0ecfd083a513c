-- runs: every recorded run, newest first (provenance table).
-- requires: runs
SELECT
    run_id,
    command,
    status,
    package_version,
    started_at,
    finished_at,
    round(epoch(finished_at - started_at), 1) AS seconds,
    error
FROM runs
ORDER BY started_at DESC NULLS LAST
