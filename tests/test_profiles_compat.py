"""pycytominer users switching to subcell_screen.profiles (issue 23): the crashes on inputs pycytominer handles,
the behaviours a switching user trips over, and the pycytominer functions added (annotate, image features,
coSMicQC rows, blocklist files, file input, calculate_frequency) — each against pycytominer 1.7.1 on random
inputs, or asserting the documented difference."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import polars as pl
import pycytominer as pyc
import pytest
from pycytominer.cyto_utils import infer_cp_features
from pycytominer.operations.frequency_threshold import calculate_frequency as pyc_calculate_frequency

from subcell_screen.profiles import (
    NEGCON,
    aggregate,
    annotate,
    calculate_frequency,
    consensus,
    correct_batch,
    feature_select,
    infer_features,
    load_profiles,
    normalize,
)

CTRL_QUERY = "Metadata_control_type == 'negcon'"


def _quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **kw)


def _wells(seed: int, *, n_plates: int = 2, n: int = 24, d: int = 6, prefix: str = "Cells_") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_plates):
        x = rng.normal(size=(n, d)) * rng.uniform(0.5, 20, d) + rng.uniform(-50, 500, d)
        df = pd.DataFrame(x, columns=[f"{prefix}f{j}" for j in range(d)])
        df.insert(0, "Metadata_control_type", np.where(np.arange(n) < n // 3, "negcon", "trt"))
        df.insert(0, "Metadata_Well", [f"W{i:02d}" for i in range(n)])
        df.insert(0, "Metadata_Plate", f"P{p}")
        rows.append(df)
    return pd.concat(rows, ignore_index=True)


# -- crashes on inputs pycytominer handles -----------------------------------------------------------------


@pytest.mark.parametrize("method", ["standardize", "robustize", "mad_robustize"])
def test_normalize_one_feature(method):
    """Issue 23 #1: one feature column made the result builder (pl.from_numpy) fail."""
    df = pd.DataFrame({"Metadata_Plate": ["a"] * 3, "Cells_x": [1.0, 2.0, 4.0]})
    ref = _quiet(pyc.normalize, df, features=["Cells_x"], samples="all", method=method)
    for frame in (df, pl.from_pandas(df)):
        ours = normalize(frame, method=method, plate_col=None)
        got = ours["Cells_x"].to_numpy()
        assert np.abs(got - ref["Cells_x"].to_numpy()).max() < 1e-12
    if method == "standardize":
        assert np.round(ref["Cells_x"].to_numpy(), 3).tolist() == [-1.069, -0.267, 1.336]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_normalize_one_feature_random_per_plate(seed):
    df = _wells(seed, d=1)
    for method in ("standardize", "robustize", "mad_robustize", "spherize", "inverse_normal"):
        kw = {"spherize_method": "ZCA"} if method == "spherize" else {}
        parts = [_quiet(pyc.normalize, g, features=["Cells_f0"], samples=CTRL_QUERY, method=method, **kw)
                 for _, g in df.groupby("Metadata_Plate", sort=False)]
        ref = pd.concat(parts).loc[df.index]
        ours = normalize(df, method=method, controls=NEGCON, **kw)
        assert np.abs(ours["Cells_f0"].to_numpy() - ref["Cells_f0"].to_numpy()).max() < 1e-9, method


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_modz_with_missing_values_under_copy_on_write(seed):
    """Issue 23 #2: with copy-on-write (pandas 3's default; importing pycytominer turns it on) the
    correlation matrix of a block with a missing value came back read-only and its diagonal was written."""
    rng = np.random.default_rng(seed)
    df = _wells(seed, n_plates=1, n=12, d=8).drop(columns="Metadata_control_type")
    df["Metadata_Well"] = rng.choice(["A", "B", "C"], len(df))
    x = df.filter(like="Cells_").to_numpy(copy=True)
    x[rng.random(x.shape) < 0.08] = np.nan
    df[[c for c in df.columns if c.startswith("Cells_")]] = x
    feats = [c for c in df.columns if c.startswith("Cells_")]
    with pd.option_context("mode.copy_on_write", True):
        ref = _quiet(pyc.consensus, df, replicate_columns=["Metadata_Well"], operation="modz", features=feats)
        ours = consensus(df, by="Metadata_Well", method="modz")
    ref = ref.sort_values("Metadata_Well").reset_index(drop=True)
    assert ours["Metadata_Well"].tolist() == ref["Metadata_Well"].tolist()
    assert np.abs(ours[feats].to_numpy() - ref[feats].to_numpy()).max() < 1e-9


