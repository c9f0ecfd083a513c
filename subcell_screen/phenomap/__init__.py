"""The phenotypic map: which perturbations look alike, what a cluster of them stands for, what looks like X.

Pure functions on polars frames and numpy arrays (this package never opens a screen store itself):

* :func:`phenotypic_map` — consensus profiles per item (perturbation, or perturbation x dose) -> cosine kNN
  graph -> nested clusters at several resolutions (Paris hierarchical graph clustering, cut at ``1/γ``) ->
  seeded 2-D layout (t-SNE) -> hypergeometric enrichment of annotation terms with BH q-values and cluster
  labels -> each item's nearest neighbours with p-values. Returns a :class:`PhenotypicMap`.
* :func:`similar` — "what looks like this compound?": the k nearest perturbations with similarity and a
  p-value against a null of non-replicate pairs or of negative-control pseudo-perturbations.
* :func:`neighbour_agreement` — share of items whose nearest neighbour shares an annotation (and chance).
* Building blocks: :func:`knn_graph`, :func:`paris_linkage`, :func:`nested_clusters`, :func:`layout_2d`,
  :func:`cluster_enrichment`, :func:`cluster_labels`.

Examples
--------
>>> import subcell_screen as ss
>>> from subcell_screen.profiles import NEGCON
>>> from subcell_screen.simulate import simulate_well_profiles
>>> sim = simulate_well_profiles(n_plates=2, n_features=32, seed=0)
>>> prof = ss.normalize(sim.profiles, method="mad_robustize", controls=NEGCON)
>>> m = ss.phenotypic_map(prof, by=["Metadata_perturbation_id"], annotations=["Metadata_moa"])
>>> m.enrichment.filter(m.enrichment["q_value"] < 0.05)          # doctest: +SKIP
>>> m.similar("active_00", k=5)                                  # doctest: +SKIP
"""

from __future__ import annotations

from ._activity import activity_test, replicate_test
from ._enrich import ENRICHMENT_SCHEMA, cluster_enrichment, cluster_labels
from ._graph import cut_linkage, knn, knn_graph, nested_clusters, paris_linkage, unit_rows
from ._items import Items, consensus_items, item_ids, split_terms
from ._layout import layout_2d
from ._map import (
    ACTIVITY_TESTS,
    DEFAULT_RESOLUTIONS,
    INACTIVE_LABEL,
    NeighbourAgreement,
    PhenotypicMap,
    neighbour_agreement,
    phenotypic_map,
    similar,
)
from ._similar import NULLS, empirical_p, negcon_null, nonreplicate_null
from ._stage import (
    STAGE_ACTIVITY,
    MapStageResult,
    attention_model,
    default_annotations,
    map_profiles,
    run_map_stage,
)
from ._tables import MAP_TABLES, cluster_localization, map_tables, write_map_tables

__all__ = [
    "phenotypic_map",
    "PhenotypicMap",
    "similar",
    "neighbour_agreement",
    "NeighbourAgreement",
    "DEFAULT_RESOLUTIONS",
    "NULLS",
    # building blocks
    "consensus_items",
    "Items",
    "item_ids",
    "split_terms",
    "unit_rows",
    "knn",
    "knn_graph",
    "paris_linkage",
    "cut_linkage",
    "nested_clusters",
    "layout_2d",
    "cluster_enrichment",
    "cluster_labels",
    "ENRICHMENT_SCHEMA",
    "nonreplicate_null",
    "negcon_null",
    "empirical_p",
    "activity_test",
    "replicate_test",
    "ACTIVITY_TESTS",
    "INACTIVE_LABEL",
    # store tables and the map stage
    "MAP_TABLES",
    "map_tables",
    "write_map_tables",
    "cluster_localization",
    "run_map_stage",
    "attention_model",
    "MapStageResult",
    "map_profiles",
    "default_annotations",
    "STAGE_ACTIVITY",
]
