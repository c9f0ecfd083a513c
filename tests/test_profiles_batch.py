"""Tests for subcell_screen.profiles.correct_batch (Harmony via harmonypy), scored by replicate mAP (copairs)."""

from __future__ import annotations

import copairs.map as copairs_map
import numpy as np
import polars as pl
import pytest

from subcell_screen.profiles import NEGCON, correct_batch, normalize
from subcell_screen.simulate import simulate_well_profiles


def replicate_map(profiles: pl.DataFrame) -> float:
    """Mean over active perturbations of their replicate-retrieval mAP (copairs; positives = same
    perturbation, negatives = every other perturbation and DMSO; cosine)."""
    feats = [c for c in profiles.columns if not c.startswith("Metadata_")]
    d = profiles.filter(pl.col("Metadata_perturbation_id").str.starts_with("active")
                        | (pl.col("Metadata_perturbation_id") == "DMSO")).to_pandas()
    ap = copairs_map.average_precision(
        d[["Metadata_perturbation_id"]].reset_index(drop=True), d[feats].to_numpy(),
        pos_sameby=["Metadata_perturbation_id"], pos_diffby=[], neg_sameby=[],
        neg_diffby=["Metadata_perturbation_id"], progress_bar=False)
    ap = ap[ap["Metadata_perturbation_id"] != "DMSO"]
    return float(ap.groupby("Metadata_perturbation_id")["average_precision"].mean().mean())


@pytest.fixture(scope="module")
def screen():
    # 8 plates in 2 batches; every active perturbation has 8 replicates spread over both batches
    return simulate_well_profiles(n_plates=8, n_features=48, n_batches=2, batch_effect=0.5, plate_effect=0.1,
                                  replicates=8, effect_size=6.0, seed=0)


def test_harmony_recovers_replicate_map_lost_to_batch_effects(screen):
    # whole-screen normalisation leaves the planted plate/batch offsets in the profiles
    before = normalize(screen.profiles, method="standardize", plate_col=None, controls=NEGCON,
                       features=screen.feature_names)
    after = correct_batch(before, batch_col="Metadata_Batch", features=screen.feature_names)
    assert after.columns == before.columns and after.height == before.height
    meta = [c for c in before.columns if c.startswith("Metadata_")]
    assert after.select(meta).equals(before.select(meta))
    m0, m1 = replicate_map(before), replicate_map(after)
    # measured: 0.254 -> 0.321 (harmonypy 2.1, seed 0); per-plate normalisation on DMSO reaches 0.378
    assert m1 > m0 + 0.04
    # the batch means move together
    feats = screen.feature_names
    gap = lambda df: np.linalg.norm(  # noqa: E731
        df.filter(pl.col("Metadata_Batch") == "batch1").select(feats).mean().to_numpy()
        - df.filter(pl.col("Metadata_Batch") == "batch2").select(feats).mean().to_numpy())
    assert gap(after) < 0.7 * gap(before)  # measured 4.75 -> 2.67


def test_harmony_on_principal_components_and_errors(screen):
    base = normalize(screen.profiles, method="standardize", plate_col=None, controls=NEGCON,
                       features=screen.feature_names)
    pcs = correct_batch(base.to_pandas(), batch_col="Metadata_Plate", n_components=10,
                        features=screen.feature_names)
    assert [c for c in pcs.columns if not c.startswith("Metadata_")] == [f"PC{i}" for i in range(1, 11)]
    assert len(pcs) == base.height
    with pytest.raises(ValueError, match="only one batch"):
        correct_batch(base.filter(pl.col("Metadata_Batch") == "batch1"), batch_col="Metadata_Batch",
                      features=screen.feature_names)
    with pytest.raises(ValueError, match=r"missing values: 'Cells_Feature_003'"):
        correct_batch(base.with_columns(pl.lit(None, dtype=pl.Float64).alias("Cells_Feature_003")),
                      features=screen.feature_names)
    with pytest.raises(ValueError, match="method must be one of"):
        correct_batch(base, method="combat", features=screen.feature_names)