def test_noise_removal_after_every_feature_is_gone():
    """Issue 23 #3: noise_removal after earlier operations excluded every feature raised a polars ShapeError;
    pycytominer returns the metadata columns. Every operation behaves so, and so does the pipeline's path
    (explicit features, then Harmony with nothing left)."""
    df = pd.DataFrame({"Metadata_g": ["a", "a", "b", "b"], "Cells_x": [1e4, 2e4, 3e4, 4e4],
                       "Nuclei_y": [-1e4, 2e4, 3e4, 4e4]})
    kw = {"noise_removal_perturb_groups": "Metadata_g", "noise_removal_stdev_cutoff": 1.0}
    for op in ["noise_removal", "frequency_threshold", "correlation_threshold", "drop_na_columns",
               "drop_outliers", "blocklist"]:
        ref = _quiet(pyc.feature_select, df, operation=["drop_outliers", op], **kw)
        ours = feature_select(df, operation=["drop_outliers", op], **kw)
        assert list(ours.columns) == list(ref.columns) == ["Metadata_g"], op
    # variance_threshold: pycytominer fails ("at least one array or dtype is required"); ours excludes nothing
    empty = feature_select(pl.from_pandas(df), operation=["drop_outliers", "variance_threshold"],
                           features=["Cells_x", "Nuclei_y"])
    assert empty.columns == ["Metadata_g"]
    same = correct_batch(empty.with_columns(pl.Series("Metadata_Batch", ["1", "1", "2", "2"])),
                         batch_col="Metadata_Batch", features=[])
    assert same.columns == ["Metadata_g", "Metadata_Batch"]


# -- behaviour a switching user trips over -----------------------------------------------------------------


