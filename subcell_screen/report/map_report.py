"""The phenotypic map report (``map_report.html``): the map, its cluster tree, enriched terms, similar
perturbations, example cells with SubCell attention, and mean SubCell localization per cluster.

Like the QC and hit reports, every number comes from a SQL query on the screen store
(``report/queries/map_*.sql``) and a section whose tables are missing says "not computed". The map tables are
written by :func:`subcell_screen.phenomap.write_map_tables` (the map stage).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from ..embed.registry import HPA_PIXEL_SIZE_UM
from ._build import _banner, _titled
from ._html import Page
from ._queries import NotComputed, run_query, table_state

if TYPE_CHECKING:  # pragma: no cover
    from ..store import ScreenStore

__all__ = ["build_map_report", "display_resolution", "attention_maps", "CellAttention"]

logger = logging.getLogger(__name__)

_STEM = "map_report"


def _open(store: ScreenStore | str | Path) -> tuple[ScreenStore, bool]:
    from ..store import ScreenStore

    if isinstance(store, ScreenStore):
        return store, False
    return ScreenStore.open(store, read_only=True), True


def _info(store: ScreenStore) -> dict[str, Any]:
    if table_state(store, "map_info") != "ok":
        return {}
    return {k: json.loads(v) for k, v in store.sql("SELECT key, value FROM map_info").iter_rows()}


def display_resolution(levels: pl.DataFrame, *, max_clusters: int = 15) -> float:
    """The resolution a map report draws: the finest with at most ``max_clusters`` clusters of active items
    (the coarsest when every resolution has more). ``levels`` is the ``map_levels`` query result."""
    ok = levels.filter(pl.col("n_clusters") <= max_clusters).sort("level")
    row = ok.tail(1) if ok.height else levels.sort("level").head(1)
    return float(row["resolution"][0])


# ------------------------------------------------------------------------------------------------------
# sections


def _summary(store: ScreenStore, page: Page, *, q_threshold: float, max_clusters: int) -> float | None:
    page.section("Map summary")
    try:
        overview = run_query(store, "map_overview", q_threshold=q_threshold)
        levels = run_query(store, "map_levels", q_threshold=q_threshold)
    except NotComputed as exc:
        page.not_computed("Phenotypic map", f"{exc.reason}; run `subcell-screen map CONFIG`")
        return None
    rec = overview.row(0, named=True)
    page.stats([("items on the map", rec["n_items"], "n_items"), ("active (clustered)", rec["n_active"], "n_active"),
                ("features", rec["n_features"], "n_features"), ("resolutions", rec["n_resolutions"], "n_resolutions"),
                ("enriched terms", rec["n_enriched_terms"], "n_enriched_terms")], query="map_overview")
    page.paragraph(
        "Items are consensus profiles (median over wells) of perturbations. A kNN graph on cosine similarity is "
        "clustered by Paris hierarchical graph clustering and cut at several resolutions γ (larger γ = finer; a "
        "coarse cluster is a union of finer ones). Only active items are clustered (activity: "
        f"{rec['activity_source'] or 'not recorded'}); inactive items and controls share one 'inactive' cluster. "
        "Annotation terms are tested per cluster (hypergeometric, BH q-values across all tests of the map); a "
        "cluster's label is its most specific significant terms.")
    page.table(levels, query="map_levels",
               caption=f"per resolution: clusters of active items, clusters labelled by an enriched term "
                       f"(q < {q_threshold:g}), largest cluster, items in the inactive cluster")
    return display_resolution(levels, max_clusters=max_clusters)


def _map_plot(store: ScreenStore, page: Page, resolution: float) -> pl.DataFrame:
    from . import map_plots

    page.section("Map")
    try:
        points = run_query(store, "map_points_hits", resolution=resolution)
        query, highlight = "map_points_hits", "is_hit"
    except NotComputed:
        points = run_query(store, "map_points", resolution=resolution)
        query, highlight = "map_points", None
        page.not_computed("Hit highlighting", "table scores is missing; run the score stage")
    page.use_query(query)
    fig = map_plots.map_scatter(points, highlight=highlight,
                                title=f"resolution γ = {resolution:g}: {points.height} items")
    page.figure(fig, name="map", caption=(
        f"The map (t-SNE of cosine distances between consensus profiles), coloured by cluster at γ = "
        f"{resolution:g}; grey: inactive items and controls" + ("; black rings: hits" if highlight else "")
        + "; boxes: cluster number and its most specific enriched terms."))
    page.table(points, query=query, collapsed="Items on the map (table)", max_rows=5000)
    return points


def _tree(store: ScreenStore, page: Page, resolution: float, points: pl.DataFrame) -> dict[int, str | None]:
    from . import map_plots

    page.section("Cluster tree")
    labels = {int(c): lab for c, lab in points.select("cluster", "label").unique().iter_rows()}
    try:
        dendro = run_query(store, "map_dendrogram")
    except NotComputed as exc:
        page.not_computed("Dendrogram", exc)
        dendro = None
    if dendro is not None:
        item_cluster = dict(points.select("item", "cluster").iter_rows())
        fig = map_plots.cluster_dendrogram(dendro, item_cluster=item_cluster, labels=labels)
        page.figure(fig, name="dendrogram", caption=(
            f"Paris dendrogram of the active items, one leaf per cluster at γ = {resolution:g} (number, items, "
            "label); merges below 1/γ are inside a cluster. Finer resolutions split these leaves."))
    try:
        tree = run_query(store, "map_cluster_tree")
        page.table(tree, query="map_cluster_tree", collapsed="Every cluster at every resolution, with its parent",
                   max_rows=3000)
    except NotComputed as exc:  # pragma: no cover - same table as the levels above
        page.not_computed("Cluster tree", exc)
    return labels


def _clusters(store: ScreenStore, page: Page, resolution: float, *, q_threshold: float, top: int) -> None:
    page.section("Clusters and enriched terms")
    page.table(run_query(store, "map_clusters_at", resolution=resolution), query="map_clusters_at",
               caption=f"clusters at γ = {resolution:g}: size, parent at the next coarser resolution, label "
                       "(most specific terms with q below the threshold) and members (first 12)")
    try:
        sig = run_query(store, "map_enrichment_significant", q_threshold=q_threshold, top=top)
    except NotComputed as exc:
        page.not_computed("Enrichment", exc)
        return
    if sig.height == 0:
        page.use_query("map_enrichment_significant")
        page.add(f'<p data-query="map_enrichment_significant" data-rows="0">No term is enriched in any cluster at '
                 f"q &lt; {q_threshold:g}.</p>")
        return
    page.table(sig, query="map_enrichment_significant", max_rows=top, caption=(
        "n_in_cluster of the cluster's cluster_size items carry the term, n_term of the n_items active items "
        "do; p: hypergeometric over-representation; q: Benjamini-Hochberg across every test of the map"))


def _neighbours(store: ScreenStore, page: Page, *, k: int, top: int) -> None:
    page.section("Similar perturbations")
    try:
        df = run_query(store, "map_hit_neighbours", k=k, top=top)
        query, what = "map_hit_neighbours", "hit"
    except NotComputed:
        try:
            df = run_query(store, "map_top_neighbours", k=k, top=top)
            query, what = "map_top_neighbours", "most active item"
        except NotComputed as exc:
            page.not_computed("Similar perturbations", exc)
            return
    if df.height == 0:
        page.use_query(query)
        page.add(f'<p data-query="{query}" data-rows="0">No {what} to show neighbours for.</p>')
        return
    page.paragraph(f"What looks like each {what}: its {k} most similar items (cosine similarity of consensus "
                   "profiles), with p-values against the similarities of non-replicate item pairs. "
                   "`subcell-screen similar CONFIG PERT_ID` runs the same search for any perturbation.")
    page.table(df, query=query, max_rows=top * k)


def _cell_records(df: pl.DataFrame) -> list[dict[str, Any]]:
    return [r for r in df.iter_rows(named=True)]


def _display_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    from scipy.ndimage import zoom

    if rgb.shape[0] == size:
        return rgb
    f = size / rgb.shape[0]
    return np.clip(zoom(rgb, (f, f, 1), order=1, grid_mode=True, mode="nearest"), 0, 1)[:size, :size]


@dataclass(frozen=True)
class CellAttention:
    """SubCell's view of one example cell (:func:`attention_maps`).

    Attributes
    ----------
    key : tuple
        ``(plate, well, site, cell_id)``.
    crop : ndarray, (S, S, 3), float32 in [0, 1]
        The model's input crop as a colour composite.
    attention : ndarray, (h, w), float64
        Pooler attention over patches, averaged over heads and passes.
    embedding : ndarray, (D,), float32
        The cell's embedding from the same forward pass (equal to the embed stage's, since the crop is cut the
        same way).
    """

    key: tuple
    crop: np.ndarray = field(repr=False)
    attention: np.ndarray = field(repr=False)
    embedding: np.ndarray = field(repr=False)


def attention_maps(store: ScreenStore, cells: Sequence[dict[str, Any]], *, model: Any, channel_map: Any = None,
                   crop_size: int = 640, target_pixel_size_um: float = HPA_PIXEL_SIZE_UM, normalize: str | None = None,
                   mask: bool = False) -> list[CellAttention]:
    """SubCell pooler attention of example cells: ``(crop, attention)`` per cell, in the order given.

    Each site is loaded as the embed stage loads it (:func:`subcell_screen.io.load_site`, divided by the
    plate's stored illumination functions when there are any), each cell cropped as the embed stage crops it
    (:func:`subcell_screen.crops.iter_crops` at SubCell's pixel size, from the stored masks) and run through
    ``model`` with attention.

    Parameters
    ----------
    store : ScreenStore
    cells : sequence of dict
        Rows with ``plate``, ``well``, ``site``, ``cell_id``, ``channels`` (the site's image paths),
        ``pixel_size_um`` (e.g. from the ``map_gallery_cells`` query).
    model : SubCellModel
    channel_map : ChannelMap, optional
        Default: the HPA map of the model's channels.
    crop_size, target_pixel_size_um, normalize, mask
        The embed stage's settings (the feature set's ``parameters`` in ``feature_sets``).

    Returns
    -------
    list of CellAttention
        One per cell found, in the order given.
    """
    from ..crops import iter_crops
    from ..embed import Embedder
    from ..io import SiteRecord, load_site
    from ..segment import Segmentation, segmentation_qc
    from ._images import composite

    embedder = Embedder(model, channel_map=channel_map, normalize=normalize, mask=mask, batch_size=16,
                        attention=True, progress=False)
    out: dict[tuple, CellAttention] = {}
    by_site: dict[tuple, list[dict[str, Any]]] = {}
    for r in cells:
        by_site.setdefault((r["plate"], r["well"], int(r["site"])), []).append(r)
    illumination: dict[str, dict[str, np.ndarray]] = {}
    for (plate, well, site), recs in by_site.items():
        px = recs[0]["pixel_size_um"]
        channels = recs[0]["channels"]
        channels = json.loads(channels) if isinstance(channels, str) else dict(channels)
        channels = {n: p if "://" in p or Path(p.partition("#")[0]).is_absolute() else str(store.path / p)
                    for n, p in channels.items()}
        if plate not in illumination:  # the embed stage divided by the plate's illumination functions
            illumination[plate] = store.read_illumination(plate)
        record = SiteRecord(plate=plate, well=well, site=site, channels=channels, pixel_size_um=px, reader="report")
        image = load_site(record, illumination=illumination[plate] or None)
        nuclei, labels = store.read_masks(plate, well, site)
        table = store.sql("SELECT * FROM cells WHERE plate = ? AND well = ? AND site = ? ORDER BY cell_id",
                          [plate, well, site])
        seg = Segmentation(plate=plate, well=well, site=site, nuclei=nuclei, cells=labels, cells_table=table,
                           qc=segmentation_qc(table), method="stored", pixel_size_um=px)
        ids = [int(r["cell_id"]) for r in recs]
        for batch in iter_crops(image, seg, target_pixel_size_um=target_pixel_size_um, crop_size=crop_size,
                                mask=mask, cell_ids=ids, batch_size=16, rescale="cpu"):
            res = embedder(batch)
            if res.pool_attention is None:
                raise RuntimeError("the model returned no pooler attention")
            att = np.asarray(res.pool_attention, dtype=np.float64)
            att = att.reshape(att.shape[0], -1, att.shape[-2], att.shape[-1]).mean(axis=1)
            for j, cid in enumerate(batch.keys["cell_id"].to_list()):
                rgb = composite({n: batch.data[j, c] for c, n in enumerate(batch.channel_names)})
                key = (plate, well, site, int(cid))
                out[key] = CellAttention(key=key, crop=rgb, attention=att[j],
                                         embedding=np.asarray(res.embedding[j], dtype=np.float32))
    keys = [(r["plate"], r["well"], int(r["site"]), int(r["cell_id"])) for r in cells]
    return [out[k] for k in keys if k in out]


def _gallery(store: ScreenStore, page: Page, resolution: float, labels: dict[int, str | None], *,
             n_clusters: int, n_cells: int, model: Any, channel_map: Any, info: dict[str, Any]) -> None:
    from . import map_plots
    from ._images import composite, crop_around, display_limits, draw_outlines, read_site_channels

    page.section("Example cells")
    summary = run_query(store, "map_clusters_at", resolution=resolution)
    active = summary.filter(~pl.col("inactive"))
    shown = pl.concat([active.filter(pl.col("label").is_not_null()),
                       active.filter(pl.col("label").is_null())]).head(n_clusters)
    if shown.height == 0:
        page.not_computed("Example cells", "no cluster of active items")
        return
    per_site = max(1, (n_cells + 1) // 2)
    try:
        selections = [(int(c), run_query(store, "map_gallery_cells", resolution=resolution, cluster=int(c),
                                         n=n_cells, per_site=per_site)) for c in shown["cluster"].to_list()]
    except NotComputed as exc:
        page.not_computed("Example cells", exc)
        return
    page.use_query("map_gallery_cells")
    frames = [df for _, df in selections if df.height]
    if not frames:
        page.not_computed("Example cells", "no segmented cells in the wells of the clusters shown")
        return
    cells = pl.concat(frames, how="vertical_relaxed")
    extent = np.maximum(cells["bbox_y1"] - cells["bbox_y0"], cells["bbox_x1"] - cells["bbox_x0"])
    size = int(np.clip(np.nanmedian(extent.cast(pl.Float64).to_numpy()) * 1.4, 24, 256)) // 2 * 2
    cache: dict[tuple, Any] = {}
    problems: list[str] = []

    def load(r: dict[str, Any]) -> Any:
        key = (r["plate"], r["well"], r["site"])
        if key not in cache:
            try:
                chans = read_site_channels(r["channels"], plate=r["plate"], well=r["well"], site=r["site"],
                                           pixel_size_um=r["pixel_size_um"], base=store.path)
                try:
                    mask = store.read_masks(*key)[1]
                except Exception:  # noqa: BLE001 - crops without an outline
                    mask = None
                cache[key] = (chans, mask)
            except Exception as exc:  # noqa: BLE001 - reported under the gallery
                logger.warning("map gallery: site %s not readable: %s", key, exc)
                cache[key] = exc
        return cache[key]

    rows, row_labels, recs_per_row = [], [], []
    for c, df in selections:
        recs = _cell_records(df)
        loaded = [(r, load(r)) for r in recs]
        ok = [(r, v) for r, v in loaded if not isinstance(v, Exception)]
        problems += [str(v) for _, v in loaded if isinstance(v, Exception)]
        crops = []
        if ok:
            limits = display_limits([v[0] for _, v in ok])
            for r, (chans, mask) in ok:
                rgb = composite(chans, limits=limits)
                crop = crop_around(rgb, center=(r["centroid_y"], r["centroid_x"]), size=size)
                if mask is not None and mask.shape == rgb.shape[:2]:
                    crop = draw_outlines(crop, crop_around(mask, center=(r["centroid_y"], r["centroid_x"]),
                                                           size=size), only=r["cell_id"])
                crops.append(_display_crop(crop, 96))
        rows.append(crops)
        recs_per_row.append([r for r, _ in ok])
        n_items = summary.filter(pl.col("cluster") == c)["n_items"].to_list()
        row_labels.append(f"{c} ({n_items[0] if n_items else '?'}) {labels.get(c) or ''}".strip())

    overlays = None
    reason = ""
    kind = _feature_set_kind(store, info.get("feature_set"))
    if kind != "subcell":
        reason = f"the featurizer of these profiles is {kind or 'unknown'}, not SubCell"
    elif model is None:
        reason = ("no SubCell model was loaded for the report; `subcell-screen map CONFIG` loads it when the "
                  "weights are in the model cache")
    else:
        params = json.loads(store.sql("SELECT parameters FROM feature_sets WHERE feature_set = ?",
                                      [info["feature_set"]])["parameters"][0] or "{}")
        try:
            overlays = []
            for recs in recs_per_row:
                pairs = attention_maps(store, recs, model=model, channel_map=channel_map,
                                       crop_size=int(params.get("crop_size", 640)),
                                       target_pixel_size_um=float(params.get("target_pixel_size_um", HPA_PIXEL_SIZE_UM)),
                                       normalize=params.get("normalize"), mask=bool(params.get("mask", False)))
                overlays.append([_display_crop(map_plots.attention_overlay(a.crop, a.attention), 96) for a in pairs])
        except Exception as exc:  # noqa: BLE001 - the gallery is still useful without overlays
            logger.warning("map report: attention overlays failed: %s", exc)
            overlays = None
            reason = f"{type(exc).__name__}: {exc}"
    fig = map_plots.cluster_gallery(rows, row_labels=row_labels, overlays=overlays)
    page.figure(fig, name="cluster_gallery", caption=(
        f"Example cells of the clusters at γ = {resolution:g} (labelled clusters first), {size}-px crops shown "
        "at 96 px, one display range per channel and cluster, cell outline in white"
        + ("; beneath each row, the same cells as SubCell sees them (its input crop) with the pooler's "
           "attention overlaid (bright = attended)." if overlays is not None else ".")))
    if overlays is None:
        page.not_computed("SubCell pooler attention overlays", reason)
    page.table(cells.drop("channels"), query="map_gallery_cells", collapsed="Cells shown (table)")
    for p in sorted(set(problems)):
        page.add(f'<p class="error">Image not readable: {escape(p)}</p>')


def _feature_set_kind(store: ScreenStore, feature_set: str | None) -> str | None:
    if feature_set is None or table_state(store, "feature_sets") != "ok":
        return None
    kinds = store.sql("SELECT kind FROM feature_sets WHERE feature_set = ?", [feature_set])["kind"].to_list()
    return kinds[0] if kinds else None


def _localization(store: ScreenStore, page: Page, resolution: float, labels: dict[int, str | None]) -> None:
    from . import map_plots

    page.section("Localization per cluster")
    try:
        loc = run_query(store, "map_cluster_localization", resolution=resolution)
    except NotComputed as exc:
        page.not_computed("Mean SubCell localization per cluster",
                          f"{exc.reason}; it needs SubCell features with class probabilities")
        return
    fig = map_plots.localization_heatmap(loc, labels=labels)
    page.figure(fig, name="localization", caption=(
        f"Mean SubCell localization probability of the 31 classes per cluster at γ = {resolution:g} (per item "
        "the mean over its wells of the wells' mean per-cell probabilities, then the mean over the cluster)."))
    page.table(loc, query="map_cluster_localization", collapsed="Localization per cluster (table)", max_rows=2000)


def _runs(store: ScreenStore, page: Page) -> None:
    page.section("Runs")
    try:
        page.table(run_query(store, "runs"), query="runs", caption="pipeline runs recorded in the store")
    except NotComputed as exc:
        page.not_computed("Run history", exc)


def build_map_report(
    store: ScreenStore | str | Path,
    out_dir: str | Path,
    *,
    title: str | None = None,
    resolution: float | None = None,
    max_clusters: int = 15,
    q_threshold: float = 0.05,
    top_terms: int = 200,
    neighbours: int = 5,
    neighbour_queries: int = 10,
    gallery_clusters: int = 6,
    gallery_cells: int = 6,
    model: Any = None,
    channel_map: Any = None,
) -> Path:
    """Write the phenotypic map report of a screen as one self-contained HTML page (``map_report.html``).

    Sections: run banner, map summary (items, active items, clusters per resolution), the map coloured by
    cluster with hits highlighted and clusters labelled by enriched terms, the cluster dendrogram, clusters
    and enriched terms, similar perturbations of the hits, example cells per cluster (with the SubCell pooler
    attention overlaid when ``model`` is given and the profiles are SubCell embeddings), mean SubCell
    localization probabilities per cluster, run history. A section whose tables are missing says
    "not computed".

    Parameters
    ----------
    store
        An open :class:`~subcell_screen.store.ScreenStore` (read-only is fine) or a screen folder.
    out_dir
        Output folder: ``map_report.html`` and its figures as ``map_report_<figure>.png``.
    title
        Page title (default ``Phenotypic map — <[screen].name>``, else the screen folder's name).
    resolution
        Resolution drawn (default :func:`display_resolution` with ``max_clusters``).
    max_clusters
        See :func:`display_resolution`.
    q_threshold
        Significance of enrichment q-values.
    top_terms
        Rows of the enrichment table.
    neighbours, neighbour_queries
        Neighbours shown per query item, and query items (hits, else the most active items).
    gallery_clusters, gallery_cells
        Clusters with example cells, and cells per cluster.
    model
        A loaded :class:`~subcell_screen.embed.SubCellModel` for the attention overlays (optional).
    channel_map
        The screen's :class:`~subcell_screen.channels.ChannelMap` (default: the model's HPA map).

    Returns
    -------
    Path
        The HTML file.
    """
    st, close = _open(store)
    try:
        page = Page(Path(out_dir), stem=_STEM, title="")
        _titled(st, page, title, "Phenotypic map")
        banner = _banner(st, page)
        shown = _summary(st, page, q_threshold=q_threshold, max_clusters=max_clusters)
        if shown is not None:
            res = float(resolution) if resolution is not None else shown
            info = _info(st)
            points = _map_plot(st, page, res)
            labels = _tree(st, page, res, points)
            _clusters(st, page, res, q_threshold=q_threshold, top=top_terms)
            _neighbours(st, page, k=neighbours, top=neighbour_queries)
            _gallery(st, page, res, labels, n_clusters=gallery_clusters, n_cells=gallery_cells, model=model,
                     channel_map=channel_map, info=info)
            _localization(st, page, res, labels)
        _runs(st, page)
        meta = f"Screen store <code>{escape(str(st.path.resolve()))}</code> · phenotypic map"
        path = page.write(banner=banner, meta=meta, store_path=str(st.path.resolve()))
    finally:
        if close:
            st.close()
    logger.info("map report written to %s (%d figures)", path, len(page.figures))
    return path
