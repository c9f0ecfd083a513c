"""The map's tables in the screen store: names, column types, and the frames written there.

Items are keyed by ``item`` (text id: the ``by`` values joined by ``" @ "``) so that every table has the same
columns whatever the ``by`` columns of the map were; ``map_items`` holds the ``by`` values (``key`` JSON) and,
when the items are perturbations (or perturbation x dose), ``perturbation_id`` / ``concentration`` to join with
``wells`` and ``scores``.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl

from ._map import PhenotypicMap


def _store_tables() -> dict:
    from ..store import TABLES

    return {name: t for name, t in TABLES.items() if name.startswith("map_")}


__all__ = ["MAP_TABLES", "map_tables", "write_map_tables", "cluster_localization"]

#: Table -> column -> DuckDB type of everything :func:`write_map_tables` writes (declared by the store).
MAP_TABLES: dict[str, dict[str, str]] = {name: t.types for name, t in _store_tables().items()}

_POLARS = {"VARCHAR": pl.String, "DOUBLE": pl.Float64, "INTEGER": pl.Int32, "BOOLEAN": pl.Boolean,
           "JSON": pl.String}


def _schema(table: str) -> dict[str, pl.DataType]:
    return {c: _POLARS[t] for c, t in MAP_TABLES[table].items()}


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, _dt.date | _dt.datetime):
        return v.isoformat()
    return v


def map_tables(result: PhenotypicMap, *, localization: pl.DataFrame | None = None,
               extra_info: Mapping[str, Any] | None = None) -> dict[str, pl.DataFrame]:
    """The map as store tables (see :data:`MAP_TABLES`), without touching a store.

    Parameters
    ----------
    result : PhenotypicMap
    localization : polars.DataFrame, optional
        :func:`cluster_localization` output (SubCell feature sets).
    extra_info : mapping, optional
        More ``map_info`` entries (e.g. the feature set, the profile set).

    Returns
    -------
    dict of str to polars.DataFrame
        One frame per table, columns and types as in :data:`MAP_TABLES`.
    """
    items = result.items
    by = list(result.by)
    level = {float(r): i for i, r in enumerate(result.resolutions)}
    pert = items["Metadata_perturbation_id"].cast(pl.String) if "Metadata_perturbation_id" in by else None
    conc = items["Metadata_concentration"].cast(pl.Float64) if "Metadata_concentration" in by else None
    keys = [json.dumps({c: _json_value(v) for c, v in zip(by, row)}) for row in items.select(by).iter_rows()]
    ann = [json.dumps(dict(zip(result.annotations, row))) for row in
           items.select(list(result.annotations)).iter_rows()] if result.annotations else ["{}"] * items.height
    n = items.height
    item_frame = pl.DataFrame({
        "item": items["item"], "perturbation_id": pert if pert is not None else [None] * n,
        "concentration": conc if conc is not None else [None] * n, "n_profiles": items["n_profiles"],
        "is_control": items["is_control"], "active": items["active"], "activity_p_value": items["activity_p_value"],
        "activity_q_value": items["activity_q_value"], "key": keys, "annotations": ann}, schema=_schema("map_items"))
    ids = items["item"]
    n_res = len(result.resolutions)
    clusters = pl.DataFrame({
        "item": pl.concat([ids] * n_res) if n_res else pl.Series([], dtype=pl.String),
        "resolution": result.clusters["resolution"], "cluster": result.clusters["cluster"]})
    clusters = clusters.with_columns(pl.col("resolution").replace_strict(level, return_dtype=pl.Int32).alias("level"))
    coords = pl.DataFrame({"item": ids, "x": result.coordinates["x"], "y": result.coordinates["y"]})
    enrich = result.enrichment.with_columns(
        pl.col("resolution").replace_strict(level, return_dtype=pl.Int32, default=None).alias("level"))
    tables = {
        "map_info": _info(result, extra_info),
        "map_items": item_frame,
        "map_clusters": clusters.select(list(MAP_TABLES["map_clusters"])).cast(_schema("map_clusters")),
        "map_cluster_summary": result.cluster_summary.select(list(MAP_TABLES["map_cluster_summary"]))
        .cast(_schema("map_cluster_summary")),
        "map_coordinates": coords.cast(_schema("map_coordinates")),
        "map_enrichment": enrich.select(list(MAP_TABLES["map_enrichment"])).cast(_schema("map_enrichment")),
        "map_neighbours": result.neighbours.select(list(MAP_TABLES["map_neighbours"]))
        .cast(_schema("map_neighbours")),
        "map_dendrogram": _dendrogram(result),
    }
    if localization is not None:
        loc = localization.with_columns(
            pl.col("resolution").replace_strict(level, return_dtype=pl.Int32).alias("level"))
        tables["map_cluster_localization"] = loc.select(list(MAP_TABLES["map_cluster_localization"])).cast(
            _schema("map_cluster_localization"))
    return tables


def _info(result: PhenotypicMap, extra: Mapping[str, Any] | None) -> pl.DataFrame:
    info: dict[str, Any] = {
        "by": list(result.by), "annotations": list(result.annotations), "resolutions": list(result.resolutions),
        "n_items": result.n_items, "n_active": int(result.items["active"].sum()),
        "n_features": len(result.features), "n_excluded": result.excluded.height,
        "excluded": result.excluded["item"].to_list(), "parameters": result.parameters,
        "created_at": _dt.datetime.now(_dt.UTC).replace(tzinfo=None).isoformat(timespec="seconds"),
    }
    if extra:
        info.update(extra)
    return pl.DataFrame({"key": list(info), "value": [json.dumps(v, default=str) for v in info.values()]},
                        schema=_schema("map_info"))


def _dendrogram(result: PhenotypicMap) -> pl.DataFrame:
    """One row per node of the active items' dendrogram: leaves (``item``) then merges (children, height)."""
    z = result.linkage
    leaves = result.linkage_items
    ids = result.items["item"].to_list()
    n = len(leaves)
    nodes = list(range(n)) + [n + i for i in range(len(z))]
    return pl.DataFrame({
        "node": nodes, "item": [ids[int(i)] for i in leaves] + [None] * len(z),
        "left_node": [None] * n + [int(a) for a in z[:, 0]], "right_node": [None] * n + [int(b) for b in z[:, 1]],
        "height": [None] * n + [float(h) for h in z[:, 2]], "size": [1] * n + [int(s) for s in z[:, 3]]},
        schema=_schema("map_dendrogram"))


