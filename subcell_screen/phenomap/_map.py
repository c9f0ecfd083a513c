"""The phenotypic map: consensus -> kNN graph -> nested clusters -> 2-D layout -> enrichment -> neighbours."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl

from ._activity import activity_test, replicate_test
from ._enrich import cluster_enrichment, cluster_labels
from ._graph import knn_graph, nested_clusters, paris_linkage, unit_rows
from ._items import Items, consensus_items
from ._layout import layout_2d
from ._similar import NULLS, negcon_null, neighbour_table_arrays, nonreplicate_null

__all__ = ["PhenotypicMap", "phenotypic_map", "similar", "neighbour_agreement", "DEFAULT_RESOLUTIONS",
           "NeighbourAgreement", "ACTIVITY_TESTS", "INACTIVE_LABEL"]

logger = logging.getLogger(__name__)

#: Default modularity resolutions (coarse -> fine). Cutting the Paris dendrogram at ``1/γ`` gives about as
#: many clusters as Leiden at resolution ``γ`` on the same graph.
DEFAULT_RESOLUTIONS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)

#: Label of the cluster that holds the inactive items at every resolution.
INACTIVE_LABEL = "inactive (no phenotype)"


@dataclass(frozen=True, eq=False)
class PhenotypicMap:
    """Result of :func:`phenotypic_map`.

    Attributes
    ----------
    by, features, annotations : tuple of str
        Item key columns, feature columns used, annotation columns tested.
    resolutions : tuple of float
        Modularity resolutions, coarse to fine.
    items : polars.DataFrame
        One row per item (``by`` columns, ``item`` text id, ``n_profiles``, one ``|``-joined String column per
        annotation, ``is_control``, ``activity_p_value`` / ``activity_q_value`` (null when not tested),
        ``active``), in the map's row order (sorted by ``by``, nulls last).
    clusters : polars.DataFrame
        ``by`` columns, ``resolution`` (Float64), ``cluster`` (Int32): one row per item and resolution.
        Active items are clustered (0 = largest cluster of its resolution); inactive items share the last
        cluster id of every resolution (``cluster_summary.inactive``). Nested: for ``γ1 < γ2`` each cluster at
        ``γ2`` lies in one cluster at ``γ1``.
    coordinates : polars.DataFrame
        ``by`` columns, ``x``, ``y`` (Float64, arbitrary units).
    enrichment : polars.DataFrame
        ``resolution``, ``cluster``, ``annotation``, ``term``, ``n_in_cluster`` (items of the cluster carrying
        the term), ``cluster_size`` (items in the cluster), ``n_term`` (active items carrying the term),
        ``n_items`` (active items: the universe of the tests), ``p_value`` (hypergeometric, over-representation), ``q_value``
        (Benjamini-Hochberg across all tests of the map). See :func:`~subcell_screen.phenomap.cluster_enrichment`.
    cluster_summary : polars.DataFrame
        One row per (resolution, cluster): ``level`` (0 = coarsest), ``n_items``, ``parent`` (its cluster at
        the next coarser resolution; null at level 0), ``inactive`` (the cluster of inactive items),
        ``label`` (most specific significant terms; :data:`INACTIVE_LABEL` for the inactive cluster; null when
        none), ``label_annotation``, ``label_q_value``, ``n_significant``.
    neighbours : polars.DataFrame
        Per item its ``n_similar`` most similar items: ``by`` columns, ``rank``, ``neighbour_<by column>``,
        ``similarity`` (cosine of consensus profiles), ``p_value`` (against the non-replicate null), ``q_value``
        (BH over the item's comparisons with every other item), ``item`` and ``neighbour`` (text ids).
    linkage : ndarray, (n_active - 1, 4)
        Paris dendrogram of the active items (SciPy layout; leaf ``i`` is item ``linkage_items[i]``; heights
        ``inf`` join disconnected parts of the graph).
    linkage_items : ndarray, (n_active,), int
        Rows of ``items`` that are the dendrogram's leaves (the active items).
    consensus : ndarray, (n_items, n_features), float64
        Consensus profiles, ``items`` order.
    excluded : polars.DataFrame
        Items left out (``by`` columns, ``item``, ``reason``).
    parameters : dict
        ``n_neighbors``, ``method``, ``seed``, ``q_threshold``, ``null``, ``null_size``, ``replicate_by``,
        ``layout``.
    null_similarities : ndarray
        Sorted non-replicate null of item-pair similarities.
    """

    by: tuple[str, ...]
    features: tuple[str, ...] = field(repr=False)
    annotations: tuple[str, ...]
    resolutions: tuple[float, ...]
    items: pl.DataFrame = field(repr=False)
    clusters: pl.DataFrame = field(repr=False)
    coordinates: pl.DataFrame = field(repr=False)
    enrichment: pl.DataFrame = field(repr=False)
    cluster_summary: pl.DataFrame = field(repr=False)
    neighbours: pl.DataFrame = field(repr=False)
    linkage: np.ndarray = field(repr=False)
    linkage_items: np.ndarray = field(repr=False)
    consensus: np.ndarray = field(repr=False)
    excluded: pl.DataFrame = field(repr=False)
    parameters: dict[str, Any] = field(default_factory=dict, repr=False)
    null_similarities: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    @property
    def n_items(self) -> int:
        return self.items.height

    def labels(self, resolution: float) -> np.ndarray:
        """Cluster of every item (``items`` order) at one of the map's resolutions."""
        if float(resolution) not in [float(r) for r in self.resolutions]:
            raise KeyError(f"resolution {resolution} is not one of the map's {list(self.resolutions)}")
        return self.clusters.filter(pl.col("resolution") == float(resolution))["cluster"].to_numpy()

    def similar(self, query: str | dict[str, Any], *, k: int = 10, exclude_replicates: bool = False
                ) -> pl.DataFrame:
        """The ``k`` items most similar to ``query`` (see :func:`similar`), using the map's null."""
        rows = _query_rows(self.items, self.by, query)
        unit = unit_rows(self.consensus)
        groups = _replicate_groups(self.items, self.parameters.get("replicate_by") or self.by)
        arrays = neighbour_table_arrays(unit, rows, k=k, groups=groups, null_sorted=self.null_similarities,
                                        exclude_replicates=exclude_replicates)
        return _neighbour_frame(self.items, self.by, arrays)

    def __repr__(self) -> str:
        counts = self.cluster_summary.group_by("resolution").len().sort("resolution")
        levels = ", ".join(f"γ={r:g}: {n}" for r, n in counts.iter_rows())
        n_sig = self.enrichment.filter(pl.col("q_value") < self.parameters.get("q_threshold", 0.05)).height
        return (f"PhenotypicMap({self.n_items} items by {list(self.by)}, {len(self.features)} features; clusters "
                f"{levels}; {n_sig} significant enrichments)")


def _replicate_groups(items: pl.DataFrame, replicate_by: Sequence[str]) -> np.ndarray:
    codes: dict[tuple, int] = {}  # nulls form one group
    return np.array([codes.setdefault(v, len(codes)) for v in items.select(list(replicate_by)).rows()], np.int64)


def _query_rows(items: pl.DataFrame, by: Sequence[str], query: str | dict[str, Any]) -> np.ndarray:
    """Rows matching ``query``: a ``{column: value}`` dict, an item id, or a value of the first ``by`` column."""
    if isinstance(query, dict):
        unknown = [c for c in query if c not in by]
        if unknown:
            raise KeyError(f"query columns {unknown} are not item columns {list(by)}")
        expr = pl.lit(True)
        for c, v in query.items():
            expr = expr & (pl.col(c).is_null() if v is None else pl.col(c) == v)
        rows = items.with_row_index("_i").filter(expr)["_i"].to_numpy()
    else:
        text = str(query)
        rows = np.flatnonzero(items["item"].to_numpy() == text)
        if rows.size == 0:
            first = items[by[0]].cast(pl.String).to_numpy()
            rows = np.flatnonzero(first == text)
    if rows.size == 0:
        examples = items["item"].head(5).to_list()
        raise KeyError(f"no item matches {query!r} (items are identified by {list(by)}; e.g. {examples})")
    return rows.astype(np.int64)


def _neighbour_frame(items: pl.DataFrame, by: Sequence[str], arrays: tuple[np.ndarray, ...]) -> pl.DataFrame:
    qi, ni, rank, sim, p, q = arrays
    left = items.select(list(by))[qi.tolist()] if qi.size else items.select(list(by)).clear()
    right = items.select([pl.col(c).alias(f"neighbour_{c}") for c in by])
    right = right[ni.tolist()] if ni.size else right.clear()
    ids = items["item"].to_numpy()
    return pl.concat([left, pl.DataFrame({"rank": pl.Series(rank, dtype=pl.Int32)}), right,
                      pl.DataFrame({"similarity": sim, "p_value": p, "q_value": q, "item": ids[qi].tolist(),
                                    "neighbour": ids[ni].tolist()},
                                   schema={"similarity": pl.Float64, "p_value": pl.Float64, "q_value": pl.Float64,
                                           "item": pl.String, "neighbour": pl.String})],
                     how="horizontal")


def _check_inputs(profiles: pl.DataFrame, by: Sequence[str], annotations: Sequence[str],
                  features: Sequence[str] | None) -> list[str]:
    if not isinstance(profiles, pl.DataFrame):
        raise TypeError(f"profiles must be a polars DataFrame, got {type(profiles).__name__}")
    if isinstance(by, str) or isinstance(annotations, str):
        raise TypeError("by and annotations must be sequences of column names, not a single string")
    if not by:
        raise ValueError("by must name at least one column identifying an item")
    missing = [c for c in (*by, *annotations) if c not in profiles.columns]
    if missing:
        raise ValueError(f"column(s) {missing} not in the profiles (metadata columns: "
                         f"{[c for c in profiles.columns if c.startswith('Metadata_')]})")
    if features is None:  # a map takes profiles whatever their feature names: every numeric non-Metadata column
        feats = [c for c, t in profiles.schema.items() if not c.startswith("Metadata_") and t.is_numeric()]
    else:
        from ..profiles import infer_features

        feats = list(infer_features(profiles, features))
    feats = [f for f in feats if f not in by]
    if not feats:
        raise ValueError("no feature columns in the profiles (every numeric column not prefixed Metadata_ is one)")
    return feats


def _control_mask(profiles: pl.DataFrame, controls: pl.Expr | bool | None) -> np.ndarray | None:
    if controls is False:
        return None
    if controls is None or controls is True:
        if "Metadata_control_type" not in profiles.columns:
            if controls is True:
                raise ValueError("controls=True needs a Metadata_control_type column (or pass an expression)")
            return None
        controls = pl.col("Metadata_control_type") == "negcon"
    mask = profiles.select(controls.fill_null(False).alias("_c"))["_c"]
    if mask.dtype != pl.Boolean:
        raise TypeError(f"controls must select rows (a Boolean expression), got {mask.dtype}")
    mask = mask.to_numpy()
    return mask if mask.sum() >= 2 else None


#: Activity tests that decide which items carry annotation terms in the enrichment tests.
ACTIVITY_TESTS = ("replicates", "controls", "none")


def _item_activity(profiles: pl.DataFrame, items: Items, feats: Sequence[str], *, activity: str,
                   controls: pl.Expr | bool | None, active: str | None, seed: int, method: str,
                   q_threshold: float) -> tuple[list[pl.Series], str]:
    from statsmodels.stats.multitest import multipletests

    if activity not in ACTIVITY_TESTS:
        raise ValueError(f"activity must be one of {ACTIVITY_TESTS}, got {activity!r}")
    n = len(items)
    ctrl = _control_mask(profiles, controls)
    is_control = np.array([bool(ctrl[r].any()) for r in items.rows]) if ctrl is not None else np.zeros(n, bool)
    p = None
    if active is not None:
        if active not in profiles.columns or profiles.schema[active] != pl.Boolean:
            raise ValueError(f"active must name a Boolean column of the profiles, got {active!r}")
        flags = profiles[active].fill_null(False).to_numpy()
        act = np.array([bool(flags[r].any()) for r in items.rows])
        how = f"column {active}"
    elif activity == "controls":
        if ctrl is None:
            raise ValueError("activity='controls' needs negative-control rows (controls=..., or a "
                             "Metadata_control_type column with 'negcon' in 2 rows or more)")
        ctrl_x = profiles.filter(pl.Series(ctrl)).select(list(feats)).cast(pl.Float64).to_numpy()
        ctrl_x = ctrl_x[np.isfinite(ctrl_x).all(axis=1)]
        p = activity_test(items.x, items.frame["n_profiles"].to_numpy(), ctrl_x, seed=seed, method=method)
        how = f"distance from {int(ctrl.sum())} negative-control rows"
    elif activity == "replicates":
        x = profiles.select(list(feats)).cast(pl.Float64).to_numpy()
        x = np.where(np.isfinite(x), x, 0.0)
        norms = np.linalg.norm(x, axis=1)
        unit = np.divide(x, norms[:, None], out=np.zeros_like(x), where=norms[:, None] > 0)
        codes = np.full(profiles.height, -1, np.int64)
        for i, r in enumerate(items.rows):
            codes[r] = i
        pool = np.flatnonzero((codes >= 0) & (~ctrl if ctrl is not None else True) & (norms > 0))
        if any(len(r) >= 2 for r in items.rows) and np.unique(codes[pool]).size >= 2:
            p = replicate_test(unit, items.rows, pool, codes[pool], seed=seed)
            how = "replicate consistency against non-replicate rows"
        else:
            how = "none (items have single rows): every item active"
    else:
        how = "none: every item active"
    q = None
    if p is not None:
        p = np.where(is_control, 1.0, p)
        tested = np.isfinite(p)
        q = np.full(n, np.nan)
        if tested.any():
            q[tested] = multipletests(p[tested], method="fdr_bh")[1]
        # an item that cannot be tested (a single row) keeps its terms
        act = np.where(tested, q < q_threshold, True)
        how += f", BH q < {q_threshold:g}"
    elif active is None:
        act = np.ones(n, bool)
    act = act & ~is_control
    none = pl.Series([None] * n, dtype=pl.Float64)
    return [pl.Series("is_control", is_control, dtype=pl.Boolean),
            pl.Series("activity_p_value", p, dtype=pl.Float64).fill_nan(None) if p is not None
            else none.alias("activity_p_value"),
            pl.Series("activity_q_value", q, dtype=pl.Float64).fill_nan(None) if q is not None
            else none.alias("activity_q_value"),
            pl.Series("active", act, dtype=pl.Boolean)], how


def phenotypic_map(
    profiles: pl.DataFrame,
    *,
    features: Sequence[str] | None = None,
    by: Sequence[str],
    annotations: Sequence[str] = (),
    resolutions: Sequence[float] | None = None,
    seed: int = 0,
    n_neighbors: int = 15,
    method: str = "median",
    q_threshold: float = 0.05,
    n_similar: int = 10,
    replicate_by: Sequence[str] | None = None,
    null_size: int = 100_000,
    min_overlap: int = 2,
    activity: str = "replicates",
    controls: pl.Expr | bool | None = None,
    active: str | None = None,
) -> PhenotypicMap:
    """Map perturbations by how they look: consensus profiles, kNN graph, nested clusters, layout, enrichment.

    Steps:

    1. **Consensus**: rows sharing the ``by`` values become one item (per-feature ``method`` over its rows).
    2. **kNN graph**: ``n_neighbors`` nearest items by cosine similarity, symmetrised, weighted by the
       (positive) similarity (:func:`~subcell_screen.phenomap.knn_graph`).
    3. **Nested clusters**: the Paris dendrogram of that graph cut at height ``1/γ`` for each resolution
       ``γ`` (:func:`~subcell_screen.phenomap.paris_linkage`); deterministic and nested by construction.
    4. **Layout**: seeded t-SNE on cosine distances (:func:`~subcell_screen.phenomap.layout_2d`).
    5. **Enrichment**: hypergeometric test of every annotation term in every cluster, BH q-values across all
       tests; cluster labels are the most specific significant terms
       (:func:`~subcell_screen.phenomap.cluster_enrichment`).
    6. **Neighbours**: each item's ``n_similar`` most similar items, with p-values against the cosine
       similarities of non-replicate item pairs (items that differ in ``replicate_by``).

    Parameters
    ----------
    profiles : polars.DataFrame
        Wide profiles with ``Metadata_*`` columns, one row per well or per perturbation (normalised: the map
        compares directions, so profiles should be centred on the negative controls).
    features : sequence of str, optional
        Feature columns (default: every numeric column not prefixed ``Metadata_``).
    by : sequence of str
        Columns identifying an item, e.g. ``["Metadata_perturbation_id"]`` or
        ``["Metadata_perturbation_id", "Metadata_concentration"]`` for one item per dose.
    annotations : sequence of str
        Columns tested for enrichment (MoA, target, compound identity, any ``Metadata_*``); values containing
        ``|`` carry several terms.
    resolutions : sequence of float, optional
        Modularity resolutions ``γ`` (larger = finer), default :data:`DEFAULT_RESOLUTIONS`; sorted coarse to
        fine, duplicates dropped.
    seed : int
        Seed of the sampled nulls (activity test, similarity null) and of the layout; the graph clustering
        itself has no randomness.
    n_neighbors : int
        kNN graph degree.
    method : {"median", "mean"}
        Consensus of an item's rows.
    q_threshold : float
        Significance of enrichment terms used for labels.
    n_similar : int
        Neighbours per item in :attr:`PhenotypicMap.neighbours`.
    replicate_by : sequence of str, optional
        Columns whose equal values make two items replicates, left out of the similarity null (default: the
        ``by`` columns, i.e. only an item with itself). With one item per dose, pass the compound column so
        that a compound's doses do not count as unrelated pairs. A column outside ``by`` is compared as the
        set of its values over the item's rows.
    null_size : int
        Non-replicate pairs in the similarity null (all pairs when fewer).
    min_overlap : int
        Smallest number of a cluster's items carrying a term for the term to be tested.
    activity : {"replicates", "controls", "none"}
        Which items are *active*; only active items carry annotation terms in the enrichment tests (every
        item stays on the map and in its clusters). Cosine similarity ignores magnitude, so an inactive
        perturbation still gets a direction (noise), and a few inactive items always share some cluster by
        chance; with many truly enriched clusters in the same BH family, their terms would pass.
        ``replicates`` (default): an item's rows are more alike than rows of different items (mean pairwise
        cosine, BH q < ``q_threshold``; :func:`~subcell_screen.phenomap.replicate_test`); items of a single
        row cannot be tested and count as active. ``controls``: the consensus is farther from the negative
        controls' centre than consensus profiles of random control rows
        (:func:`~subcell_screen.phenomap.activity_test`; optimistic when the controls also fitted the
        normalisation). ``none``: every item is active.
    controls : polars.Expr or bool, optional
        Negative-control rows. Their items (e.g. ``DMSO``) stay on the map but are never active, and their
        rows are left out of the replicate null. Default (``None``): ``Metadata_control_type == "negcon"``
        when that column exists and selects 2 rows or more; ``False``: no controls.
    active : str, optional
        A Boolean column marking active rows (e.g. the score stage's hits joined onto the profiles); an item
        is active when any of its rows is. Replaces the ``activity`` test.

    Returns
    -------
    PhenotypicMap

    Raises
    ------
    ValueError
        On a missing column, no feature, fewer than 2 usable items, or bad resolutions.
    """
    feats = _check_inputs(profiles, by, annotations, features)
    by = tuple(by)
    annotations = tuple(dict.fromkeys(annotations))
    res = tuple(sorted(set(float(r) for r in (DEFAULT_RESOLUTIONS if resolutions is None else resolutions))))
    if not res:
        raise ValueError("resolutions must not be empty")
    if n_neighbors < 1:
        raise ValueError(f"n_neighbors must be >= 1, got {n_neighbors}")
    replicate_by = tuple(replicate_by) if replicate_by is not None else by
    missing = [c for c in replicate_by if c not in profiles.columns]
    if missing:
        raise ValueError(f"replicate_by column(s) {missing} not in the profiles")
    extra = tuple(c for c in replicate_by if c not in by and c not in annotations)
    items: Items = consensus_items(profiles, by=by, features=feats, annotations=annotations + extra, method=method)
    n = len(items)
    if n < 2:
        raise ValueError(f"a map needs at least 2 items with usable profiles, got {n} "
                         f"({items.excluded.height} left out)")
    activity_cols, how = _item_activity(profiles, items, feats, activity=activity, controls=controls,
                                        active=active, seed=seed, method=method, q_threshold=q_threshold)
    items = replace(items, frame=items.frame.with_columns(activity_cols))
    unit = unit_rows(items.x)
    is_active = items.frame["active"].to_numpy()
    act_rows = np.flatnonzero(is_active)
    # the graph and its dendrogram hold the active items; inactive items (noise directions) would glue
    # unrelated clusters together, so they share one "inactive" cluster at every resolution
    if act_rows.size >= 2:
        linkage = paris_linkage(knn_graph(unit[act_rows], k=n_neighbors))
        act_labels = nested_clusters(linkage, res, n=act_rows.size)
    else:
        linkage = np.zeros((0, 4))
        act_labels = np.zeros((len(res), act_rows.size), np.int64)
        logger.warning("phenotypic map: %d active item(s); no clusters to form", act_rows.size)
    labels = np.empty((len(res), n), np.int64)
    labels[:, act_rows] = act_labels
    inactive_cluster = act_labels.max(axis=1) + 1 if act_rows.size else np.zeros(len(res), np.int64)
    labels[:, ~is_active] = inactive_cluster[:, None]
    xy = layout_2d(unit, seed=seed)
    tested = {a: [items.terms[a][i] for i in act_rows] for a in annotations}
    enrichment = cluster_enrichment(act_labels, res, tested, min_overlap=min_overlap)
    keys = items.frame.select(list(by))
    clusters = pl.concat([keys.with_columns(pl.lit(r, dtype=pl.Float64).alias("resolution"),
                                            pl.Series("cluster", lab, dtype=pl.Int32))
                          for r, lab in zip(res, labels)])
    coordinates = keys.with_columns(pl.Series("x", xy[:, 0]), pl.Series("y", xy[:, 1]))
    summary = _cluster_summary(labels, res, cluster_labels(enrichment, q_threshold=q_threshold,
                                                           annotations=annotations),
                               inactive=inactive_cluster if (~is_active).any() else None)
    groups = _replicate_groups(items.frame, replicate_by)
    null = nonreplicate_null(unit, groups, size=null_size, seed=seed)
    if null.size == 0:  # every item is a replicate of every other: compare with all pairs
        null = nonreplicate_null(unit, np.arange(n), size=null_size, seed=seed)
    arrays = neighbour_table_arrays(unit, np.arange(n), k=n_similar, groups=groups, null_sorted=null)
    neighbours = _neighbour_frame(items.frame, by, arrays)
    params = {"n_neighbors": int(n_neighbors), "method": method, "seed": int(seed), "q_threshold": float(q_threshold),
              "null": "nonreplicate", "null_size": int(null.size), "replicate_by": list(replicate_by),
              "layout": "tsne" if n >= 8 else "pca", "min_overlap": int(min_overlap),
              "clustering": "paris", "n_similar": int(n_similar), "activity": how}
    result = PhenotypicMap(by=by, features=tuple(feats), annotations=annotations, resolutions=res,
                           items=items.frame, clusters=clusters, coordinates=coordinates, enrichment=enrichment,
                           cluster_summary=summary, neighbours=neighbours, linkage=linkage,
                           linkage_items=act_rows, consensus=items.x,
                           excluded=items.excluded, parameters=params, null_similarities=null)
    logger.info("%r", result)
    return result


def _cluster_summary(labels: np.ndarray, resolutions: Sequence[float], named: pl.DataFrame, *,
                     inactive: np.ndarray | None) -> pl.DataFrame:
    parts = []
    for level, (r, lab) in enumerate(zip(resolutions, labels)):
        k = int(lab.max()) + 1
        size = np.bincount(lab, minlength=k)
        parent: list[int | None]
        if level == 0:
            parent = [None] * k
        else:
            prev = labels[level - 1]
            parent = [int(prev[np.flatnonzero(lab == c)[0]]) for c in range(k)]
        flag = [inactive is not None and c == int(inactive[level]) for c in range(k)]
        parts.append(pl.DataFrame({"resolution": [float(r)] * k, "level": [level] * k, "cluster": list(range(k)),
                                   "n_items": size.tolist(), "parent": parent, "inactive": flag},
                                  schema={"resolution": pl.Float64, "level": pl.Int32, "cluster": pl.Int32,
                                          "n_items": pl.Int32, "parent": pl.Int32, "inactive": pl.Boolean}))
    out = pl.concat(parts)
    out = out.join(named, on=["resolution", "cluster"], how="left").sort(["level", "cluster"])
    return out.with_columns(pl.when(pl.col("inactive")).then(pl.lit(INACTIVE_LABEL)).otherwise(pl.col("label"))
                            .alias("label"))


def similar(
    profiles: pl.DataFrame,
    query: str | dict[str, Any],
    *,
    by: Sequence[str],
    features: Sequence[str] | None = None,
    k: int = 10,
    null: str = "nonreplicate",
    method: str = "median",
    replicate_by: Sequence[str] | None = None,
    negcon: pl.Expr | None = None,
    exclude_replicates: bool = False,
    null_size: int = 100_000,
    seed: int = 0,
) -> pl.DataFrame:
    """The ``k`` perturbations whose consensus profiles are most cosine-similar to ``query``'s.

    Parameters
    ----------
    profiles : polars.DataFrame
        Wide profiles (as for :func:`phenotypic_map`).
    query : str or dict
        An item id (``by`` values joined by ``" @ "``), a value of the first ``by`` column (every item with it
        is a query, e.g. all doses of a compound), or a ``{column: value}`` dict.
    by : sequence of str
        Columns identifying an item.
    features : sequence of str, optional
        Feature columns.
    k : int
        Neighbours per query item.
    null : {"nonreplicate", "negcon"}
        ``nonreplicate``: p = share of non-replicate item pairs at least as similar. ``negcon``: p = share of
        pseudo-items (consensus of random negative-control rows, as many rows as a typical item) at least as
        similar to the query; negative-control rows are those matching ``negcon`` (default
        ``Metadata_control_type == "negcon"``) and are left out of the items.
    method : {"median", "mean"}
        Consensus of an item's rows.
    replicate_by : sequence of str, optional
        Columns whose equal values make two items replicates (default the ``by`` columns); see
        :func:`phenotypic_map`.
    exclude_replicates : bool
        Leave the query's replicates (e.g. its other doses) out of the neighbours.
    null_size, seed
        Size of the null and its random seed.

    Returns
    -------
    polars.DataFrame
        ``by`` columns of the query, ``rank``, ``neighbour_<by>`` columns, ``similarity``, ``p_value``,
        ``q_value`` (BH over the query's comparisons with every other item), ``item`` and ``neighbour`` (text
        ids).
    """
    if null not in NULLS:
        raise ValueError(f"null must be one of {NULLS}, got {null!r}")
    feats = _check_inputs(profiles, by, (), features)
    by = tuple(by)
    replicate_by = tuple(replicate_by) if replicate_by is not None else by
    neg_rows = None
    if null == "negcon":
        if negcon is None and "Metadata_control_type" not in profiles.columns:
            raise ValueError("null='negcon' needs negative-control rows: a Metadata_control_type column with "
                             "'negcon' rows, or negcon=<expression>")
        expr = negcon if negcon is not None else (pl.col("Metadata_control_type") == "negcon")
        is_neg = profiles.select(expr.fill_null(False).alias("_neg"))["_neg"]
        neg_rows = profiles.filter(is_neg).select(feats).cast(pl.Float64).to_numpy()
        profiles = profiles.filter(~is_neg)
    items = consensus_items(profiles, by=by, features=feats, method=method,
                            annotations=tuple(c for c in replicate_by if c not in by))
    if len(items) < 2:
        raise ValueError(f"similarity search needs at least 2 items, got {len(items)}")
    unit = unit_rows(items.x)
    rows = _query_rows(items.frame, by, query)
    groups = _replicate_groups(items.frame, replicate_by)
    if null == "negcon":
        n_rows = int(np.median(items.frame["n_profiles"].to_numpy()))
        null_sorted = negcon_null(unit[rows], neg_rows[np.isfinite(neg_rows).all(axis=1)], n_rows=n_rows,
                                  size=min(null_size, 1000), seed=seed, method=method)
    else:
        null_sorted = nonreplicate_null(unit, groups, size=null_size, seed=seed)
        if null_sorted.size == 0:
            null_sorted = nonreplicate_null(unit, np.arange(len(items)), size=null_size, seed=seed)
    arrays = neighbour_table_arrays(unit, rows, k=k, groups=groups, null_sorted=null_sorted,
                                    exclude_replicates=exclude_replicates)
    # neighbour_table_arrays indexes a 2-D null by position in `rows`
    return _neighbour_frame(items.frame, by, arrays)


@dataclass(frozen=True)
class NeighbourAgreement:
    """Nearest-neighbour annotation agreement of a map.

    Attributes
    ----------
    annotation : str
    n_items : int
        Items with a term and at least one eligible neighbour candidate.
    agreement : float
        Share of those items whose most similar eligible item shares at least one term.
    chance : float
        Expected share if the neighbour were drawn at random among the eligible items.
    """

    annotation: str
    n_items: int
    agreement: float
    chance: float


def neighbour_agreement(result: PhenotypicMap, annotation: str, *, exclude_same: Sequence[str] = ()
                        ) -> NeighbourAgreement:
    """Share of items whose nearest neighbour shares an annotation term, and its chance level.

    Parameters
    ----------
    result : PhenotypicMap
    annotation : str
        One of ``result.annotations``.
    exclude_same : sequence of str
        Item columns (``by`` or annotations) whose equal values make an item ineligible as a neighbour, e.g.
        the compound when items are compound x dose (otherwise a compound's other doses would count).
        Only items with a term are eligible neighbours.
    """
    if annotation not in result.items.columns:
        raise KeyError(f"{annotation!r} is not an annotation of the map ({list(result.annotations)})")
    from ._items import split_terms

    terms = [split_terms(v) for v in result.items[annotation].to_list()]
    has = np.array([bool(t) for t in terms])
    unit = unit_rows(result.consensus)
    groups = [result.items[c].cast(pl.String).fill_null("\0null").to_numpy() for c in exclude_same]
    agree, chance, used = 0, 0.0, 0
    for i in np.flatnonzero(has):  # one row at a time: memory stays O(n)
        eligible = has.copy()
        eligible[i] = False
        for g in groups:
            eligible &= g != g[i]
        cand = np.flatnonzero(eligible)
        if cand.size == 0:
            continue
        used += 1
        s = unit[cand] @ unit[i]
        best = cand[np.lexsort((cand, -s))[0]]
        agree += bool(terms[i] & terms[best])
        chance += float(np.mean([bool(terms[i] & terms[j]) for j in cand]))
    return NeighbourAgreement(annotation=annotation, n_items=used, agreement=agree / used if used else float("nan"),
                              chance=chance / used if used else float("nan"))

