"""Scoring: what analysts rank hits by.

* :func:`average_precision`, :func:`multilabel_average_precision`, :func:`mean_average_precision`,
  :func:`mean_average_precision_hierarchical` — copairs 0.5 pair semantics, AP to ~1e-15 and p-values *equal* to
  copairs' for the same seed, but streamed in blocks (never listing pairs) on numpy or torch (CUDA when
  present); :func:`expected_ap` / :func:`normalize_ap` (chance-corrected AP).
* Replicate correlation: :func:`corr_between_replicates`, :func:`correlation_test` (percent replicating).
* Presets: :func:`phenotypic_activity`, :func:`replicate_retrieval`, :func:`phenotypic_consistency`,
  :func:`fraction_retrieved`, :func:`assign_reference_index`.
* Effect sizes and hits: :func:`effect_sizes`, :func:`cell_count_fraction`, :func:`hit_table`.
* Dose response: :func:`fit_dose_response`, :func:`dose_response`.
* Protein relocalization (HPA-style screens): :func:`relocalization`, :data:`LOCALIZATION_CLASSES`.

Control rows are chosen with ``controls=`` (default :data:`NEGCON`, ``Metadata_control_type == "negcon"``; a
polars expression, ``{column: value}`` mapping, query string or boolean mask), groups with ``by=``, the plate
column with ``plate_col=``, as in :mod:`subcell_screen.profiles`; ``docs/migration.md`` maps copairs calls.
"""

from __future__ import annotations

from ..profiles.frames import NEGCON
from ._design import ScoringDesign, scoring_design
from ._dose import DoseFit, DoseResponseResult, dose_response, fit_dose_response, logistic4
from ._hits import cell_count_fraction, effect_sizes, hit_table
from ._map import (
                   UnpairedException,
                   average_precision,
                   expected_ap,
                   fraction_retrieved,
                   mean_average_precision,
                   mean_average_precision_hierarchical,
                   multilabel_average_precision,
                   normalize_ap,
)
from ._presets import (
                   RetrievalResult,
                   assign_reference_index,
                   consensus_profiles,
                   phenotypic_activity,
                   phenotypic_consistency,
                   replicate_retrieval,
)
from ._reloc import LOCALIZATION_CLASSES, RelocalizationResult, relocalization
from ._replicating import CorrelationTestResult, corr_between_replicates, correlation_test
from ._stage import SCORE_COLUMNS, ScoreTables, score_profiles

__all__ = [
    "score_profiles",
    "ScoreTables",
    "SCORE_COLUMNS",
    "scoring_design",
    "ScoringDesign",
    "average_precision",
    "multilabel_average_precision",
    "mean_average_precision",
    "mean_average_precision_hierarchical",
    "expected_ap",
    "normalize_ap",
    "fraction_retrieved",
    "UnpairedException",
    "assign_reference_index",
    "phenotypic_activity",
    "replicate_retrieval",
    "phenotypic_consistency",
    "consensus_profiles",
    "RetrievalResult",
    "NEGCON",
    "corr_between_replicates",
    "correlation_test",
    "CorrelationTestResult",
    "effect_sizes",
    "cell_count_fraction",
    "hit_table",
    "fit_dose_response",
    "dose_response",
    "logistic4",
    "DoseFit",
    "DoseResponseResult",
    "relocalization",
    "RelocalizationResult",
    "LOCALIZATION_CLASSES",
]
