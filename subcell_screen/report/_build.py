"""QC and hit reports: sections built from the report queries, written as self-contained HTML pages."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from ._columns import EFFECT_SIZE, RELOCALIZATION_READOUTS
from ._html import Page, format_value
from ._queries import NotComputed, run_query

if TYPE_CHECKING:  # pragma: no cover
    from ..store import ScreenStore

__all__ = ["build_qc_report", "build_hit_report", "build_reports"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _opened(store: ScreenStore | str | Path) -> Iterator[ScreenStore]:
    from ..store import ScreenStore

    if isinstance(store, ScreenStore):
        yield store
        return
    with ScreenStore.open(store, read_only=True) as opened:
        yield opened


def _file_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("._") or "plate"


def _screen_name(store: ScreenStore) -> tuple[str, bool]:
    """``[screen].name`` of the newest run that gives one (True), else the screen folder's name (False)."""
    try:
        df = run_query(store, "screen_name")
    except NotComputed:
        df = None
    if df is not None and df.height:
        return str(df["screen_name"][0]), True
    return store.path.resolve().name, False


def _titled(store: ScreenStore, page: Page, title: str | None, kind: str, suffix: str = "") -> None:
    if title is None:
        name, from_config = _screen_name(store)
        if from_config:
            page.use_query("screen_name")
        title = f"{kind} — {name}{suffix}"
    page.title = title


def _labels(store: ScreenStore, page: Page) -> dict[str, str]:
    """Perturbation id -> the label plots and galleries show (name, ``name (id)`` or id)."""
    try:
        df = run_query(store, "perturbation_labels")
    except NotComputed:
        return {}
    page.use_query("perturbation_labels")
    return dict(zip(df["perturbation_id"].to_list(), df["label"].to_list()))


def _with_labels(df: pl.DataFrame, labels: dict[str, str]) -> pl.DataFrame:
    """``df`` with a ``label`` column (the id where the layout gives no label)."""
    mapped = pl.col("perturbation_id").replace_strict(labels, default=None, return_dtype=pl.String)
    return df.with_columns(pl.coalesce(mapped, pl.col("perturbation_id").cast(pl.String)).alias("label"))


# ------------------------------------------------------------------------------------------------------
# banner (provenance)


def _banner(store: ScreenStore, page: Page) -> str:
    try:
        df = run_query(store, "run_banner")
    except NotComputed as exc:
        page.use_query(exc.query)
        return (f'<section class="banner" id="provenance"><p class="not-computed">Run provenance: not '
                f"computed ({escape(exc.reason)}); no pipeline run is recorded in this store.</p></section>")
    page.use_query("run_banner")
    if df.height == 0:
        return ('<section class="banner" id="provenance"><p class="not-computed">Run provenance: not computed '
                "(no recorded run says which featurizer and segmenter ran).</p></section>")
    run = df.row(0, named=True)

    def dd(col: str) -> str:
        return (f'<dd data-query="run_banner" data-col="{col}">'
                f"{escape(format_value(run[col], column=col))}</dd>")

    parts = ['<section class="banner" id="provenance"><dl>',
             "<dt>Featurizer</dt>", dd("featurizer"), "<dt>Segmenter</dt>", dd("segmenter"),
             "<dt>Run</dt>", dd("run_id"), "<dt>Command</dt>", dd("command"), "<dt>Status</dt>", dd("status"),
             "<dt>Finished</dt>", dd("finished_at"), "<dt>subcell_screen</dt>", dd("package_version"), "</dl>"]
    fallbacks = [f for f in (run["fallbacks"] or []) if f]
    if fallbacks:
        items = "".join(f"<li>{escape(f)}</li>" for f in fallbacks)
        parts.append(f'<div class="fallback" data-query="run_banner" data-col="fallbacks">'
                     f"⚠ Fallbacks in this run — results were not produced by the requested models:<ul>{items}"
                     "</ul></div>")
    unverified = [f for f in (run.get("unverified_weights") or []) if f]
    if unverified:
        items = "".join(f"<li>{escape(f)}</li>" for f in unverified)
        parts.append(f'<div class="fallback" data-query="run_banner" data-col="unverified_weights">'
                     "⚠ Unverified weights — these SubCell weight files were not matched against a published "
                     f"SHA-256 (loaded as tensors only):<ul>{items}</ul></div>")
    parts.append("</section>")
    return "".join(parts)


def _meta(store: ScreenStore, plate: str | None) -> str:
    scope = f"plate {escape(plate)}" if plate else "all plates"
    return f"Screen store <code>{escape(str(store.path.resolve()))}</code> · {scope}"


def _runs_section(store: ScreenStore, page: Page) -> None:
    page.section("Runs")
    try:
        page.table(run_query(store, "runs"), query="runs", caption="pipeline runs recorded in the store")
    except NotComputed as exc:
        page.not_computed("Run history", exc)


# ------------------------------------------------------------------------------------------------------
# QC sections


