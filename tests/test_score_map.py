"""Tests for subcell_screen.score AP/mAP: agreement with copairs 0.5 (the reference), on the real LINCS plate and
on simulated and adversarial (tie-heavy) plates.

What is asserted
----------------
* AP / normalized AP within 1e-12 of copairs (observed ~2e-16: only the order of float64 additions differs);
  ``n_pos_pairs`` / ``n_total_pairs`` identical; same NaN pattern; same columns, dtypes (pandas) and index.
* mAP within 1e-12 and p-values **equal** (bit for bit) to copairs' with the same seed and an empty cache:
  copairs' null draws are reproduced exactly (not a Monte-Carlo-error comparison).
* BH q-values equal statsmodels' ``multipletests(fdr_bh)`` and a hand-computed known case.
"""

from __future__ import annotations

import tempfile
import warnings

import copairs.map as copairs_map
import numpy as np
import pandas as pd
import polars as pl
import pytest
from copairs import compute as cp_compute  # noqa: E402
from copairs.matching import assign_reference_index as cp_assign_reference_index  # noqa: E402

from subcell_screen.score import (  # noqa: E402
    UnpairedException,
    assign_reference_index,
    average_precision,
    fraction_retrieved,
    mean_average_precision,
    multilabel_average_precision,
    phenotypic_activity,
)
from subcell_screen.score._null import NullCache, kahan_group_mean, random_ap  # noqa: E402

ACTIVITY = dict(pos_sameby=["Metadata_broad_sample", "Metadata_Reference_Index"], pos_diffby=[], neg_sameby=[],
                neg_diffby=["Metadata_broad_sample", "Metadata_Reference_Index"])


def _cp_map(ap, **kw):
    return copairs_map.mean_average_precision(ap, progress_bar=False, cache_dir=tempfile.mkdtemp(), **kw)


@pytest.fixture(scope="module")
def lincs(request):
    path = request.config.rootpath / "tests" / "data" / "lincs" / "SQ00015054_normalized_feature_select.csv.gz"
    df = pd.read_csv(path)
    feat_cols = [c for c in df.columns if not c.startswith("Metadata")]
    df = cp_assign_reference_index(df, "Metadata_broad_sample == 'DMSO'")
    meta = df[[c for c in df.columns if c.startswith("Metadata")]]
    return meta, df[feat_cols].to_numpy()


@pytest.fixture(scope="module")
def lincs_activity(lincs):
    meta, x = lincs
    ref = copairs_map.average_precision(meta, x, **ACTIVITY, progress_bar=False)
    ours = average_precision(meta, x, **ACTIVITY)
    return ref, ours


def test_lincs_fixture_shape(lincs):
    meta, x = lincs
    assert x.shape == (384, 454)
    assert (meta["Metadata_broad_sample"] == "DMSO").sum() == 24


def test_lincs_activity_ap_matches_copairs(lincs_activity):
    ref, ours = lincs_activity
    assert list(ours.columns) == list(ref.columns)
    assert (ours.dtypes == ref.dtypes).all()
    assert ours.index.equals(ref.index)
    np.testing.assert_array_equal(ours["n_pos_pairs"], ref["n_pos_pairs"])
    np.testing.assert_array_equal(ours["n_total_pairs"], ref["n_total_pairs"])
    for col in ("average_precision", "normalized_average_precision"):
        a, b = ours[col].to_numpy(), ref[col].to_numpy()
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        assert np.nanmax(np.abs(a - b)) < 1e-12
    # DMSO rows: no positives, 59 * 6 = 354 + 6 extra compound wells as negatives, AP NaN (copairs' convention)
    dmso = ours[ours["Metadata_broad_sample"] == "DMSO"]
    assert dmso["average_precision"].isna().all() and (dmso["n_pos_pairs"] == 0).all()
    assert (dmso["n_total_pairs"] == 360).all()


def test_lincs_activity_map_and_pvalues_equal_copairs(lincs_activity):
    ref, ours = lincs_activity
    kw = dict(sameby=["Metadata_broad_sample"], null_size=10000, threshold=0.05, seed=0)
    m_ref = _cp_map(ref[ref["Metadata_broad_sample"] != "DMSO"], **kw)
    m = mean_average_precision(ours[ours["Metadata_broad_sample"] != "DMSO"], **kw)
    assert list(m.columns) == list(m_ref.columns)
    assert len(m) == 58  # 360 compound wells: 56 samples x 6 doses + 2 samples x 12 wells
    assert np.abs(m["mean_average_precision"] - m_ref["mean_average_precision"]).max() < 1e-12
    np.testing.assert_array_equal(m["p_value"].to_numpy(), m_ref["p_value"].to_numpy())  # exactly equal
    np.testing.assert_array_equal(m["corrected_p_value"].to_numpy(), m_ref["corrected_p_value"].to_numpy())
    np.testing.assert_array_equal(m["below_corrected_p"].to_numpy(), m_ref["below_corrected_p"].to_numpy())
    assert [list(v) for v in m["indices"]] == [list(v) for v in m_ref["indices"]]
    # the plate has many active compounds (copairs' example reports about half at this threshold)
    assert 0.3 < fraction_retrieved(m) < 0.8
    # a different seed gives different draws (the seed is really used)
    m2 = mean_average_precision(ours[ours["Metadata_broad_sample"] != "DMSO"], **{**kw, "seed": 1})
    assert not np.array_equal(m2["p_value"].to_numpy(), m["p_value"].to_numpy())


