"""Tests for relocalization scoring on a synthetic HPA-style well-level screen (the HDAC8/vorinostat example).

The synthetic screen, generated here: proteins HDAC8 (nucleoplasmic) and TP53 (nucleoplasmic) on 3 plates, 8
DMSO wells per protein per plate, vorinostat and an inert compound at 4 doses (2 wells per dose per plate).
Only HDAC8 + vorinostat relocalizes: a dose-dependent fraction f (4PL, EC50 0.5 µM, top 0.6) of the
Nucleoplasm probability moves to Cytosol, the nuclear/cytoplasmic ratio drops by 70% x f, and the well
embedding shifts by 10 x f along a fixed direction. Asserted: that pair is found (q < 0.05) in all three
readouts with the right direction (Nucleoplasm -> Cytosol; ratio down); no other pair is called; per-dose
effects grow with dose; the mixed model agrees with statsmodels' formula API and the one-plate OLS with a t test.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from subcell_screen.score import LOCALIZATION_CLASSES, logistic4, relocalization
from subcell_screen.score._reloc import _test_treatment

NUC = LOCALIZATION_CLASSES.index("Nucleoplasm")
CYT = LOCALIZATION_CLASSES.index("Cytosol")
DOSES = (0.1, 0.3, 1.0, 3.0)
RATIO = "Cells_Intensity_NucCytoRatio_protein"


def make_hpa_screen(*, seed: int = 0, n_plates: int = 3, wells_per_dose: int = 2, n_ctrl: int = 8):
    rng = np.random.default_rng(seed)
    k = len(LOCALIZATION_CLASSES)
    base = {"HDAC8": {NUC: 0.85, CYT: 0.08}, "TP53": {NUC: 0.8, CYT: 0.1}}
    d = 32
    mu = {p: rng.normal(0, 3, d) for p in base}
    direction = rng.normal(0, 1, d)
    direction /= np.linalg.norm(direction)
    rows, probs, embs = [], [], []
    for pi in range(n_plates):
        plate = f"HPA{pi + 1:02d}"
        plate_offset = rng.normal(0, 0.3, d)
        ratio_offset = rng.normal(0, 0.1)
        w = 0
        for prot, b in base.items():
            layout = [("DMSO", None, "negcon")] * n_ctrl + [
                (c, dose, None) for c in ("vorinostat", "inert") for dose in DOSES for _ in range(wells_per_dose)]
            for pert, dose, ctype in layout:
                f = 0.0
                if prot == "HDAC8" and pert == "vorinostat":
                    f = float(logistic4(np.log10(dose), 0.0, 0.6, np.log10(0.5), 1.5))
                p = np.full(k, 0.01)
                for c, v in b.items():
                    p[c] = v
                moved = f * p[NUC]
                p[NUC] -= moved
                p[CYT] += moved
                probs.append(np.clip(p + rng.normal(0, 0.03, k), 0, 1))
                embs.append(mu[prot] + plate_offset + rng.normal(0, 1, d) + 10 * f * direction)
                rows.append({"Metadata_Plate": plate, "Metadata_Well": f"W{w:03d}", "Metadata_perturbation_id": pert,
                             "Metadata_control_type": ctype, "Metadata_protein": prot,
                             "Metadata_concentration": dose,
                             RATIO: 3.0 * (1 - 0.7 * f) + ratio_offset + rng.normal(0, 0.15)})
                w += 1
    return pl.DataFrame(rows), np.asarray(probs), np.asarray(embs)


@pytest.fixture(scope="module")
def screen():
    return make_hpa_screen()


def test_hdac8_vorinostat_relocalization_found_with_direction(screen):
    wells, probs, embs = screen
    res = relocalization(wells, probabilities=probs, embeddings=embs, ratio_col=RATIO)
    t = res.table
    assert t.height == 4 * 3  # 2 proteins x 2 perturbations x 3 readouts
    assert set(t["model"]) <= {"mixedlm", "ols_plate_fe"}
    hit = t.filter((pl.col("protein") == "HDAC8") & (pl.col("perturbation_id") == "vorinostat"))
    assert hit.height == 3 and (hit["q_value"] < 0.05).all()
    assert (hit["from_class"] == "Nucleoplasm").all() and (hit["to_class"] == "Cytosol").all()
    by = {r["readout"]: r for r in hit.iter_rows(named=True)}
    assert by["nuc_cyto_ratio"]["effect_size"] < -0.3  # the protein left the nucleus
    assert by["probabilities"]["delta_from"] < -0.15 and by["probabilities"]["delta_to"] > 0.15
    assert by["embedding"]["effect_size"] > 1
    others = t.filter(~((pl.col("protein") == "HDAC8") & (pl.col("perturbation_id") == "vorinostat")))
    assert (others["q_value"] >= 0.05).all()
    assert (t["n_negcon"] == 24).all() and (t["n_treated"] == 24).all() and (t["n_plates"] == 3).all()
    # per-class shifts: the two planted classes, and only those, move significantly
    cs = res.class_shifts
    assert cs.height == 4 * 31
    sig = cs.filter(pl.col("q_value") < 0.05)
    assert sorted(sig["class"].to_list()) == ["Cytosol", "Nucleoplasm"]
    assert (sig["protein"] == "HDAC8").all() and (sig["perturbation_id"] == "vorinostat").all()


def test_dose_dependent_relocalization_single_plate(screen):
    wells, probs, embs = make_hpa_screen(seed=1, n_plates=1, wells_per_dose=4)
    keep = (wells["Metadata_protein"] == "HDAC8").to_numpy()
    res = relocalization(wells.filter(pl.Series(keep)), probabilities=probs[keep], ratio_col=RATIO,
                         per_concentration=True)
    t = res.table.filter(pl.col("perturbation_id") == "vorinostat").sort("concentration")
    assert set(res.table["model"]) == {"ols"}  # one plate: fixed-effect OLS
    prob = t.filter(pl.col("readout") == "probabilities")
    ratio = t.filter(pl.col("readout") == "nuc_cyto_ratio")
    assert prob["concentration"].to_list() == list(DOSES)
    shift = prob["effect_size"].to_numpy()
    drop = ratio["effect_size"].to_numpy()
    assert shift[-1] > shift[1] > shift[0] and drop[-1] < drop[1] < 0  # grows with dose
    assert (prob.filter(pl.col("concentration") >= 0.3)["q_value"] < 0.05).all()
    assert (prob.filter(pl.col("concentration") >= 0.3)["to_class"] == "Cytosol").all()
    inert = res.table.filter(pl.col("perturbation_id") == "inert")
    assert (inert["q_value"] < 0.05).sum() <= 1  # 8 null tests next to 8 real ones (calibration: next test)


def test_null_pvalues_are_calibrated():
    """Under no effect (TP53, one plate, OLS path) p-values are uniform: <= 5% + noise below 0.05."""
    pvals: dict[str, list[float]] = {}
    for seed in range(12):
        wells, probs, embs = make_hpa_screen(seed=100 + seed, n_plates=1, wells_per_dose=4)
        keep = (wells["Metadata_protein"] == "TP53").to_numpy()
        res = relocalization(wells.filter(pl.Series(keep)), probabilities=probs[keep], embeddings=embs[keep],
                             ratio_col=RATIO, per_concentration=True)
        for row in res.table.iter_rows(named=True):
            pvals.setdefault(row["readout"], []).append(row["p_value"])
    for readout, v in pvals.items():
        v = np.asarray(v)
        assert len(v) == 96
        assert (v < 0.05).mean() <= 0.1, readout  # nominal 0.05; binomial sd 0.022 at n = 96
        assert 0.3 < np.median(v) < 0.7, readout


def test_models_agree_with_statsmodels_and_scipy():
    import statsmodels.formula.api as smf
    from scipy import stats

    rng = np.random.default_rng(2)
    plates = np.repeat(["a", "b", "c", "d"], 12)
    tr = np.tile(np.r_[np.ones(4), np.zeros(8)], 4)
    y = rng.normal(0, 0.5, 4)[np.searchsorted(["a", "b", "c", "d"], plates)] + 0.8 * tr + rng.normal(0, 1, 48)
    coef, se, p, model = _test_treatment(y, tr, plates)
    import pandas as pd

    ref = smf.mixedlm("y ~ tr", pd.DataFrame({"y": y, "tr": tr, "plate": plates}), groups="plate").fit(reml=True)
    assert model == "mixedlm"
    assert coef == pytest.approx(ref.fe_params["tr"], rel=1e-6) and se == pytest.approx(ref.bse_fe["tr"], rel=1e-4)
    assert p == pytest.approx(2 * stats.t.sf(abs(coef / se), 48 - 1 - 4))
    one = plates == "a"
    c1, _, p1, m1 = _test_treatment(y[one], tr[one], plates[one])
    tt = stats.ttest_ind(y[one][tr[one] == 1], y[one][tr[one] == 0])
    assert m1 == "ols" and c1 == pytest.approx(y[one][tr[one] == 1].mean() - y[one][tr[one] == 0].mean())
    assert p1 == pytest.approx(tt.pvalue)


def test_class_names_are_subcells():
    from subcell_screen.score._reloc import _CLASSES_FALLBACK

    assert len(LOCALIZATION_CLASSES) == 31 and LOCALIZATION_CLASSES == _CLASSES_FALLBACK
    assert (LOCALIZATION_CLASSES[7], LOCALIZATION_CLASSES[26], LOCALIZATION_CLASSES[30]) == (
        "Cytosol", "Nucleoplasm", "Negative")


def test_inputs_validated(screen):
    wells, probs, _ = screen
    with pytest.raises(ValueError, match="at least one readout"):
        relocalization(wells)
    with pytest.raises(ValueError, match="31"):
        relocalization(wells, probabilities=probs[:, :30])
    # probability columns by name work the same as the array
    named = wells.with_columns([pl.Series(f"prob{i:02d}", probs[:, i]) for i in range(31)])
    a = relocalization(named, probabilities=[f"prob{i:02d}" for i in range(31)]).class_shifts
    b = relocalization(wells, probabilities=probs).class_shifts
    assert a.equals(b)