def _plate_formats(store: ScreenStore, page: Page, plate: str | None) -> dict[str, int]:
    page.section("Plates")
    try:
        summary = run_query(store, "plate_summary", plate=plate)
    except NotComputed as exc:
        page.not_computed("Plate summary", exc)
        return {}
    if summary.height == 0:
        page.not_computed("Plate summary", f"plate {plate!r} is not in the plates table")
        return {}
    page.table(summary, query="plate_summary",
               caption="pixel_size_um: µm per pixel used for segmentation and crops; pixel_size_source: where it "
                       "came from (config, instrument metadata, TIFF tags)")
    page.heading("Channels")
    try:
        page.table(run_query(store, "channels"), query="channels",
                   caption="acquired channels, the display colour of those the channel map uses, and what each "
                           "is used for; channels outside the map are not loaded, featurized or shown")
    except NotComputed as exc:
        page.not_computed("Channels", exc)
    return {r["plate"]: r["plate_format"] for r in summary.iter_rows(named=True) if r["plate_format"]}


def _illumination(store: ScreenStore, page: Page, plate: str | None, *, max_plates: int = 12) -> None:
    from ..store import decode_array
    from . import plots
    from ._images import downsample

    page.section("Illumination correction")
    try:
        recipes = run_query(store, "illumination_recipes", plate=plate)
    except NotComputed as exc:
        if exc.empty:
            page.use_query(exc.query)
            page.add('<p class="not-computed">Illumination correction: not computed (no illumination functions '
                     "are stored: the runs did not correct illumination, see "
                     "<code>[images].illumination_correction</code>).</p>")
        else:  # pragma: no cover - the store declares the table
            page.not_computed("Illumination correction", exc)
        return
    if recipes.height == 0:
        page.not_computed("Illumination correction", f"plate {plate!r} has no illumination functions")
        return
    page.table(recipes, query="illumination_recipes",
               caption="one function per plate and channel: a robust per-pixel average of the plate's sites "
                       "(method; n_sites used, n_sites_excluded left out), block-averaged by downsample, "
                       "smoothed with a Gaussian of smoothing_sigma_px pixels, scaled so its "
                       "robust_percentile-th percentile is 1; each image is divided by it")
    plates = recipes["plate"].to_list()
    note = ""
    if len(plates) > max_plates:
        note = (f" The first {max_plates} of {len(plates)} plates are drawn; build the report of one plate "
                "(plate=...) for the others.")
        plates = plates[:max_plates]
    functions: dict[tuple[str, str], np.ndarray] = {}
    for p in plates:  # one plate at a time: full-size functions are large, only thumbnails are kept
        rows = run_query(store, "illumination_functions", plate=p)
        for r in rows.iter_rows(named=True):
            functions[(r["plate"], r["channel"])] = downsample(decode_array(r["data"]), max_side=96)
    page.use_query("illumination_functions")
    fig = plots.illumination_functions(functions)
    page.figure(fig, name="illumination_functions",
                caption="Illumination function of each plate (row) and channel (column): the factor (≥ 1) each "
                        "pixel is divided by, one colour scale per channel (below it) shared by the plates; bright "
                        "= pixels that were brighter than the dimmest part of the field (e.g. the centre of a "
                        "vignetted field)." + note)


def _cell_counts(store: ScreenStore, page: Page, plate: str | None, formats: dict[str, int], *,
                 max_plates: int = 24) -> None:
    page.section("Cell counts")
    try:
        per_well = run_query(store, "cells_per_well", plate=plate)
    except NotComputed as exc:
        page.not_computed("Cells per well", exc)
        return
    try:
        page.table(run_query(store, "cell_count_summary", plate=plate), query="cell_count_summary",
                   caption="cells per imaged well, by plate and control type")
    except NotComputed as exc:  # pragma: no cover - same inputs as cells_per_well
        page.not_computed("Cell-count summary", exc)
    from . import plots

    drawn = per_well.with_columns((pl.col("n_failed_sites") > 0).alias("has_failed_site"))
    plates_drawn = list(dict.fromkeys(drawn["plate"].to_list()))
    note = ""
    if len(plates_drawn) > max_plates:
        note = (f" The first {max_plates} of {len(plates_drawn)} plates are drawn; build the report of one plate "
                "(plate=...) for the others.")
        plates_drawn = plates_drawn[:max_plates]
        drawn = drawn.filter(pl.col("plate").is_in(plates_drawn))
    fmt = {p: f for p, f in formats.items() if p in set(plates_drawn)}
    n = len(plates_drawn)
    fig = plots.plate_heatmap(drawn, value="n_cells", plate_format=fmt or None, marks="has_failed_site",
                              label="cells per well", ncols=2 if n <= 4 else 3 if n <= 9 else 4)
    page.figure(fig, name="cell_count_heatmap",
                caption="Cells per well in plate layout (blank: well not imaged; red cross: a site of the well "
                        "failed)." + note)
    page.table(per_well, query="cells_per_well", collapsed="Cells per well (table)", max_rows=3072)