def test_lincs_activity_preset_and_polars(lincs, lincs_activity):
    meta, x = lincs
    ref, _ = lincs_activity
    pm = pl.from_pandas(meta.drop(columns=["Metadata_Reference_Index"]))
    res = phenotypic_activity(pm, x, pert_col="Metadata_broad_sample", controls={"Metadata_broad_sample": "DMSO"},
                              null_size=10000, seed=0)
    assert isinstance(res.ap, pl.DataFrame) and isinstance(res.map, pl.DataFrame)
    ref_nd = ref[ref["Metadata_broad_sample"] != "DMSO"]
    assert np.nanmax(np.abs(res.ap["average_precision"].to_numpy() - ref_nd["average_precision"].to_numpy())) < 1e-12
    m_ref = _cp_map(ref_nd, sameby=["Metadata_broad_sample"], null_size=10000, threshold=0.05, seed=0)
    np.testing.assert_array_equal(res.map["p_value"].to_numpy(), m_ref["p_value"].to_numpy())
    assert res.fraction_retrieved == pytest.approx(m_ref["below_corrected_p"].mean())


def test_lincs_multilabel_targets_match_copairs(lincs):
    meta, x = lincs
    keep = (meta["Metadata_broad_sample"] != "DMSO").to_numpy() & meta["Metadata_target"].notna().to_numpy()
    m = meta.loc[keep, ["Metadata_broad_sample", "Metadata_target", "Metadata_mmoles_per_liter"]].reset_index(drop=True)
    m["Metadata_target"] = m["Metadata_target"].str.split("|")
    kw = dict(pos_sameby=["Metadata_target"], pos_diffby=["Metadata_broad_sample"], neg_sameby=[],
              neg_diffby=["Metadata_target"], multilabel_col="Metadata_target")
    ref = copairs_map.multilabel.average_precision(m, x[keep], **kw, progress_bar=False)
    ours = multilabel_average_precision(m, x[keep], **kw)
    assert list(ours.columns) == list(ref.columns) and (ours.dtypes == ref.dtypes).all()
    assert ours.index.equals(ref.index) and len(ours) == len(ref) > 0
    for col in ("Metadata_broad_sample", "Metadata_target", "n_pos_pairs", "n_total_pairs"):
        np.testing.assert_array_equal(ours[col].to_numpy(), ref[col].to_numpy())
    assert np.nanmax(np.abs(ours["average_precision"].to_numpy() - ref["average_precision"].to_numpy())) < 1e-12
    mk = dict(sameby=["Metadata_target"], null_size=2000, threshold=0.05, seed=3)
    np.testing.assert_array_equal(mean_average_precision(ours, **mk)["p_value"].to_numpy(),
                                  _cp_map(ref, **mk)["p_value"].to_numpy())
    # polars in, polars out, same numbers
    pm = pl.from_pandas(m.assign(Metadata_target=m["Metadata_target"].map(list)))
    op = multilabel_average_precision(pm, x[keep], **kw)
    assert isinstance(op, pl.DataFrame)
    np.testing.assert_allclose(op["average_precision"].to_numpy(), ref["average_precision"].to_numpy(), atol=1e-12)


def _adversarial_plate(seed: int, n: int = 96):
    rng = np.random.default_rng(seed)
    meta = pd.DataFrame({"pert": rng.integers(0, 12, n).astype(str), "plate": rng.integers(0, 3, n),
                         "well": rng.integers(0, 4, n), "flag": rng.integers(0, 2, n)})
    x = rng.integers(-2, 3, (n, 5)).astype(float)  # small integers: many exactly tied similarities
    x[np.linalg.norm(x, axis=1) == 0] = 1.0
    x[5] = x[6]  # duplicated profiles
    return meta, x


