"""Tests for subcell_screen.profiles normalisation: pycytominer 1.7.1 agreement (its per-plate loop), whitening,
inverse normal transforms, degenerate input."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pycytominer as pyc
import pytest
from scipy import stats

from subcell_screen import normalize
from subcell_screen.profiles import NEGCON, fit_spherize
from subcell_screen.simulate import simulate_well_profiles

DMSO = pl.col("Metadata_broad_sample") == "DMSO"
DMSO_QUERY = "Metadata_broad_sample == 'DMSO'"


LINCS = Path(__file__).parent / "data" / "lincs" / "SQ00015054_normalized_feature_select.csv.gz"


@pytest.fixture(scope="module")
def lincs() -> pd.DataFrame:
    return pd.read_csv(LINCS)


def _features(df) -> list[str]:
    return [c for c in df.columns if not c.startswith("Metadata_")]


@pytest.fixture(scope="module")
def lincs_plates(lincs) -> pd.DataFrame:
    """Three raw-looking plates: the LINCS plate + small noise, de-normalised by known per-feature affine maps
    (positive scales 0.5..50, offsets -100..1000) that differ per plate; rows shuffled within each plate."""
    rng = np.random.default_rng(7)
    feats = _features(lincs)
    x = lincs[feats].to_numpy()
    plates = []
    for k in range(3):
        scale = rng.uniform(0.5, 50, len(feats))
        offset = rng.uniform(-100, 1000, len(feats))
        p = lincs.copy()
        p[feats] = (x + rng.normal(0, 0.05, x.shape)) * scale + offset
        p["Metadata_Plate"] = f"SQ00015054_{k}"
        plates.append(p.sample(frac=1.0, random_state=k))
    out = pd.concat([plates[1], plates[0], plates[2]], ignore_index=True)  # plates not in sorted order
    return out


def _pycytominer_per_plate(df: pd.DataFrame, *, samples: str, features=None, **kw) -> pd.DataFrame:
    """pycytominer's documented per-plate usage: one normalize() call per plate, concatenated in row order."""
    feats = features or _features(df)
    meta = [c for c in df.columns if c.startswith("Metadata_")]
    parts = [pyc.normalize(g, features=feats, meta_features=meta, samples=samples, **kw)
             for _, g in df.groupby("Metadata_Plate", sort=False)]
    return pd.concat(parts).loc[df.index]


@pytest.mark.parametrize(("method", "controls"), [("standardize", "dmso"), ("robustize", "dmso"),
                                                   ("mad_robustize", "dmso"), ("mad_robustize", "all")])
def test_matches_pycytominer_per_plate(lincs_plates, method, controls):
    df = lincs_plates
    feats = _features(df)
    ref = _pycytominer_per_plate(df, samples=DMSO_QUERY if controls == "dmso" else "all", method=method)
    ctrl = DMSO if controls == "dmso" else None
    ours_pd = normalize(df, method=method, controls=ctrl)
    ours_pl = normalize(pl.from_pandas(df), method=method, controls=ctrl)
    r = ref[feats].to_numpy()
    assert np.abs(ours_pd[feats].to_numpy() - r).max() < 1e-6
    assert np.abs(ours_pl.select(feats).to_numpy() - r).max() < 1e-6
    # relative agreement is near machine precision (measured ~1e-15)
    assert np.abs(ours_pd[feats].to_numpy() - r).max() / np.abs(r).max() < 1e-12
    # the affine de-normalisation is undone: every plate's controls come back to the same scale
    if method == "standardize":
        z = ours_pl.filter(DMSO if ctrl is not None else pl.lit(True))
        sd = z.group_by("Metadata_Plate").agg(pl.col(feats[:20]).std(ddof=0)).drop("Metadata_Plate").to_numpy()
        assert np.allclose(sd, 1.0, atol=1e-9)


