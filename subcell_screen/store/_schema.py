"""Every table and view of the screen database, declared in one place.

A :class:`Table` names its columns with DuckDB types, the key that identifies a row (what a write replaces), and
says what it holds. The store creates them all when it creates a database, and every write is checked and cast
against the declaration: no table is shaped by its first writer, and the report's SQL reads columns that exist
whatever ran. Adding or changing a table means changing it here and bumping :data:`SCHEMA_VERSION`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["SCHEMA_VERSION", "Table", "View", "TABLES", "VIEWS", "table", "ddl", "polars_type"]

#: Bumped whenever a table changes incompatibly (v2: every table declared; profile sets of any width; v3: the
#: cell-file manifest and site profiles; a v2 store is upgraded when opened for writing).
SCHEMA_VERSION = 3


@dataclass(frozen=True)
class Table:
    """One declared table.

    Attributes
    ----------
    name : str
    columns : tuple of (str, str)
        Column name and DuckDB type, in table order.
    key : tuple of str
        Columns that identify a row; writes replace the rows of the keys they bring.
    doc : str
        What a row is.
    """

    name: str
    columns: tuple[tuple[str, str], ...]
    key: tuple[str, ...]
    doc: str

    @property
    def names(self) -> list[str]:
        return [c for c, _ in self.columns]

    @property
    def types(self) -> dict[str, str]:
        return dict(self.columns)


@dataclass(frozen=True)
class View:
    """One declared view (``sql`` is its ``SELECT``)."""

    name: str
    sql: str
    doc: str


def _cols(text: str) -> tuple[tuple[str, str], ...]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if part:
            name, typ = part.split(None, 1)
            out.append((name, typ.strip()))
    return tuple(out)


_SITE = "plate VARCHAR, well VARCHAR, site INTEGER"

_TABLES = [
    Table("meta", _cols("key VARCHAR, value VARCHAR"), ("key",), "store metadata (schema version, creation)"),
    Table("runs", _cols("run_id VARCHAR, command VARCHAR, started_at TIMESTAMP, finished_at TIMESTAMP, "
                        "status VARCHAR, package_version VARCHAR, config JSON, models JSON, parameters JSON, "
                        "summary JSON, error VARCHAR, pid INTEGER, host VARCHAR"), ("run_id",),
          "one pipeline run: command, config, models (with their verification), stage summary, status"),
    Table("plates", _cols("plate VARCHAR, layout VARCHAR, plate_format INTEGER, batch VARCHAR, cell_line VARCHAR, "
                          "timepoint VARCHAR, extra JSON"), ("plate",), "plates table rows"),
    Table("wells", _cols("plate VARCHAR, well VARCHAR, perturbation_id VARCHAR, perturbation_name VARCHAR, "
                         "perturbation_type VARCHAR, control_type VARCHAR, concentration DOUBLE, "
                         "concentration_unit VARCHAR, target VARCHAR, moa VARCHAR, inchikey VARCHAR, "
                         "protein VARCHAR, extra JSON"), ("plate", "well"), "layout of every plate, one row per well"),
    Table("sites", _cols(f"{_SITE}, reader VARCHAR, channels JSON, pixel_size_um DOUBLE, pixel_size_source VARCHAR, "
                         "height INTEGER, width INTEGER, dtype VARCHAR, status VARCHAR, error VARCHAR, "
                         "updated_at TIMESTAMP"), ("plate", "well", "site"),
          "imaged sites: files of the used channels, pixel size and its source, status (pending/ok/failed) and "
          "the first failed stage's error"),
    Table("site_stages", _cols(f"{_SITE}, stage VARCHAR, status VARCHAR, error VARCHAR, n_cells INTEGER, "
                               "run_id VARCHAR, seconds DOUBLE, updated_at TIMESTAMP"),
          ("plate", "well", "site", "stage"), "outcome of each per-site stage (load, segment, embed:<feature set>)"),
    Table("channels", _cols("channel VARCHAR, position INTEGER, used BOOLEAN, color VARCHAR, roles VARCHAR[]"),
          ("channel",), "acquired channels of the last run: used by the channel map or not, colour, what for"),
    Table("illumination", _cols("plate VARCHAR, channel VARCHAR, height INTEGER, width INTEGER, data BLOB, "
                                "recipe JSON"), ("plate", "channel"), "illumination functions per plate and channel"),
    Table("site_qc", _cols(f"{_SITE}, channel VARCHAR, mean DOUBLE, median DOUBLE, p01 DOUBLE, p99 DOUBLE, "
                           "saturated_fraction DOUBLE, focus DOUBLE"), ("plate", "well", "site", "channel"),
          "per site and channel intensity, saturation and focus"),
    Table("masks", _cols(f"{_SITE}, height INTEGER, width INTEGER, method VARCHAR, nuclei BLOB, cells BLOB"),
          ("plate", "well", "site"), "nucleus and cell label images (compressed .npy)"),
    Table("cells", _cols(f"{_SITE}, cell_id INTEGER, nucleus_id INTEGER, centroid_y DOUBLE, centroid_x DOUBLE, "
                         "bbox_y0 INTEGER, bbox_x0 INTEGER, bbox_y1 INTEGER, bbox_x1 INTEGER, "
                         "cell_area_um2 DOUBLE, nucleus_area_um2 DOUBLE, touches_border BOOLEAN, "
                         "eccentricity DOUBLE, solidity DOUBLE"), ("plate", "well", "site"),
          "one row per segmented cell (geometry in pixels and µm²)"),
    Table("segmentation_qc", _cols(f"{_SITE}, method VARCHAR, n_cells INTEGER, n_border INTEGER, "
                                   "border_fraction DOUBLE, area_median_um2 DOUBLE, area_iqr_um2 DOUBLE, "
                                   "empty BOOLEAN"), ("plate", "well", "site"), "segmentation summary per site"),
    Table("cell_readouts", _cols(f"{_SITE}, cell_id INTEGER, protein_nuc_cyto_ratio DOUBLE"),
          ("plate", "well", "site"), "per-cell protein readouts (HPA-style screens)"),
    Table("feature_sets", _cols("feature_set VARCHAR, kind VARCHAR, n_features INTEGER, feature_names JSON, "
                                "model VARCHAR, model_sha256 JSON, parameters JSON, created_at TIMESTAMP"),
          ("feature_set",), "per-cell feature sets (their Parquet files live under cells/<feature set>/)"),
    Table("cell_files", _cols(f"feature_set VARCHAR, {_SITE}, file VARCHAR, n_rows INTEGER, kept VARCHAR, "
                              "compacted BOOLEAN, updated_at TIMESTAMP"), ("feature_set", "plate", "well", "site"),
          "the cell-file manifest: which Parquet file (relative to the screen folder) holds each featurized site's "
          "per-cell rows and how many; file NULL: no cells, or not kept (kept: all, sample, none)"),
    Table("site_profiles", _cols(f"feature_set VARCHAR, {_SITE}, n_cells INTEGER, median DOUBLE[], mean DOUBLE[], "
                                 "probabilities DOUBLE[]"), ("feature_set", "plate", "well", "site"),
          "per site: median and mean of every feature over its cells, mean class probabilities (SubCell), "
          "computed from full-precision features before any per-cell storage policy applies"),
    Table("profiles", _cols("profile_set VARCHAR, feature_set VARCHAR, plate VARCHAR, well VARCHAR, "
                            "perturbation_id VARCHAR, concentration DOUBLE, n_wells INTEGER, n_cells INTEGER, "
                            "features FLOAT[]"), ("profile_set",),
          "profile sets of any width: well profiles (raw, normalized, feature_selected) and consensus profiles"),
    Table("profile_features", _cols("profile_set VARCHAR, position INTEGER, name VARCHAR"), ("profile_set",),
          "feature names of each profile set, in vector order"),
    Table("profile_sets", _cols("profile_set VARCHAR, feature_set VARCHAR, level VARCHAR, n_rows INTEGER, "
                                "n_features INTEGER, final BOOLEAN"), ("profile_set",),
          "one row per profile set; final marks the well-level set scoring uses"),
    Table("perturbation_scores", _cols("perturbation_id VARCHAR, perturbation_name VARCHAR, control_type VARCHAR, "
                                       "n_wells BIGINT, mean_average_precision DOUBLE, p_value DOUBLE, "
                                       "corrected_p_value DOUBLE, effect_size DOUBLE, effect_ci_low DOUBLE, "
                                       "effect_ci_high DOUBLE, cell_count_fraction DOUBLE, cytotoxic BOOLEAN, "
                                       "is_hit BOOLEAN, rank INTEGER"), ("perturbation_id",),
          "phenotypic activity (mAP, p, q), effect size with CI, cell count fraction, hit call and rank"),
    Table("scoring_coverage", _cols("perturbation_id VARCHAR, perturbation_name VARCHAR, control_type VARCHAR, "
                                    "n_wells BIGINT, n_plates BIGINT, scored BOOLEAN, reason VARCHAR"),
          ("perturbation_id",), "every perturbation in the profiles: scored or not, and why"),
    Table("dose_response", _cols("perturbation_id VARCHAR, status VARCHAR, reason VARCHAR, ec50 DOUBLE, "
                                 "ec50_ci_low DOUBLE, ec50_ci_high DOUBLE, concentration_unit VARCHAR, hill DOUBLE, "
                                 "bottom DOUBLE, top DOUBLE, n_doses BIGINT, cytotoxic BOOLEAN, activity VARCHAR"),
          ("perturbation_id",), "4-parameter logistic fit per perturbation (activity: the readout fitted)"),
    Table("dose_points", _cols("perturbation_id VARCHAR, concentration DOUBLE, n_wells BIGINT, activity DOUBLE, "
                               "cell_count_fraction DOUBLE"), ("perturbation_id", "concentration"),
          "activity per perturbation and concentration"),
    Table("relocalization_results", _cols("protein VARCHAR, perturbation_id VARCHAR, readout VARCHAR, "
                                          "from_class VARCHAR, to_class VARCHAR, effect_size DOUBLE, p_value DOUBLE, "
                                          "q_value DOUBLE, delta_from DOUBLE, delta_to DOUBLE, n_treated BIGINT, "
                                          "n_negcon BIGINT, n_plates BIGINT, model VARCHAR"),
          ("protein", "perturbation_id", "readout"), "protein relocalization per readout"),
    Table("relocalization_class_shifts", _cols("protein VARCHAR, perturbation_id VARCHAR, class VARCHAR, "
                                               "delta DOUBLE, p_value DOUBLE, q_value DOUBLE"),
          ("protein", "perturbation_id", "class"), "localization class probability shifts (SubCell)"),
]

_MAP = "the phenotypic map (subcell_screen.phenomap): "
_TABLES += [
    Table("map_info", _cols("key VARCHAR, value JSON"), ("key",), _MAP + "how it was built (feature set, resolutions, ...)"),
    Table("map_items", _cols("item VARCHAR, perturbation_id VARCHAR, concentration DOUBLE, n_profiles INTEGER, "
                             "is_control BOOLEAN, active BOOLEAN, activity_p_value DOUBLE, activity_q_value DOUBLE, "
                             "key JSON, annotations JSON"), ("item",),
          _MAP + "one row per item (a perturbation, or a perturbation at one dose) and whether it is active"),
    Table("map_clusters", _cols("item VARCHAR, resolution DOUBLE, level INTEGER, cluster INTEGER"),
          ("item", "resolution"), _MAP + "each item's cluster at each resolution (nested)"),
    Table("map_cluster_summary", _cols("resolution DOUBLE, level INTEGER, cluster INTEGER, n_items INTEGER, "
                                       "parent INTEGER, inactive BOOLEAN, label VARCHAR, label_annotation VARCHAR, "
                                       "label_q_value DOUBLE, n_significant INTEGER"), ("resolution", "cluster"),
          _MAP + "clusters: size, parent at the next coarser resolution, label (most specific enriched terms)"),
    Table("map_coordinates", _cols("item VARCHAR, x DOUBLE, y DOUBLE"), ("item",), _MAP + "2-D layout"),
    Table("map_enrichment", _cols("resolution DOUBLE, level INTEGER, cluster INTEGER, annotation VARCHAR, "
                                  "term VARCHAR, n_in_cluster INTEGER, cluster_size INTEGER, n_term INTEGER, "
                                  "n_items INTEGER, p_value DOUBLE, q_value DOUBLE"),
          ("resolution", "cluster", "annotation", "term"),
          _MAP + "hypergeometric enrichment of annotation terms per cluster (BH q over all tests)"),
    Table("map_neighbours", _cols("item VARCHAR, rank INTEGER, neighbour VARCHAR, similarity DOUBLE, "
                                  "p_value DOUBLE, q_value DOUBLE"), ("item", "rank"),
          _MAP + "nearest items by cosine similarity, with p-values against a null"),
    Table("map_dendrogram", _cols("node INTEGER, item VARCHAR, left_node INTEGER, right_node INTEGER, "
                                  "height DOUBLE, size INTEGER"), ("node",), _MAP + "the Paris dendrogram"),
    Table("map_cluster_localization", _cols("resolution DOUBLE, level INTEGER, cluster INTEGER, class_index INTEGER, "
                                            "class_name VARCHAR, mean_probability DOUBLE, n_items INTEGER"),
          ("resolution", "cluster", "class_index"), _MAP + "mean SubCell localization probabilities per cluster"),
]

#: Every table, by name.
TABLES: Mapping[str, Table] = {t.name: t for t in _TABLES}

_VIEWS = [
    View("scores", "SELECT * FROM perturbation_scores ORDER BY rank", "the ranked hit table"),
    View("relocalization", "SELECT protein, perturbation_id, readout, from_class, to_class, effect_size, p_value, "
                           "q_value FROM relocalization_results ORDER BY q_value, p_value",
         "relocalization calls, most significant first"),
    View("well_profiles", "SELECT p.feature_set, p.n_cells, w.*, p.features FROM profiles p JOIN wells w "
                          "USING (plate, well) WHERE p.profile_set = (SELECT any_value(profile_set) FROM "
                          "profile_sets WHERE final)",
         "the well-level profiles scoring uses, with their layout metadata"),
]

#: Every view, by name (created after the tables).
VIEWS: Mapping[str, View] = {v.name: v for v in _VIEWS}


def table(name: str) -> Table:
    """The declaration of ``name``.

    Raises
    ------
    KeyError
        For a name the store does not declare (the message lists the declared ones).
    """
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"the screen store declares no table {name!r}; its tables are {', '.join(TABLES)}") from None


def ddl() -> str:
    """``CREATE TABLE`` / ``CREATE VIEW`` statements for every declared table and view."""
    parts = [f'CREATE TABLE IF NOT EXISTS "{t.name}" ({", ".join(f"{c} {ty}" for c, ty in t.columns)});'
             for t in TABLES.values()]
    parts += [f'CREATE OR REPLACE VIEW "{v.name}" AS {v.sql};' for v in VIEWS.values()]
    return "\n".join(parts)


def polars_type(duckdb_type: str):  # noqa: ANN201 - a polars DataType
    """The polars dtype a column of ``duckdb_type`` is cast to before it is written."""
    import polars as pl

    t = duckdb_type.upper()
    if t.endswith("[]"):
        return pl.List(polars_type(t[:-2]))
    return {"VARCHAR": pl.String, "JSON": pl.String, "INTEGER": pl.Int32, "BIGINT": pl.Int64, "DOUBLE": pl.Float64,
            "FLOAT": pl.Float32, "BOOLEAN": pl.Boolean, "TIMESTAMP": pl.Datetime("us"), "BLOB": pl.Binary}[t]