def _failed_sites(store: ScreenStore, page: Page, plate: str | None) -> None:
    page.section("Failed sites")
    try:
        failed = run_query(store, "failed_sites", plate=plate)
    except NotComputed as exc:
        page.not_computed("Failed sites", exc)
        return
    if failed.height == 0:
        page.use_query("failed_sites")
        page.add('<p data-query="failed_sites" data-rows="0">No site failed.</p>')
    else:
        page.table(failed, query="failed_sites", caption=f"{failed.height} failed site(s)")
    try:
        page.heading("Stages")
        page.table(run_query(store, "stage_summary", plate=plate), query="stage_summary",
                   caption="sites and cells per pipeline stage, with compute time (s)")
    except NotComputed as exc:
        page.not_computed("Stage summary", exc)
    _stage_messages(store, page, ("segment", "embed", "profile", "score"))


def _center_window(array: np.ndarray, size: int) -> np.ndarray:
    h, w = array.shape[:2]
    y0, x0 = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return array[y0:y0 + size, x0:x0 + size]


def _segmentation(store: ScreenStore, page: Page, plate: str | None, *, n_sites: int, window: int) -> None:
    from . import plots
    from ._images import channel_colors, composite, read_site_channels

    page.section("Segmentation")
    colors = channel_colors(store)
    try:
        sample = run_query(store, "sample_sites", plate=plate, n=n_sites)
    except NotComputed as exc:
        page.not_computed("Segmentation overlays", exc)
        return
    if sample.height == 0:
        page.not_computed("Segmentation overlays", "no segmented site")
        return
    images, cells, nuclei, titles, problems = [], [], [], [], []
    for r in sample.iter_rows(named=True):
        key = f"{r['plate']} {r['well']} s{r['site']}"
        try:
            nuc, lab = store.read_masks(r["plate"], r["well"], r["site"])
            chans = read_site_channels(r["channels"], plate=r["plate"], well=r["well"], site=r["site"],
                                       pixel_size_um=r["pixel_size_um"], base=store.path,
                                       only=list(colors) if colors else None)
            rgb = composite(chans, colors=colors)
        except Exception as exc:  # noqa: BLE001 - a missing image must not sink the report
            logger.warning("segmentation overlay of %s skipped: %s", key, exc)
            problems.append(f"{key}: {exc}")
            continue
        if rgb.shape[:2] != lab.shape:
            problems.append(f"{key}: image {rgb.shape[:2]} and masks {lab.shape} differ")
            continue
        images.append(_center_window(rgb, window))
        cells.append(_center_window(lab, window))
        nuclei.append(_center_window(nuc, window))
        titles.append(f"{key} · {r['control_type']} · {r['n_cells']} cells · {r['method']}")
    if images:
        fig = plots.segmentation_overlays(images, cells=cells, nuclei=nuclei, titles=titles)
        page.figure(fig, name="segmentation_overlays",
                    caption=f"Sample sites (central {window}-px window) with cell outlines (white) and nucleus "
                            "outlines (magenta).")
    page.table(sample.drop("channels"), query="sample_sites", caption="sample sites shown above")
    for p in problems:
        page.add(f'<p class="error">Overlay skipped: {escape(p)}</p>')


def _channels(store: ScreenStore, page: Page, plate: str | None, *, focus_z: float, saturation: float,
              max_sites: int = 2000) -> None:
    from . import plots

    page.section("Intensity and focus")
    try:
        summary = run_query(store, "channel_qc", plate=plate, saturation=saturation)
    except NotComputed as exc:
        page.not_computed("Per-channel intensity and focus", exc)
        return
    page.table(summary, query="channel_qc",
               caption=f"medians over sites; saturated_sites: saturated fraction above {saturation:g}")
    values = run_query(store, "site_qc_values", plate=plate, max_sites=max_sites)
    page.use_query("site_qc_values")
    fig = plots.channel_metrics(values)
    page.figure(fig, name="channel_metrics",
                caption="Per-site intensity (mean, 99th percentile), saturated pixel fraction and focus score "
                        f"(higher = sharper) by channel; at most {max_sites} sites per channel drawn.")
    flagged = run_query(store, "qc_flagged_sites", plate=plate, focus_z=focus_z, saturation=saturation)
    page.heading("Flagged sites")
    if flagged.height == 0:
        page.use_query("qc_flagged_sites")
        page.add(f'<p data-query="qc_flagged_sites" data-rows="0">No site is out of focus (robust z &lt; '
                 f"{focus_z:g}) or saturated (fraction &gt; {saturation:g}).</p>")
    else:
        page.table(flagged, query="qc_flagged_sites",
                   caption=f"out of focus: robust z of focus < {focus_z:g} within plate and channel; "
                           f"saturated: fraction > {saturation:g}")


