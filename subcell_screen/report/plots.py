"""Plot functions of the QC and hit reports.

Every function takes data (Polars frames or NumPy arrays) first and options as keywords, draws with
matplotlib's object API (``matplotlib.figure.Figure``, Agg canvas, no pyplot state), returns the
:class:`~matplotlib.figure.Figure` and never saves it. They compute nothing beyond what drawing needs: the
numbers come from the report queries (see ``report/queries``). In a notebook a returned Figure renders
inline.

Examples
--------
>>> import polars as pl
>>> from subcell_screen.report import plots
>>> counts = pl.DataFrame({"well": ["A01", "A02", "B01"], "n_cells": [120, 80, 0]})
>>> fig = plots.plate_heatmap(counts, plate_format=96)
>>> len(fig.axes)  # the plate and its colour bar
2
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "plate_heatmap",
    "segmentation_overlays",
    "channel_metrics",
    "illumination_functions",
    "control_separation",
    "replicate_correlation",
    "embedding_scatter",
    "hit_ranking",
    "dose_response_curves",
    "relocalization_bars",
    "cell_gallery",
    "CONTROL_COLORS",
]

#: Colours of control types in scatter plots.
CONTROL_COLORS: Mapping[str, str] = {
    "negcon": "#1f77b4",
    "poscon": "#d62728",
    "treatment": "#9a9a9a",
    "empty": "#e0c000",
}


def _new_figure(figsize: tuple[float, float]) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _figure_and_ax(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.get_figure(), ax
    fig = _new_figure(figsize)
    return fig, fig.add_subplot()


def _require(df: pl.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: the frame has no column(s) {missing}; it has {df.columns}")


def _empty_message(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666666")
    ax.set_axis_off()


# ------------------------------------------------------------------------------------------------------
# QC


def plate_heatmap(
    counts: pl.DataFrame,
    *,
    value: str = "n_cells",
    plate_format: int | Mapping[str, int] | None = None,
    marks: str | None = None,
    annotate: bool | None = None,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    label: str | None = None,
    ncols: int = 2,
    title: str | None = None,
) -> Figure:
    """Values per well drawn in plate layout (one panel per plate, shared colour scale).

    Parameters
    ----------
    counts
        One row per well: ``well`` (``A01``), ``value`` (numeric; null = not imaged, drawn blank) and, for
        several plates, ``plate``.
    value
        Column to draw.
    plate_format
        96, 384 or 1536 (or a plate -> format mapping); inferred from the largest well id when None.
    marks
        Optional boolean column: wells where it is true get a red cross (e.g. wells with failed sites).
    annotate
        Write the value in each well (default: only for 96-well plates).
    cmap, vmin, vmax, label
        Colour map, colour limits (default: data range) and colour-bar label (default: ``value``).
    ncols
        Panels per row when there are several plates.
    title
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from ..layouts import PLATE_FORMATS, row_letters, well_row_col

    _require(counts, ["well", value], "plate_heatmap")
    df = counts if "plate" in counts.columns else counts.with_columns(pl.lit("").alias("plate"))
    plates = list(dict.fromkeys(df["plate"].to_list()))
    vals = df[value].cast(pl.Float64)
    finite = vals.drop_nulls().drop_nans()
    lo = float(finite.min()) if vmin is None and finite.len() else (vmin if vmin is not None else 0.0)
    hi = float(finite.max()) if vmax is None and finite.len() else (vmax if vmax is not None else 1.0)
    if hi <= lo:
        hi = lo + 1.0

    def fmt_of(plate: str, wells: list[str]) -> int:
        if isinstance(plate_format, Mapping):
            fmt = plate_format.get(plate)
        else:
            fmt = plate_format
        if fmt is not None:
            if fmt not in PLATE_FORMATS:
                raise ValueError(f"plate {plate!r}: unknown plate format {fmt}; expected 96, 384 or 1536")
            return int(fmt)
        rc = [well_row_col(w) for w in wells]
        max_r = max((r for r, _ in rc), default=0)
        max_c = max((c for _, c in rc), default=0)
        for f, (nr, nc) in sorted(PLATE_FORMATS.items()):
            if max_r < nr and max_c < nc:
                return f
        raise ValueError(f"plate {plate!r}: wells beyond a 1536-well plate")

    n = len(plates)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fmts = {p: fmt_of(p, df.filter(pl.col("plate") == p)["well"].to_list()) for p in plates}
    big = max(fmts.values(), default=96)
    panel_w = {96: 5.0, 384: 6.5, 1536: 8.0}[big]
    fig = _new_figure((panel_w * ncols + 0.8, panel_w * 0.72 * nrows + (0.4 if title else 0)))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    image = None
    for i, plate in enumerate(plates):
        ax = axes[i // ncols][i % ncols]
        sub = df.filter(pl.col("plate") == plate)
        n_rows, n_cols = PLATE_FORMATS[fmts[plate]]
        grid = np.full((n_rows, n_cols), np.nan)
        mark_rc = []
        for rec in sub.iter_rows(named=True):
            r, c = well_row_col(rec["well"])
            v = rec[value]
            grid[r, c] = np.nan if v is None else float(v)
            if marks is not None and rec.get(marks):
                mark_rc.append((r, c))
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=lo, vmax=hi, aspect="equal",
                          interpolation="nearest")
        step = 1 if n_cols <= 24 else 4
        ax.set_xticks(range(0, n_cols, step), [str(c + 1) for c in range(0, n_cols, step)], fontsize=7)
        ax.set_yticks(range(0, n_rows, step if n_rows > 16 else 1),
                      [row_letters(r) for r in range(0, n_rows, step if n_rows > 16 else 1)],
                      fontsize=7)
        ax.tick_params(length=0)
        ax.set_facecolor("#f2f2f2")
        if plate:
            ax.set_title(f"{plate} ({fmts[plate]}-well)", fontsize=10)
        if mark_rc:
            ys, xs = zip(*mark_rc)
            ax.scatter(xs, ys, marker="x", color="#d62728", s=18 if n_cols <= 24 else 6, linewidths=1.0)
        if annotate if annotate is not None else n_cols <= 12:
            for r in range(n_rows):
                for c in range(n_cols):
                    if np.isfinite(grid[r, c]):
                        level = (grid[r, c] - lo) / (hi - lo)
                        ax.text(c, r, f"{grid[r, c]:.0f}", ha="center", va="center", fontsize=6,
                                color="black" if level > 0.6 else "white")
    for j in range(n, nrows * ncols):
        axes[j // ncols][j % ncols].set_axis_off()
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label=label or value)
    if title:
        fig.suptitle(title)
    return fig