DESIGNS = [
    dict(pos_sameby=["pert"], pos_diffby=[], neg_sameby=[], neg_diffby=["pert"]),
    dict(pos_sameby=["pert"], pos_diffby=["plate"], neg_sameby=["plate"], neg_diffby=["pert"]),
    dict(pos_sameby=["pert", "flag"], pos_diffby=["well"], neg_sameby=[], neg_diffby=["pert", "plate"]),
    dict(pos_sameby=["pert"], pos_diffby=[], neg_sameby=["well"], neg_diffby=[]),  # pairs both pos and neg
    dict(pos_sameby=[], pos_diffby=["plate"], neg_sameby=["plate"], neg_diffby=["pert"]),
    dict(pos_sameby=["flag"], pos_diffby=[], neg_sameby=[], neg_diffby=["flag"]),  # ~80 positives per query
]


@pytest.mark.parametrize(("design", "distance"), [(0, "cosine"), (1, "correlation"), (2, "euclidean"),
                                                  (3, "chebyshev"), (4, "cosine"), (2, "cosine"),
                                                  (5, "cosine")])
def test_adversarial_designs_match_copairs(design, distance):
    meta, x = _adversarial_plate(design, n=96 if design < 5 else 160)
    kw = DESIGNS[design]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = copairs_map.average_precision(meta, x, **kw, distance=distance, progress_bar=False)
    ours = average_precision(meta, x, **kw, distance=distance, batch_size=7)  # many small blocks
    np.testing.assert_array_equal(ours["n_pos_pairs"], ref["n_pos_pairs"])
    np.testing.assert_array_equal(ours["n_total_pairs"], ref["n_total_pairs"])
    a, b = ours["average_precision"].to_numpy(), ref["average_precision"].to_numpy()
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    assert np.nanmax(np.abs(a - b)) < 1e-12
    mk = dict(sameby=["pert"], null_size=1000, threshold=0.05, seed=7)
    m, m_ref = mean_average_precision(ours, **mk), _cp_map(ref, **mk)
    assert np.abs(m["mean_average_precision"] - m_ref["mean_average_precision"]).max() < 1e-12
    np.testing.assert_array_equal(m["p_value"].to_numpy(), m_ref["p_value"].to_numpy())


def test_simulated_plates_match_copairs():
    from subcell_screen.simulate import simulate_well_profiles

    sim = simulate_well_profiles(n_plates=3, n_features=24, n_active=12, n_null=12, n_dose_compounds=0, seed=5)
    p = sim.profiles.with_columns(pl.col("Metadata_control_type").fill_null("trt"))
    x = p.select(sim.feature_names).to_numpy()
    kw = dict(pos_sameby=["Metadata_perturbation_id"], pos_diffby=["Metadata_Plate"], neg_sameby=["Metadata_Plate"],
              neg_diffby=["Metadata_perturbation_id"])
    ref = copairs_map.average_precision(p.to_pandas(), x, **kw, progress_bar=False)
    ours = average_precision(p, x, **kw)
    assert isinstance(ours, pl.DataFrame) and ours.columns == list(ref.columns)
    np.testing.assert_array_equal(ours["n_total_pairs"].to_numpy(), ref["n_total_pairs"].to_numpy())
    assert np.nanmax(np.abs(ours["average_precision"].to_numpy() - ref["average_precision"].to_numpy())) < 1e-12
    mk = dict(sameby=["Metadata_perturbation_id"], null_size=2000, threshold=0.05, seed=11)
    m = mean_average_precision(ours, **mk)
    m_ref = _cp_map(ref, **mk)
    np.testing.assert_array_equal(m["Metadata_perturbation_id"].to_numpy(), m_ref["Metadata_perturbation_id"].to_numpy())
    np.testing.assert_array_equal(m["p_value"].to_numpy(), m_ref["p_value"].to_numpy())


def test_null_draws_are_copairs_draws():
    # single configuration: bitwise equal to copairs.compute.random_ap (our version generates in row chunks)
    for num_pos, total, seed in [(1, 10, 3), (5, 29, 0), (7, 300, 8095)]:
        np.testing.assert_array_equal(random_ap(3000, num_pos, total, seed),
                                      cp_compute.random_ap(3000, num_pos, total, seed))
    confs = np.array([[1, 10], [3, 40], [3, 41], [6, 200]])
    ref = cp_compute.get_null_dists(confs, 500, 42, cache_dir=tempfile.mkdtemp(), progress_bar=False)
    cache = NullCache(confs, 500, 42)
    for i in range(len(confs)):
        np.testing.assert_array_equal(cache.get(i), ref[i])


def test_kahan_group_mean_matches_pandas():
    rng = np.random.default_rng(0)
    v = rng.random(5000) / 3
    g = rng.integers(0, 300, 5000)
    ref = pd.DataFrame({"g": g, "v": v}).groupby("g")["v"].mean().to_numpy()
    np.testing.assert_array_equal(kahan_group_mean(v, g, 300), ref)


