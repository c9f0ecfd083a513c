"""Dose response: 4-parameter logistic fits of activity against log10 concentration, with EC50 CIs.

Model (same parameterisation as :func:`subcell_screen.simulate.four_parameter_logistic`)::

    y = bottom + (top - bottom) / (1 + 10 ** ((log10_ec50 - log10_conc) * hill)),   hill > 0

(``top < bottom`` describes a decreasing curve). Fits use ``scipy.optimize.curve_fit`` (trust-region, bounded)
from several starting EC50s; the EC50 CI is ``log10_ec50 +/- t(df) * se`` from the fit covariance, back
transformed (so it is asymmetric in concentration units). "No fit" is reported with the reason:

* ``too few doses``: fewer than ``min_doses`` distinct concentrations (4 parameters plus at least one residual
  degree of freedom for the flatness test and the CI);
* ``flat``: the 4PL does not explain significantly more variance than a constant (extra-sum-of-squares F test,
  ``p >= alpha``);
* ``did not converge``: every start failed or the covariance is not finite;
* ``EC50 outside tested range``: the fitted EC50 lies below the lowest or above the highest concentration.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from ..profiles import frames as fr
from ._hits import cell_count_fraction, effect_sizes
from ._presets import phenotypic_activity

logger = logging.getLogger(__name__)

__all__ = ["DoseFit", "DoseResponseResult", "fit_dose_response", "dose_response", "logistic4"]


def logistic4(log10_conc: np.ndarray, bottom: float, top: float, log10_ec50: float, hill: float) -> np.ndarray:
    """4-parameter logistic in log10 concentration."""
    z = np.clip((log10_ec50 - np.asarray(log10_conc, dtype=np.float64)) * hill, -300, 300)
    return bottom + (top - bottom) / (1.0 + 10.0**z)


def _logistic4_jac(log10_conc: np.ndarray, bottom: float, top: float, log10_ec50: float, hill: float) -> np.ndarray:
    z = np.clip((log10_ec50 - log10_conc) * hill, -300, 300)
    p = 10.0**z
    s = 1.0 / (1.0 + p)
    g = -(top - bottom) * s * s * p * np.log(10.0)
    return np.column_stack([1.0 - s, s, g * hill, g * (log10_ec50 - log10_conc)])


def _start_ec50(ux: np.ndarray, means: np.ndarray) -> float:
    """Log10 concentration where the dose means first cross half-way between the end responses."""
    half = (means[0] + means[-1]) / 2
    above = (means - half) * np.sign(means[-1] - means[0]) >= 0
    k = int(np.argmax(above)) if above.any() else len(ux) // 2
    return float((ux[max(k - 1, 0)] + ux[k]) / 2)


@dataclass(frozen=True)
class DoseFit:
    """One dose-response fit.

    Attributes
    ----------
    status : str
        ``"ok"`` or ``"no fit"``.
    reason : str or None
        Why there is no fit (see module docstring); None when ``status == "ok"``.
    ec50, ec50_ci_low, ec50_ci_high : float
        EC50 and its CI in the concentration's units (NaN without a fit).
    log10_ec50, log10_ec50_se : float
    hill, bottom, top : float
        Fitted parameters (NaN when the fit failed outright).
    n_doses : int
        Distinct concentrations used.
    f_pvalue : float
        Extra-sum-of-squares F test of the 4PL against a constant (NaN when untestable).
    """

    status: str
    reason: str | None
    ec50: float
    ec50_ci_low: float
    ec50_ci_high: float
    log10_ec50: float
    log10_ec50_se: float
    hill: float
    bottom: float
    top: float
    n_doses: int
    f_pvalue: float


def _no_fit(reason: str, n_doses: int, params: np.ndarray | None = None, f_p: float = np.nan,
            se: float = np.nan) -> DoseFit:
    p = params if params is not None else np.full(4, np.nan)
    return DoseFit(status="no fit", reason=reason, ec50=np.nan, ec50_ci_low=np.nan, ec50_ci_high=np.nan,
                   log10_ec50=float(p[2]), log10_ec50_se=float(se), hill=float(p[3]), bottom=float(p[0]),
                   top=float(p[1]), n_doses=n_doses, f_pvalue=f_p)


def fit_dose_response(
    concentration: Sequence[float] | np.ndarray,
    response: Sequence[float] | np.ndarray,
    *,
    min_doses: int = 5,
    alpha: float = 0.05,
    ci: float = 0.95,
    hill_bounds: tuple[float, float] = (0.1, 10.0),
) -> DoseFit:
    """Fit a 4-parameter logistic to ``response`` against ``log10(concentration)``.

    Parameters
    ----------
    concentration : (n,) array of float
        Concentrations (> 0; any unit, e.g. µM). Several points per concentration are allowed.
    response : (n,) array of float
        Activity per point (effect size, mAP, ...).
    min_doses : int
        Minimum number of distinct concentrations.
    alpha : float
        Level of the flatness F test.
    ci : float
        Confidence level of the EC50 interval.
    hill_bounds : (float, float)
        Bounds on the Hill slope magnitude.

    Returns
    -------
    DoseFit
    """
    from scipy import stats
    from scipy.optimize import curve_fit

    c = np.asarray(concentration, dtype=np.float64)
    y = np.asarray(response, dtype=np.float64)
    if c.shape != y.shape:
        raise ValueError(f"concentration {c.shape} and response {y.shape} differ in shape")
    ok = np.isfinite(c) & np.isfinite(y) & (c > 0)
    c, y = c[ok], y[ok]
    x = np.log10(c)
    ux = np.unique(x)
    n_doses = len(ux)
    if n_doses < max(min_doses, 4):
        return _no_fit(f"too few doses ({n_doses} < {max(min_doses, 4)})", n_doses)
    n = len(y)
    rss0 = float(((y - y.mean()) ** 2).sum())
    span = float(np.ptp(y)) or 1.0
    lo_x, hi_x = float(ux.min()), float(ux.max())
    lower = [y.min() - 2 * span, y.min() - 2 * span, lo_x - 3.0, hill_bounds[0]]
    upper = [y.max() + 2 * span, y.max() + 2 * span, hi_x + 3.0, hill_bounds[1]]
    means = np.array([y[x == v].mean() for v in ux])
    y_lo, y_hi = float(means[0]), float(means[-1])
    x_half = _start_ec50(ux, means)
    starts = [(x_half, 1.0), (x_half, 3.0), (float(np.median(ux)), 1.0), (lo_x, 1.0), (hi_x, 1.0)]
    best = None
    for x50, h in starts:
        p0 = np.clip([y_lo, y_hi, x50, h], lower, upper)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                popt, pcov = curve_fit(logistic4, x, y, p0=p0, bounds=(lower, upper), method="trf",
                                       jac=_logistic4_jac, maxfev=2000)
        except (RuntimeError, ValueError):
            continue
        rss = float(((y - logistic4(x, *popt)) ** 2).sum())
        if best is None or rss < best[0] - 1e-12:
            best = (rss, popt, pcov)
    if best is None:
        return _no_fit("did not converge", n_doses)
    rss1, popt, pcov = best
    df2 = n - 4
    f_p = np.nan
    if df2 > 0 and rss0 > 0:
        f_stat = ((rss0 - rss1) / 3) / max(rss1 / df2, 1e-300)
        f_p = float(stats.f.sf(f_stat, 3, df2))
        if f_p >= alpha:
            return _no_fit(f"flat (F-test p = {f_p:.3g} >= {alpha})", n_doses, popt, f_p)
    elif rss0 == 0:
        return _no_fit("flat (constant response)", n_doses, popt)
    se = float(np.sqrt(pcov[2, 2])) if np.all(np.isfinite(pcov)) and pcov[2, 2] >= 0 else np.nan
    if not np.isfinite(se) or df2 <= 0:
        return _no_fit("did not converge (undetermined EC50 uncertainty)", n_doses, popt, f_p, se)
    if popt[2] < lo_x or popt[2] > hi_x:
        return _no_fit(f"EC50 outside tested range ({10 ** popt[2]:.3g} not in [{10 ** lo_x:.3g}, "
                       f"{10 ** hi_x:.3g}])", n_doses, popt, f_p, se)
    t = float(stats.t.ppf(0.5 + ci / 2, df2))
    return DoseFit(status="ok", reason=None, ec50=float(10 ** popt[2]), ec50_ci_low=float(10 ** (popt[2] - t * se)),
                   ec50_ci_high=float(10 ** (popt[2] + t * se)), log10_ec50=float(popt[2]), log10_ec50_se=se,
                   hill=float(popt[3]), bottom=float(popt[0]), top=float(popt[1]), n_doses=n_doses, f_pvalue=f_p)


def _projection_scores(x: np.ndarray, conc: np.ndarray, x0: np.ndarray) -> np.ndarray:
    """Cross-fitted projection of each well onto its series' response direction, in control-sd units.

    The direction is the mean shift (from the control mean) of the wells at the top concentrations (the highest
    ``max(2, ceil(n_doses / 4))``), leaving the scored well out, so a well's noise never shapes its own
    direction: an inert series scores ~0 at every dose, and an active one scores ``r(c) * |shift| * cos``,
    proportional to the response curve (EC50 unchanged by the scale).
    """
    m0 = x0.mean(axis=0)
    doses = np.unique(conc)
    top = doses[-max(2, int(np.ceil(len(doses) / 4))):]
    is_top = np.isin(conc, top)
    xc = x - m0
    s_top = xc[is_top].sum(axis=0)
    n_top = int(is_top.sum())
    if n_top < 2:
        return np.full(len(x), np.nan)
    u = np.where(is_top[:, None], (s_top[None, :] - xc) / (n_top - 1), s_top[None, :] / n_top)
    norm = np.linalg.norm(u, axis=1)
    u = u / np.where(norm > 0, norm, 1.0)[:, None]
    scores = (xc * u).sum(axis=1)
    u_all = s_top / (np.linalg.norm(s_top) or 1.0)
    sd0 = float(np.std((x0 - m0) @ u_all, ddof=1)) if len(x0) > 1 else 1.0
    return scores / (sd0 if sd0 > 0 else 1.0)


@dataclass(frozen=True)
class DoseResponseResult:
    """Output of :func:`dose_response`.

    Attributes
    ----------
    fits : polars.DataFrame
        One row per perturbation: ``perturbation_id``, ``n_doses``, ``status``, ``reason``, ``ec50``,
        ``ec50_ci_low``, ``ec50_ci_high``, ``log10_ec50``, ``log10_ec50_se``, ``hill``, ``bottom``, ``top``,
        ``f_pvalue``, ``min_cell_count_fraction``, ``cytotoxic``, ``cytotoxic_from`` (lowest concentration
        whose cell count fraction is below the threshold, null if none), ``activity`` (the readout fitted).
    points : polars.DataFrame
        One row per (perturbation, concentration): ``perturbation_id``, ``concentration``, ``activity``,
        ``n_wells``, ``cell_count_fraction``.
    """

    fits: pl.DataFrame
    points: pl.DataFrame


def dose_response(
    meta: Any,
    feats: Any,
    *,
    pert_col: str = "Metadata_perturbation_id",
    conc_col: str = "Metadata_concentration",
    controls: Any = fr.NEGCON,
    activity: str = "projection",
    count_col: str | None = "Metadata_Count_Cells",
    plate_col: str | None = "Metadata_Plate",
    min_doses: int = 5,
    alpha: float = 0.05,
    ci: float = 0.95,
    cytotoxic_below: float = 0.5,
    null_size: int = 10000,
    seed: int | None = 0,
    distance: str | Callable = "cosine",
    backend: str = "auto",
    device: Any = None,
) -> DoseResponseResult:
    """Per-dose activity and 4PL fits for every perturbation tested at several concentrations.

    Parameters
    ----------
    meta, feats
        Well-level metadata and normalised profiles.
    controls : polars expression, mapping, query string or bool array
        Negative-control rows (default :data:`~subcell_screen.profiles.NEGCON`).
    activity : {"projection", "effect_size", "map"}
        ``"projection"`` (default): each well's shift from the control mean projected on the series' response
        direction (mean shift at its top concentrations, leave-one-well-out, in control-sd units), fitted per
        well: linear in the response and unbiased (zero) for inert doses, so it resolves low doses far better
        than a norm. ``"effect_size"``: the debiased effect size of each dose (:func:`effect_sizes`), fitted
        per dose. ``"map"``: the phenotypic-activity mAP of each dose's replicates, fitted per dose.
    count_col, plate_col
        Cell counts for the cytotoxicity flag (per-dose fraction of the plate's control median).
    min_doses, alpha, ci
        See :func:`fit_dose_response`.
    cytotoxic_below : float
        A perturbation is flagged cytotoxic when any dose's cell-count fraction is below this.

    Returns
    -------
    DoseResponseResult
    """
    fr.check_frame(meta)
    fr.require_columns(meta, [pert_col, conc_col])
    ctrl = fr.row_mask(meta, controls)
    conc = np.asarray(fr.column_numpy(meta, conc_col), dtype=np.float64)
    has_dose = ~ctrl & np.isfinite(conc)
    pm = fr.to_polars(meta).select(pert_col, conc_col)
    n_conc = (pm.filter(pl.Series(has_dose)).group_by(pert_col).agg(pl.col(conc_col).n_unique().alias("k")))
    series = n_conc.filter(pl.col("k") >= 2).get_column(pert_col).to_list()
    if not series:
        raise ValueError(f"no perturbation in {pert_col!r} is tested at two or more concentrations of {conc_col!r}")
    sel = has_dose & np.isin(fr.column_numpy(meta, pert_col), series)
    x = fr.as_matrix(feats, n=fr.n_rows(meta))
    keep = sel | ctrl
    sub = fr.take(meta, np.flatnonzero(keep))
    xs = x[keep]
    by = [pert_col, conc_col]
    well_scores: dict[Any, tuple[np.ndarray, np.ndarray]] = {}
    if activity == "projection":
        ctrl_s = fr.row_mask(sub, controls)
        x0 = np.asarray(xs[ctrl_s], dtype=np.float64)
        if len(x0) < 2:
            raise ValueError("projection activity needs at least 2 negative-control wells")
        pid_s = fr.column_numpy(sub, pert_col)
        conc_s = np.asarray(fr.column_numpy(sub, conc_col), dtype=np.float64)
        recs = []
        for pid in series:
            r = np.flatnonzero(~ctrl_s & (pid_s == pid))
            sc = _projection_scores(np.asarray(xs[r], dtype=np.float64), conc_s[r], x0)
            well_scores[pid] = (conc_s[r], sc)
            for cv in np.unique(conc_s[r]):
                on = conc_s[r] == cv
                recs.append({pert_col: pid, conc_col: float(cv), "n_wells": int(on.sum()),
                             "activity": float(np.mean(sc[on]))})
        pts = pl.DataFrame(recs).with_columns(pl.col(pert_col).cast(fr.to_polars(sub).schema[pert_col]))
    elif activity == "effect_size":
        pts = effect_sizes(sub, xs, by=by, controls=controls, n_boot=0).select(*by, "n_wells",
                                                                            pl.col("effect_size").alias("activity"))
    elif activity == "map":
        res = phenotypic_activity(sub, xs, pert_col=pert_col, controls=controls, by=by, null_size=null_size,
                                  seed=seed, distance=distance, backend=backend, device=device)
        m = fr.to_polars(res.map)
        pts = m.select(*by, pl.col("indices").list.len().alias("n_wells"),
                       pl.col("mean_average_precision").alias("activity"))
    else:
        raise ValueError(f"activity must be 'projection', 'effect_size' or 'map', got {activity!r}")
    if count_col is not None and count_col in fr.columns_of(meta):
        cc = cell_count_fraction(sub, count_col=count_col, by=by, controls=controls, plate_col=plate_col)
        pts = pts.join(cc, on=by, how="left")
    else:
        pts = pts.with_columns(pl.lit(None, dtype=pl.Float64).alias("cell_count_fraction"))
    pts = pts.rename({pert_col: "perturbation_id", conc_col: "concentration"}).sort("perturbation_id",
                                                                                       "concentration")
    rows = []
    for (pid,), grp in pts.group_by(["perturbation_id"], maintain_order=True):
        cx, cy = well_scores.get(pid, (grp["concentration"].to_numpy(), grp["activity"].to_numpy()))
        fit = fit_dose_response(cx, cy, min_doses=min_doses, alpha=alpha, ci=ci)
        ccf = grp["cell_count_fraction"].to_numpy().astype(np.float64)
        tox = ccf < cytotoxic_below
        rows.append({"perturbation_id": pid, "n_doses": fit.n_doses, "status": fit.status, "reason": fit.reason,
                     "ec50": fit.ec50, "ec50_ci_low": fit.ec50_ci_low, "ec50_ci_high": fit.ec50_ci_high,
                     "log10_ec50": fit.log10_ec50, "log10_ec50_se": fit.log10_ec50_se, "hill": fit.hill,
                     "bottom": fit.bottom, "top": fit.top, "f_pvalue": fit.f_pvalue,
                     "min_cell_count_fraction": float(np.nanmin(ccf)) if np.isfinite(ccf).any() else None,
                     "cytotoxic": bool(tox.any()),
                     "cytotoxic_from": float(grp["concentration"].to_numpy()[tox].min()) if tox.any() else None,
                     "activity": activity})
    schema = {"perturbation_id": pts.schema["perturbation_id"], "n_doses": pl.Int64, "status": pl.String, "reason": pl.String,
              "ec50": pl.Float64, "ec50_ci_low": pl.Float64, "ec50_ci_high": pl.Float64, "log10_ec50": pl.Float64,
              "log10_ec50_se": pl.Float64, "hill": pl.Float64, "bottom": pl.Float64, "top": pl.Float64,
              "f_pvalue": pl.Float64, "min_cell_count_fraction": pl.Float64, "cytotoxic": pl.Boolean,
              "cytotoxic_from": pl.Float64, "activity": pl.String}
    return DoseResponseResult(fits=pl.DataFrame(rows, schema=schema), points=pts)