def _feature_sets(store: ScreenStore, plate: str | None, feature_set: str | None) -> list[str]:
    df = run_query(store, "profile_feature_sets", plate=plate)
    names = df["feature_set"].to_list()
    if feature_set is not None:
        if feature_set not in names:
            raise NotComputed("profile_feature_sets", empty=(f"well_profiles for feature set {feature_set}",))
        return [feature_set]
    return names


def _controls(store: ScreenStore, page: Page, plate: str | None, feature_set: str | None) -> None:
    from . import plots

    page.section("Control separation")
    try:
        sets = _feature_sets(store, plate, feature_set)
    except NotComputed as exc:
        page.not_computed("Control separation", exc)
        return
    page.use_query("profile_feature_sets")
    for fs in sets:
        if len(sets) > 1:
            page.heading(f"Feature set {fs}")
        zp = run_query(store, "zprime", plate=plate, feature_set=fs)
        if zp.height == 0:
            page.not_computed(f"Z′-factor ({fs})", "no negative- or positive-control wells in the profiles")
        else:
            page.table(zp, query="zprime",
                       caption="Z′ = 1 − 3(σ₊ + σ₋)/|μ₊ − μ₋| between positive and negative control wells, on "
                               "the profile's distance from the negative controls and on the cell count; "
                               "— = no positive controls")
            readouts = run_query(store, "control_readouts", plate=plate, feature_set=fs)
            page.use_query("control_readouts")
            zmap = {r["plate"]: r["z_prime_profile_distance"] for r in zp.iter_rows(named=True)}
            fig = plots.control_separation(readouts, value="profile_distance", zprime=zmap,
                                           label="profile distance from negcon")
            page.figure(fig, name=f"control_separation_{fs}",
                        caption=f"Control wells per plate ({fs}): norm of the normalised profile.")
        pr = run_query(store, "percent_replicating", plate=plate, feature_set=fs)
        rec = pr.row(0, named=True) if pr.height else {}
        if not rec or not rec.get("n_treatments"):
            page.not_computed(f"Replicate correlation ({fs})", "no perturbation has two or more wells")
            continue
        page.stats([("percent replicating", rec["percent_replicating"], "percent_replicating"),
                    ("treatments with replicates", rec["n_treatments"], "n_treatments"),
                    ("null 95th percentile", rec["null_p95"], "null_p95"),
                    ("median treatment replicate r", rec["treatment_median_correlation"],
                     "treatment_median_correlation"),
                    ("median negcon replicate r", rec["negcon_median_correlation"], "negcon_median_correlation")],
                   query="percent_replicating")
        rep = run_query(store, "replicate_correlation", plate=plate, feature_set=fs)
        null = run_query(store, "replicate_null", plate=plate, feature_set=fs, n=5000)
        page.use_query("replicate_null")
        fig = plots.replicate_correlation(
            rep.filter(pl.col("control_type") == "treatment")["median_correlation"].to_list(),
            null["r"].to_list(), threshold=rec["null_p95"])
        page.figure(fig, name=f"replicate_correlation_{fs}",
                    caption=f"Median Pearson correlation between replicate wells of each treatment ({fs}) against "
                            "correlations of non-replicate wells on the same plate.")
        page.table(rep, query="replicate_correlation", collapsed="Replicate correlation per perturbation (table)")


def _matrix(features: pl.Series) -> np.ndarray:
    """``(n, d)`` float64 matrix of a list column of equal-length profiles (``(0, 0)`` when empty)."""
    if features.len() == 0:
        return np.zeros((0, 0))
    if isinstance(features.dtype, pl.Array):  # DuckDB may hand equal-length lists back as fixed-size arrays
        return features.to_numpy().astype(np.float64).reshape(features.len(), features.dtype.size)
    lengths = features.list.len().unique().to_list()
    if len(lengths) != 1:
        raise ValueError(f"well profiles have different lengths {sorted(lengths)}")
    return features.explode().cast(pl.Float64).to_numpy().reshape(features.len(), lengths[0])


def _pca(store: ScreenStore, page: Page, plate: str | None, feature_set: str | None, *,
         max_wells: int = 20000) -> None:
    from . import plots

    page.section("Well profiles (PCA)")
    try:
        sets = _feature_sets(store, plate, feature_set)
    except NotComputed as exc:
        page.not_computed("PCA of well profiles", exc)
        return
    for fs in sets:
        df = run_query(store, "well_profile_vectors", plate=plate, feature_set=fs, max_wells=max_wells)
        page.use_query("well_profile_vectors")
        x = _matrix(df["features"])
        if x.ndim != 2 or x.shape[0] < 3 or x.shape[1] < 2:
            page.not_computed(f"PCA of well profiles ({fs})", f"{x.shape[0]} wells, need at least 3 with 2+ features")
            continue
        x = np.nan_to_num(x - np.nanmean(x, axis=0), nan=0.0)
        u, s, _ = np.linalg.svd(x, full_matrices=False)
        coords = u[:, :2] * s[:2]
        var = s**2 / max(float(np.sum(s**2)), 1e-12)
        fig = plots.embedding_scatter(coords, groups=df["control_type"].to_list(),
                                      axis_labels=(f"PC1 ({100 * var[0]:.0f}% of variance)",
                                                   f"PC2 ({100 * var[1]:.0f}% of variance)"),
                                      title=f"{fs}: {df.height} wells")
        page.figure(fig, name=f"pca_{fs}",
                    caption=f"Principal components of the normalised well profiles ({fs}), coloured by control "
                            "type (PCA of the query's profiles, centred; missing values set to 0; at most "
                            f"{max_wells} wells, controls first).")