def test_bh_against_statsmodels_and_known_case():
    from statsmodels.stats.multitest import multipletests

    ap = pl.DataFrame({"g": ["a", "a", "b", "b", "c", "c", "d", "d"],
                       "average_precision": [1.0, 1.0, 0.5, 0.2, 0.1, 0.3, 0.9, 0.7],
                       "n_pos_pairs": [1] * 8, "n_total_pairs": [12] * 8})
    m = mean_average_precision(ap, sameby="g", null_size=5000, threshold=0.05, seed=0)
    np.testing.assert_array_equal(m["corrected_p_value"].to_numpy(),
                                  multipletests(m["p_value"].to_numpy(), method="fdr_bh")[1])
    # the BH step-up on a hand-worked case, through the same call
    p = np.array([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(multipletests(p, method="fdr_bh")[1], [0.02, 0.04, 0.04, 0.02])
    assert m["below_corrected_p"].to_list() == (m["corrected_p_value"] < 0.05).to_list()


@pytest.mark.slow  # importing torch alone takes several seconds
def test_torch_backend_matches_numpy(lincs):
    torch = pytest.importorskip("torch")
    meta, x = lincs
    a = average_precision(meta, x, **ACTIVITY, backend="numpy")
    b = average_precision(meta, x, **ACTIVITY, backend="torch", device="cpu", batch_size=50)
    assert np.nanmax(np.abs(a["average_precision"].to_numpy() - b["average_precision"].to_numpy())) < 1e-12
    assert torch.get_default_dtype() == torch.float32  # we did not change global torch state


@pytest.mark.gpu
def test_cuda_backend_matches_copairs(lincs_activity, lincs):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    meta, x = lincs
    ref, _ = lincs_activity
    ours = average_precision(meta, x, **ACTIVITY, backend="auto")
    assert np.nanmax(np.abs(ours["average_precision"].to_numpy() - ref["average_precision"].to_numpy())) < 1e-12


def test_assign_reference_index_matches_copairs(lincs):
    meta, _ = lincs
    m = meta.drop(columns=["Metadata_Reference_Index"])
    ours = assign_reference_index(m, "Metadata_broad_sample == 'DMSO'")
    ref = cp_assign_reference_index(m, "Metadata_broad_sample == 'DMSO'")
    np.testing.assert_array_equal(ours["Metadata_Reference_Index"], ref["Metadata_Reference_Index"])
    pm = assign_reference_index(pl.from_pandas(m), pl.col("Metadata_broad_sample") == "DMSO")
    np.testing.assert_array_equal(pm["Metadata_Reference_Index"].to_numpy(), ref["Metadata_Reference_Index"])


def test_query_filters_filter_rows_and_pair_on_the_column():
    meta, x = _adversarial_plate(0)
    ours = average_precision(meta, x, pos_sameby=["pert", "plate != 2"], pos_diffby=[], neg_sameby=[],
                             neg_diffby=["pert"])
    keep = (meta["plate"] != 2).to_numpy()
    ref = copairs_map.average_precision(meta[keep], x[keep], pos_sameby=["pert", "plate"], pos_diffby=[],
                                        neg_sameby=[], neg_diffby=["pert"], progress_bar=False)
    assert len(ours) == keep.sum()
    assert np.nanmax(np.abs(ours["average_precision"].to_numpy() - ref["average_precision"].to_numpy())) < 1e-12


def test_errors_name_the_problem():
    meta, x = _adversarial_plate(1)
    bad = meta.copy()
    bad.loc[3, "pert"] = None
    with pytest.raises(ValueError, match="'pert'.*row 3"):
        average_precision(bad, x, pos_sameby=["pert"], pos_diffby=[], neg_sameby=[], neg_diffby=["pert"])
    with pytest.raises(ValueError, match="disjoint"):
        average_precision(meta, x, pos_sameby=["pert"], pos_diffby=["pert"], neg_sameby=[], neg_diffby=["pert"])
    with pytest.raises(UnpairedException):
        average_precision(meta.assign(pert=np.arange(len(meta)).astype(str)), x, pos_sameby=["pert"],
                          pos_diffby=[], neg_sameby=[], neg_diffby=["pert"])
    xn = x.copy()
    xn[4, 0] = np.nan
    with pytest.raises(ValueError, match="row 4"):
        average_precision(meta, xn, pos_sameby=["pert"], pos_diffby=[], neg_sameby=[], neg_diffby=["pert"])
    with pytest.raises(ValueError, match="rows"):
        average_precision(meta, x[:-1], pos_sameby=["pert"], pos_diffby=[], neg_sameby=[], neg_diffby=["pert"])
    with pytest.raises(KeyError):
        mean_average_precision(pl.DataFrame({"x": [1]}), sameby="g", null_size=10, threshold=0.05, seed=0)
