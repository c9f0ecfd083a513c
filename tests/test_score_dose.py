"""Tests for dose-response fitting: known curves, "no fit" reasons, and planted EC50s in a simulated screen.

Tolerance for planted EC50s (8 plates, one well per dose per plate, 8 doses 0.01-30 µM, shift norm 9 noise-sd at
full response): |log10 EC50 error| <= 0.2 (a factor of 1.6), observed <= 0.08 on this seed.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from subcell_screen.score import dose_response, fit_dose_response, logistic4
from subcell_screen.simulate import four_parameter_logistic, simulate_well_profiles

DOSES = np.array([0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0])


def test_logistic4_matches_simulator():
    x = np.linspace(-3, 2, 11)
    np.testing.assert_allclose(logistic4(x, 0.5, 3.0, -0.7, 1.3),
                               four_parameter_logistic(x, bottom=0.5, top=3.0, log10_ec50=-0.7, hill=1.3))


def test_recovers_known_curve_with_ci():
    rng = np.random.default_rng(0)
    c = np.repeat(DOSES, 3)
    y = logistic4(np.log10(c), 0.2, 5.0, np.log10(0.4), 1.4) + rng.normal(0, 0.05, len(c))
    fit = fit_dose_response(c, y)
    assert fit.status == "ok" and fit.reason is None
    assert abs(np.log10(fit.ec50) - np.log10(0.4)) < 0.03
    assert fit.ec50_ci_low < fit.ec50 < fit.ec50_ci_high
    assert fit.hill == pytest.approx(1.4, abs=0.1) and fit.top == pytest.approx(5.0, abs=0.1)
    assert fit.n_doses == 8 and fit.f_pvalue < 1e-10
    # decreasing curves are fitted too (top < bottom)
    fit_dec = fit_dose_response(c, 5.0 - y)
    assert fit_dec.status == "ok" and abs(np.log10(fit_dec.ec50) - np.log10(0.4)) < 0.02


def test_ec50_ci_coverage():
    rng = np.random.default_rng(5)
    c = np.repeat(DOSES, 2)
    covered = []
    for _ in range(40):
        y = logistic4(np.log10(c), 0.0, 4.0, np.log10(2.0), 1.0) + rng.normal(0, 0.3, len(c))
        fit = fit_dose_response(c, y)
        covered.append(fit.status == "ok" and fit.ec50_ci_low <= 2.0 <= fit.ec50_ci_high)
    assert np.mean(covered) >= 0.85  # nominal 95%


def test_no_fit_reasons():
    rng = np.random.default_rng(1)
    few = fit_dose_response(DOSES[:4], [0, 1, 2, 3])
    assert few.status == "no fit" and few.reason.startswith("too few doses")
    flat = fit_dose_response(np.repeat(DOSES, 3), rng.normal(0, 1, 24))
    assert flat.status == "no fit" and flat.reason.startswith("flat")
    const = fit_dose_response(DOSES, np.ones(8))
    assert const.status == "no fit" and const.reason.startswith("flat")
    c = np.repeat(DOSES[:6], 3)  # 0.01..3 µM tested; true EC50 at 20 µM
    y = logistic4(np.log10(c), 0.0, 5.0, np.log10(20.0), 2.0) + rng.normal(0, 0.02, len(c))
    out = fit_dose_response(c, y)
    assert out.status == "no fit" and out.reason.startswith("EC50 outside tested range"), out
    assert np.isnan(out.ec50)
    with pytest.raises(ValueError, match="shape"):
        fit_dose_response(DOSES, np.ones(3))


def _robust_z(profiles, features):
    x = profiles.select(features).to_numpy()
    plates = profiles["Metadata_Plate"].to_numpy()
    ctrl = (profiles["Metadata_control_type"] == "negcon").fill_null(False).to_numpy()
    z = np.empty_like(x)
    for p in np.unique(plates):
        on = plates == p
        med = np.median(x[on & ctrl], axis=0)
        z[on] = (x[on] - med) / (np.median(np.abs(x[on & ctrl] - med), axis=0) * 1.4826)
    return z


@pytest.fixture(scope="module")
def dose_screen():
    sim = simulate_well_profiles(n_plates=8, replicates=8, effect_size=6.0, n_active=8, n_null=8, seed=0)
    prof = sim.profiles
    # inert series: give the 8 wells of three null perturbations one concentration each (8 doses)
    for i in range(3):
        pid = f"null_{i:02d}"
        on = (prof["Metadata_perturbation_id"] == pid).to_numpy()
        conc = np.full(prof.height, np.nan)
        conc[on] = DOSES
        prof = prof.with_columns(pl.when(pl.Series(on)).then(pl.Series(conc)).otherwise(pl.col("Metadata_concentration"))
                                 .alias("Metadata_concentration"))
    # make dose_00 cytotoxic at >= 10 µM
    tox = (prof["Metadata_perturbation_id"] == "dose_00").to_numpy() & (prof["Metadata_concentration"] >= 10).fill_null(False).to_numpy()
    prof = prof.with_columns(pl.when(pl.Series(tox)).then(pl.col("Metadata_Count_Cells") // 5)
                             .otherwise(pl.col("Metadata_Count_Cells")).alias("Metadata_Count_Cells"))
    return sim, prof, _robust_z(prof, sim.feature_names)


def test_planted_ec50s_recovered(dose_screen):
    sim, prof, z = dose_screen
    res = dose_response(prof, z)
    fits = res.fits.join(sim.answer_key.select("perturbation_id", "ec50_uM"), on="perturbation_id", how="left")
    planted = fits.filter(pl.col("perturbation_id").str.starts_with("dose_"))
    assert planted.height == 4 and (planted["status"] == "ok").all()
    err = np.abs(np.log10(planted["ec50"].to_numpy()) - np.log10(planted["ec50_uM"].to_numpy()))
    assert err.max() <= 0.2, err
    covered = (planted["ec50_ci_low"] <= planted["ec50_uM"]) & (planted["ec50_uM"] <= planted["ec50_ci_high"])
    assert covered.sum() >= 3
    inert = fits.filter(pl.col("perturbation_id").str.starts_with("null_"))
    assert inert.height == 3 and (inert["status"] == "no fit").all()
    # cytotoxicity from cell counts
    tox = fits.filter(pl.col("perturbation_id") == "dose_00").row(0, named=True)
    assert tox["cytotoxic"] and tox["cytotoxic_from"] == 10.0 and tox["min_cell_count_fraction"] < 0.3
    assert not fits.filter(pl.col("perturbation_id") == "dose_01")["cytotoxic"].item()
    # per-dose points: one row per (perturbation, concentration), 8 wells each
    pts = res.points.filter(pl.col("perturbation_id") == "dose_01")
    assert pts.height == 8 and (pts["n_wells"] == 8).all()
    assert pts.sort("concentration")["activity"][-1] > 5 > abs(pts.sort("concentration")["activity"][0])


def test_effect_size_readout_also_recovers_ec50(dose_screen):
    sim, prof, z = dose_screen
    res = dose_response(prof.filter(~pl.col("Metadata_perturbation_id").str.starts_with("null")),
                        z[~prof["Metadata_perturbation_id"].str.starts_with("null").to_numpy()],
                        activity="effect_size")
    fits = res.fits.join(sim.answer_key.select("perturbation_id", "ec50_uM"), on="perturbation_id")
    ok = fits.filter(pl.col("status") == "ok")
    assert ok.height >= 3
    err = np.abs(np.log10(ok["ec50"].to_numpy()) - np.log10(ok["ec50_uM"].to_numpy()))
    assert err.max() <= 0.35
    with pytest.raises(ValueError, match="activity"):
        dose_response(prof, z, activity="auc")