def build_qc_report(
    store: ScreenStore | str | Path,
    out_dir: str | Path,
    *,
    plate: str | None = None,
    title: str | None = None,
    feature_set: str | None = None,
    sample_sites: int = 4,
    overlay_window: int = 512,
    focus_z: float = -3.0,
    saturation: float = 0.01,
) -> Path:
    """Write the QC report of a screen (or of one plate) as one self-contained HTML page.

    Sections: run banner (featurizer, segmenter and fallbacks actually used, status and end of the run that
    made the data), plates (with pixel size and its source) and channels (what each is used for),
    illumination functions per plate and channel with their recipe, cell-count heatmap in plate layout,
    failed sites and stage summary, segmentation overlays of sample sites, intensity/focus per channel with
    flagged sites, control separation (Z′-factor, replicate correlation, percent replicating), PCA of well
    profiles by control type, run history. A section whose input tables are missing or empty says "not
    computed". ``docs/reports.md`` describes every section.

    Parameters
    ----------
    store
        An open :class:`~subcell_screen.store.ScreenStore` (read-only is fine) or a screen folder.
    out_dir
        Output folder: ``qc_report.html`` (``qc_report_<plate>.html`` for one plate) and its figures as
        ``qc_report*_<figure>.png``.
    plate
        Restrict to one plate.
    title
        Page title (default ``QC report — <screen name>``: ``[screen].name`` from the run's configuration, else
        the screen folder's name).
    feature_set
        Feature set of the profiles to use (default: every feature set with profiles).
    sample_sites
        Sites shown with segmentation outlines.
    overlay_window
        Side (px) of the central window of each sample site that is drawn.
    focus_z, saturation
        Flag sites whose focus robust z-score is below ``focus_z`` or whose saturated fraction exceeds
        ``saturation``.

    Returns
    -------
    Path
        The HTML file.
    """
    with _opened(store) as st:
        stem = "qc_report" if plate is None else f"qc_report_{_file_part(plate)}"
        page = Page(Path(out_dir), stem=stem, title=title or "QC report")
        _titled(st, page, title, "QC report", f" — {plate}" if plate else "")
        banner = _banner(st, page)
        formats = _plate_formats(st, page, plate)
        _illumination(st, page, plate)
        _cell_counts(st, page, plate, formats)
        _failed_sites(st, page, plate)
        _segmentation(st, page, plate, n_sites=sample_sites, window=overlay_window)
        _channels(st, page, plate, focus_z=focus_z, saturation=saturation)
        _controls(st, page, plate, feature_set)
        _pca(st, page, plate, feature_set)
        _runs_section(st, page)
        path = page.write(banner=banner, meta=_meta(st, plate), store_path=str(st.path.resolve()))
    logger.info("QC report written to %s (%d figures)", path, len(page.figures))
    return path


# ------------------------------------------------------------------------------------------------------
# hit sections


def _ranked(store: ScreenStore, page: Page, top: int | None) -> tuple[pl.DataFrame, str]:
    try:
        return run_query(store, "ranked_hits_ec50", top=top), "ranked_hits_ec50"
    except NotComputed:  # without dose responses (or without scores: then this raises the reason)
        return run_query(store, "ranked_hits", top=top), "ranked_hits"