def test_simulated_multiplate_matches_pycytominer():
    sim = simulate_well_profiles(n_plates=3, n_features=24, seed=2)
    df = sim.profiles.to_pandas()
    ref = _pycytominer_per_plate(df, samples="Metadata_control_type == 'negcon'", method="mad_robustize",
                                 features=sim.feature_names)
    ours = normalize(sim.profiles, method="mad_robustize", controls=NEGCON, features=sim.feature_names)
    assert np.abs(ours.select(sim.feature_names).to_numpy() - ref[sim.feature_names].to_numpy()).max() < 1e-9
    # per-plate negcon medians are exactly 0 afterwards
    med = ours.filter(NEGCON).group_by("Metadata_Plate").agg(pl.col(sim.feature_names).median())
    assert np.abs(med.drop("Metadata_Plate").to_numpy()).max() < 1e-12


def test_mad_unscaled_is_the_jump_recipe_formula(lincs_plates):
    df = pl.from_pandas(lincs_plates)
    feats = _features(lincs_plates)
    ours = normalize(df, method="mad_robustize", controls=DMSO, mad_scale="unscaled", epsilon=0.0)
    scaled = normalize(df, method="mad_robustize", controls=DMSO, epsilon=0.0)
    for plate in df["Metadata_Plate"].unique():
        p = df.filter(pl.col("Metadata_Plate") == plate)
        c = p.filter(DMSO).select(feats).to_numpy()
        med = np.median(c, axis=0)
        mad = stats.median_abs_deviation(c, axis=0)  # scale=1: unscaled, as the JUMP recipe
        expected = (p.select(feats).to_numpy() - med) / mad
        got = ours.filter(pl.col("Metadata_Plate") == plate).select(feats).to_numpy()
        assert np.allclose(got, expected, rtol=1e-12, atol=1e-12)
    ratio = ours.select(feats).to_numpy() / scaled.select(feats).to_numpy()
    finite = np.isfinite(ratio) & (np.abs(scaled.select(feats).to_numpy()) > 1e-9)
    assert np.allclose(ratio[finite], 1.4826)


def test_frame_is_preserved_and_input_untouched(lincs_plates):
    df = lincs_plates.copy()
    df.index = np.arange(len(df))[::-1] * 3  # a non-default index survives
    before = df.copy()
    out = normalize(df, method="standardize", controls=DMSO)
    assert list(out.columns) == list(df.columns) and out.index.equals(df.index)
    meta = [c for c in df.columns if c.startswith("Metadata_")]
    pd.testing.assert_frame_equal(out[meta], df[meta])
    pd.testing.assert_frame_equal(df, before)
    pdf = pl.from_pandas(lincs_plates).with_columns(pl.col("Cells_AreaShape_Compactness").cast(pl.Float32))
    pout = normalize(pdf, method="robustize", features=["Cells_AreaShape_Compactness", "Cells_AreaShape_FormFactor"])
    assert pout.columns == pdf.columns and pout.height == pdf.height
    assert pout.schema["Cells_AreaShape_Compactness"] == pl.Float64
    assert pout["Cells_AreaShape_Zernike_0_0"].equals(pdf["Cells_AreaShape_Zernike_0_0"])  # not selected


def _whitening_data(seed=0, n=600, d=24):
    """Controls with large offsets, scales 1e-2..1e2 and correlated features, on two plates."""
    rng = np.random.default_rng(seed)
    rows = []
    for plate in ("P1", "P2"):
        a = rng.normal(size=(d, d)) / np.sqrt(d) + np.eye(d)
        x = rng.normal(size=(n, d)) @ a
        x = x * np.logspace(-2, 2, d) + rng.uniform(1e3, 1e4, d)
        ctrl = np.arange(n) < n - 100
        rows.append(pd.DataFrame(x, columns=[f"Cells_f{i:02d}" for i in range(d)]).assign(
            Metadata_Plate=plate, Metadata_control_type=np.where(ctrl, "negcon", "trt")))
    return pd.concat(rows, ignore_index=True)


