"""The profile stage: well profiles -> per-plate normalisation -> feature selection -> consensus.

:func:`build_profile_sets` is the stage, built from the ``[profiles]`` config section in one place. It never
raises for a design that cannot be normalised or selected (a plate with one imaged well, plates without
control wells): it computes what can be computed, and says in :attr:`ProfileSets.messages` what was not and
why, naming plates and counts. The pipeline stores every set it returns side by side.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:  # pragma: no cover
    from ..config import ProfilesSection

__all__ = ["ProfileSets", "build_profile_sets", "PROFILE_SETS", "CONSENSUS_BY"]

logger = logging.getLogger(__name__)

#: Names of the profile sets, in the order the stage makes them.
PROFILE_SETS: tuple[str, ...] = ("raw", "normalized", "feature_selected", "consensus")
#: Replicates of a consensus profile share these columns (those present in the profiles).
CONSENSUS_BY: tuple[str, ...] = ("Metadata_perturbation_id", "Metadata_concentration")


@dataclass(frozen=True)
class ProfileSets:
    """Profile sets of one run of the profile stage (wide frames: ``Metadata_*`` columns + features).

    Attributes
    ----------
    raw : polars.DataFrame
        Aggregated well profiles, one row per well with cells.
    normalized : polars.DataFrame or None
        Wells of the plates that could be normalised against their controls (None: none could, or
        ``normalize = "none"``).
    feature_selected : polars.DataFrame or None
        ``normalized`` after feature selection (None when not configured or not possible).
    consensus : polars.DataFrame or None
        One row per perturbation (and concentration) of the final well set: the median over its wells;
        ``Metadata_n_wells`` counts them. Negative controls are included (one row per control id).
    messages : tuple of str
        What could not be computed and why, and what selection removed.
    """

    raw: pl.DataFrame
    normalized: pl.DataFrame | None = None
    feature_selected: pl.DataFrame | None = None
    consensus: pl.DataFrame | None = None
    messages: tuple[str, ...] = field(default=())

    @property
    def final_name(self) -> str:
        """Name of the well-level set that scoring uses: the last one computed."""
        if self.feature_selected is not None:
            return "feature_selected"
        if self.normalized is not None:
            return "normalized"
        return "raw"

    @property
    def final(self) -> pl.DataFrame:
        """The well-level set that scoring uses."""
        return getattr(self, self.final_name)

    def sets(self) -> dict[str, pl.DataFrame]:
        """Every computed set by name (:data:`PROFILE_SETS` order)."""
        return {name: df for name in PROFILE_SETS if (df := getattr(self, name)) is not None}


def _features(frame: pl.DataFrame) -> list[str]:
    return [c for c in frame.columns if not c.startswith("Metadata_")]


def _control_mask(frame: pl.DataFrame, controls: str) -> pl.Series:
    if controls == "all":
        return pl.Series([True] * frame.height)
    return (frame["Metadata_control_type"] == "negcon").fill_null(False) if "Metadata_control_type" in \
        frame.columns else pl.Series([False] * frame.height)


def _normalizable_plates(wide: pl.DataFrame, controls: str) -> tuple[list[str], list[str]]:
    """Plates with at least 2 control wells, and messages for the others."""
    counts = (wide.with_columns(_control_mask(wide, controls).alias("_ctrl"))
              .group_by("Metadata_Plate", maintain_order=True)
              .agg(pl.col("_ctrl").sum().alias("n_ctrl"), pl.len().alias("n_wells")))
    ok, msgs = [], []
    what = "negative-control" if controls == "negcon" else ""
    for plate, n_ctrl, n_wells in counts.iter_rows():
        if n_ctrl >= 2:
            ok.append(plate)
        else:
            msgs.append(f"plate {plate}: {n_ctrl} {what + ' ' if what else ''}well(s) with profiles among its "
                        f"{n_wells} well(s); normalising against controls needs at least 2, so its wells are left "
                        "out of the normalized profiles (raw profiles are kept)")
    return ok, msgs


def _select(normalized: pl.DataFrame, operations: Sequence[str]) -> tuple[pl.DataFrame | None, str]:
    from ._select import features_to_exclude

    feats = _features(normalized)
    if normalized.height < 2:
        return None, (f"feature selection ({', '.join(operations)}) skipped: it needs at least 2 wells, the "
                      f"normalized profiles have {normalized.height}")
    try:
        excluded = features_to_exclude(normalized, operation=list(operations), features=feats)
    except ValueError as exc:  # e.g. variance_threshold: no feature varies across these wells
        return None, f"feature selection skipped ({normalized.height} wells): {exc}"
    drop = {f for fs in excluded.values() for f in fs}
    kept = [f for f in feats if f not in drop]
    per_op = ", ".join(f"{op} {len(fs)}" for op, fs in excluded.items())
    if not kept:
        return None, (f"feature selection skipped: it would remove all {len(feats)} features ({per_op}) from "
                      f"{normalized.height} wells")
    return normalized.drop([c for c in normalized.columns if c in drop]), \
        f"feature selection kept {len(kept)} of {len(feats)} features (removed: {per_op})"


def _consensus(final: pl.DataFrame) -> pl.DataFrame | None:
    from ._aggregate import consensus

    by = [c for c in CONSENSUS_BY if c in final.columns]
    if not by or final.height == 0 or not _features(final):
        return None
    counts = final.group_by(by).agg(pl.len().cast(pl.Int64).alias("Metadata_n_wells"))
    out = consensus(final, by=by, method="median", features=_features(final))
    return out.join(counts, on=by, how="left", nulls_equal=True).select(
        *by, "Metadata_n_wells", *[c for c in out.columns if c not in by])


def build_profile_sets(wide: pl.DataFrame, *, section: ProfilesSection) -> ProfileSets:
    """Run the profile stage on aggregated well profiles.

    Parameters
    ----------
    wide
        One row per well: ``Metadata_Plate``, ``Metadata_Well``, the layout's ``Metadata_*`` columns
        (``Metadata_control_type``, ``Metadata_perturbation_id``, ...), ``Metadata_Count_Cells`` and the
        features.
    section
        The ``[profiles]`` config section (normalisation method and controls, feature selection, batch
        correction, minimum cells per well).

    Returns
    -------
    ProfileSets
    """
    from ._normalize import normalize

    sec = section
    messages: list[str] = []
    if sec.min_cells_per_well > 1 and "Metadata_Count_Cells" in wide.columns:
        low = wide.filter(pl.col("Metadata_Count_Cells") < sec.min_cells_per_well)
        if low.height:
            messages.append(f"{low.height} well(s) with fewer than {sec.min_cells_per_well} cells left out "
                            f"([profiles].min_cells_per_well), e.g. {low.select('Metadata_Plate', 'Metadata_Well').rows()[:3]}")
        wide = wide.filter(pl.col("Metadata_Count_Cells") >= sec.min_cells_per_well)
    features = _features(wide)
    normalized = None
    if sec.normalize != "none" and wide.height:
        plates, msgs = _normalizable_plates(wide, sec.controls)
        messages += msgs
        todo = wide.filter(pl.col("Metadata_Plate").is_in(plates))
        if todo.height:
            from .frames import NEGCON

            kwargs: dict = {}
            if sec.normalize == "mad_robustize":
                kwargs.update(epsilon=sec.epsilon, mad_scale=sec.mad_scale)
            if sec.normalize == "spherize":
                kwargs.update(spherize_method=sec.spherize_method, spherize_epsilon=sec.spherize_epsilon)
            normalized = normalize(todo, method=sec.normalize, features=features,
                                   controls=NEGCON if sec.controls == "negcon" else None, **kwargs)
        else:
            messages.append("normalized profiles not computed: no plate has 2 or more control wells")
    selected = None
    if sec.feature_select and normalized is not None:
        selected, msg = _select(normalized, sec.feature_select)
        messages.append(msg)
    if sec.batch_correction == "harmony":
        target = selected if selected is not None else normalized
        batch_col = "Metadata_Batch" if target is not None and "Metadata_Batch" in target.columns \
            else "Metadata_Plate"
        if target is None:
            messages.append("batch correction skipped: no normalized profiles")
        elif target[batch_col].n_unique() < 2:
            messages.append(f"batch correction skipped: one value of {batch_col}")
        else:
            from ._batch import correct_batch

            corrected = correct_batch(target, batch_col=batch_col, method="harmony", features=_features(target))
            if selected is not None:
                selected = corrected
            else:
                normalized = corrected
    sets = ProfileSets(raw=wide, normalized=normalized, feature_selected=selected)
    for m in messages:
        logger.info("profiles: %s", m)
    return ProfileSets(raw=sets.raw, normalized=sets.normalized, feature_selected=sets.feature_selected,
                       consensus=_consensus(sets.final), messages=tuple(messages))
