"""Protein relocalization for HPA-style screens (a protein-of-interest channel per well), e.g. HDAC8/vorinostat.

For every (protein, perturbation) pair, the treated wells are compared with the negative-control wells *of the
same protein*, with the well as the unit of replication, through up to three readouts:

``probabilities``
    Well-mean SubCell localization probabilities (31 classes, :data:`LOCALIZATION_CLASSES`). Per class, the
    plate-adjusted shift ``delta_k`` (treated - control; OLS with plate fixed effects, t test) goes into
    ``class_shifts``; the pair's direction is ``from_class = argmin delta``, ``to_class = argmax delta``, its
    effect size the total probability shift ``0.5 * sum_k |delta_k|``, and its p-value the test of the
    wells' Euclidean distance to the control mean probability vector (below).
``embedding``
    The protein-sensitive embedding: each well's cosine distance to the control centroid (leave-one-out for
    control wells); effect size = treated - control difference in distance divided by the controls' sd of it.
``nuc_cyto_ratio``
    The classical readout, a well-level nuclear/cytoplasmic intensity ratio of the protein channel (column
    named by ``ratio_col``, e.g. ``Cells_Intensity_NucCytoRatio_protein`` aggregated per well); effect size =
    treated - control difference (negative: the protein left the nucleus).

Distance and ratio readouts are tested with a linear mixed model ``y ~ treated + (1 | plate)``
(``statsmodels`` MixedLM, REML; Wald statistic referred to a t distribution with the plate-fixed-effect residual
degrees of freedom, since a normal reference is anti-conservative with few plates) when the pair spans several
plates, and OLS when it spans one; if the
mixed model fails, OLS with plate fixed effects is used (the ``model`` column says which). Distances can only
grow under an effect, so their test is one-sided (treated > control); the ratio test is two-sided.
Benjamini-Hochberg q-values are computed across all pairs, separately per readout (and across all pair x class
tests in ``class_shifts``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from ..profiles import frames as fr

logger = logging.getLogger(__name__)

__all__ = ["LOCALIZATION_CLASSES", "RelocalizationResult", "relocalization"]

#: SubCell's 31 localization classes, index i = output column ``prob{i:02d}`` (SubCellPortable ``CLASS2NAME``).
#: Taken from :mod:`subcell_screen.embed.classes` (torch-free); the literal below is the fallback.
_CLASSES_FALLBACK: tuple[str, ...] = (
    "Actin filaments", "Aggresome", "Cell Junctions", "Centriolar satellite", "Centrosome", "Cytokinetic bridge",
    "Cytoplasmic bodies", "Cytosol", "Endoplasmic reticulum", "Endosomes", "Focal adhesion sites",
    "Golgi apparatus", "Intermediate filaments", "Lipid droplets", "Lysosomes", "Microtubules", "Midbody",
    "Mitochondria", "Mitotic chromosome", "Mitotic spindle", "Nuclear bodies", "Nuclear membrane",
    "Nuclear speckles", "Nucleoli", "Nucleoli fibrillar center", "Nucleoli rim", "Nucleoplasm", "Peroxisomes",
    "Plasma membrane", "Vesicles", "Negative",
)
try:
    from ..embed.classes import CLASS_NAMES as LOCALIZATION_CLASSES
except ImportError:  # pragma: no cover - embed module absent
    LOCALIZATION_CLASSES = _CLASSES_FALLBACK


@dataclass(frozen=True)
class RelocalizationResult:
    """Output of :func:`relocalization`.

    Attributes
    ----------
    table : polars.DataFrame
        One row per (protein, perturbation[, concentration], readout): ``protein``, ``perturbation_id``,
        (``concentration``), ``readout``, ``from_class``, ``to_class``, ``effect_size``, ``p_value``,
        ``q_value``, ``delta_from``, ``delta_to``, ``n_treated``, ``n_negcon``, ``n_plates``, ``model``.
        ``from_class``/``to_class`` come from the probability readout and are repeated on the pair's other
        rows; without probabilities, the ratio readout gives ``Nucleus``/``Cytoplasm`` by its sign.
    class_shifts : polars.DataFrame
        Long table per (pair, class): ``protein``, ``perturbation_id``, (``concentration``), ``class``,
        ``delta``, ``p_value``, ``q_value`` (BH over all pair x class tests). Empty without probabilities.
    """

    table: pl.DataFrame = field(repr=False)
    class_shifts: pl.DataFrame = field(repr=False)


def _matrix(wells: Any, spec: Any, name: str) -> np.ndarray | None:
    if spec is None:
        return None
    n = fr.n_rows(wells)
    if isinstance(spec, str):
        fr.require_columns(wells, [spec], name="wells")
        vals = fr.column_numpy(wells, spec)
        x = np.stack([np.asarray(v, dtype=np.float64) for v in vals]) if vals.dtype == object else vals
        return fr.as_matrix(np.asarray(x, dtype=np.float64), n=n, name=name)
    if isinstance(spec, Sequence) and not isinstance(spec, str) and spec and isinstance(spec[0], str):
        fr.require_columns(wells, list(spec), name="wells")
        return np.column_stack([np.asarray(fr.column_numpy(wells, c), dtype=np.float64) for c in spec])
    return np.asarray(fr.as_matrix(spec, n=n, name=name), dtype=np.float64)


def _ols(y: np.ndarray, treated: np.ndarray, plates: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Treatment coefficient and its standard error for each column of ``y`` (n, k); plate fixed effects."""
    cols = [np.ones(len(treated)), treated.astype(np.float64)]
    if plates is not None:
        u = np.unique(plates)
        cols += [(plates == p).astype(np.float64) for p in u[1:]]
    a = np.column_stack(cols)
    beta, _, rank, _ = np.linalg.lstsq(a, y, rcond=None)
    resid = y - a @ beta
    df = len(y) - rank
    sigma2 = (resid**2).sum(axis=0) / max(df, 1)
    cov = np.linalg.pinv(a.T @ a)
    se = np.sqrt(np.maximum(cov[1, 1] * sigma2, 0.0))
    return beta[1], se, df


