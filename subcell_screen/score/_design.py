"""Which perturbations a screen's design lets the scorer score, and why the others are not scored.

Phenotypic activity ranks a perturbation's replicate wells against negative-control wells, so it needs at least
two negative-control wells and at least two wells of the perturbation. Replicates are pooled across plates by
perturbation id: JUMP-Target-style layouts hold one well per compound per plate, and their replicates are the
replicate plates. Positive controls are scored like treatments (and labelled as such).

:func:`scoring_design` also cleans the profiles for scoring: wells without any finite feature (no cells) are
left out, then features that are not finite in every remaining well; both are counted in its messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

__all__ = ["ScoringDesign", "scoring_design"]


@dataclass(frozen=True)
class ScoringDesign:
    """What can be scored.

    Attributes
    ----------
    meta : polars.DataFrame
        ``Metadata_*`` columns of the wells that are scored (negative controls and scorable perturbations).
    x : ndarray, shape (n_wells, n_features)
        Their profiles (float64, finite).
    features : tuple of str
        Feature names of ``x``.
    coverage : polars.DataFrame
        One row per perturbation in the profiles: ``perturbation_id``, ``perturbation_name``,
        ``control_type``, ``n_wells``, ``n_plates``, ``scored`` (bool), ``reason`` (why not; null when scored).
    n_negcon : int
        Negative-control wells available as the reference.
    messages : tuple of str
        Wells and features left out, and why nothing could be scored (when so), with the counts found.
    """

    meta: pl.DataFrame
    x: np.ndarray = field(repr=False)
    features: tuple[str, ...]
    coverage: pl.DataFrame
    n_negcon: int
    messages: tuple[str, ...] = ()

    @property
    def can_score(self) -> bool:
        """Whether at least one perturbation can be scored."""
        return bool(self.coverage["scored"].any()) if self.coverage.height else False


def scoring_design(profiles: pl.DataFrame, *, min_negcon: int = 2, min_wells: int = 2) -> ScoringDesign:
    """Split well profiles into what is scored and what is not (with reasons naming the counts found).

    Parameters
    ----------
    profiles
        Wide well profiles (``Metadata_*`` + features) with ``Metadata_perturbation_id``,
        ``Metadata_control_type`` and ``Metadata_Plate``; ``Metadata_perturbation_name`` is used when present.
    min_negcon, min_wells
        Negative-control wells needed, and wells (pooled across plates) a perturbation needs.

    Returns
    -------
    ScoringDesign
    """
    meta_cols = [c for c in profiles.columns if c.startswith("Metadata_")]
    feats = [c for c in profiles.columns if c not in meta_cols]
    messages: list[str] = []
    ctrl = profiles["Metadata_control_type"] if "Metadata_control_type" in profiles.columns else \
        pl.Series([None] * profiles.height, dtype=pl.String)
    wide = profiles.filter((ctrl != "empty").fill_null(True))
    n_empty = profiles.height - wide.height
    if n_empty:
        messages.append(f"{n_empty} empty well(s) (control_type = empty) are not scored")
    x = wide.select(feats).to_numpy().astype(np.float64) if feats else np.zeros((wide.height, 0))
    finite = np.isfinite(x)
    no_values = ~finite.any(axis=1) if x.shape[1] else np.ones(wide.height, bool)
    if no_values.any():
        bad = wide.filter(pl.Series(no_values)).select("Metadata_Plate", "Metadata_Well").rows()
        messages.append(f"{len(bad)} well(s) without any finite feature (no cells) are not scored, e.g. {bad[:3]}")
        wide, x, finite = wide.filter(pl.Series(~no_values)), x[~no_values], finite[~no_values]
    col_ok = finite.all(axis=0) if x.shape[0] else np.ones(x.shape[1], bool)
    if not col_ok.all():
        dropped = [f for f, ok in zip(feats, col_ok) if not ok]
        messages.append(f"{len(dropped)} of {len(feats)} feature(s) not finite in every well are left out of "
                        f"scoring, e.g. {dropped[:3]}")
        feats = [f for f, ok in zip(feats, col_ok) if ok]
        x = x[:, col_ok]
    meta = wide.select(meta_cols)
    is_neg = (meta["Metadata_control_type"] == "negcon").fill_null(False) if "Metadata_control_type" in \
        meta.columns else pl.Series([False] * meta.height)
    n_negcon = int(is_neg.sum())
    name_col = "Metadata_perturbation_name" if "Metadata_perturbation_name" in meta.columns else \
        "Metadata_perturbation_id"
    ctrl_col = "Metadata_control_type" if "Metadata_control_type" in meta.columns else None
    groups = (meta.with_columns(is_neg.alias("_neg"))
              .group_by("Metadata_perturbation_id", maintain_order=True)
              .agg(pl.col(name_col).first().alias("perturbation_name"),
                   (pl.col(ctrl_col).first() if ctrl_col else pl.lit(None, dtype=pl.String)).alias("control_type"),
                   pl.len().alias("n_wells"), pl.col("Metadata_Plate").n_unique().alias("n_plates"),
                   pl.col("_neg").any().alias("negcon"))
              .rename({"Metadata_perturbation_id": "perturbation_id"})
              .sort("perturbation_id"))
    reasons = []
    for r in groups.iter_rows(named=True):
        if r["negcon"]:
            reasons.append(f"negative control: the reference the others are ranked against ({r['n_wells']} wells)")
        elif n_negcon < min_negcon:
            reasons.append(f"only {n_negcon} negative-control well(s) have profiles; activity is ranked against "
                           f"at least {min_negcon}")
        elif r["n_wells"] < min_wells:
            reasons.append(f"{r['n_wells']} well(s) on {r['n_plates']} plate(s); replicates are pooled across "
                           f"plates and at least {min_wells} are needed")
        else:
            reasons.append(None)
    coverage = groups.with_columns(pl.Series("reason", reasons, dtype=pl.String)).with_columns(
        pl.col("reason").is_null().alias("scored"), pl.col("n_wells").cast(pl.Int64),
        pl.col("n_plates").cast(pl.Int64)).select(
        "perturbation_id", "perturbation_name", "control_type", "n_wells", "n_plates", "scored", "reason")
    if not coverage["scored"].any():
        n_pert = coverage.filter(~pl.col("reason").str.starts_with("negative control")).height
        most = coverage.filter(~pl.col("reason").str.starts_with("negative control"))["n_wells"].max()
        found = (f"{n_pert} other perturbation(s) with at most {int(most)} well(s) each" if n_pert
                 else "no other perturbation")
        messages.append(f"scoring skipped: phenotypic activity needs at least {min_negcon} negative-control wells "
                        f"and a perturbation with at least {min_wells} wells (pooled across plates); found "
                        f"{n_negcon} negative-control well(s) and {found}")
    keep_ids = set(coverage.filter(pl.col("scored"))["perturbation_id"].to_list())
    keep = (is_neg | meta["Metadata_perturbation_id"].is_in(list(keep_ids))).to_numpy()
    return ScoringDesign(meta=meta.filter(pl.Series(keep)), x=x[keep], features=tuple(feats), coverage=coverage,
                         n_negcon=n_negcon, messages=tuple(messages))