def segmentation_overlays(
    images: Sequence[np.ndarray],
    *,
    cells: Sequence[np.ndarray],
    nuclei: Sequence[np.ndarray | None] | None = None,
    titles: Sequence[str] | None = None,
    ncols: int = 2,
    panel_size: float = 4.0,
    cell_color: tuple[float, float, float] = (1.0, 1.0, 1.0),
    nucleus_color: tuple[float, float, float] = (1.0, 0.2, 1.0),
) -> Figure:
    """Site images with cell (and nucleus) label outlines.

    Parameters
    ----------
    images
        Display images, each ``(H, W, 3)`` float in [0, 1] (see ``report._images.composite``) or ``(H, W)``
        grey.
    cells
        Cell label images, each ``(H, W)`` int (0 = background), same shape as its image.
    nuclei
        Optional nucleus label images (``None`` entries allowed).
    titles
        Panel titles.
    ncols, panel_size
        Panels per row and panel size in inches.
    cell_color, nucleus_color
        RGB outline colours (white and magenta); outlines get thicker for large images so that they survive
        downsampling to the panel size.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from ._images import draw_outlines, to_rgb

    if len(cells) != len(images):
        raise ValueError(f"segmentation_overlays: {len(images)} images but {len(cells)} label images")
    n = len(images)
    fig = _new_figure((panel_size * max(1, min(ncols, n)), panel_size * max(1, math.ceil(n / ncols))))
    if n == 0:
        _empty_message(fig.add_subplot(), "no segmented sites")
        return fig
    ncols = max(1, min(ncols, n))
    axes = fig.subplots(math.ceil(n / ncols), ncols, squeeze=False)
    for i, image in enumerate(images):
        ax = axes[i // ncols][i % ncols]
        rgb = to_rgb(image)
        if rgb.shape[:2] != np.shape(cells[i]):
            raise ValueError(f"segmentation_overlays: image {i} is {rgb.shape[:2]} but its labels are "
                             f"{np.shape(cells[i])}")
        thickness = max(1, int(np.ceil(max(rgb.shape[:2]) / (100 * panel_size))))  # visible once downsampled
        nuc = nuclei[i] if nuclei is not None else None
        if nuc is not None:
            rgb = draw_outlines(rgb, nuc, color=nucleus_color, thickness=thickness)
        rgb = draw_outlines(rgb, cells[i], color=cell_color, thickness=thickness)
        ax.imshow(rgb, interpolation="nearest")
        ax.set_axis_off()
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
    for j in range(n, axes.size):
        axes.ravel()[j].set_axis_off()
    return fig


def channel_metrics(
    site_qc: pl.DataFrame,
    *,
    metrics: Sequence[str] = ("mean", "p99", "saturated_fraction", "focus"),
    channel: str = "channel",
    panel_size: tuple[float, float] = (4.2, 3.0),
) -> Figure:
    """Per-site intensity and focus metrics, one box plot per channel in one panel per metric.

    Parameters
    ----------
    site_qc
        One row per site and channel: ``channel`` plus the ``metrics`` columns (e.g. ``mean``, ``p99``
        intensities in image units, ``saturated_fraction`` in [0, 1], ``focus`` in [0, 1]).
    metrics
        Columns to draw.
    channel
        Channel column.

    Returns
    -------
    matplotlib.figure.Figure
    """
    _require(site_qc, [channel, *metrics], "channel_metrics")
    channels = sorted(set(site_qc[channel].to_list()))
    n = len(metrics)
    ncols = min(n, 2)
    nrows = math.ceil(n / ncols)
    fig = _new_figure((panel_size[0] * ncols, panel_size[1] * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    rng = np.random.default_rng(0)  # jitter only
    for i, metric in enumerate(metrics):
        ax = axes[i // ncols][i % ncols]
        data = [site_qc.filter(pl.col(channel) == ch)[metric].drop_nulls().cast(pl.Float64).to_numpy()
                for ch in channels]
        if not any(len(d) for d in data):
            _empty_message(ax, f"no {metric} values")
            continue
        ax.boxplot([d if len(d) else [np.nan] for d in data], tick_labels=channels, showfliers=False)
        for k, d in enumerate(data):
            ax.scatter(k + 1 + rng.uniform(-0.15, 0.15, len(d)), d, s=6, alpha=0.5, color="#1f77b4")
        ax.set_title(metric.replace("_", " "), fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        if metric in ("mean", "median", "p01", "p99"):
            ax.set_ylabel("intensity (image units)", fontsize=8)
    for j in range(n, axes.size):
        axes.ravel()[j].set_axis_off()
    return fig


def illumination_functions(
    functions: Mapping[tuple[str, str], np.ndarray],
    *,
    panel_size: float = 1.6,
    cmap: str = "magma",
) -> Figure:
    """Illumination functions, one small image per plate (row) and channel (column).

    Each channel (column) has its own colour scale, shared by the plates and shown below the column, from 1
    (or the column's minimum) to the column's maximum: channels differ a lot in how uneven they are, and one
    scale for all would flatten the weaker ones.

    Parameters
    ----------
    functions
        ``(plate, channel)`` -> ``(h, w)`` function (values >= 1: the factor each pixel is divided by; a
        downsampled copy is enough, e.g. ``report._images.downsample``), in display order.
    panel_size
        Size of one panel in inches.
    cmap
        Colour map.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plates = list(dict.fromkeys(p for p, _ in functions))
    channels = list(dict.fromkeys(c for _, c in functions))
    if not functions:
        fig = _new_figure((4.0, 1.5))
        _empty_message(fig.add_subplot(), "no illumination functions")
        return fig
    fig = _new_figure((max(panel_size * len(channels) + 0.6, 3.0), panel_size * len(plates) + 1.0))
    axes = fig.subplots(len(plates), len(channels), squeeze=False)
    for j, channel in enumerate(channels):
        arrays = [a for (p, c), a in functions.items() if c == channel]
        lo = min(1.0, min(float(np.nanmin(a)) for a in arrays))
        hi = max(float(np.nanmax(a)) for a in arrays)
        hi = hi if hi > lo else lo + 1e-3
        image = None
        for i, plate in enumerate(plates):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            a = functions.get((plate, channel))
            if i == 0:
                ax.set_title(_short(str(channel), 18), fontsize=8)
            if j == 0:
                ax.set_ylabel(_short(str(plate), 18), fontsize=8)
            if a is None:
                ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes, color="#666666")
                continue
            image = ax.imshow(a, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        if image is not None:
            bar = fig.colorbar(image, ax=axes[:, j].tolist(), location="bottom", shrink=0.9, aspect=12)
            bar.ax.tick_params(labelsize=7)
            bar.ax.xaxis.set_major_locator(_max_n_locator(3))
    return fig


def _max_n_locator(n: int):  # noqa: ANN202 - a matplotlib Locator
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(n)


def control_separation(
    readouts: pl.DataFrame,
    *,
    value: str = "profile_distance",
    zprime: Mapping[str, float | None] | None = None,
    label: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Negative- versus positive-control readouts per plate, with each plate's Z'-factor.

    Parameters
    ----------
    readouts
        One row per control well: ``plate``, ``control_type`` (``negcon``/``poscon``) and ``value``.
    value
        Readout column (e.g. ``profile_distance``: norm of the normalised profile).
    zprime
        Plate -> Z'-factor, written above each plate (None = not computable).
    label
        Y-axis label (default: ``value``).
    ax
        Draw into this Axes instead of a new figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    _require(readouts, ["plate", "control_type", value], "control_separation")
    fig, ax = _figure_and_ax(ax, (max(4.5, 1.4 * readouts["plate"].n_unique() + 2), 3.6))
    plates = sorted(set(readouts["plate"].to_list()))
    rng = np.random.default_rng(0)
    for i, plate in enumerate(plates):
        for k, ctrl in enumerate(("negcon", "poscon")):
            v = readouts.filter((pl.col("plate") == plate) & (pl.col("control_type") == ctrl))[value]
            v = v.drop_nulls().cast(pl.Float64).to_numpy()
            x = i + (k - 0.5) * 0.35
            ax.scatter(x + rng.uniform(-0.08, 0.08, len(v)), v, s=10, alpha=0.7, color=CONTROL_COLORS[ctrl],
                       label=ctrl if i == 0 else None)
        if zprime is not None:
            z = zprime.get(plate)
            ax.annotate("Z′ = " + ("n/a" if z is None or not np.isfinite(z) else f"{z:.2f}"), (i, 1.0),
                        xycoords=("data", "axes fraction"), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(plates)), plates, fontsize=8, rotation=30 if len(plates) > 4 else 0)
    ax.set_ylabel(label or value.replace("_", " "))
    ax.legend(fontsize=8, loc="upper left", frameon=False)
    return fig


def replicate_correlation(
    replicate: Sequence[float] | np.ndarray,
    null: Sequence[float] | np.ndarray,
    *,
    threshold: float | None = None,
    bins: int = 40,
    ax: Axes | None = None,
) -> Figure:
    """Histogram of replicate correlations against non-replicate (null) correlations.

    Parameters
    ----------
    replicate
        Median Pearson correlation between replicate wells, one per perturbation.
    null
        Correlations of non-replicate well pairs.
    threshold
        The null's 95th percentile (vertical line).
    bins
        Histogram bins over [-1, 1].
    ax
        Draw into this Axes instead of a new figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = _figure_and_ax(ax, (5.5, 3.4))
    rep = np.asarray([v for v in replicate if v is not None], dtype=float)
    nul = np.asarray([v for v in null if v is not None], dtype=float)
    edges = np.linspace(-1, 1, bins + 1)
    if nul.size:
        ax.hist(nul, bins=edges, density=True, alpha=0.5, color="#9a9a9a", label=f"non-replicates (n={nul.size})")
    if rep.size:
        ax.hist(rep, bins=edges, density=True, alpha=0.6, color="#d62728", label=f"replicates (n={rep.size})")
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"null 95th pct = {threshold:.2f}")
    ax.set_xlabel("Pearson correlation of well profiles")
    ax.set_ylabel("density")
    ax.legend(fontsize=8, frameon=False)
    return fig


def embedding_scatter(
    coords: np.ndarray,
    *,
    groups: Sequence[str | None],
    axis_labels: tuple[str, str] = ("PC1", "PC2"),
    colors: Mapping[str, str] | None = None,
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """2-D embedding (PCA/UMAP) of well profiles coloured by group (control type).

    Parameters
    ----------
    coords
        ``(n, 2)`` float coordinates.
    groups
        Group of each point (None = ``treatment``).
    axis_labels
        Axis labels (e.g. with explained variance).
    colors
        Group -> colour (default :data:`CONTROL_COLORS`, others grey).
    title
        Axes title.
    ax
        Draw into this Axes instead of a new figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    coords = np.asarray(coords, dtype=float)
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] != len(groups):
        raise ValueError(f"embedding_scatter: coords must be (n, 2) with n = len(groups) = {len(groups)}, "
                         f"got {coords.shape}")
    colors = dict(CONTROL_COLORS if colors is None else colors)
    fig, ax = _figure_and_ax(ax, (5.2, 4.4))
    labels = np.asarray([g if g is not None else "treatment" for g in groups], dtype=object)
    order = sorted(set(labels), key=lambda g: (g != "treatment", g))  # treatments underneath
    for g in order:
        sel = labels == g
        ax.scatter(coords[sel, 0], coords[sel, 1], s=12 if g == "treatment" else 18, alpha=0.7,
                   color=colors.get(g, "#7f7f7f"), label=f"{g} ({int(sel.sum())})", linewidths=0)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.legend(fontsize=8, frameon=False, markerscale=1.5)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


