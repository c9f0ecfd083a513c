"""Plots of the phenotypic map report. Every function returns a matplotlib Figure and never saves.

They draw the rows of the map queries (``report/queries/map_*.sql``): the map itself coloured by cluster with
hits highlighted and clusters labelled by their enriched terms, the cluster dendrogram, mean SubCell
localization per cluster, and galleries of example cells with the SubCell pooler attention overlaid.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["cluster_colors", "map_scatter", "cluster_dendrogram", "localization_heatmap", "attention_overlay",
           "cluster_gallery", "INACTIVE_COLOR"]

#: Colour of items outside every cluster (inactive, controls).
INACTIVE_COLOR = "#c8c8c8"


def _figure(figsize: tuple[float, float]) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _empty(fig: Figure, text: str) -> Figure:
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666666")
    ax.set_axis_off()
    return fig


def cluster_colors(clusters: Sequence[int]) -> dict[int, str]:
    """A distinct colour per cluster id (tab20, then tab20b/tab20c), in the order given."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    palette = [to_hex(c) for name in ("tab20", "tab20b", "tab20c") for c in colormaps[name].colors]
    return {int(c): palette[i % len(palette)] for i, c in enumerate(clusters)}


def _short(text: str | None, width: int = 28) -> str:
    if not text:
        return ""
    return textwrap.shorten(str(text), width=width, placeholder="…")


