"""What the report's table columns mean and in which unit: the header tooltips (``title`` of each ``<th>``).

``docs/reports.md`` says the same at more length; a test checks that every column of the hit table has a
tooltip here and an entry there. The definitions follow the scorer: :mod:`subcell_screen.score` (effect size:
``score/_hits.py``; relocalization readouts: ``score/_reloc.py``; dose response: ``score/_dose.py``).
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["EFFECT_SIZE", "RELOCALIZATION_READOUTS", "column_help"]

#: The hit table's ``effect_size``, in one sentence (tooltip and caption).
EFFECT_SIZE = ("effect_size: how far the perturbation's mean profile lies from the negative controls' mean "
               "profile: the norm of the shift, debiased for replicate noise, in units of the controls' average "
               "per-feature standard deviation (0 = no shift beyond noise; negative = closer to the controls than "
               "noise alone would put it; for profiles z-scored against the controls, the shift norm in z units)")

#: Relocalization readout -> (what it measures, unit of its effect_size), see ``score/_reloc.py``.
RELOCALIZATION_READOUTS: Mapping[str, tuple[str, str]] = {
    "probabilities": ("SubCell localization probabilities (well means over 31 classes)",
                      "total probability shifted between classes, 0.5·Σ|Δp| (0 to 1)"),
    "embedding": ("SubCell protein-sensitive embedding: each well's cosine distance to the control centroid",
                  "treated − control distance, in standard deviations of the controls' distances"),
    "nuc_cyto_ratio": ("nuclear / cytoplasmic intensity ratio of the protein channel (classical)",
                       "treated − control ratio (negative: the protein left the nucleus)"),
}

_COMMON: dict[str, str] = {
    "rank": "rank of the perturbation: hits first, then by q-value, then by effect size (1 = best)",
    "perturbation_id": "perturbation id from the platemap",
    "perturbation_name": "perturbation name from the platemap",
    "control_type": "control type from the platemap (negcon, poscon; empty = treatment)",
    "n_wells": "number of wells (replicates pooled across plates)",
    "mean_average_precision": "phenotypic activity: mean average precision of retrieving the perturbation's "
                              "replicate wells against negative-control wells (cosine similarity of well "
                              "profiles); 0 to 1, higher = more distinct and reproducible",
    "p_value": "p-value of the mAP against a null of random rankings with the same numbers of replicate and "
                "control wells (copairs' permutation test)",
    "corrected_p_value": "q-value: the mAP p-value after Benjamini-Hochberg correction over all scored "
                         "perturbations",
    "effect_size": EFFECT_SIZE.split(": ", 1)[1],
    "effect_ci_low": "lower end of the 95% bootstrap confidence interval of effect_size (same unit)",
    "effect_ci_high": "upper end of the 95% bootstrap confidence interval of effect_size (same unit)",
    "cell_count_fraction": "cells per well relative to the negative controls of the same plate (median over "
                           "the perturbation's wells; 1 = as many cells as the controls)",
    "cytotoxic": "yes when cell_count_fraction is below 0.5",
    "is_hit": "yes when q < [scoring].threshold (default 0.05) and effect_size ≥ [scoring].min_effect_size "
              "(default 0)",
    "ec50": "concentration at half-maximal activity of the fitted 4-parameter logistic (in concentration_unit)",
    "ec50_ci_low": "lower end of the 95% confidence interval of the EC50 (in concentration_unit)",
    "ec50_ci_high": "upper end of the 95% confidence interval of the EC50 (in concentration_unit)",
    "concentration_unit": "unit of the concentrations and EC50s (from the platemap)",
    "status": "'fit', or 'no fit' with the reason",
    "reason": "why no curve was fitted (too few doses, flat response, no convergence, EC50 outside the tested "
              "range)",
    "hill": "Hill slope of the fitted 4-parameter logistic (steepness; unitless)",
    "bottom": "activity the curve tends to at low concentration (unit of activity)",
    "top": "activity the curve tends to at high concentration (unit of activity)",
    "n_doses": "number of distinct concentrations tested",
    "pixel_size_um": "µm per pixel used for segmentation and crops",
    "pixel_size_source": "where the pixel size came from (config, instrument metadata, TIFF tags)",
    "used_for": "what the channel is used for: segmentation, SubCell input slots, relocalization, classical "
                "features",
    "illumination_plates": "plates on which an illumination function corrects this channel",
}

_BY_QUERY: dict[str, dict[str, str]] = {
    "relocalization": {
        "readout": "what was compared between treated and control wells of the same protein: probabilities, "
                   "embedding (both need SubCell) or nuc_cyto_ratio",
        "protein": "protein of interest of the wells (platemap)",
        "from_class": "localization class the protein moves away from (largest decrease)",
        "to_class": "localization class the protein moves to (largest increase)",
        "effect_size": "size of the change; its unit depends on the readout: probabilities: total probability "
                       "shifted 0.5·Σ|Δp| (0 to 1); embedding: treated − control distance to the control "
                       "centroid in control standard deviations; nuc_cyto_ratio: treated − control ratio",
        "p_value": "p-value of treated vs control wells (mixed model with a random plate effect; OLS on one "
                   "plate); one-sided for the distance readouts",
        "q_value": "Benjamini-Hochberg q-value over all pairs of the readout",
        "significant": "yes when q_value is below the report's threshold",
    },
    "dose_points": {
        "activity": "activity of the perturbation at this concentration (the readout named in the fits' "
                    "activity column; projection: shift along the perturbation's response direction, in "
                    "control standard deviations)",
    },
}


def column_help(query: str, column: str) -> str | None:
    """Tooltip text of ``column`` in the table of ``query`` (None when the column has none)."""
    return _BY_QUERY.get(query, {}).get(column) or _COMMON.get(column)
