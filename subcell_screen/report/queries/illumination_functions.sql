-- illumination_functions: the stored illumination function of each plate and channel (data: a compressed
-- .npy float32 (height, width) array, read with subcell_screen.store.decode_array; values >= 1, images are
-- divided by it), in channel acquisition order.
-- requires: illumination
-- uses: channels
-- params: plate (VARCHAR; NULL = every plate)
SELECT
    i.plate,
    i.channel,
    i.height,
    i.width,
    i.data
FROM illumination i
LEFT JOIN channels c USING (channel)
WHERE $plate IS NULL OR i.plate = $plate
ORDER BY i.plate, c.position NULLS LAST, i.channel