def map_scatter(points: pl.DataFrame, *, highlight: str | None = "is_hit", max_labels: int = 15,
                title: str | None = None) -> Figure:
    """The 2-D map: items coloured by cluster, inactive items grey, highlighted items ringed, labels.

    Parameters
    ----------
    points : polars.DataFrame
        ``x``, ``y``, ``cluster``, ``inactive`` (item in the inactive cluster), ``label`` (cluster label or
        null), optional ``highlight`` column (Boolean, e.g. ``is_hit``).
    highlight : str, optional
        Boolean column whose True items get a black ring.
    max_labels : int
        Clusters labelled at most (the largest labelled clusters first).
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = _figure((8.2, 6.6))
    if points.height == 0:
        return _empty(fig, "no items on the map")
    ax = fig.add_subplot()
    x, y = points["x"].to_numpy(), points["y"].to_numpy()
    inactive = points["inactive"].fill_null(False).to_numpy()
    clusters = points["cluster"].to_numpy()
    active_ids = [int(c) for c in dict.fromkeys(clusters[~inactive].tolist())]
    colors = cluster_colors(sorted(active_ids))
    if inactive.any():
        ax.scatter(x[inactive], y[inactive], s=14, color=INACTIVE_COLOR, linewidths=0, alpha=0.8,
                   label=f"inactive ({int(inactive.sum())})", zorder=1)
    for c in sorted(active_ids):
        sel = (clusters == c) & ~inactive
        ax.scatter(x[sel], y[sel], s=26, color=colors[c], linewidths=0, alpha=0.9, zorder=2)
    if highlight and highlight in points.columns:
        hit = points[highlight].fill_null(False).to_numpy().astype(bool)
        if hit.any():
            ax.scatter(x[hit], y[hit], s=70, facecolors="none", edgecolors="black", linewidths=1.1, zorder=3,
                       label=f"{highlight.replace('is_', '')} ({int(hit.sum())})")
    # labels at cluster centroids: labelled clusters, largest first
    labelled = (points.filter(~pl.col("inactive").fill_null(False) & pl.col("label").is_not_null())
                .group_by("cluster", "label").agg(pl.col("x").mean(), pl.col("y").mean(), pl.len().alias("n"))
                .sort(["n", "cluster"], descending=[True, False]).head(max_labels))
    for c, label, cx, cy, _ in labelled.iter_rows():
        ax.annotate(f"{c}: {_short(label)}", (cx, cy), fontsize=7.5, ha="center", va="center", zorder=4,
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": colors.get(int(c), "#444"),
                          "alpha": 0.85})
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("map dimension 1")
    ax.set_ylabel("map dimension 2")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, frameon=False, loc="best")
    ax.set_title(title or f"{points.height} items, {len(active_ids)} clusters", fontsize=10)
    return fig


def _leaf_clusters(dendrogram: pl.DataFrame, item_cluster: Mapping[str, int]) -> tuple[np.ndarray, list[int]]:
    """SciPy linkage of the dendrogram rows, and the cluster of each leaf."""
    leaves = dendrogram.filter(pl.col("item").is_not_null()).sort("node")
    merges = dendrogram.filter(pl.col("item").is_null()).sort("node")
    z = merges.select("left_node", "right_node", "height", "size").to_numpy().astype(np.float64)
    return z, [int(item_cluster.get(i, -1)) for i in leaves["item"].to_list()]


def cluster_dendrogram(dendrogram: pl.DataFrame, *, item_cluster: Mapping[str, int],
                       labels: Mapping[int, str | None], title: str | None = None) -> Figure:
    """Dendrogram of the active items, cut into the clusters of one resolution (one leaf per cluster).

    Parameters
    ----------
    dendrogram : polars.DataFrame
        ``map_dendrogram`` rows: ``node``, ``item`` (leaves), ``left_node``, ``right_node``, ``height``,
        ``size``.
    item_cluster : mapping of str to int
        Cluster of each leaf item at the resolution drawn.
    labels : mapping of int to str
        Cluster -> label (None: unlabelled).
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    from scipy.cluster.hierarchy import dendrogram as draw

    z, leaf_cluster = _leaf_clusters(dendrogram, item_cluster)
    n_clusters = len(set(leaf_cluster))
    fig = _figure((8.2, max(3.0, 0.32 * n_clusters + 1.2)))
    if z.shape[0] == 0 or n_clusters < 2:
        return _empty(fig, "fewer than two clusters of active items: no tree to draw")
    finite = z[np.isfinite(z[:, 2]), 2]
    top = float(finite.max()) if finite.size else 1.0
    z = z.copy()
    inf_rows = ~np.isfinite(z[:, 2])
    z[inf_rows, 2] = top * 1.5 * 1.1 ** np.arange(int(inf_rows.sum()))  # disconnected parts, drawn on top
    # heights span orders of magnitude: draw log10(height), shifted so the lowest merge sits just right of 0
    logs = np.log10(np.maximum(z[:, 2], 1e-300))
    z[:, 2] = logs - logs.min() + 0.05 * max(float(logs.max() - logs.min()), 1.0)
    n = len(leaf_cluster)
    members: dict[int, list[int]] = {i: [i] for i in range(n)}
    for r, (a, b, _, _) in enumerate(z):
        members[n + r] = members[int(a)] + members[int(b)]
    ax = fig.add_subplot()
    out = draw(z, truncate_mode="lastp", p=n_clusters, orientation="left", no_plot=True)
    names = []
    for node in out["leaves"]:
        cl = [leaf_cluster[i] for i in members[int(node)]]
        c = max(set(cl), key=cl.count)
        names.append(f"{c} ({len(cl)}) {_short(labels.get(c), 40)}")
    leaf_names = dict(zip(out["leaves"], names))
    draw(z, truncate_mode="lastp", p=n_clusters, orientation="left", ax=ax, labels=None,
         leaf_label_func=lambda i: leaf_names.get(i, str(i)),
         color_threshold=0, above_threshold_color="#555555", leaf_font_size=8)
    ax.set_xlabel("log10 Paris distance (shifted; a resolution γ cuts at distance 1/γ)")
    ax.set_title(title or f"{n} active items in {n_clusters} clusters", fontsize=10)
    return fig


def localization_heatmap(localization: pl.DataFrame, *, labels: Mapping[int, str | None] | None = None,
                         title: str | None = None) -> Figure:
    """Mean SubCell localization probability per cluster (rows) and class (columns).

    Parameters
    ----------
    localization : polars.DataFrame
        ``map_cluster_localization`` rows of one resolution: ``cluster``, ``class_index``, ``class_name``,
        ``mean_probability``, ``n_items``.
    labels : mapping of int to str, optional
        Cluster labels for the row names.

    Returns
    -------
    matplotlib.figure.Figure
    """
    clusters = sorted(set(localization["cluster"].to_list()))
    classes = (localization.select("class_index", "class_name").unique().sort("class_index"))
    fig = _figure((10.5, max(2.6, 0.3 * len(clusters) + 2.2)))
    if not clusters:
        return _empty(fig, "no localization probabilities")
    m = np.full((len(clusters), classes.height), np.nan)
    pos = {c: i for i, c in enumerate(clusters)}
    for c, j, p in localization.select("cluster", "class_index", "mean_probability").iter_rows():
        m[pos[c], j] = p
    ax = fig.add_subplot()
    im = ax.imshow(m, aspect="auto", cmap="magma", vmin=0.0, vmax=max(1e-6, float(np.nanmax(m))))
    ax.set_xticks(range(classes.height), classes["class_name"].to_list(), rotation=70, ha="right", fontsize=7)
    n_items = dict(localization.group_by("cluster").agg(pl.col("n_items").first()).iter_rows())
    ax.set_yticks(range(len(clusters)), [f"{c} ({n_items[c]}) {_short((labels or {}).get(c), 30)}"
                                         for c in clusters], fontsize=7.5)
    fig.colorbar(im, ax=ax, label="mean probability", shrink=0.8)
    ax.set_title(title or "Mean SubCell localization probability per cluster", fontsize=10)
    return fig