def _hit_table(store: ScreenStore, page: Page, *, top: int, q_threshold: float,
               labels: dict[str, str]) -> pl.DataFrame | None:
    from . import plots

    page.section("Summary")
    try:
        summary = run_query(store, "score_summary")
    except NotComputed as exc:
        page.not_computed("Scores", exc)
        _stage_messages(store, page, ("profile", "score"))
        page.section("Ranked hits")
        page.not_computed("Ranked hit table", exc)
        return None
    rec = summary.row(0, named=True)
    page.stats([("perturbations scored", rec["n_perturbations"], "n_perturbations"),
                ("hits", rec["n_hits"], "n_hits"),
                ("treatment hits", rec["n_treatment_hits"], "n_treatment_hits"),
                ("cytotoxic hits", rec["n_cytotoxic_hits"], "n_cytotoxic_hits"),
                ("best mAP", rec["max_mean_average_precision"], "max_mean_average_precision"),
                ("smallest q", rec["min_corrected_p_value"], "min_corrected_p_value")], query="score_summary")
    page.section("Ranked hits")
    ranked, qname = _ranked(store, page, top)
    if qname == "ranked_hits":
        page.not_computed("EC50 column", "table dose_response is missing or empty")
    page.table(ranked, query=qname,
               caption="mean_average_precision: phenotypic activity (mAP of replicate retrieval against negative "
                       "controls, 0 to 1); corrected_p_value: q (Benjamini-Hochberg corrected p-value); "
                       f"{EFFECT_SIZE}; effect_ci_low/high: its 95% bootstrap interval; cell_count_fraction: "
                       "cells relative to the negative controls (1 = as many). Hover over a column header for "
                       "its definition; docs/reports.md describes every column.")
    everything, _ = _ranked(store, page, None)
    fig = plots.hit_ranking(_with_labels(everything, labels), q_threshold=q_threshold, label_top=min(top, 10),
                            label="label")
    page.figure(fig, name="hit_ranking",
                caption=f"Phenotypic activity of every scored perturbation; dashed line q = {q_threshold:g}; the "
                        "best-ranked are labelled with their names (the id too where a name is shared).")
    return ranked


def _stage_messages(store: ScreenStore, page: Page, stages: tuple[str, ...]) -> None:
    """The latest messages of ``stages`` (why something was not computed), as a table."""
    try:
        msgs = run_query(store, "stage_messages")
    except NotComputed:
        return
    msgs = msgs.filter(pl.col("stage").is_in(list(stages)))
    if msgs.height:
        page.table(msgs, query="stage_messages", caption="what the " + " and ".join(stages) + " stages reported")


def _coverage(store: ScreenStore, page: Page) -> None:
    page.section("Scoring coverage")
    try:
        cov = run_query(store, "scoring_coverage")
    except NotComputed as exc:
        page.not_computed("Scoring coverage", exc)
        return
    n_scored = int(cov["scored"].sum())
    page.stats([("perturbations in the profiles", cov.filter(pl.col("control_type") != "negcon").height, "n"),
                ("scored", n_scored, "scored"),
                ("not scored", cov.filter(~pl.col("scored") & (pl.col("control_type") != "negcon")).height,
                 "not_scored")], query="scoring_coverage")
    page.table(cov, query="scoring_coverage", max_rows=500,
               caption="perturbations and whether they were scored: phenotypic activity needs at least 2 wells "
                       "of a perturbation (replicates pooled across plates) and 2 negative-control wells; "
                       "positive controls are scored like treatments")


def _dose_response(store: ScreenStore, page: Page, *, max_panels: int, labels: dict[str, str]) -> None:
    from . import plots

    page.section("Dose response")
    try:
        try:
            fits = run_query(store, "dose_response_fits")
            fits_query = "dose_response_fits"
        except NotComputed:  # no scores to rank by (or no fits: then this raises the reason)
            fits = run_query(store, "dose_response_fits_unranked")
            fits_query = "dose_response_fits_unranked"
    except NotComputed as exc:
        page.not_computed("Dose-response fits", exc)
        return
    page.table(fits, query=fits_query,
               caption="4-parameter logistic fits; EC50 and its confidence interval in concentration_unit")
    try:
        points = run_query(store, "dose_points")
    except NotComputed as exc:
        page.not_computed("Dose-response curves", exc)
        return
    shown = [p for p in fits["perturbation_id"].to_list() if p in set(points["perturbation_id"].to_list())]
    shown = shown[:max_panels]
    if not shown:
        page.not_computed("Dose-response curves", "no dose points for the fitted perturbations")
        return
    sub = points.filter(pl.col("perturbation_id").is_in(shown))
    sub = sub.with_columns(pl.col("perturbation_id").cast(pl.Enum(shown))).sort(["perturbation_id", "concentration"])
    sub = sub.with_columns(pl.col("perturbation_id").cast(pl.String))
    units = [u for u in fits["concentration_unit"].unique().to_list() if u]
    fig = plots.dose_response_curves(sub, fits=fits, unit=units[0] if len(units) == 1 else None, titles=labels)
    page.figure(fig, name="dose_response",
                caption=f"Activity per concentration with the fitted 4-parameter logistic (red) and EC50 (dotted); "
                        f"{len(shown)} of {fits.height} perturbations, best-ranked first.")
    page.table(sub, query="dose_points", collapsed="Dose points (table)")