# ------------------------------------------------------------------------------------------------------
# hits


def _lane_positions(wanted: np.ndarray, *, gap: float, lo: float = 0.0, hi: float = 1.0,
                    tie: np.ndarray | None = None) -> np.ndarray:
    """Positions as close as possible to ``wanted`` (axes fractions, any order) that keep at least ``gap``
    between neighbours and stay within [lo, hi] (labels in a column beside the plot, without overlaps).
    Among ``wanted`` closer than ``gap``, larger ``tie`` (the points' x) goes higher, so that leader lines do
    not cross."""
    wanted = np.asarray(wanted, dtype=float)
    tie = np.zeros(len(wanted)) if tie is None else np.asarray(tie, dtype=float)
    order = np.lexsort((-tie, -wanted, -np.round(wanted / gap) if gap > 0 else -wanted))
    pos = np.clip(wanted[order].astype(float), lo, hi)
    n = len(pos)
    if n == 0:
        return pos
    gap = min(gap, (hi - lo) / max(n - 1, 1))
    for i in range(1, n):  # top-down: push each label below the one above it
        pos[i] = min(pos[i], pos[i - 1] - gap)
    if pos[-1] < lo:  # bottom-up: lift the stack back into range
        pos[-1] = lo
        for i in range(n - 2, -1, -1):
            pos[i] = max(pos[i], pos[i + 1] + gap)
    out = np.empty(n)
    out[order] = pos
    return out