def cluster_localization(result: PhenotypicMap, probabilities: pl.DataFrame, *,
                         class_names: list[str] | tuple[str, ...]) -> pl.DataFrame:
    """Mean localization probabilities per cluster (SubCell's 31 classes).

    Parameters
    ----------
    result : PhenotypicMap
    probabilities : polars.DataFrame
        ``item`` (the map's text ids) and ``probabilities`` (list of float, one per class; e.g. the mean over
        the item's wells of their per-cell mean SubCell probabilities). Items without a row are left out.
    class_names : sequence of str
        Name of each class.

    Returns
    -------
    polars.DataFrame
        ``resolution``, ``cluster``, ``class_index``, ``class_name``, ``mean_probability`` (mean over the
        cluster's items with probabilities), ``n_items`` (those items).
    """
    ids = result.items["item"]
    clusters = result.clusters.select("resolution", "cluster").with_columns(
        pl.concat([ids] * len(result.resolutions)).alias("item"))
    joined = clusters.join(probabilities.select("item", "probabilities"), on="item", how="inner")
    rows: dict[str, list] = {"resolution": [], "cluster": [], "class_index": [], "class_name": [],
                             "mean_probability": [], "n_items": []}
    for (res, cl), grp in joined.group_by(["resolution", "cluster"], maintain_order=True):
        p = np.asarray(grp["probabilities"].to_list(), dtype=np.float64)
        if p.ndim != 2 or p.shape[1] < len(class_names):
            raise ValueError(f"probabilities must hold {len(class_names)} classes per item, got shape {p.shape}")
        mean = p[:, :len(class_names)].mean(axis=0)
        rows["resolution"] += [float(res)] * len(class_names)
        rows["cluster"] += [int(cl)] * len(class_names)
        rows["class_index"] += list(range(len(class_names)))
        rows["class_name"] += list(class_names)
        rows["mean_probability"] += mean.tolist()
        rows["n_items"] += [p.shape[0]] * len(class_names)
    out = pl.DataFrame(rows, schema={"resolution": pl.Float64, "cluster": pl.Int32, "class_index": pl.Int32,
                                     "class_name": pl.String, "mean_probability": pl.Float64, "n_items": pl.Int32})
    return out.sort(["resolution", "cluster", "class_index"])


def write_map_tables(store: Any, result: PhenotypicMap, *, localization: pl.DataFrame | None = None,
                     extra_info: Mapping[str, Any] | None = None) -> list[str]:
    """Write the map's tables (:data:`MAP_TABLES`) into a screen store, replacing earlier ones.

    Every map table is replaced in one transaction (:meth:`~subcell_screen.store.ScreenStore.write_map_tables`);
    ``map_cluster_localization`` is emptied when ``localization`` is None, so the tables always describe one
    map.

    Returns
    -------
    list of str
        Names of the tables written.
    """
    tables = map_tables(result, localization=localization, extra_info=extra_info)
    if localization is None:
        tables = {**tables, "map_cluster_localization": pl.DataFrame(schema=_schema("map_cluster_localization"))}
    store.write_map_tables(tables)
    return list(tables)
