-- Shared definitions of the report queries: DuckDB temporary macros, defined once here. The query loader
-- (report/_queries.py) puts this file before the text of every query that calls one of them, so each query
-- (``load_query(name).sql``) runs on its own, e.g. in the DuckDB CLI. Nothing here has a $parameter.

-- profile_distance(profile): Euclidean norm of a normalised well profile, i.e. its distance from the centre
-- of the plate's negative controls (zprime.sql, control_readouts.sql), in DOUBLE.
CREATE OR REPLACE TEMP MACRO profile_distance(profile) AS
    sqrt(list_dot_product(CAST(profile AS DOUBLE[]), CAST(profile AS DOUBLE[])));

-- Replicate reproducibility (replicate_correlation.sql, percent_replicating.sql, replicate_null.sql):
-- Pearson r between two wells' normalised profiles, computed from sums in DOUBLE:
--   (n Sxy - Sx Sy) / sqrt((n Sxx - Sx^2) (n Syy - Sy^2))   (NULL for a constant profile)
-- replicate pairs = two wells of the same perturbation and concentration (any plates; negative-control pairs
-- within plates only, which also bounds their number); null pairs = treatment wells of different
-- perturbations on the same plate, a deterministic hash sample of at most ~50,000 pairs.

CREATE OR REPLACE TEMP MACRO replicate_pearson_r(n_a, x_a, sx_a, sxx_a, n_b, x_b, sx_b, sxx_b) AS
    (n_a * list_dot_product(x_a, x_b) - sx_a * sx_b)
        / sqrt(nullif((n_a * sxx_a - sx_a * sx_a) * (n_b * sxx_b - sx_b * sx_b), 0));

-- replicate_wells(feature set, plate or NULL = every plate): one row per well with a perturbation: plate,
-- well, perturbation_id, concentration, control_type ('treatment' for NULL), x (DOUBLE[]), n, sx, sxx.
CREATE OR REPLACE TEMP MACRO replicate_wells(fs_name, plate_name) AS TABLE
    SELECT
        plate,
        well,
        perturbation_id,
        concentration,
        coalesce(control_type, 'treatment') AS control_type,
        CAST(features AS DOUBLE[]) AS x,
        len(features) AS n,
        list_sum(CAST(features AS DOUBLE[])) AS sx,
        list_dot_product(CAST(features AS DOUBLE[]), CAST(features AS DOUBLE[])) AS sxx
    FROM well_profiles
    WHERE feature_set = fs_name
      AND perturbation_id IS NOT NULL
      AND (plate_name IS NULL OR plate = plate_name);

-- replicate_pairs(feature set, plate): one row per replicate pair: perturbation_id, concentration,
-- control_type, r.
CREATE OR REPLACE TEMP MACRO replicate_pairs(fs_name, plate_name) AS TABLE
    SELECT
        a.perturbation_id,
        a.concentration,
        a.control_type,
        replicate_pearson_r(a.n, a.x, a.sx, a.sxx, b.n, b.x, b.sx, b.sxx) AS r
    FROM replicate_wells(fs_name, plate_name) a
    JOIN replicate_wells(fs_name, plate_name) b
      ON a.perturbation_id = b.perturbation_id
     AND a.concentration IS NOT DISTINCT FROM b.concentration
     AND (a.plate < b.plate OR (a.plate = b.plate AND a.well < b.well))
     AND (a.control_type <> 'negcon' OR a.plate = b.plate);  -- negcon pairs within plates only

-- replicate_null_pairs(feature set, plate): the null sample: plate, well_a, well_b, r, sample_key (the hash
-- that selects the sample; order by it to take a smaller deterministic sample).
CREATE OR REPLACE TEMP MACRO replicate_null_pairs(fs_name, plate_name) AS TABLE
    WITH t AS (
        SELECT * FROM replicate_wells(fs_name, plate_name) WHERE control_type = 'treatment'
    ),
    null_size AS (  -- keep at most ~50,000 null pairs
        SELECT least(1.0, 50000.0 / nullif(sum(n * (n - 1) / 2), 0)) AS keep
        FROM (SELECT plate, count(*) AS n FROM t GROUP BY plate)
    )
    SELECT
        a.plate,
        a.well AS well_a,
        b.well AS well_b,
        replicate_pearson_r(a.n, a.x, a.sx, a.sxx, b.n, b.x, b.sx, b.sxx) AS r,
        hash(a.plate, a.well, b.well) AS sample_key
    FROM t a
    JOIN t b
      ON a.plate = b.plate AND a.well < b.well AND a.perturbation_id <> b.perturbation_id
    CROSS JOIN null_size z
    WHERE hash(a.plate, a.well, b.well) % 1000000 < z.keep * 1000000;

-- perturbation_names(): one row per perturbation id of the layout (wells): perturbation_id, perturbation_name
-- (the first non-blank name given to the id) and label, the text plots and galleries show: the name alone
-- when it names this id only; "name (id)" when another id has the same name or the id has several names; the
-- id alone when no name is given (or the name is the id).
CREATE OR REPLACE TEMP MACRO perturbation_names() AS TABLE
    WITH named AS (
        SELECT
            perturbation_id,
            min(nullif(trim(perturbation_name), '')) AS perturbation_name,
            count(DISTINCT nullif(trim(perturbation_name), '')) AS n_names
        FROM wells
        WHERE perturbation_id IS NOT NULL
        GROUP BY perturbation_id
    ),
    shared AS (
        SELECT perturbation_name, count(*) AS n_ids
        FROM named
        WHERE perturbation_name IS NOT NULL
        GROUP BY perturbation_name
    )
    SELECT
        n.perturbation_id,
        n.perturbation_name,
        CASE
            WHEN n.perturbation_name IS NULL OR n.perturbation_name = n.perturbation_id THEN n.perturbation_id
            WHEN s.n_ids > 1 OR n.n_names > 1 THEN n.perturbation_name || ' (' || n.perturbation_id || ')'
            ELSE n.perturbation_name
        END AS label
    FROM named n
    LEFT JOIN shared s USING (perturbation_name);
