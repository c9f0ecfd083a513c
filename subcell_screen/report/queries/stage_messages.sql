-- stage_messages: for each pipeline stage, the messages of the latest run that ran it: what was computed, what
-- could not be computed and why (e.g. plates without control wells, perturbations that cannot be scored).
-- requires: runs
-- params: stage (VARCHAR; NULL = every stage)
WITH stages AS (
    SELECT
        r.run_id,
        r.started_at,
        s.value->>'stage' AS stage,
        s.value->'messages' AS messages
    FROM runs r, json_each(r.summary->'stages') s
    WHERE r.summary IS NOT NULL
),
latest AS (
    SELECT *
    FROM stages
    WHERE $stage IS NULL OR stage = $stage
    QUALIFY row_number() OVER (PARTITION BY stage ORDER BY started_at DESC) = 1
)
SELECT
    l.stage,
    l.run_id,
    m.value->>'$' AS message
FROM latest l, json_each(l.messages) m
ORDER BY
    CASE l.stage WHEN 'segment' THEN 1 WHEN 'embed' THEN 2 WHEN 'profile' THEN 3 WHEN 'score' THEN 4
                 WHEN 'report' THEN 5 ELSE 6 END,
    m.key::INTEGER