def _test_treatment(y: np.ndarray, treated: np.ndarray, plates: np.ndarray) -> tuple[float, float, float, str]:
    """``y ~ treated (+ (1 | plate))``: (coefficient, se, two-sided p, model name)."""
    from scipy import stats

    n_plates = len(np.unique(plates))
    if n_plates > 1:
        try:
            from statsmodels.regression.mixed_linear_model import MixedLM

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                exog = np.column_stack([np.ones(len(y)), treated.astype(np.float64)])
                res = MixedLM(y, exog, groups=plates).fit(reml=True)
            coef, se = float(res.fe_params[1]), float(res.bse_fe[1])
            if np.isfinite(coef) and np.isfinite(se) and se > 0 and res.converged:
                # Wald statistic against t(n - 2 - (plates - 1)) rather than N(0, 1): with a handful of
                # plates the normal reference is anti-conservative
                df = max(len(y) - 1 - n_plates, 1)
                return coef, se, float(2 * stats.t.sf(abs(coef / se), df)), "mixedlm"
        except Exception as exc:  # singular fits, linear-algebra failures
            logger.debug("MixedLM failed (%s); using OLS with plate fixed effects", exc)
        b, s, df = _ols(y[:, None], treated, plates)
        model = "ols_plate_fe"
    else:
        b, s, df = _ols(y[:, None], treated, None)
        model = "ols"
    coef, se = float(b[0]), float(s[0])
    p = float(2 * stats.t.sf(abs(coef / se), df)) if se > 0 else (0.0 if coef != 0 else 1.0)
    return coef, se, p, model


def _one_sided(coef: float, p_two: float) -> float:
    return p_two / 2 if coef > 0 else 1 - p_two / 2


def _loo_distance(x: np.ndarray, ctrl: np.ndarray, metric: str) -> np.ndarray:
    """Distance of each row to the control centroid; control rows use the centroid without themselves."""
    n0 = int(ctrl.sum())
    c = x[ctrl].mean(axis=0)
    cent = np.broadcast_to(c, x.shape).copy()
    if n0 > 1:
        cent[ctrl] = (n0 * c - x[ctrl]) / (n0 - 1)
    if metric == "cosine":
        num = (x * cent).sum(axis=1)
        den = np.linalg.norm(x, axis=1) * np.linalg.norm(cent, axis=1)
        return 1.0 - num / np.where(den > 0, den, 1.0)
    return np.linalg.norm(x - cent, axis=1)


