-- site_qc_values: per-site, per-channel intensity and focus metrics (channel metric plots); at most
-- max_sites sites per channel (a deterministic hash sample).
-- requires: site_qc
-- params: plate (VARCHAR; NULL = every plate), max_sites (INTEGER; NULL = all)
SELECT plate, well, site, channel, mean, median, p01, p99, saturated_fraction, focus
FROM site_qc
WHERE $plate IS NULL OR plate = $plate
QUALIFY $max_sites IS NULL
     OR row_number() OVER (PARTITION BY channel ORDER BY hash(plate, well, site), plate, well, site) <= $max_sites
ORDER BY channel, plate, well, site