def hit_ranking(
    scores: pl.DataFrame,
    *,
    q_threshold: float = 0.05,
    label_top: int = 10,
    label: str = "perturbation_id",
    ax: Axes | None = None,
) -> Figure:
    """Phenotypic activity: mAP against -log10 corrected p-value, hits highlighted, top ones labelled.

    The legend sits above the plot and the labels in a column to its right, each joined to its point by a
    thin line, so neither covers a point or the dashed q = ``q_threshold`` line, and no text leaves the
    figure.

    Parameters
    ----------
    scores
        One row per perturbation: ``perturbation_id``, ``mean_average_precision``, ``corrected_p_value``,
        optional ``is_hit``, ``cytotoxic``, ``rank`` and the ``label`` column.
    q_threshold
        Significance line.
    label_top
        Label this many best-ranked points.
    label
        Column with the point labels (e.g. perturbation names); null labels fall back to the id.
    ax
        Draw into this Axes instead of a new figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    _require(scores, ["perturbation_id", "mean_average_precision", "corrected_p_value"], "hit_ranking")
    if label not in scores.columns:
        raise ValueError(f"hit_ranking: the frame has no label column {label!r}; it has {scores.columns}")
    fig, ax = _figure_and_ax(ax, (7.5, 4.6))
    df = scores.filter(pl.col("mean_average_precision").is_not_null() & pl.col("corrected_p_value").is_not_null())
    if df.height == 0:
        _empty_message(ax, "no scored perturbations")
        return fig
    m = df["mean_average_precision"].cast(pl.Float64).to_numpy()
    q = df["corrected_p_value"].cast(pl.Float64).to_numpy()
    floor = np.nanmin(q[q > 0]) / 10 if np.any(q > 0) else 1e-10
    y = -np.log10(np.clip(q, floor, 1.0))
    hit = df["is_hit"].fill_null(False).to_numpy() if "is_hit" in df.columns else q < q_threshold
    tox = df["cytotoxic"].fill_null(False).to_numpy() if "cytotoxic" in df.columns else np.zeros(len(q), bool)
    ax.scatter(m[~hit], y[~hit], s=12, color="#9a9a9a", alpha=0.7, label="not a hit", linewidths=0)
    ax.scatter(m[hit & ~tox], y[hit & ~tox], s=18, color="#d62728", alpha=0.8, label="hit", linewidths=0)
    if np.any(hit & tox):
        ax.scatter(m[hit & tox], y[hit & tox], s=22, color="#ff7f0e", marker="^", alpha=0.9,
                   label="hit, cytotoxic", linewidths=0)
    q_line = -np.log10(q_threshold)
    ax.axhline(q_line, color="black", linestyle="--", linewidth=0.8, label=f"q = {q_threshold:g}")
    ax.set_xlim(min(0.0, float(np.nanmin(m))) - 0.03, max(1.0, float(np.nanmax(m))) + 0.03)
    ax.set_ylim(0, max(float(np.nanmax(y)), q_line) * 1.08 + 0.1)
    order = (np.argsort(df["rank"].cast(pl.Float64).fill_null(np.inf).to_numpy(), kind="stable")
             if "rank" in df.columns else np.lexsort((-m, q)))[:label_top]
    names = df.select(pl.coalesce(pl.col(label).cast(pl.String), pl.col("perturbation_id")))
    names = names.to_series().to_list()
    if len(order):
        y_lo, y_hi = ax.get_ylim()
        wanted = (y[order] - y_lo) / (y_hi - y_lo)
        height_pt = ax.get_position().height * fig.get_figheight() * 72
        lane = _lane_positions(wanted, gap=min(0.1, 9.0 / max(height_pt, 1.0)), lo=0.02, hi=0.98, tie=m[order])
        for i, ly in zip(order, lane):
            ax.annotate(_short(str(names[i]), 28), (m[i], y[i]), xytext=(1.03, ly), textcoords="axes fraction",
                        fontsize=7, va="center", ha="left", annotation_clip=False,
                        arrowprops={"arrowstyle": "-", "color": "#b0b0b0", "linewidth": 0.6,
                                    "shrinkA": 0, "shrinkB": 2})
    ax.set_xlabel("phenotypic activity (mAP vs negative controls)")
    ax.set_ylabel("-log10 corrected p-value (q)")
    ax.legend(fontsize=8, frameon=False, loc="lower left", bbox_to_anchor=(0.0, 1.01), ncols=4,
              borderaxespad=0.0, handletextpad=0.3, columnspacing=1.2)
    return fig


def _short(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters with an ellipsis in the middle (the end, e.g. an id in parentheses,
    stays), so that one long name cannot squeeze a plot."""
    if len(text) <= width:
        return text
    tail = (width - 1) // 2
    return text[:width - 1 - tail] + "…" + text[len(text) - tail:]


