-- channels: the acquired channels of the last run, whether its channel map uses them, their display colour,
-- what each is used for (segmentation, SubCell slots, relocalization, classical features) and on how many
-- plates an illumination function corrects them.
-- requires: channels
-- uses: illumination
-- params: (none)
SELECT
    c.channel,
    c.used,
    coalesce(c.color, '—') AS color,
    array_to_string(c.roles, '; ') AS used_for,
    (SELECT count(DISTINCT i.plate) FROM illumination i WHERE i.channel = c.channel) AS illumination_plates
FROM channels c
ORDER BY c.position
