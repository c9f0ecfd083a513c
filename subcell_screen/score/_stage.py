"""The score stage: well profiles -> coverage, hits, dose response, relocalization, built from ``[scoring]``.

:func:`score_profiles` is the stage in one place. It never touches the store: the pipeline passes the profiles
and per-well readouts in and writes the :class:`ScoreTables` it returns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

if TYPE_CHECKING:  # pragma: no cover
    from ..config import ScoringSection

__all__ = ["ScoreTables", "score_profiles", "SCORE_COLUMNS"]

logger = logging.getLogger(__name__)

#: Columns of the ranked hit table (``perturbation_scores``), in order.
SCORE_COLUMNS: tuple[str, ...] = (
    "perturbation_id", "perturbation_name", "control_type", "n_wells", "mean_average_precision", "p_value",
    "corrected_p_value", "effect_size", "effect_ci_low", "effect_ci_high", "cell_count_fraction", "cytotoxic",
    "is_hit", "rank")


@dataclass(frozen=True)
class ScoreTables:
    """Everything the score stage computed (None: not computed; ``messages`` say why).

    Attributes
    ----------
    coverage : polars.DataFrame
        Every perturbation in the profiles: scored or not, and why (:func:`scoring_design`).
    scores : polars.DataFrame or None
        The ranked hit table (:data:`SCORE_COLUMNS`).
    dose_response, dose_points : polars.DataFrame or None
        4PL fits and per-dose activities (perturbations with 3 or more concentrations).
    relocalization, class_shifts : polars.DataFrame or None
        Protein relocalization calls and class shifts (HPA-style screens).
    messages : tuple of str
    """

    coverage: pl.DataFrame
    scores: pl.DataFrame | None = None
    dose_response: pl.DataFrame | None = None
    dose_points: pl.DataFrame | None = None
    relocalization: pl.DataFrame | None = None
    class_shifts: pl.DataFrame | None = None
    messages: tuple[str, ...] = field(default=())


def score_profiles(profiles: pl.DataFrame, *, section: ScoringSection, relocalization: bool = False,
                   ratios: pl.DataFrame | None = None, probabilities: pl.DataFrame | None = None,
                   progress: bool | None = None) -> ScoreTables:
    """Run the score stage on normalised well profiles.

    Parameters
    ----------
    profiles
        Wide well profiles (``Metadata_*`` incl. ``Metadata_perturbation_id``, ``Metadata_control_type``,
        ``Metadata_Plate``, ``Metadata_Well``; features).
    section
        ``[scoring]``: null size, seed, q threshold, minimum effect size.
    relocalization
        Score protein relocalization (HPA-style screens with ``Metadata_protein``).
    ratios
        Per-well ``protein_nuc_cyto_ratio`` (``Metadata_Plate``, ``Metadata_Well``), the median over cells.
    probabilities
        Per-well mean localization probabilities (``Metadata_Plate``, ``Metadata_Well``, ``probabilities``:
        a list of :data:`~subcell_screen.embed.NUM_CLASSES` floats), from SubCell.
    progress
        Progress bars of the mAP computations (None: when stderr is a terminal).

    Returns
    -------
    ScoreTables
    """
    from ._design import scoring_design
    from ._dose import dose_response
    from ._hits import hit_table

    sc = section
    design = scoring_design(profiles)
    messages = list(design.messages)
    cov = design.coverage
    other = cov.filter(~pl.col("scored") & ~pl.col("reason").str.starts_with("negative control"))
    if other.height:
        messages.append(f"{other.height} perturbation(s) not scored, e.g. " + "; ".join(
            f"{r['perturbation_id']}: {r['reason']}" for r in other.head(3).iter_rows(named=True)))
    if not design.can_score:
        return ScoreTables(coverage=cov, messages=tuple(messages))
    messages.append(f"{int(cov['scored'].sum())} perturbation(s) scored against {design.n_negcon} "
                    "negative-control wells")
    meta, x = design.meta, design.x
    hits = hit_table(meta, x, q_threshold=sc.threshold, min_effect_size=sc.min_effect_size,
                     null_size=sc.null_size, seed=sc.seed, progress=progress)
    ident = cov.select("perturbation_id", "perturbation_name", "control_type")
    scores = hits.join(ident, on="perturbation_id", how="left").rename(
        {"ci_low": "effect_ci_low", "ci_high": "effect_ci_high"}).with_columns(
        pl.col("rank").cast(pl.Int32)).select(list(SCORE_COLUMNS))
    out: dict = {"scores": scores}

    # dose response where a perturbation has several concentrations
    if "Metadata_concentration" in meta.columns:
        conc = meta.filter(pl.col("Metadata_concentration").is_not_null()
                           & pl.col("Metadata_control_type").is_null())
        multi = conc.group_by("Metadata_perturbation_id").agg(pl.col("Metadata_concentration").n_unique().alias("n"))
        if multi.filter(pl.col("n") >= 3).height:
            dr = dose_response(meta, x, null_size=min(sc.null_size, 2000), seed=sc.seed, min_doses=3)
            unit_col = "Metadata_concentration_unit"
            units = (meta.group_by("Metadata_perturbation_id").agg(pl.col(unit_col).drop_nulls().first())
                     .rename({"Metadata_perturbation_id": "perturbation_id", unit_col: "concentration_unit"})
                     if unit_col in meta.columns else
                     pl.DataFrame(schema={"perturbation_id": pl.String, "concentration_unit": pl.String}))
            fits = dr.fits.join(units, on="perturbation_id", how="left").with_columns(
                pl.when(pl.col("status") == "ok").then(pl.lit("fit")).otherwise(pl.lit("no fit")).alias("status"))
            out["dose_response"] = fits
            out["dose_points"] = dr.points
    if relocalization and "Metadata_protein" in meta.columns and meta["Metadata_protein"].drop_nulls().len():
        reloc = _relocalization(meta, x, ratios=ratios, probabilities=probabilities)
        if reloc is not None:
            out["relocalization"] = reloc.table
            out["class_shifts"] = reloc.class_shifts if reloc.class_shifts.height else None
    messages.append(f"{int(scores['is_hit'].sum())} hit(s) among {scores.height} perturbations")
    return ScoreTables(coverage=cov, messages=tuple(messages), **out)


def _relocalization(meta: pl.DataFrame, x: np.ndarray, *, ratios: pl.DataFrame | None,
                    probabilities: pl.DataFrame | None):  # noqa: ANN202 - RelocalizationResult | None
    from ..embed.classes import NUM_CLASSES
    from ._reloc import relocalization

    keys = ["Metadata_Plate", "Metadata_Well"]
    wells = meta
    ratio_col = None
    if ratios is not None and ratios.height:
        wells = wells.join(ratios, on=keys, how="left")
        ratio_col = "protein_nuc_cyto_ratio"
    probs = None
    if probabilities is not None and probabilities.height:
        joined = meta.select(keys).join(probabilities, on=keys, how="left")
        p = np.asarray(joined["probabilities"].to_list(), dtype=np.float64)
        if p.ndim == 2 and p.shape[1] >= NUM_CLASSES:
            probs = p[:, :NUM_CLASSES]
    return relocalization(wells, probabilities=probs, embeddings=x, ratio_col=ratio_col)