def _cells(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 60
    return pd.DataFrame({
        "Metadata_Plate": rng.choice(["P1", "P2"], n),
        "Metadata_Well": rng.choice(["A01", "A02", "B01"], n),
        "Metadata_ObjectNumber": np.arange(n),
        "ObjectNumber": np.arange(n),
        "Number_Object_Number": np.arange(n) + 1,  # a custom object-number column
        "Cells_AreaShape_Area": rng.normal(300, 40, n),
        "Cytoplasm_Intensity_Mean": rng.normal(0.2, 0.05, n),
        "Nuclei_Texture_Contrast": rng.normal(5, 1, n),
        "Image_Count_Cells": rng.integers(50, 200, n),
        "Image_FileName": [f"f{i}.tif" for i in range(n)],
        "Other_measure": rng.normal(size=n),
    })


@pytest.mark.parametrize("seed", [0, 1])
def test_infer_features_follows_pycytominer(seed):
    cells = _cells(seed)
    for image_features in (False, True):
        ref = infer_cp_features(cells, image_features=image_features)
        assert infer_features(cells, image_features=image_features) == sorted(ref, key=list(cells.columns).index)
        assert infer_features(pl.from_pandas(cells), image_features=image_features) == infer_features(
            cells, image_features=image_features)
        ref_agg = _quiet(pyc.aggregate, cells, image_features=image_features)
        ours = aggregate(cells, image_features=image_features)
        assert list(ours.columns) == list(ref_agg.columns)  # no object-number column aggregated
        assert np.abs(ours.iloc[:, 2:].to_numpy() - ref_agg.iloc[:, 2:].to_numpy()).max() < 1e-9
    assert "Number_Object_Number" not in infer_features(cells)
    # "no features found" fires, as pycytominer's does
    bare = cells[["Metadata_Plate", "Metadata_Well", "Number_Object_Number", "Other_measure"]]
    with pytest.raises(ValueError, match="No features or metadata found"):
        infer_cp_features(bare)
    with pytest.raises(ValueError, match="no feature columns found"):
        aggregate(bare)
    with pytest.raises(ValueError, match="no feature columns found"):
        normalize(bare)
    # deliberate extension: SubCell embedding columns (this package's names) are inferred too
    emb = pl.DataFrame({"Metadata_Plate": ["a", "a"], "feat0000": [1.0, 2.0], "ER_feat0001": [3.0, 4.0],
                        "n_cells": [1, 2]})
    assert infer_features(emb) == ["feat0000", "ER_feat0001"]


@pytest.mark.parametrize("seed", [0, 1])
def test_numbers_stored_as_text(seed):
    """Numbers stored as strings were dropped by aggregate (pycytominer casts them); "nan"/"None" strings
    made normalize raise (pycytominer reads them as missing)."""
    rng = np.random.default_rng(seed)
    cells = _cells(seed)
    text = cells.assign(Cells_AreaShape_Area=[f"{v:.6g}" for v in cells["Cells_AreaShape_Area"]])
    feats = ["Cells_AreaShape_Area", "Cytoplasm_Intensity_Mean", "Nuclei_Texture_Contrast"]
    ref = _quiet(pyc.aggregate, text, features=feats)
    for frame in (text, pl.from_pandas(text)):
        ours = aggregate(frame, features=feats)
        got = ours[feats].to_numpy() if isinstance(ours, pd.DataFrame) else ours.select(feats).to_numpy()
        assert np.abs(got - ref[feats].to_numpy()).max() < 1e-9
    assert "Cells_AreaShape_Area" in aggregate(text).columns  # inferred by name, parsed
    wells = _wells(seed, n_plates=1)
    vals = wells["Cells_f1"].astype(object)
    vals[rng.choice(len(vals), 4, replace=False)] = rng.choice(["nan", "None", " NA ", ""], 4)
    wells["Cells_f1"] = vals
    ref = _quiet(pyc.normalize, wells, features=[c for c in wells.columns if c.startswith("Cells_")],
                 samples=CTRL_QUERY, method="standardize")
    ours = normalize(wells, controls=CTRL_QUERY)
    assert np.allclose(ours["Cells_f1"].to_numpy(dtype=float), ref["Cells_f1"].to_numpy(dtype=float),
                       rtol=1e-12, equal_nan=True)
    assert ours["Cells_f1"].isna().sum() == 4
    bad = wells.assign(Cells_f2=["x"] + [str(v) for v in wells["Cells_f2"][1:]])
    with pytest.raises(ValueError, match=r"'Cells_f2' holds text that is not a number: 'x' \(row 0\)"):
        normalize(bad)


def test_object_count_needs_its_column_and_counts_null_strata():
    cells = pd.DataFrame({"Metadata_Plate": ["a", "a", None, None, "b"],
                          "Metadata_Well": ["A1", "A1", "A2", "A2", "A3"],
                          "Metadata_ObjectNumber": [1, 2, 3, np.nan, 5], "Cells_x": [1.0, 2.0, 3.0, 4.0, 5.0]})
    with pytest.raises(KeyError):
        _quiet(pyc.aggregate, cells.drop(columns="Metadata_ObjectNumber"), compute_object_count=True)
    with pytest.raises(KeyError, match="Metadata_ObjectNumber"):  # was: silently counted rows
        aggregate(cells.drop(columns="Metadata_ObjectNumber"), compute_object_count=True)
    ref = _quiet(pyc.aggregate, cells, compute_object_count=True)
    ours = aggregate(cells, compute_object_count=True)
    assert list(ours.columns) == list(ref.columns)
    assert ours["Cells_x"].tolist() == ref["Cells_x"].tolist()
    # documented difference: the null stratum gets its count (one non-missing object number); pycytominer NaN
    assert ref["Metadata_Object_Count"].tolist()[:2] == [2.0, 1.0] and np.isnan(ref["Metadata_Object_Count"][2])
    assert ours["Metadata_Object_Count"].tolist() == [2, 1, 1]


@pytest.mark.parametrize("seed", [0, 1])
def test_normalize_is_per_plate_by_default(seed):
    assert "per plate" in normalize.__doc__.splitlines()[0]
    df = _wells(seed, n_plates=3)
    feats = [c for c in df.columns if c.startswith("Cells_")]
    whole = _quiet(pyc.normalize, df, features=feats, samples=CTRL_QUERY, method="robustize")
    per = pd.concat([_quiet(pyc.normalize, g, features=feats, samples=CTRL_QUERY, method="robustize")
                     for _, g in df.groupby("Metadata_Plate")]).loc[df.index]
    ours = normalize(df, method="robustize", controls=CTRL_QUERY)
    ours_whole = normalize(df, method="robustize", controls=CTRL_QUERY, plate_col=None)
    assert np.abs(ours[feats].to_numpy() - per[feats].to_numpy()).max() < 1e-9
    assert np.abs(ours_whole[feats].to_numpy() - whole[feats].to_numpy()).max() < 1e-9
    assert np.abs(ours[feats].to_numpy() - whole[feats].to_numpy()).max() > 0.1  # the choice matters


# -- pycytominer functions added ---------------------------------------------------------------------------


def _platemap(seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    wells = [f"{r}{c:02d}" for r in "AB" for c in range(1, 5)]
    platemap = pd.DataFrame({"well_position": wells, "broad_sample": rng.choice(["DMSO", "c1", "c2"], len(wells)),
                             "Cells_clash": rng.normal(size=len(wells)), "dose": rng.choice([0.1, 1.0], len(wells))})
    n = 14
    prof = pd.DataFrame({"Image_Metadata_Plate": "P1", "Metadata_Well": rng.choice(wells[:-1] + ["Z99"], n),
                         "Metadata_Site": rng.integers(1, 4, n), "Cells_clash": rng.normal(size=n),
                         "Cells_a": rng.normal(size=n), "Nuclei_b": rng.normal(size=n)})
    return platemap, prof


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_annotate_matches_pycytominer(seed, tmp_path):
    platemap, prof = _platemap(seed)
    ref = _quiet(pyc.annotate, prof, platemap, join_on=["Metadata_well_position", "Metadata_Well"])
    ours = annotate(prof, platemap, join_on=["Metadata_well_position", "Metadata_Well"])
    assert isinstance(ours, pd.DataFrame)
    assert list(ours.columns) == list(ref.columns)
    assert "Metadata_Plate" in ours.columns and "Metadata_Cells_clash" in ours.columns
    pd.testing.assert_frame_equal(ours.reset_index(drop=True), ref.reset_index(drop=True), check_dtype=False)
    # polars and file inputs give the same table
    platemap.to_csv(tmp_path / "platemap.tsv", sep="\t", index=False)
    prof.to_parquet(tmp_path / "profiles.parquet")
    from_files = annotate(tmp_path / "profiles.parquet", tmp_path / "platemap.tsv",
                          join_on=["Metadata_well_position", "Metadata_Well"])
    assert isinstance(from_files, pl.DataFrame)
    pd.testing.assert_frame_equal(from_files.to_pandas(), ref.reset_index(drop=True), check_dtype=False)


@pytest.mark.parametrize("seed", [0, 1])
def test_cosmicqc_flags_via_annotate_then_dropped_by_normalize(seed, tmp_path):
    platemap, prof = _platemap(seed)
    rng = np.random.default_rng(seed)
    prof = prof.drop_duplicates(["Metadata_Well", "Metadata_Site"]).reset_index(drop=True)
    qc = prof[["Metadata_Well", "Metadata_Site"]].rename(columns={"Metadata_Well": "Well", "Metadata_Site": "Site"})
    qc["cqc_large_nuclei"] = rng.random(len(qc)) < 0.3
    qc["cqc_blurry"] = rng.random(len(qc)) < 0.2
    qc["Image_Count"] = rng.integers(1, 9, len(qc))
    qc.to_parquet(tmp_path / "qc.parquet")
    kw = dict(join_on=["Metadata_well_position", "Metadata_Well"], external_join_on=["Metadata_Well", "Metadata_Site"])
    ref = _quiet(pyc.annotate, prof, platemap, external_metadata=str(tmp_path / "qc.parquet"), **kw)
    ours = annotate(prof, platemap, external_metadata=tmp_path / "qc.parquet", **kw)
    assert list(ours.columns) == list(ref.columns)
    pd.testing.assert_frame_equal(ours.reset_index(drop=True), ref.reset_index(drop=True), check_dtype=False)
    feats = ["Cells_a", "Nuclei_b"]
    ref_n = _quiet(pyc.normalize, ref, features=feats, drop_cosmicqc_rows=True)
    ours_n = normalize(ours, features=feats, plate_col=None, drop_cosmicqc_rows=True)
    assert len(ours_n) == len(ref_n) < len(ours)
    assert np.abs(ours_n[feats].to_numpy() - ref_n[feats].to_numpy()).max() < 1e-9
    with pytest.raises(ValueError, match="Metadata_cqc_"):
        normalize(prof, drop_cosmicqc_rows=True)
    with pytest.raises(ValueError, match="together"):
        annotate(prof, platemap, external_metadata=qc, join_on=kw["join_on"])


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".tsv", ".parquet"])
def test_profiles_from_files(suffix, tmp_path):
    df = _wells(3)
    path = tmp_path / f"profiles{suffix}"
    if suffix == ".parquet":
        df.to_parquet(path)
    else:
        df.to_csv(path, sep="\t" if suffix == ".tsv" else ",", index=False)
    feats = [c for c in df.columns if c.startswith("Cells_")]
    loaded = load_profiles(path)
    assert loaded.columns == list(df.columns) and loaded.height == len(df)
    ref = _quiet(pyc.normalize, str(path), features=feats, samples=CTRL_QUERY, method="mad_robustize")
    ours = normalize(path, method="mad_robustize", controls=CTRL_QUERY, plate_col=None)
    assert isinstance(ours, pl.DataFrame)
    assert np.abs(ours.select(feats).to_numpy() - ref[feats].to_numpy()).max() < 1e-9
    ref_sel = _quiet(pyc.feature_select, str(path), operation="correlation_threshold", corr_threshold=0.2)
    assert feature_select(path, operation="correlation_threshold", corr_threshold=0.2).columns == list(
        ref_sel.columns)
    assert aggregate(path, by="Metadata_Plate").equals(aggregate(pl.from_pandas(df), by="Metadata_Plate"))
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        normalize(tmp_path / "nope.csv")