def attention_overlay(crop: np.ndarray, attention: np.ndarray, *, alpha: float = 0.55,
                      cmap: str = "inferno") -> np.ndarray:
    """An RGB crop with an attention map blended over it.

    Parameters
    ----------
    crop : ndarray, (H, W, 3), float in [0, 1]
    attention : ndarray, (h, w)
        Attention over patches; upsampled bilinearly to ``(H, W)`` and min-max scaled.
    alpha : float
        Opacity of the attention colours at full attention (scaled by the attention value).

    Returns
    -------
    ndarray, (H, W, 3), float32 in [0, 1]
    """
    from matplotlib import colormaps
    from scipy.ndimage import zoom

    crop = np.asarray(crop, dtype=np.float32)
    a = np.asarray(attention, dtype=np.float64)
    h, w = crop.shape[:2]
    a = zoom(a, (h / a.shape[0], w / a.shape[1]), order=1, grid_mode=True, mode="nearest")[:h, :w]
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    heat = colormaps[cmap](a)[..., :3].astype(np.float32)
    weight = (alpha * a)[..., None].astype(np.float32)
    return np.clip(crop * (1 - weight) + heat * weight, 0.0, 1.0)


def cluster_gallery(rows: Sequence[Sequence[np.ndarray]], *, row_labels: Sequence[str],
                    overlays: Sequence[Sequence[np.ndarray]] | None = None, panel_size: float = 1.05,
                    gap: int = 4) -> Figure:
    """Example cells per cluster: one row of crops per cluster, and beneath it (if given) the same cells with
    the model's attention overlaid.

    Parameters
    ----------
    rows : sequence of sequences of ndarray
        Per cluster, RGB crops ``(s, s, 3)`` in [0, 1], all of one size.
    row_labels : sequence of str
        One label per cluster.
    overlays : sequence of sequences of ndarray, optional
        Per cluster, attention overlays of the same cells (same size as the crops; may be shorter).

    Returns
    -------
    matplotlib.figure.Figure
    """
    crops = [c for r in rows for c in r] + [c for r in (overlays or []) for c in r]
    if not rows or not crops:
        return _empty(_figure((4.0, 1.5)), "no cells to show")
    sizes = {tuple(c.shape[:2]) for c in crops}
    if len(sizes) != 1:
        raise ValueError(f"cluster_gallery: crops must share one size, got {sorted(sizes)}")
    size = crops[0].shape[0]
    step = size + gap
    n_cols = max(len(r) for r in rows)
    lines: list[tuple[str, Sequence[np.ndarray]]] = []
    for i, r in enumerate(rows):
        lines.append((row_labels[i], r))
        if overlays is not None:
            lines.append(("  attention", overlays[i] if i < len(overlays) else []))
    mosaic = np.ones((len(lines) * step, max(n_cols, 1) * step, 3), dtype=np.float32)
    for li, (_, crops_row) in enumerate(lines):
        for j, c in enumerate(crops_row):
            mosaic[li * step:li * step + size, j * step:j * step + size] = np.clip(c, 0, 1)
    fig = _figure((panel_size * max(n_cols, 1) + 2.6, panel_size * len(lines) + 0.4))
    ax = fig.add_subplot()
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([li * step + size / 2 for li in range(len(lines))],
                  [_short(t, 36) for t, _ in lines], fontsize=7.5)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return fig

