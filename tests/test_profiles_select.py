"""Tests for subcell_screen.profiles feature selection: same features as pycytominer 1.7.1 on the same input."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pycytominer as pyc
import pytest

from subcell_screen import feature_select
from subcell_screen.profiles import default_blocklist, features_to_exclude, normalize

LINCS = Path(__file__).parent / "data" / "lincs" / "SQ00015054_normalized_feature_select.csv.gz"


@pytest.fixture(scope="module")
def lincs() -> pd.DataFrame:
    df = pd.read_csv(LINCS)
    # two blocklisted CellProfiler features (pycytominer's default list), as in raw profiling-recipe output
    rng = np.random.default_rng(0)
    extra = pd.DataFrame({"Nuclei_Correlation_Manders_AGP_DNA": rng.normal(size=len(df)),
                          "Nuclei_Granularity_14_AGP": rng.normal(size=len(df))})
    return pd.concat([df, extra], axis=1)


def _features(df) -> list[str]:
    return [c for c in df.columns if not c.startswith("Metadata_")]


def _pyc_select(df, op, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pyc.feature_select(df, features=_features(df), operation=op, **kw)


# (operation, keyword arguments, features pycytominer excludes on the LINCS plate: asserted so the
# comparison is not vacuous)
LINCS_CASES = [
    ("variance_threshold", {"min_variance": 2.0}, 74),
    ("frequency_threshold", {"freq_cut": 0.2, "unique_cut": 0.7}, 17),
    ("correlation_threshold", {}, 0),  # the plate was feature-selected at 0.9 already
    ("correlation_threshold", {"corr_threshold": 0.6}, 387),
    ("correlation_threshold", {"corr_threshold": 0.75, "corr_method": "spearman"}, 213),
    ("drop_outliers", {"outlier_cutoff": 15}, 143),
    ("blocklist", {}, 2),
    (["variance_threshold", "frequency_threshold", "correlation_threshold", "drop_na_columns", "blocklist"],
     {"corr_threshold": 0.7, "unique_cut": 0.6, "min_variance": 1.0}, 325),
]


@pytest.mark.parametrize(("op", "kw", "n_excluded"), LINCS_CASES)
def test_same_features_as_pycytominer_on_lincs(lincs, op, kw, n_excluded):
    ref = _pyc_select(lincs, op, **kw)
    ours = feature_select(lincs, operation=op, **kw)
    assert list(ours.columns) == list(ref.columns)
    ours_pl = feature_select(pl.from_pandas(lincs), operation=op, **kw)
    assert ours_pl.columns == list(ref.columns)
    excluded = lincs.shape[1] - ref.shape[1]
    assert excluded == n_excluded


def test_same_features_after_per_plate_normalisation_with_samples(lincs):
    """Multi-plate: de-normalised copies of the plate, normalised per plate, then selected on DMSO rows."""
    rng = np.random.default_rng(3)
    feats = _features(lincs)
    plates = []
    for k in range(2):
        p = lincs.copy()
        p[feats] = (p[feats].to_numpy() + rng.normal(0, 0.1, (len(p), len(feats)))) * rng.uniform(1, 9, len(feats))
        p["Metadata_Plate"] = f"P{k}"
        plates.append(p)
    df = pd.concat(plates, ignore_index=True)
    norm = normalize(df, method="mad_robustize", controls=pl.col("Metadata_broad_sample") == "DMSO")
    ops = ["drop_na_columns", "variance_threshold", "correlation_threshold", "drop_outliers"]
    kw = dict(corr_threshold=0.8, min_variance=0.5, outlier_cutoff=40)
    ref = _pyc_select(norm, ops, samples="Metadata_broad_sample != 'DMSO'", **kw)
    ours = feature_select(norm, operation=ops, samples=pl.col("Metadata_broad_sample") != "DMSO", **kw)
    assert list(ours.columns) == list(ref.columns)
    assert 50 < norm.shape[1] - ref.shape[1] < len(feats)


def _synthetic(seed=1, n=300, d=120, nan=False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    lat = rng.normal(size=(n, 10))
    x = lat @ rng.normal(size=(10, d)) + rng.normal(size=(n, d)) * rng.uniform(0.05, 2, d)
    x[:, 5] = x[:, 3]  # exact duplicate: a tie in sum |corr|
    x[:, 7] = 3.0  # constant: NaN correlations
    x[:, 8] = np.round(x[:, 8])
    x[:, 9] = np.where(rng.random(n) < 0.97, 1.0, 2.0)
    x[:, 10] *= 1e-4
    x[:, 11] = -x[:, 12] + rng.normal(0, 0.01, n)  # strongly negative: not flagged (signed test)
    df = pd.DataFrame(x, columns=[f"f{i:03d}" for i in range(d)])
    if nan:
        for j in (20, 21, 22, 40):
            df.iloc[rng.choice(n, 10 + j, replace=False), j] = np.nan
    df.insert(0, "Metadata_group", rng.integers(0, 10, n).astype(str))
    return df


SYNTHETIC_CASES = [
    ("variance_threshold", {}),
    ("variance_threshold", {"min_variance": 0.0}),
    ("frequency_threshold", {}),
    ("frequency_threshold", {"freq_cut": 0.2, "unique_cut": 0.5}),
    ("correlation_threshold", {}),
    ("correlation_threshold", {"corr_threshold": 0.6}),
    ("correlation_threshold", {"corr_threshold": 0.7, "corr_method": "spearman"}),
    ("drop_na_columns", {"na_cutoff": 0.1}),
    ("drop_outliers", {"outlier_cutoff": 5}),
    ("noise_removal", {"noise_removal_perturb_groups": "Metadata_group", "noise_removal_stdev_cutoff": 1.5}),
]


@pytest.mark.parametrize("nan", [False, True], ids=["complete", "missing"])
@pytest.mark.parametrize(("op", "kw"), SYNTHETIC_CASES)
def test_same_features_as_pycytominer_synthetic(op, kw, nan):
    df = _synthetic(nan=nan)
    ref = _pyc_select(df, op, **kw)
    ours = feature_select(df, features=_features(df), operation=op, **kw)
    assert list(ours.columns) == list(ref.columns)


def test_kendall_uses_pycytominers_path():
    df = _synthetic(n=80, d=30, nan=False)
    df.iloc[:5, 3] = np.nan
    ref = _pyc_select(df, "correlation_threshold", corr_threshold=0.3, corr_method="kendall")
    ours = feature_select(df, features=_features(df),
                          operation="correlation_threshold", corr_threshold=0.3, corr_method="kendall")
    assert list(ours.columns) == list(ref.columns) and df.shape[1] - ref.shape[1] >= 3


@pytest.mark.parametrize("full_gram_max", [8192, 0], ids=["syrk", "blocked"])
def test_correlation_blocks_do_not_change_the_result(monkeypatch, full_gram_max):
    from subcell_screen.profiles import _select

    monkeypatch.setattr(_select, "_FULL_GRAM_MAX", full_gram_max)
    df = _synthetic(seed=4, nan=True)
    ref = _pyc_select(df, "correlation_threshold", corr_threshold=0.55)
    for block in (1, 7, 64, 4096):
        got = features_to_exclude(df, features=_features(df),
                                  operation="correlation_threshold", corr_threshold=0.55, block_size=block)
        assert set(got["correlation_threshold"]) == set(df.columns) - set(ref.columns)
    clean = _synthetic(seed=4)
    ref = _pyc_select(clean, "correlation_threshold", corr_threshold=0.55)
    got = features_to_exclude(clean, features=_features(clean),
                              operation="correlation_threshold", corr_threshold=0.55, block_size=13)
    assert set(got["correlation_threshold"]) == set(clean.columns) - set(ref.columns)


def test_features_to_exclude_reports_per_operation_in_order():
    df = _synthetic()
    out = features_to_exclude(df, features=_features(df),
                              operation=["variance_threshold", "correlation_threshold", "blocklist"],
                              blocklist=["f100", "Metadata_group"], corr_threshold=0.6)
    assert list(out) == ["variance_threshold", "correlation_threshold", "blocklist"]
    assert out["variance_threshold"] == ["f007", "f010"]
    assert "f007" not in out["correlation_threshold"]  # later operations see only the survivors
    assert out["blocklist"] == ["Metadata_group", "f100"]  # any listed column, as pycytominer


def test_default_blocklist_is_pycytominers():
    names = default_blocklist()
    assert len(names) == 55 and names[0] == "Nuclei_Correlation_Manders_AGP_DNA"
    from pycytominer.cyto_utils.blocklist import Blocklist

    assert names == Blocklist(blocklist_name="default").to_list()


def test_bad_arguments():
    df = _synthetic()
    with pytest.raises(ValueError, match="unknown operation"):
        feature_select(df, features=_features(df), operation="variance")
    with pytest.raises(ValueError, match="corr_method"):
        feature_select(df, features=_features(df), operation="correlation_threshold", corr_method="cosine")
    with pytest.raises(ValueError, match="noise_removal needs"):
        feature_select(df, features=_features(df), operation="noise_removal")
    with pytest.raises(ValueError, match="no feature has variance"):
        feature_select(df, features=_features(df), operation="variance_threshold", min_variance=1e9)
    inf = df.assign(f001=np.inf)
    with pytest.raises(ValueError, match=r"infinite values: 'f001'"):
        feature_select(inf, features=_features(inf), operation="variance_threshold")


def _lowrank(seed=5, n=240, d=560, dup=24) -> pd.DataFrame:
    """Correlated features (rank-12 latent + noise) with near-duplicates (corr ~0.99), a negative duplicate
    (not flagged: the test is signed), constant and exactly duplicated columns."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12)) @ rng.normal(size=(12, d)) + 0.6 * rng.normal(size=(n, d))
    src = rng.choice(np.arange(dup, d), dup, replace=False)
    x[:, :dup] = x[:, src] + 0.15 * rng.normal(size=(n, dup))
    x[:, dup] = -x[:, dup + 1] + 0.01 * rng.normal(size=n)
    x[:, d - 1] = 7.0
    return pd.DataFrame(x * rng.uniform(0.5, 20, d) + rng.normal(0, 50, d),
                        columns=[f"f{i:03d}" for i in range(d)])