def _relocalization(store: ScreenStore, page: Page, *, q_threshold: float, labels: dict[str, str]) -> None:
    from . import plots

    page.section("Relocalization")
    try:
        reloc = run_query(store, "relocalization", q_threshold=q_threshold)
    except NotComputed as exc:
        page.not_computed("Relocalization", exc)
        return
    shown = reloc.filter(pl.col("applies")).drop("applies")
    left_out = reloc.filter(~pl.col("applies"))
    if left_out.height:
        names = ", ".join(sorted(set(left_out["readout"].to_list())))
        page.paragraph(f"{left_out.height} row(s) of the {names} readout(s) are not listed: they need SubCell "
                       "(localization probabilities, the protein-sensitive embedding) and this run's features are "
                       "classical, so they do not measure the protein's localization. The relocalization_results "
                       "table keeps them.")
    if shown.height == 0:
        page.not_computed("Relocalization", "no readout of this run applies to its featurizer")
        return
    page.paragraph(f"Per readout: the significant calls (q < {q_threshold:g}) first, ranked by the size of the "
                   "effect, then the others by q-value. Effect sizes of different readouts are in different "
                   "units.")
    for readout in dict.fromkeys(shown["readout"].to_list()):
        what, unit = RELOCALIZATION_READOUTS.get(readout, (readout, "see docs/reports.md"))
        page.heading(f"Readout: {readout}")
        rows = shown.filter(pl.col("readout") == readout)
        page.table(rows, query="relocalization", max_rows=200,
                   caption=f"{what}; effect_size: {unit}; {int(rows['significant'].sum())} of {rows.height} "
                           f"significant (q < {q_threshold:g})")
    units = {r: u for r, (_, u) in RELOCALIZATION_READOUTS.items()}
    fig = plots.relocalization_bars(_with_labels(shown, labels), q_threshold=q_threshold, label="label",
                                    units=units)
    page.figure(fig, name="relocalization",
                caption=f"Strongest relocalization calls per readout, in the table's order (red: q < "
                        f"{q_threshold:g}).")


