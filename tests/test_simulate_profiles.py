"""Tests for subcell_screen.simulate.profiles (well-level simulator with planted effects)."""

from __future__ import annotations

import numpy as np
import polars as pl

from subcell_screen.simulate import four_parameter_logistic, simulate_well_profiles


def test_deterministic_and_shaped():
    a = simulate_well_profiles(n_plates=3, n_features=12, seed=3)
    b = simulate_well_profiles(n_plates=3, n_features=12, seed=3)
    assert a.profiles.equals(b.profiles) and a.answer_key.equals(b.answer_key)
    p = a.profiles
    assert p.select(pl.struct("Metadata_Plate", "Metadata_Well").is_unique().all()).item()
    assert p.filter(pl.col("Metadata_control_type") == "negcon").group_by("Metadata_Plate").len()["len"].to_list() == [32] * 3
    assert set(p["Metadata_Batch"]) == {"batch1", "batch2"}
    # every active perturbation has `replicates` wells over the screen
    counts = p.filter(pl.col("Metadata_perturbation_id").str.starts_with("active")).group_by(
        "Metadata_perturbation_id").len()["len"]
    assert counts.min() == counts.max() == 4


def test_planted_shift_is_recoverable():
    sim = simulate_well_profiles(n_plates=4, n_features=32, effect_size=6.0, seed=1)
    p = sim.profiles
    x = p.select(sim.feature_names).to_numpy()
    plates = p["Metadata_Plate"].to_numpy()
    pid = p["Metadata_perturbation_id"].to_numpy()
    z = np.empty_like(x)
    for plate in np.unique(plates):
        m = plates == plate
        ctrl = m & (pid == "DMSO")
        z[m] = (x[m] - x[ctrl].mean(0)) / x[ctrl].std(0)
    # active replicates agree with each other much more than null replicates do
    def mean_pair_cos(ids):
        vals = []
        for k in ids:
            v = z[pid == k]
            v = v / np.linalg.norm(v, axis=1, keepdims=True)
            c = v @ v.T
            vals.append(c[np.triu_indices(len(v), 1)].mean())
        return float(np.mean(vals))
    act = mean_pair_cos([f"active_{i:02d}" for i in range(24)])
    null = mean_pair_cos([f"null_{i:02d}" for i in range(24)])
    assert act > 0.3 and abs(null) < 0.1, (act, null)
    # cytotoxic actives lose cells
    tox = sim.answer_key.filter(pl.col("cytotoxic"))["perturbation_id"].to_list()
    cnt = p.group_by("Metadata_perturbation_id").agg(pl.col("Metadata_Count_Cells").mean())
    tox_mean = cnt.filter(pl.col("Metadata_perturbation_id").is_in(tox))["Metadata_Count_Cells"].mean()
    dmso_mean = cnt.filter(pl.col("Metadata_perturbation_id") == "DMSO")["Metadata_Count_Cells"].item()
    assert tox_mean < 0.3 * dmso_mean


def test_four_parameter_logistic():
    y = four_parameter_logistic(np.array([-10.0, 0.0, 10.0]), bottom=1.0, top=3.0, log10_ec50=0.0, hill=1.0)
    assert np.allclose(y, [1.0, 2.0, 3.0])