def _spy(monkeypatch):
    """Record whether the exact screen decided (it returns None when it hands over to the full matrix)."""
    from subcell_screen.profiles import _select

    calls = {"screen": [], "full": 0}
    screen, full = _select._screened_corr, _select._gram_corr

    def spy_screen(*a, **k):
        out = screen(*a, **k)
        calls["screen"].append(out is not None)
        return out

    def spy_full(*a, **k):
        calls["full"] += 1
        return full(*a, **k)

    monkeypatch.setattr(_select, "_screened_corr", spy_screen)
    monkeypatch.setattr(_select, "_gram_corr", spy_full)
    return calls


@pytest.mark.parametrize(("threshold", "method"), [(0.9, "pearson"), (0.95, "pearson"), (0.9, "spearman")])
def test_correlation_screen_selects_like_pycytominer(monkeypatch, threshold, method):
    df = _lowrank()
    calls = _spy(monkeypatch)
    ref = _pyc_select(df, "correlation_threshold", corr_threshold=threshold, corr_method=method)
    ours = feature_select(df, features=_features(df),
                          operation="correlation_threshold", corr_threshold=threshold, corr_method=method)
    assert list(ours.columns) == list(ref.columns)
    assert 10 <= df.shape[1] - ref.shape[1] <= 40  # near-duplicates dropped, the rest kept
    assert calls == {"screen": [True], "full": 0}  # decided by the screen alone, no d x d matrix


