"""Tests for the scoring presets, effect sizes and hit calls on simulated screens with planted effects.

The simulated screen (``simulate_well_profiles``: 8 plates x 384 wells, 64 features, 24 active and 24 null
perturbations in 8 replicate wells each, planted shift norm 6 noise-sd, plate/batch/edge nuisance effects) is
normalised per plate against its DMSO wells (robust z-score) here, independently of the profiles module.
Asserted: every planted active perturbation has q < 0.05 and is a hit; <= 5% of null perturbations are called;
effect sizes recover the planted shift norm; cytotoxicity flags match the answer key.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from subcell_screen.score import (
    cell_count_fraction,
    effect_sizes,
    hit_table,
    phenotypic_activity,
    phenotypic_consistency,
    replicate_retrieval,
)
from subcell_screen.simulate import simulate_well_profiles


def robust_z_per_plate(profiles: pl.DataFrame, features: list[str]) -> np.ndarray:
    x = profiles.select(features).to_numpy()
    plates = profiles["Metadata_Plate"].to_numpy()
    ctrl = (profiles["Metadata_control_type"] == "negcon").fill_null(False).to_numpy()
    z = np.empty_like(x)
    for plate in np.unique(plates):
        on = plates == plate
        ref = x[on & ctrl]
        med = np.median(ref, axis=0)
        mad = np.median(np.abs(ref - med), axis=0) * 1.4826
        z[on] = (x[on] - med) / mad
    return z


@pytest.fixture(scope="module")
def screen():
    sim = simulate_well_profiles(n_plates=8, replicates=8, effect_size=6.0, seed=0)
    z = robust_z_per_plate(sim.profiles, sim.feature_names)
    no_dose = sim.profiles["Metadata_concentration"].is_null().to_numpy()
    return sim, sim.profiles.filter(pl.Series(no_dose)), z[no_dose]


@pytest.fixture(scope="module")
def activity(screen):
    _, meta, z = screen
    return phenotypic_activity(meta, z, null_size=10000, seed=0)


def _kinds(table: pl.DataFrame, key: str, sim) -> pl.DataFrame:
    return table.join(sim.answer_key, left_on=key, right_on="perturbation_id")


def test_activity_calls_every_planted_active_and_few_nulls(screen, activity):
    sim, _, _ = screen
    m = _kinds(activity.map, "Metadata_perturbation_id", sim)
    act = m.filter(pl.col("kind") == "active")
    null = m.filter(pl.col("kind") == "null")
    assert act.height == 24 and null.height == 24
    assert act["corrected_p_value"].max() < 0.05
    assert null["below_corrected_p"].mean() <= 0.05
    assert activity.fraction_retrieved == pytest.approx(24 / 48)
    assert activity.design["neg_diffby"] == ["Metadata_perturbation_id", "Metadata_Reference_Index"]
    # controls are not scored
    assert "DMSO" not in activity.ap["Metadata_perturbation_id"].to_list()


def test_replicate_retrieval_across_plates(screen):
    sim, meta, z = screen
    r = replicate_retrieval(meta, z, null_size=5000, seed=0)
    m = _kinds(r.map, "Metadata_perturbation_id", sim)
    assert m.filter(pl.col("kind") == "active")["below_corrected_p"].all()
    assert m.filter(pl.col("kind") == "null")["below_corrected_p"].mean() <= 0.05
    # positives only across plates: each well has 7 replicates on the other 7 plates
    assert (r.ap["n_pos_pairs"] == 7).all()


def test_moa_consistency_among_actives(screen, activity):
    sim, meta, z = screen
    r = phenotypic_consistency(meta, z, label_col="Metadata_moa", active=activity.map, null_size=5000, seed=0)
    # 24 actives in 6 planted MoA groups sharing a direction: every MoA is consistent
    assert sorted(r.map["Metadata_moa"].to_list()) == [f"moa_{i}" for i in range(6)]
    assert r.map["below_corrected_p"].all() and r.fraction_retrieved == 1.0
    # only active perturbations entered (one consensus profile each)
    assert set(r.ap["Metadata_perturbation_id"]) == {f"active_{i:02d}" for i in range(24)}


def test_effect_sizes_recover_planted_shift_and_ci_covers():
    rng = np.random.default_rng(3)
    d, n0 = 50, 200
    ctrl = rng.normal(0, 1, (n0, d))
    truth = np.repeat([0.0, 2.0, 4.0, 6.0], 10)
    rows = [ctrl]
    ids = ["neg"] * n0
    for g, t in enumerate(truth):
        u = rng.normal(size=d)
        rows.append(rng.normal(0, 1, (8, d)) + t * u / np.linalg.norm(u))
        ids += [f"g{g:02d}"] * 8
    meta = pl.DataFrame({"pid": ids, "ctl": ["negcon" if i == "neg" else "trt" for i in ids]})
    es = effect_sizes(meta, np.concatenate(rows), by=["pid"], controls={"ctl": "negcon"}, n_boot=500, seed=0)
    assert es.height == 40 and (es["n_wells"] == 8).all()
    err = es["effect_size"].to_numpy() - truth
    for t in (2.0, 4.0, 6.0):
        sel = truth == t
        assert abs(err[sel].mean()) < 0.6, (t, err[sel].mean())
    # inert groups: centred on 0 (the squared estimate is unbiased; the raw distance is ~2.5 here)
    assert abs(err[truth == 0].mean()) < 1.0
    covered = (es["ci_low"].to_numpy() <= truth) & (truth <= es["ci_high"].to_numpy())
    assert covered[truth > 0].mean() >= 0.8
    assert es["distance"].to_numpy()[truth == 0].min() > 1.5  # why the raw distance is debiased


def test_cell_count_fraction_per_plate():
    meta = pl.DataFrame({
        "Metadata_Plate": ["p1"] * 4 + ["p2"] * 4,
        "Metadata_perturbation_id": ["DMSO", "DMSO", "tox", "ok", "DMSO", "DMSO", "tox", "ok"],
        "Metadata_control_type": ["negcon", "negcon", None, None] * 2,
        "Metadata_Count_Cells": [100, 100, 20, 100, 200, 200, 60, 190],
    })
    cc = cell_count_fraction(meta)
    got = dict(zip(cc["Metadata_perturbation_id"], cc["cell_count_fraction"]))
    assert got == pytest.approx({"ok": (1.0 + 0.95) / 2, "tox": (0.2 + 0.3) / 2})


def test_hit_table_calls_planted_hits_and_flags_cytotoxicity(screen, activity):
    sim, meta, z = screen
    ht = hit_table(meta, z, activity=activity.map, n_boot=200, seed=0)
    assert ht.columns == ["rank", "perturbation_id", "n_wells", "mean_average_precision", "p_value",
                          "corrected_p_value", "effect_size", "ci_low", "ci_high", "cell_count_fraction",
                          "cytotoxic", "is_hit"]
    assert ht["rank"].to_list() == list(range(1, 49))
    t = _kinds(ht, "perturbation_id", sim)
    act = t.filter(pl.col("kind") == "active")
    null = t.filter(pl.col("kind") == "null")
    assert act["is_hit"].all()
    assert null["is_hit"].mean() <= 0.05
    # hits come first in the ranking
    assert ht["is_hit"].to_list() == sorted(ht["is_hit"].to_list(), reverse=True)
    # effect size: planted norm 6 (in z units) for actives, ~0 for nulls
    assert abs(act["effect_size"].mean() - 6.0) < 0.5
    assert abs(null["effect_size"].mean()) < 0.75
    # cytotoxic actives (answer key) are flagged from cell counts, and nothing else is
    assert (t["cytotoxic"] == t["cytotoxic_right"]).all() and t["cytotoxic"].sum() == 6
    assert (t["n_wells"] == 8).all()


def test_pandas_in_pandas_out_and_hit_table_computes_activity():
    import pandas as pd
    sim = simulate_well_profiles(n_plates=4, n_features=16, n_active=6, n_null=6, n_dose_compounds=0,
                                 effect_size=8.0, seed=2)
    z = robust_z_per_plate(sim.profiles, sim.feature_names)
    meta = sim.profiles.select(pl.col("^Metadata_.*$")).to_pandas()
    res = phenotypic_activity(meta, z, null_size=2000, seed=0)
    assert isinstance(res.ap, pd.DataFrame) and isinstance(res.map, pd.DataFrame)
    assert len(res.map) == 12 and res.map["Metadata_perturbation_id"].is_monotonic_increasing
    ht = hit_table(meta, z, null_size=2000, n_boot=100, seed=0)
    assert isinstance(ht, pl.DataFrame) and ht.height == 12
    called = set(ht.filter(pl.col("is_hit"))["perturbation_id"])
    assert called == {f"active_{i:02d}" for i in range(6)}
    # the same activity numbers as the explicit preset
    m = ht.join(pl.from_pandas(res.map), left_on="perturbation_id", right_on="Metadata_perturbation_id")
    np.testing.assert_array_equal(m["p_value"].to_numpy(), m["p_value_right"].to_numpy())
