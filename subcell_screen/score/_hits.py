"""Effect sizes against the negative-control distribution, cell-count (cytotoxicity) fractions, hit tables.

Effect size
-----------
For a group of wells (a perturbation, or a perturbation at one dose) with mean profile ``m`` over ``n`` wells and
the negative controls with mean ``m0`` over ``n0`` wells::

    d2 = ||m - m0||^2 - tr(S)/n - tr(S0)/n0          (unbiased for ||true shift||^2)
    effect_size = sign(d2) * sqrt(|d2| / (tr(S0) / D))

``S``/``S0`` are the sample covariances (only their traces are needed; ``S`` falls back to ``S0`` for groups
with fewer than 3 wells). The effect size is the norm of the mean shift in units of the controls' average
per-feature standard deviation: 0 for an inert perturbation whatever its replicate count (negative values mean
"closer to the controls than noise alone would put it"), and for profiles z-scored against controls it equals
the shift norm in z units. The raw distance ``||m - m0||`` grows with the number of features even for inert
perturbations, which is why it is debiased here. A cosine distance to the control centroid is not used because
normalised profiles put that centroid at ~0.

The confidence interval is a percentile bootstrap over wells (perturbation wells and control wells resampled
independently, ``n_boot`` draws), computed from Gram matrices so it costs O(n_boot x n x n0) per group rather
than O(n_boot x D). The bootstrap replicate subtracts its own expected resampling inflation so that the
interval is centred on the estimate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import polars as pl

from ..profiles import frames as fr
from ._presets import phenotypic_activity

logger = logging.getLogger(__name__)

__all__ = ["effect_sizes", "cell_count_fraction", "hit_table"]


def _group_rows(meta: Any, by: Sequence[str], select: np.ndarray) -> tuple[pl.DataFrame, list[np.ndarray]]:
    pm = fr.to_polars(meta).select(list(by)).with_row_index("_row").filter(pl.Series(select))
    g = pm.group_by(list(by)).agg(pl.col("_row")).sort(list(by), nulls_last=True)
    rows = [np.asarray(r, dtype=np.int64) for r in g.get_column("_row").to_list()]
    return g.drop("_row"), rows


def effect_sizes(
    meta: Any,
    feats: Any,
    *,
    by: Sequence[str] = ("Metadata_perturbation_id",),
    controls: Any = fr.NEGCON,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int | None = 0,
) -> pl.DataFrame:
    """Debiased, standardised distance of each group's mean profile from the negative controls.

    Parameters
    ----------
    meta : DataFrame, N rows
    feats : (N, D) array
        Normalised profiles.
    by : list of str
        Group columns (default the perturbation id; add the concentration for per-dose effects).
    controls : polars expression, mapping, query string or bool array
        Negative-control rows (excluded from the groups).
    n_boot : int
        Bootstrap draws for the CI (0 skips the CI).
    ci : float
        Confidence level of the percentile interval.
    seed : int, optional

    Returns
    -------
    polars.DataFrame
        One row per group (sorted by key): ``by`` columns, ``n_wells``, ``effect_size``, ``ci_low``,
        ``ci_high`` (Float64; units: control per-feature sd), ``distance`` (raw ``||m - m0||``).
    """
    fr.check_frame(meta)
    by = list(by)
    fr.require_columns(meta, by)
    x = np.asarray(fr.as_matrix(feats, n=fr.n_rows(meta)), dtype=np.float64)
    ctrl = fr.row_mask(meta, controls)
    n0 = int(ctrl.sum())
    if n0 < 2:
        raise ValueError(f"effect sizes need at least 2 negative-control rows, found {n0}")
    x0 = x[ctrl]
    m0 = x0.mean(axis=0)
    tr0 = float(((x0 - m0) ** 2).sum() / (n0 - 1))
    d = x.shape[1]
    unit = tr0 / d
    if unit <= 0:
        raise ValueError("negative-control profiles have zero variance; cannot scale effect sizes")
    keys, groups = _group_rows(meta, by, ~ctrl)
    rng = np.random.default_rng(seed)
    alpha = (1 - ci) / 2
    if n_boot:
        w0 = rng.multinomial(n0, np.full(n0, 1 / n0), size=n_boot).astype(np.float64)  # (B, n0)
        xc0 = x0 - m0  # centring improves the Gram-matrix arithmetic
        g00 = xc0 @ xc0.T
        m0b_sq = np.einsum("bi,ij,bj->b", w0, g00, w0) / n0**2  # ||m0_b - m0||^2
        infl0 = (n0 - 1) / n0**2 * tr0
    es = np.empty(len(groups))
    lo = np.full(len(groups), np.nan)
    hi = np.full(len(groups), np.nan)
    dist = np.empty(len(groups))
    nw = np.array([len(r) for r in groups], dtype=np.int64)
    for gi, rows in enumerate(groups):
        xp = x[rows]
        n = len(rows)
        mp = xp.mean(axis=0)
        trp = float(((xp - mp) ** 2).sum() / (n - 1)) if n >= 3 else tr0
        c = trp / n + tr0 / n0
        diff = mp - m0
        dist[gi] = float(np.sqrt(diff @ diff))
        d2 = float(diff @ diff) - c
        es[gi] = np.sign(d2) * np.sqrt(abs(d2) / unit)
        if n_boot:
            wp = rng.multinomial(n, np.full(n, 1 / n), size=n_boot).astype(np.float64)  # (B, n)
            xcp = xp - m0
            gpp = xcp @ xcp.T
            gp0 = xcp @ xc0.T  # (n, n0)
            mp_sq = np.einsum("bi,ij,bj->b", wp, gpp, wp) / n**2
            cross = np.einsum("bi,ij,bj->b", wp, gp0, w0) / (n * n0)
            d2b = mp_sq - 2 * cross + m0b_sq - c - ((n - 1) / n**2 * trp + infl0)
            eb = np.sign(d2b) * np.sqrt(np.abs(d2b) / unit)
            lo[gi], hi[gi] = np.quantile(eb, [alpha, 1 - alpha])
    return keys.with_columns(pl.Series("n_wells", nw), pl.Series("effect_size", es), pl.Series("ci_low", lo),
                             pl.Series("ci_high", hi), pl.Series("distance", dist))


def cell_count_fraction(
    meta: Any,
    *,
    count_col: str = "Metadata_Count_Cells",
    by: Sequence[str] = ("Metadata_perturbation_id",),
    controls: Any = fr.NEGCON,
    plate_col: str | None = "Metadata_Plate",
) -> pl.DataFrame:
    """Cell count of each group relative to the negative controls (1 = as many cells as controls).

    Each well's count is divided by the median control count of its plate (or of the screen when
    ``plate_col`` is None or absent); a group's fraction is the median over its wells.

    Returns
    -------
    polars.DataFrame
        ``by`` columns and ``cell_count_fraction`` (Float64), sorted by key.
    """
    fr.check_frame(meta)
    fr.require_columns(meta, [count_col, *by])
    counts = np.asarray(fr.column_numpy(meta, count_col), dtype=np.float64)
    ctrl = fr.row_mask(meta, controls)
    ref = np.full(len(counts), np.nan)
    if plate_col is not None and plate_col in fr.columns_of(meta):
        plates = fr.column_numpy(meta, plate_col)
        for p in np.unique(plates.astype(str)):
            on = plates.astype(str) == p
            c = counts[on & ctrl]
            ref[on] = np.nanmedian(c) if len(c) else np.nan
        missing = np.isnan(ref)
        if missing.any():
            logger.warning("%d wells are on plates without control wells; using the screen's control median",
                           int(missing.sum()))
            ref[missing] = np.nanmedian(counts[ctrl])
    else:
        ref[:] = np.nanmedian(counts[ctrl])
    ratio = counts / ref
    keys, groups = _group_rows(meta, list(by), ~ctrl)
    frac = np.array([np.nanmedian(ratio[r]) for r in groups]) if groups else np.zeros(0)
    return keys.with_columns(pl.Series("cell_count_fraction", frac, dtype=pl.Float64))


def hit_table(
    meta: Any,
    feats: Any,
    *,
    pert_col: str = "Metadata_perturbation_id",
    controls: Any = fr.NEGCON,
    plate_col: str | None = "Metadata_Plate",
    count_col: str | None = "Metadata_Count_Cells",
    activity: Any = None,
    q_threshold: float = 0.05,
    min_effect_size: float = 1.0,
    cytotoxic_below: float = 0.5,
    neg_sameby: Sequence[str] = (),
    null_size: int = 10000,
    seed: int | None = 0,
    n_boot: int = 1000,
    ci: float = 0.95,
    distance: str | Callable = "cosine",
    backend: str = "auto",
    device: Any = None,
    progress: bool | None = None,
) -> pl.DataFrame:
    """Ranked hit table: phenotypic activity (mAP q-value) combined with the effect size and a cytotoxicity flag.

    A perturbation is a hit when its phenotypic-activity ``corrected_p_value < q_threshold`` *and* its
    ``effect_size >= min_effect_size`` (the mAP test says "distinguishable from controls", the effect size says
    "by enough to matter"). Cytotoxic perturbations (cell count below ``cytotoxic_below`` of the controls) are
    flagged, not removed: their profiles may reflect dying cells.

    Parameters
    ----------
    meta, feats
        Well-level metadata and normalised profiles.
    controls : polars expression, mapping, query string or bool array
        Negative-control rows (default :data:`~subcell_screen.profiles.NEGCON`).
    plate_col : str, optional
        Plate column: cell counts are relative to the control median of each well's plate.
    activity : DataFrame, optional
        A precomputed :func:`phenotypic_activity` mAP table (grouped by ``pert_col``); computed if omitted.
    min_effect_size : float
        Minimum effect size (control per-feature sd units, see :func:`effect_sizes`).
    cytotoxic_below : float
        Cell-count fraction under which a perturbation is flagged cytotoxic.

    Returns
    -------
    polars.DataFrame
        One row per perturbation, ranked (hits first, then by q-value, then by effect size): ``rank``,
        ``perturbation_id``, ``n_wells``, ``mean_average_precision``, ``p_value``, ``corrected_p_value``,
        ``effect_size``, ``ci_low``, ``ci_high``, ``cell_count_fraction`` (null without ``count_col``),
        ``cytotoxic``, ``is_hit``.
    """
    fr.check_frame(meta)
    if activity is None:
        activity = phenotypic_activity(meta, feats, pert_col=pert_col, controls=controls, neg_sameby=neg_sameby,
                                       null_size=null_size, threshold=q_threshold, seed=seed, distance=distance,
                                       backend=backend, device=device, progress=progress).map
    act = fr.to_polars(activity).select(pert_col, "mean_average_precision", "p_value", "corrected_p_value")
    es = effect_sizes(meta, feats, by=[pert_col], controls=controls, n_boot=n_boot, ci=ci, seed=seed)
    out = es.select(pert_col, "n_wells", "effect_size", "ci_low", "ci_high").join(act, on=pert_col, how="left")
    if count_col is not None and count_col in fr.columns_of(meta):
        cc = cell_count_fraction(meta, count_col=count_col, by=[pert_col], controls=controls, plate_col=plate_col)
        out = out.join(cc, on=pert_col, how="left")
    else:
        out = out.with_columns(pl.lit(None, dtype=pl.Float64).alias("cell_count_fraction"))
    out = out.with_columns(
        (pl.col("cell_count_fraction") < cytotoxic_below).fill_null(False).alias("cytotoxic"),
        ((pl.col("corrected_p_value") < q_threshold) & (pl.col("effect_size") >= min_effect_size))
        .fill_null(False).alias("is_hit"),
    ).rename({pert_col: "perturbation_id"})
    out = out.sort(["is_hit", "corrected_p_value", "effect_size"], descending=[True, False, True],
                   nulls_last=True)
    out = out.with_row_index("rank", offset=1)
    return out.select("rank", "perturbation_id", "n_wells", "mean_average_precision", "p_value",
                      "corrected_p_value", "effect_size", "ci_low", "ci_high", "cell_count_fraction", "cytotoxic",
                      "is_hit")