def dose_response_curves(
    points: pl.DataFrame,
    *,
    fits: pl.DataFrame | None = None,
    unit: str | None = None,
    titles: Mapping[str, str] | None = None,
    ncols: int = 4,
    panel_size: tuple[float, float] = (3.0, 2.5),
) -> Figure:
    """Activity against concentration per perturbation, with the fitted 4-parameter logistic and EC50.

    The curve is the scorer's model, :func:`subcell_screen.score.logistic4`
    (``bottom + (top - bottom) / (1 + 10 ** ((log10(ec50) - log10(c)) * hill))``), drawn from the fit's
    parameters.

    Parameters
    ----------
    points
        ``perturbation_id``, ``concentration`` (> 0) and ``activity`` (one row per tested dose).
    fits
        Optional: ``perturbation_id``, ``status`` (``fit``/``no fit``), ``ec50`` (same unit as
        ``concentration``), ``hill``, ``bottom``, ``top``, optional ``reason``.
    unit
        Concentration unit for the axis label.
    titles
        Perturbation id -> panel title (e.g. its name); default the id.
    ncols, panel_size
        Panels per row and panel size in inches.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from ..score import logistic4
    from ._html import format_value

    _require(points, ["perturbation_id", "concentration", "activity"], "dose_response_curves")
    ids = list(dict.fromkeys(points["perturbation_id"].to_list()))
    fit_of: dict[str, dict[str, Any]] = {}
    if fits is not None:
        _require(fits, ["perturbation_id", "status", "ec50", "hill", "bottom", "top"], "dose_response_curves fits")
        fit_of = {r["perturbation_id"]: r for r in fits.iter_rows(named=True)}
    n = max(1, len(ids))
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = _new_figure((panel_size[0] * ncols, panel_size[1] * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    if not ids:
        _empty_message(axes[0][0], "no dose-response data")
        return fig
    for i, pid in enumerate(ids):
        ax = axes[i // ncols][i % ncols]
        sub = points.filter((pl.col("perturbation_id") == pid) & (pl.col("concentration") > 0))
        c = sub["concentration"].cast(pl.Float64).to_numpy()
        a = sub["activity"].cast(pl.Float64).to_numpy()
        ax.scatter(c, a, s=14, color="#1f77b4", zorder=3)
        ax.set_xscale("log")
        fit = fit_of.get(pid)
        text = "no fit"
        if fit is not None and fit["status"] == "fit" and fit["ec50"] is not None and fit["ec50"] > 0:
            lo_c = min(c.min(), fit["ec50"]) / 3 if c.size else fit["ec50"] / 100
            hi_c = max(c.max(), fit["ec50"]) * 3 if c.size else fit["ec50"] * 100
            xs = np.logspace(np.log10(lo_c), np.log10(hi_c), 200)
            ys = logistic4(np.log10(xs), bottom=fit["bottom"], top=fit["top"],
                           log10_ec50=np.log10(fit["ec50"]), hill=fit["hill"])
            ax.plot(xs, ys, color="#d62728", linewidth=1.5)
            ax.axvline(fit["ec50"], color="#d62728", linestyle=":", linewidth=1)
            text = f"EC50 = {format_value(float(fit['ec50']), column='ec50')}" + (f" {unit}" if unit else "")
        elif fit is not None and fit.get("reason"):
            text = f"no fit: {fit['reason']}"
        name = (titles or {}).get(pid) or str(pid)
        ax.set_title(f"{_short(name, 34)}\n{_short(text, 40)}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlabel(f"concentration ({unit})" if unit else "concentration", fontsize=7)
        ax.set_ylabel("activity", fontsize=7)
    for j in range(len(ids), axes.size):
        axes.ravel()[j].set_axis_off()
    return fig


def relocalization_bars(
    relocalization: pl.DataFrame,
    *,
    top: int = 15,
    q_threshold: float = 0.05,
    label: str = "perturbation_id",
    units: Mapping[str, str] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Effect sizes of the strongest relocalization calls, labelled ``protein | perturbation: from → to``.

    With a ``readout`` column holding several readouts (and no ``ax``), each readout gets its own panel: their
    effect sizes are in different units.

    Parameters
    ----------
    relocalization
        ``protein``, ``perturbation_id``, ``from_class``, ``to_class``, ``effect_size``, ``q_value``, optional
        ``readout`` and the ``label`` column, already ordered (best first).
    top
        Bars to draw (per readout).
    q_threshold
        Bars with ``q_value`` below it are drawn in red, others grey.
    label
        Column naming the perturbation (e.g. its name); null labels fall back to the id.
    units
        Readout -> unit of its effect size, for the x-axis label.
    ax
        Draw into this Axes instead of a new figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    _require(relocalization, ["protein", "perturbation_id", "from_class", "to_class", "effect_size", "q_value"],
             "relocalization_bars")
    if label not in relocalization.columns:
        raise ValueError(f"relocalization_bars: the frame has no label column {label!r}")
    readouts = (list(dict.fromkeys(relocalization["readout"].to_list()))
                if "readout" in relocalization.columns else [None])
    if ax is not None or len(readouts) < 2:
        panels = [(readouts[0] if len(readouts) == 1 else None, relocalization.head(top))]
    else:
        panels = [(r, relocalization.filter(pl.col("readout") == r).head(top)) for r in readouts]
    heights = [0.32 * max(df.height, 2) + 0.9 for _, df in panels]
    if ax is not None:
        fig, axes = ax.get_figure(), [ax]
    else:
        fig = _new_figure((8.0, sum(heights)))
        axes = fig.subplots(len(panels), 1, squeeze=False, height_ratios=heights).ravel().tolist()
    for a, (readout, df) in zip(axes, panels):
        if df.height == 0:
            _empty_message(a, "no relocalization calls")
            continue
        names = df.select(pl.coalesce(pl.col(label).cast(pl.String), pl.col("perturbation_id"))).to_series()
        labels = [_short(f"{r['protein']} | {n}: {r['from_class']} → {r['to_class']}", 60)
                  for r, n in zip(df.iter_rows(named=True), names.to_list())]
        eff = df["effect_size"].cast(pl.Float64).fill_null(0.0).to_numpy()
        q = df["q_value"].cast(pl.Float64).fill_null(1.0).to_numpy()
        y = np.arange(df.height)[::-1]
        a.barh(y, eff, color=np.where(q < q_threshold, "#d62728", "#9a9a9a"))
        a.set_yticks(y, labels, fontsize=8)
        a.axvline(0, color="black", linewidth=0.6)
        unit = (units or {}).get(readout) if readout is not None else None
        xlabel = "effect size" + (f" ({unit})" if unit else "")
        a.set_xlabel(xlabel if readout is None else f"{readout}: {xlabel}", fontsize=8)
    return fig


def cell_gallery(
    treated: Sequence[Sequence[np.ndarray]],
    *,
    control: Sequence[Sequence[np.ndarray]] | None = None,
    row_labels: Sequence[str] | None = None,
    panel_size: float = 1.1,
    gap: int = 4,
) -> Figure:
    """Example cells: one row per hit, treated crops on the left, control crops on the right.

    The crops are tiled into one mosaic image (one Axes, so large galleries stay cheap to draw).

    Parameters
    ----------
    treated
        Per row, a list of display crops ``(h, w, 3)`` float in [0, 1] (or ``(h, w)`` grey); all crops of
        the gallery share one size.
    control
        Per row, control crops (same convention); omitted or empty lists leave the right block blank.
    row_labels
        Row labels (e.g. perturbation ids).
    panel_size
        Size of one crop in inches.
    gap
        White pixels between crops (twice that between the treated and the control block).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from ._images import to_rgb

    rows = len(treated)
    control = list(control) if control is not None else [[] for _ in range(rows)]
    if len(control) != rows:
        raise ValueError(f"cell_gallery: {rows} treated rows but {len(control)} control rows")
    crops = [to_rgb(c) for row in (*treated, *control) for c in row]
    n_t = max((len(r) for r in treated), default=0)
    n_c = max((len(r) for r in control), default=0)
    if rows == 0 or not crops:
        fig = _new_figure((4.0, 1.5))
        _empty_message(fig.add_subplot(), "no cells to show")
        return fig
    size = crops[0].shape[0]
    if any(c.shape[:2] != (size, size) for c in crops):
        raise ValueError("cell_gallery: all crops must be square and of one size, got "
                         f"{sorted({c.shape[:2] for c in crops})}")
    step = size + gap
    block_gap = 3 * gap if n_c else 0
    width = n_t * step + block_gap + n_c * step
    height = rows * step
    mosaic = np.ones((height, width, 3), dtype=np.float32)
    for i in range(rows):
        for j, crop in enumerate(treated[i]):
            mosaic[i * step:i * step + size, j * step:j * step + size] = to_rgb(crop)
        for j, crop in enumerate(control[i]):
            x0 = n_t * step + block_gap + j * step
            mosaic[i * step:i * step + size, x0:x0 + size] = to_rgb(crop)
    n_cols = n_t + n_c
    fig = _new_figure((panel_size * n_cols + 1.8, panel_size * rows + 0.5))
    ax = fig.add_subplot()
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([(i * step + size / 2) for i in range(rows)],
                  [_short(str(s), 36) for s in row_labels] if row_labels is not None else [""] * rows, fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.text(0, -gap, "treated", fontsize=8, va="bottom", ha="left")
    if n_c:
        ax.text(n_t * step + block_gap, -gap, "negative control", fontsize=8, va="bottom", ha="left")
    return fig
