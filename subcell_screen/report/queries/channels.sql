-- channels: the acquired channels of the last run, whether its channel map uses them, their display colour and
-- what each is used for (segmentation, SubCell slots, relocalization, classical features).
-- requires: channels
-- params: (none)
SELECT
    channel,
    used,
    coalesce(color, '—') AS color,
    array_to_string(roles, '; ') AS used_for
FROM channels
ORDER BY position