def test_correlation_screen_hands_over_on_ties_and_dense_correlation(monkeypatch):
    df = _lowrank()
    df["f001"] = df["f000"]  # exact duplicate pair: equal sum |corr|, pycytominer's sort order decides
    calls = _spy(monkeypatch)
    ref = _pyc_select(df, "correlation_threshold")
    ours = feature_select(df, features=_features(df), operation="correlation_threshold")
    assert list(ours.columns) == list(ref.columns)
    assert len(calls["screen"]) == 1 and calls["full"] == 1  # the tie sends the ranking to the full matrix
    calls["screen"].clear()
    calls["full"] = 0
    ref = _pyc_select(df, "correlation_threshold", corr_threshold=0.3)  # most features correlated: no screen
    ours = feature_select(df, features=_features(df), operation="correlation_threshold", corr_threshold=0.3)
    assert list(ours.columns) == list(ref.columns) and df.shape[1] - ref.shape[1] > 200
    assert calls == {"screen": [False], "full": 1}


def test_frequency_screen_only_skips_columns_that_are_kept():
    """Columns with values repeated just above/below the screen's limit (count(most common) vs 1/freq_cut)."""
    rng = np.random.default_rng(2)
    n = 400
    cols = {}
    for reps in (3, 19, 20, 21, 25, 120):  # one value repeated `reps` times, the rest unique
        x = rng.normal(size=n)
        x[:reps] = 0.0
        x[reps // 2:reps] = -0.0  # -0.0 and 0.0 are one value
        cols[f"r{reps:03d}"] = x
    cols["int"] = rng.integers(0, 300, n).astype(float)
    cols["two"] = np.where(rng.random(n) < 0.5, 1.0, 2.0)
    df = pd.DataFrame(cols)
    for fc, uc in [(0.05, 0.01), (0.05, 0.6), (0.2, 0.01), (1.0, 0.0)]:
        ref = _pyc_select(df, "frequency_threshold", freq_cut=fc, unique_cut=uc)
        ours = feature_select(df, features=_features(df), operation="frequency_threshold", freq_cut=fc, unique_cut=uc)
        assert list(ours.columns) == list(ref.columns), (fc, uc)
    ref = _pyc_select(df, "frequency_threshold")
    # count > 20: ratio 1/count < 0.05; two values: 2 / 400 unique < 0.01
    assert set(df.columns) - set(ref.columns) == {"r021", "r025", "r120", "two"}