@pytest.mark.parametrize("sph", ["ZCA", "ZCA-cor", "PCA", "PCA-cor"])
def test_spherize_whitens_controls(sph):
    df = _whitening_data()
    feats = _features(df)
    out = normalize(pl.from_pandas(df), method="spherize", spherize_method=sph, controls=NEGCON, epsilon=0.0)
    cols = [c for c in out.columns if not c.startswith("Metadata_")]
    assert cols == (feats if sph.startswith("ZCA") else [f"PC{i + 1}" for i in range(len(feats))])
    for plate in ("P1", "P2"):
        y = out.filter((pl.col("Metadata_Plate") == plate) & NEGCON).select(cols).to_numpy()
        assert np.abs(y.mean(axis=0)).max() < 1e-9
        assert np.abs(np.cov(y, rowvar=False) - np.eye(len(cols))).max() < 1e-9  # tolerance: 1e-9 at eps=0
    # default epsilon 1e-6 (added to singular values): identity up to ~2 eps/s_min
    dflt = normalize(pl.from_pandas(df), method="spherize", spherize_method=sph, controls=NEGCON)
    y = dflt.filter((pl.col("Metadata_Plate") == "P1") & NEGCON).select(cols).to_numpy()
    assert np.abs(np.cov(y, rowvar=False) - np.eye(len(cols))).max() < 1e-4
    # and agrees with pycytominer 1.7.1's (fixed) Spherize fitted on the same controls
    p1 = df[df.Metadata_Plate == "P1"]
    sp = pyc.operations.Spherize(method=sph, epsilon=1e-6, return_numpy=True).fit(
        p1.loc[p1.Metadata_control_type == "negcon", feats])
    ref = sp.transform(p1[feats])
    got = dflt.filter(pl.col("Metadata_Plate") == "P1").select(cols).to_numpy()
    assert np.abs(got - ref).max() < 1e-6 * np.abs(ref).max()


@pytest.mark.parametrize("sph", ["ZCA", "PCA"])
def test_spherize_epsilon_shrinkage_is_exact(sph):
    """With epsilon > 0 the control covariance is V diag((s/(s+eps))^2) V^T (ZCA) or the diagonal (PCA)."""
    df = _whitening_data(seed=3, d=10)
    feats = _features(df)
    ctrl = df[(df.Metadata_Plate == "P1") & (df.Metadata_control_type == "negcon")][feats].to_numpy()
    eps = 5.0
    fit = fit_spherize(ctrl, method=sph, epsilon=eps)
    _, s, vt = np.linalg.svd(ctrl - ctrl.mean(axis=0), full_matrices=False)
    shrink = np.diag((s / (s + eps)) ** 2)
    expected = vt.T @ shrink @ vt if sph == "ZCA" else shrink
    assert np.abs(np.cov(fit.transform(ctrl), rowvar=False) - expected).max() < 1e-10
    if sph == "ZCA":  # ZCA's W = V diag(.) V^T is symmetric
        w = fit.transform(np.eye(len(feats)) + fit.mean) - fit.transform(fit.mean[None, :])
        assert np.abs(w - w.T).max() < 1e-10


def test_whitening_test_catches_the_pycytominer_centring_bug():
    """pycytominer 1.1-1.6 ran the SVD on the raw controls; on offset data that is not white — our test
    criterion detects it (so the whitening tests above are not vacuous)."""
    df = _whitening_data()
    ctrl = df[(df.Metadata_Plate == "P1") & (df.Metadata_control_type == "negcon")][_features(df)].to_numpy()
    n = ctrl.shape[0]
    _, s, vt = np.linalg.svd(ctrl, full_matrices=True)  # the bug: raw, not centred
    w = (vt / (s + 1e-6)[:, None]).T * np.sqrt(n - 1) @ vt
    buggy = (ctrl - ctrl.mean(axis=0)) @ w
    assert np.abs(np.cov(buggy, rowvar=False) - np.eye(ctrl.shape[1])).max() > 0.1