def _gallery(store: ScreenStore, page: Page, ranked: pl.DataFrame | None, *, n_hits: int, n_cells: int,
             labels: dict[str, str]) -> None:
    from . import plots
    from ._images import (
        channel_colors,
        composite,
        crop_around,
        display_limits,
        draw_outlines,
        read_site_channels,
    )

    page.section("Example cells")
    colors = channel_colors(store)
    if ranked is None:
        page.not_computed("Cell galleries", "no scores")
        return
    treat = ranked.filter(pl.col("control_type").is_null())
    hits = treat.filter(pl.col("is_hit").fill_null(False))
    note = ""
    if hits.height == 0:
        hits = treat
        note = "No treatment is a hit; showing the best-ranked treatments. "
    ids = hits["perturbation_id"].head(n_hits).to_list()
    if not ids:
        page.not_computed("Cell galleries", "no treatment scored")
        return
    per_site = max(1, (n_cells + 1) // 2)
    try:
        selections = [(pid, run_query(store, "gallery_cells", perturbation_id=pid, n=n_cells, per_site=per_site),
                       run_query(store, "gallery_control_cells", perturbation_id=pid, n=n_cells, per_site=per_site))
                      for pid in ids]
    except NotComputed as exc:
        page.not_computed("Cell galleries", exc)
        return
    page.use_query("gallery_control_cells")
    all_cells = pl.concat([df for _, t, c in selections for df in (t, c) if df.height], how="vertical_relaxed") \
        if any(t.height or c.height for _, t, c in selections) else None
    if all_cells is None:
        page.not_computed("Cell galleries", "no cells in the wells of the top hits")
        return
    extent = np.maximum(all_cells["bbox_y1"] - all_cells["bbox_y0"], all_cells["bbox_x1"] - all_cells["bbox_x0"])
    size = int(np.clip(np.nanmedian(extent.cast(pl.Float64).to_numpy()) * 1.4, 24, 256)) // 2 * 2

    site_cache: dict[tuple, dict[str, np.ndarray] | Exception] = {}
    mask_cache: dict[tuple, np.ndarray | None] = {}

    def load(r: dict[str, Any]) -> dict[str, np.ndarray] | Exception:
        key = (r["plate"], r["well"], r["site"])
        if key not in site_cache:
            try:
                site_cache[key] = read_site_channels(r["channels"], plate=r["plate"], well=r["well"],
                                                     site=r["site"], pixel_size_um=r["pixel_size_um"],
                                                     base=store.path, only=list(colors) if colors else None)
            except Exception as exc:  # noqa: BLE001 - reported under the gallery
                logger.warning("gallery: site %s not readable: %s", key, exc)
                site_cache[key] = exc
            try:
                mask_cache[key] = store.read_masks(*key)[1]
            except Exception:  # noqa: BLE001 - crops without an outline
                mask_cache[key] = None
        return site_cache[key]

    treated_rows, control_rows, row_labels, problems = [], [], [], []
    for pid, t_df, c_df in selections:
        t_recs = [r for r in t_df.iter_rows(named=True)]
        c_recs = [r for r in c_df.iter_rows(named=True)]
        images = [load(r) for r in t_recs + c_recs]
        ok = [im for im in images if isinstance(im, dict)]
        problems.extend(str(im) for im in images if isinstance(im, Exception))
        name = labels.get(pid) or pid
        if not ok:
            treated_rows.append([])
            control_rows.append([])
            row_labels.append(name)
            continue
        limits = display_limits([site_cache[(r["plate"], r["well"], r["site"])] for r in c_recs
                                 if isinstance(site_cache[(r["plate"], r["well"], r["site"])], dict)] or ok)
        rows_out = []
        for recs in (t_recs, c_recs):
            crops = []
            for r in recs:
                key = (r["plate"], r["well"], r["site"])
                im = site_cache[key]
                if not isinstance(im, dict):
                    continue
                rgb = composite(im, colors=colors, limits=limits)
                crop = crop_around(rgb, center=(r["centroid_y"], r["centroid_x"]), size=size)
                mask = mask_cache.get(key)
                if mask is not None and mask.shape == rgb.shape[:2]:
                    crop = draw_outlines(crop, crop_around(mask, center=(r["centroid_y"], r["centroid_x"]),
                                                           size=size), only=r["cell_id"])
                crops.append(crop)
            rows_out.append(crops)
        treated_rows.append(rows_out[0])
        control_rows.append(rows_out[1])
        rank = ranked.filter(pl.col("perturbation_id") == pid)["rank"].to_list()
        row_labels.append(f"#{rank[0]} {name}" if rank and rank[0] is not None else name)
    fig = plots.cell_gallery(treated_rows, control=control_rows, row_labels=row_labels)
    page.figure(fig, name="cell_gallery",
                caption=f"{note}Cells of the top hits (left; highest concentration tested) next to negative-control "
                        f"cells of the same plates (right); {size}-px crops, one display range per channel and row "
                        "(from the control sites), cell outline in white.")
    shown = pl.concat([df for _, t, c in selections for df in (t, c) if df.height], how="vertical_relaxed")
    page.table(shown.drop("channels"), query="gallery_cells",
               collapsed="Cells shown (table; negative-control rows from gallery_control_cells)")
    for p in sorted(set(problems)):
        page.add(f'<p class="error">Image not readable: {escape(p)}</p>')


def build_hit_report(
    store: ScreenStore | str | Path,
    out_dir: str | Path,
    *,
    title: str | None = None,
    top: int = 20,
    q_threshold: float = 0.05,
    gallery_hits: int = 4,
    gallery_cells: int = 6,
    dose_panels: int = 12,
) -> Path:
    """Write the hit report of a screen as one self-contained HTML page.

    Sections: run banner, score summary, ranked hit table (mAP, p, q, effect size, cell-count fraction,
    cytotoxicity, EC50; each header's tooltip says what the column is and its unit) with an activity plot,
    dose-response fits with 4PL curves, relocalization tables per readout (from → to classes; significant
    calls first by effect size; readouts that need SubCell left out of a classical run), example cell
    galleries (treated vs negative control) for the top hits, run history. Perturbations are named by their
    platemap names (with the id where a name is shared). A section whose input tables are missing or empty
    says "not computed". ``docs/reports.md`` describes every section and column.

    Parameters
    ----------
    store
        An open :class:`~subcell_screen.store.ScreenStore` (read-only is fine) or a screen folder.
    out_dir
        Output folder: ``hit_report.html`` and its figures as ``hit_report_<figure>.png``.
    title
        Page title (default ``Hit report — <screen name>``: ``[screen].name`` from the run's configuration,
        else the screen folder's name).
    top
        Rows of the ranked hit table.
    q_threshold
        Significance line in plots and of the relocalization ranking (hit calls themselves come from
        ``scores.is_hit``).
    gallery_hits, gallery_cells
        Hits shown in the cell gallery and cells per hit (and per control row).
    dose_panels
        Dose-response curves drawn (best-ranked first).

    Returns
    -------
    Path
        The HTML file.
    """
    with _opened(store) as st:
        page = Page(Path(out_dir), stem="hit_report", title=title or "Hit report")
        _titled(st, page, title, "Hit report")
        banner = _banner(st, page)
        labels = _labels(st, page)
        ranked = _hit_table(st, page, top=top, q_threshold=q_threshold, labels=labels)
        _coverage(st, page)
        _dose_response(st, page, max_panels=dose_panels, labels=labels)
        _relocalization(st, page, q_threshold=q_threshold, labels=labels)
        _gallery(st, page, ranked, n_hits=gallery_hits, n_cells=gallery_cells, labels=labels)
        _runs_section(st, page)
        path = page.write(banner=banner, meta=_meta(st, None), store_path=str(st.path.resolve()))
    logger.info("hit report written to %s (%d figures)", path, len(page.figures))
    return path


def build_reports(store: ScreenStore | str | Path, out_dir: str | Path, *, top: int = 20) -> list[Path]:
    """Write the QC report (all plates) and the hit report (``top`` ranked rows) into ``out_dir``.

    Returns
    -------
    list of Path
        ``[qc_report.html, hit_report.html]``.
    """
    with _opened(store) as st:
        return [build_qc_report(st, out_dir), build_hit_report(st, out_dir, top=top)]