def relocalization(
    wells: Any,
    *,
    probabilities: Any = None,
    embeddings: Any = None,
    ratio_col: str | None = None,
    protein_col: str = "Metadata_protein",
    pert_col: str = "Metadata_perturbation_id",
    plate_col: str = "Metadata_Plate",
    controls: Any = fr.NEGCON,
    per_concentration: bool = False,
    conc_col: str = "Metadata_concentration",
    class_names: Sequence[str] = LOCALIZATION_CLASSES,
    embedding_distance: str = "cosine",
    min_wells: int = 2,
) -> RelocalizationResult:
    """Relocalization table: how each perturbation moves each protein, against that protein's controls.

    Parameters
    ----------
    wells : DataFrame, N rows
        Well-level table with ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_perturbation_id``,
        ``Metadata_control_type``, ``Metadata_protein`` (and ``Metadata_concentration``).
    probabilities : (N, C) array, list of C column names, or a column name of per-well arrays, optional
        Well-mean localization probabilities (raw sigmoids or softmax), columns in ``class_names`` order.
    embeddings : (N, D) array, list of column names, or a column name of per-well arrays, optional
        Well-mean protein-sensitive embedding.
    ratio_col : str, optional
        Well-level nuclear/cytoplasmic intensity ratio of the protein channel.
    protein_col, pert_col, plate_col : str
    controls : polars expression, mapping, query string or bool array
        Control wells (default :data:`~subcell_screen.profiles.NEGCON`, ``Metadata_control_type == "negcon"``).
    per_concentration : bool
        Score each (protein, perturbation, concentration) separately instead of pooling concentrations.
    class_names : sequence of str
        Names of the probability columns (default SubCell's 31 classes).
    embedding_distance : {"cosine", "euclidean"}
    min_wells : int
        Minimum treated and control wells for a pair to be scored.

    Returns
    -------
    RelocalizationResult
    """
    from scipy import stats
    from statsmodels.stats.multitest import multipletests

    fr.check_frame(wells, name="wells")
    if probabilities is None and embeddings is None and ratio_col is None:
        raise ValueError("give at least one readout: probabilities, embeddings or ratio_col")
    keys = [protein_col, pert_col, plate_col] + ([conc_col] if per_concentration else [])
    fr.require_columns(wells, keys + ([ratio_col] if ratio_col else []), name="wells")
    probs = _matrix(wells, probabilities, "probabilities")
    if probs is not None and probs.shape[1] != len(class_names):
        raise ValueError(f"probabilities have {probs.shape[1]} columns but class_names has {len(class_names)}")
    emb = _matrix(wells, embeddings, "embeddings")
    ratio = np.asarray(fr.column_numpy(wells, ratio_col), dtype=np.float64) if ratio_col else None
    ctrl = fr.row_mask(wells, controls)
    protein = fr.column_numpy(wells, protein_col).astype(str)
    pert = fr.column_numpy(wells, pert_col)
    plates = fr.column_numpy(wells, plate_col).astype(str)
    conc = np.asarray(fr.column_numpy(wells, conc_col), dtype=np.float64) if per_concentration else None

    rows: list[dict[str, Any]] = []
    shifts: list[dict[str, Any]] = []
    for prot in sorted(np.unique(protein)):
        pmask = protein == prot
        c_rows = np.flatnonzero(pmask & ctrl)
        if len(c_rows) < min_wells:
            logger.warning("protein %s has %d control wells (< %d); skipped", prot, len(c_rows), min_wells)
            continue
        treated_rows = np.flatnonzero(pmask & ~ctrl)
        pair_keys = sorted({(pert[i], conc[i] if per_concentration else None) for i in treated_rows},
                           key=lambda k: (str(k[0]), -np.inf if k[1] is None else k[1]))
        # per-protein distances (controls leave-one-out), computed once over that protein's wells
        p_rows = np.flatnonzero(pmask)
        local_ctrl = ctrl[p_rows]
        d_prob = _loo_distance(probs[p_rows], local_ctrl, "euclidean") if probs is not None else None
        d_emb = _loo_distance(emb[p_rows], local_ctrl, embedding_distance) if emb is not None else None
        where = {r: i for i, r in enumerate(p_rows)}
        for pk, ck in pair_keys:
            t_rows = treated_rows[(pert[treated_rows] == pk)
                                  & ((conc[treated_rows] == ck) if per_concentration else True)]
            if len(t_rows) < min_wells:
                continue
            both = np.concatenate([t_rows, c_rows])
            tr = np.r_[np.ones(len(t_rows)), np.zeros(len(c_rows))]
            pl_ = plates[both]
            loc = np.array([where[r] for r in both])
            base = {"protein": prot, "perturbation_id": pk}
            if per_concentration:
                base["concentration"] = ck
            info = {"n_treated": len(t_rows), "n_negcon": len(c_rows), "n_plates": len(np.unique(pl_))}
            from_c = to_c = None
            d_from = d_to = None
            pair_rows: list[dict[str, Any]] = []
            if probs is not None:
                multi = len(np.unique(pl_)) > 1
                delta, se, df = _ols(probs[both], tr, pl_ if multi else None)
                with np.errstate(divide="ignore", invalid="ignore"):
                    tt = np.where(se > 0, delta / se, 0.0)
                pk_cls = 2 * stats.t.sf(np.abs(tt), df)
                for k, name in enumerate(class_names):
                    shifts.append({**base, "class": name, "delta": float(delta[k]), "p_value": float(pk_cls[k])})
                i_from, i_to = int(np.argmin(delta)), int(np.argmax(delta))
                from_c, to_c = class_names[i_from], class_names[i_to]
                d_from, d_to = float(delta[i_from]), float(delta[i_to])
                coef, _, p2, model = _test_treatment(d_prob[loc], tr, pl_)
                pair_rows.append({**base, "readout": "probabilities", "effect_size": float(0.5 * np.abs(delta).sum()),
                             "p_value": _one_sided(coef, p2), "delta_from": d_from, "delta_to": d_to, **info,
                             "model": model})
            if emb is not None:
                y = d_emb[loc]
                coef, _, p2, model = _test_treatment(y, tr, pl_)
                sd0 = float(np.std(y[tr == 0], ddof=1)) if (tr == 0).sum() > 1 else np.nan
                pair_rows.append({**base, "readout": "embedding", "effect_size": coef / sd0 if sd0 > 0 else np.nan,
                             "p_value": _one_sided(coef, p2), "delta_from": None, "delta_to": None, **info,
                             "model": model})
            if ratio is not None:
                y = ratio[both]
                ok = np.isfinite(y)
                coef, _, p2, model = _test_treatment(y[ok], tr[ok], pl_[ok])
                pair_rows.append({**base, "readout": "nuc_cyto_ratio", "effect_size": coef, "p_value": p2,
                             "delta_from": None, "delta_to": None, **info, "model": model})
                if probs is None:
                    from_c, to_c = ("Nucleus", "Cytoplasm") if coef < 0 else ("Cytoplasm", "Nucleus")
            for r in pair_rows:
                r["from_class"], r["to_class"] = from_c, to_c
            rows.extend(pair_rows)
    key_schema: dict[str, Any] = {"protein": pl.String, "perturbation_id": pl.String}
    if per_concentration:
        key_schema["concentration"] = pl.Float64
    schema = {**key_schema, "readout": pl.String, "from_class": pl.String, "to_class": pl.String,
              "effect_size": pl.Float64, "p_value": pl.Float64, "q_value": pl.Float64, "delta_from": pl.Float64,
              "delta_to": pl.Float64, "n_treated": pl.Int64, "n_negcon": pl.Int64, "n_plates": pl.Int64,
              "model": pl.String}
    for r in rows:
        r["perturbation_id"] = str(r["perturbation_id"])
        r["q_value"] = np.nan
    table = pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)
    if table.height:
        parts = []
        for (_,), grp in table.group_by(["readout"], maintain_order=True):
            q = multipletests(grp["p_value"].to_numpy(), method="fdr_bh")[1]
            parts.append(grp.with_columns(pl.Series("q_value", q)))
        table = pl.concat(parts).sort([*key_schema, "readout"])
    shift_schema = {**key_schema, "class": pl.String, "delta": pl.Float64, "p_value": pl.Float64,
                    "q_value": pl.Float64}
    for r in shifts:
        r["perturbation_id"] = str(r["perturbation_id"])
    cs = pl.DataFrame(shifts, schema={k: v for k, v in shift_schema.items() if k != "q_value"}) if shifts \
        else pl.DataFrame(schema=shift_schema)
    if shifts:
        cs = cs.with_columns(pl.Series("q_value", multipletests(cs["p_value"].to_numpy(), method="fdr_bh")[1]))
    return RelocalizationResult(table=table, class_shifts=cs)