def test_spherize_per_plate_few_controls_matches_pycytominer(lincs_plates):
    """24 DMSO wells < 200 features: pycytominer fills the missing singular values; ours reproduces it."""
    feats = _features(lincs_plates)[:200]
    df = lincs_plates[[c for c in lincs_plates.columns if c.startswith("Metadata_")] + feats]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _pycytominer_per_plate(df, samples=DMSO_QUERY, method="spherize", spherize_method="ZCA-cor")
    ours = normalize(df, method="spherize", spherize_method="ZCA-cor", controls=DMSO)
    r = ref[feats].to_numpy()
    assert np.abs(ours[feats].to_numpy() - r).max() < 1e-6 * np.abs(r).max()


def _jump_rank_int(a: np.ndarray, c: float = 3.0 / 8, seed: int = 0) -> np.ndarray:
    """The JUMP recipe's rank_int_array (stochastic ties), restated."""
    rng = np.random.default_rng(seed=seed)
    ix = rng.permutation(len(a))
    rev = np.argsort(ix)
    rank = stats.rankdata(a[ix], method="ordinal")[rev]
    return stats.norm.ppf((rank - c) / (len(rank) - 2 * c + 1))


def test_rank_inverse_normal_matches_jump_recipe(lincs):
    feats = _features(lincs)
    out = normalize(lincs, method="rank_inverse_normal", plate_col=None)
    x = lincs[feats].to_numpy()
    expected = np.column_stack([_jump_rank_int(x[:, j]) for j in range(x.shape[1])])
    assert np.abs(out[feats].to_numpy() - expected).max() < 1e-12
    avg = normalize(lincs, method="rank_inverse_normal", plate_col=None, ties="average")
    ranks = stats.rankdata(x[:, 0], method="average")
    assert np.allclose(avg[feats[0]], stats.norm.ppf((ranks - 0.375) / (len(ranks) + 0.25)))


def test_inverse_normal_matches_pycytominer_quantile_variant(lincs_plates):
    feats = _features(lincs_plates)[:60]
    df = lincs_plates[[c for c in lincs_plates.columns if c.startswith("Metadata_")] + feats]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _pycytominer_per_plate(df, samples=DMSO_QUERY, method="inverse_normal")
    ours = normalize(df, method="inverse_normal", controls=DMSO)
    assert np.abs(ours[feats].to_numpy() - ref[feats].to_numpy()).max() < 1e-9


# -- degenerate input ---------------------------------------------------------------------------------------


def _small():
    return pl.DataFrame({
        "Metadata_Plate": ["A"] * 4 + ["B"] * 4,
        "Metadata_control_type": ["negcon", "negcon", None, None] * 2,
        "Cells_f1": [1.0, 3.0, 5.0, 7.0, 2.0, 4.0, 8.0, 9.0],
        "Cells_f2": [2.0, 2.0, 5.0, 1.0, 1.0, 3.0, 3.0, 3.0],  # constant in plate A's controls
    })


def test_plate_without_controls_is_named():
    df = _small().with_columns(pl.when(pl.col("Metadata_Plate") == "B").then(None)
                               .otherwise(pl.col("Metadata_control_type")).alias("Metadata_control_type"))
    with pytest.raises(ValueError, match=r"no control rows in 1 group.*Metadata_Plate='B'"):
        normalize(df, method="standardize", controls=NEGCON)


def test_all_missing_feature_is_named():
    df = _small().with_columns(pl.when(pl.col("Metadata_Plate") == "A").then(None).otherwise(pl.col("Cells_f1"))
                               .alias("Cells_f1"))
    with pytest.raises(ValueError, match=r"Metadata_Plate='A': 'Cells_f1'"):
        normalize(df, method="mad_robustize", controls=NEGCON)
    nan = _small().with_columns(pl.lit(float("nan")).alias("Cells_f2"))
    with pytest.raises(ValueError, match=r"no non-missing control value.*'Cells_f2'"):
        normalize(nan, method="standardize", controls=NEGCON)