def test_blocklist_file(tmp_path):
    df = _wells(4)
    df["Nuclei_Correlation_Manders_AGP_DNA"] = 1.0
    pd.DataFrame({"blocklist": ["Cells_f1", "Cells_f3", "Cells_not_there"]}).to_csv(tmp_path / "bl.csv", index=False)
    ref = _quiet(pyc.feature_select, df, operation="blocklist", blocklist_file=str(tmp_path / "bl.csv"))
    ours = feature_select(df, operation="blocklist", blocklist_file=tmp_path / "bl.csv")
    assert list(ours.columns) == list(ref.columns)
    assert "Cells_f1" not in ours.columns and "Nuclei_Correlation_Manders_AGP_DNA" in ours.columns
    pd.DataFrame({"feature": ["x"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="bad.csv.*no 'blocklist' column"):
        feature_select(df, operation="blocklist", blocklist_file=tmp_path / "bad.csv")


@pytest.mark.parametrize("seed", range(6))
def test_calculate_frequency(seed):
    rng = np.random.default_rng(seed)
    x = rng.choice([0.0, -0.0, 1.5, 2.0, np.nan, 7.0], size=int(rng.integers(1, 40)),
                   p=[0.3, 0.1, 0.2, 0.2, 0.1, 0.1])
    ref = pyc_calculate_frequency(pd.Series(x))
    assert calculate_frequency(pd.Series(x)) == ref
    assert calculate_frequency(pl.Series(x)) == ref
    assert calculate_frequency(x) == ref