def test_zero_variance_controls_warn_or_raise(caplog):
    df = _small()
    with caplog.at_level(logging.WARNING, logger="subcell_screen.profiles._normalize"):
        out = normalize(df, method="standardize", controls=NEGCON)
    assert "Metadata_Plate='A': 'Cells_f2'" in caplog.text
    # pycytominer/sklearn handling: scale 1, centred only; never NaN
    assert out.filter(pl.col("Metadata_Plate") == "A")["Cells_f2"].to_list() == [0.0, 0.0, 3.0, -1.0]
    ref = _pycytominer_per_plate(df.to_pandas(), samples="Metadata_control_type == 'negcon'",
                                 method="standardize")
    assert np.allclose(out.select("Cells_f1", "Cells_f2").to_numpy(), ref[["Cells_f1", "Cells_f2"]].to_numpy())
    with pytest.raises(ValueError, match=r"zero scale.*Metadata_Plate='A': 'Cells_f2'"):
        normalize(df, method="robustize", controls=NEGCON, on_zero_scale="error")
    with pytest.raises(ValueError, match=r"MAD 0.*epsilon is 0.*'Cells_f2'"):
        normalize(df, method="mad_robustize", controls=NEGCON, epsilon=0.0)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        big = normalize(df, method="mad_robustize", controls=NEGCON)  # epsilon 1e-18 as pycytominer
    assert "epsilon=1e-18" in caplog.text
    assert np.isfinite(big["Cells_f2"].to_numpy()).all() and big["Cells_f2"].abs().max() > 1e17
    with pytest.raises(ValueError, match=r"zero variance in the controls of Metadata_Plate='A'.*'Cells_f2'"):
        normalize(df, method="spherize", spherize_method="ZCA-cor", controls=NEGCON)


def test_missing_values_stay_missing_and_bad_arguments():
    df = _small().with_columns(pl.when(pl.int_range(pl.len()) == 6).then(None).otherwise(pl.col("Cells_f1"))
                               .alias("Cells_f1"))
    out = normalize(df, method="standardize", controls=NEGCON)
    assert out["Cells_f1"].null_count() == 1 and out["Cells_f1"][6] is None
    assert out["Cells_f2"].null_count() == 0
    with pytest.raises(ValueError, match="method must be one of"):
        normalize(df, method="zscore")
    with pytest.raises(ValueError, match="controls expression refers to columns not in the table: .Metadata_nope."):
        normalize(df, method="standardize", controls=pl.col("Metadata_nope") == 1)
    with pytest.raises(ValueError, match="'Metadata_Plate' holds text that is not a number: 'A'"):
        normalize(df, features=["Metadata_Plate"])


@pytest.mark.parametrize("n_features", [1536, pytest.param(4608, marks=pytest.mark.slow)])
def test_embedding_widths_match_pycytominer(n_features):
    """SubCell-sized feature sets (1536-d single model, 4608-d = 3 channel passes), float32 inputs."""
    sim = simulate_well_profiles(n_plates=2, n_features=n_features, n_active=8, n_null=8, n_dose_compounds=1,
                                 seed=4)
    feats = sim.feature_names
    prof = sim.profiles.with_columns(pl.col(feats).cast(pl.Float32))
    ours = normalize(prof, method="mad_robustize", controls=NEGCON, features=feats)
    # pycytominer computes in float32 for float32 input; we compute in float64: compare on the same values
    ref = _pycytominer_per_plate(prof.to_pandas().astype(dict.fromkeys(feats, np.float64)),
                                 samples="Metadata_control_type == 'negcon'", method="mad_robustize",
                                 features=feats)
    assert ours.schema[feats[0]] == pl.Float64
    assert np.abs(ours.select(feats).to_numpy() - ref[feats].to_numpy()).max() < 1e-6
