"""Tests for subcell_screen.profiles aggregation, consensus, layout conversion and store -> well profiles."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pycytominer as pyc
import pytest

from subcell_screen import aggregate, consensus
from subcell_screen.layouts import read_plates_table
from subcell_screen.profiles import (
    aggregate_array,
    from_wide,
    reduce_groups,
    to_wide,
    well_profiles_from_store,
)
from subcell_screen.store import ScreenStore

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def cells() -> pd.DataFrame:
    """Real CellProfiler per-cell measurements (ExampleHuman, 289 cells) spread over 2 plates x 7 wells
    (group sizes odd and even), with a few missing values."""
    df = pd.read_csv(DATA / "examplehuman" / "Cells.csv.gz")
    feats = [c for c in df.columns if c not in ("ImageNumber", "ObjectNumber")
             and pd.api.types.is_numeric_dtype(df[c])][:60]
    out = df[feats].add_prefix("Cells_").astype(float)
    rng = np.random.default_rng(0)
    out.iloc[rng.choice(len(out), 15, replace=False), 3] = np.nan
    out.insert(0, "Metadata_ObjectNumber", df["ObjectNumber"].to_numpy())
    out.insert(0, "Metadata_Well", [f"A{(i * 7919) % 7 + 1:02d}" for i in range(len(out))])
    out.insert(0, "Metadata_Plate", np.where(np.arange(len(out)) % 3 == 0, "P2", "P1"))
    return out


def _features(df) -> list[str]:
    return [c for c in df.columns if not c.startswith("Metadata_")]


@pytest.mark.parametrize("method", ["median", "mean"])
def test_aggregate_matches_pycytominer(cells, method):
    ref = pyc.aggregate(cells, strata=["Metadata_Plate", "Metadata_Well"], features=_features(cells),
                        operation=method, compute_object_count=True)
    ours = aggregate(cells, method=method, compute_object_count=True)
    assert list(ours.columns) == list(ref.columns)
    pd.testing.assert_frame_equal(ours[["Metadata_Plate", "Metadata_Well"]], ref[["Metadata_Plate", "Metadata_Well"]])
    assert ours["Metadata_Object_Count"].tolist() == ref["Metadata_Object_Count"].tolist()
    assert np.abs(ours[_features(cells)].to_numpy() - ref[_features(cells)].to_numpy()).max() < 1e-9
    pl_out = aggregate(pl.from_pandas(cells), method=method)
    assert pl_out.columns == ["Metadata_Plate", "Metadata_Well", *_features(cells)]
    assert np.allclose(pl_out.select(_features(cells)).to_numpy(), ref[_features(cells)].to_numpy(), rtol=1e-12)


def test_aggregate_keeps_constant_metadata_and_null_keys():
    df = pl.DataFrame({"Metadata_Plate": ["P1", "P1", "P1", None, None],
                       "Metadata_Well": ["A01", "A01", "A02", "A03", "A03"],
                       "Metadata_moa": ["x", "x", "y", "z", "z"], "Metadata_site": [1, 2, 1, 1, 1],
                       "Cells_f": [1.0, 2.0, 3.0, 4.0, float("nan")]})
    out = aggregate(df, method="mean", keep_metadata=True)
    assert out.columns == ["Metadata_Plate", "Metadata_Well", "Metadata_moa", "Cells_f"]  # site varies: dropped
    assert out["Metadata_Plate"].to_list() == ["P1", "P1", None]  # null keys: own group, last (pandas)
    assert out["Cells_f"].to_list() == [1.5, 3.0, 4.0]


def test_reduce_groups_equals_pandas_groupby():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 9)).astype(np.float32)
    x[rng.random(x.shape) < 0.02] = np.nan
    codes = rng.integers(0, 60, 500)
    codes[codes == 5] = 6  # an empty group
    frame = pd.DataFrame(x.astype(np.float64)).assign(g=codes)
    for method in ("median", "mean"):
        got = reduce_groups(x, codes, 60, method)
        ref = getattr(frame.groupby("g"), method)().reindex(range(60)).to_numpy()
        assert np.allclose(got, ref, rtol=1e-12, equal_nan=True)
        assert np.isnan(got[5]).all()


def test_array_layout_roundtrip_and_aggregation(cells):
    feats = _features(cells)
    arr = from_wide(cells, features=feats)
    assert arr.schema["features"] == pl.Array(pl.Float32, len(feats))
    assert arr.columns == ["Metadata_Plate", "Metadata_Well", "Metadata_ObjectNumber", "features"]
    back = to_wide(arr, feats)
    assert back.columns == ["Metadata_Plate", "Metadata_Well", "Metadata_ObjectNumber", *feats]
    assert np.allclose(back.select(feats).to_numpy(), cells[feats].to_numpy().astype(np.float32), equal_nan=True)
    wells = aggregate_array(arr.lazy(), by=["Metadata_Plate", "Metadata_Well"], method="median")
    wide = aggregate(back, method="median")
    assert wells["n_cells"].sum() == len(cells)
    assert np.array_equal(to_wide(wells, feats).select(feats).to_numpy(), wide.select(feats).to_numpy(),
                          equal_nan=True)
    with pytest.raises(ValueError, match="holds 60 values per row but 2 names"):
        to_wide(arr, ["a", "b"])
    with pytest.raises(ValueError, match="must be a fixed-width pl.Array"):
        aggregate_array(back, by="Metadata_Well", column="Metadata_Plate")


@pytest.fixture(scope="module")
def lincs_plates() -> pd.DataFrame:
    df = pd.read_csv(DATA / "lincs" / "SQ00015054_normalized_feature_select.csv.gz")
    feats = _features(df)[:80]
    df = df[["Metadata_Plate", "Metadata_Well", "Metadata_broad_sample", *feats]]
    rng = np.random.default_rng(2)
    reps = []
    for k in range(3):
        p = df.copy()
        p[feats] = p[feats].to_numpy() + rng.normal(0, 0.5 + k, (len(p), len(feats)))
        p["Metadata_Plate"] = f"P{k}"
        reps.append(p)
    return pd.concat(reps, ignore_index=True)


@pytest.mark.parametrize("method", ["median", "mean", "modz"])
def test_consensus_matches_pycytominer(lincs_plates, method):
    df = lincs_plates[lincs_plates.Metadata_Well.isin(lincs_plates.Metadata_Well.unique()[:60])]  # 60 wells x 3 replicates
    feats = _features(df)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = pyc.consensus(df, replicate_columns=["Metadata_Well"], operation=method, features=feats)
    ours = consensus(df, by="Metadata_Well", method=method)
    assert list(ours["Metadata_Well"]) == list(ref["Metadata_Well"])
    assert np.abs(ours[feats].to_numpy() - ref[feats].to_numpy()).max() < 1e-9


def test_modz_downweights_the_noisy_replicate(lincs_plates):
    df = pl.from_pandas(lincs_plates).filter(pl.col("Metadata_Well") == "B13")
    feats = _features(lincs_plates)
    out = consensus(df, by="Metadata_Well", method="modz")
    x = df.select(feats).to_numpy()  # replicate noise sd 0.5, 1.5, 2.5
    w, *_ = np.linalg.lstsq(x.T, out.select(feats).to_numpy()[0], rcond=None)
    assert w[0] > w[1] > w[2] > 0.01 and abs(w.sum() - 1) < 1e-3


def test_well_profiles_from_store(tmp_path):
    (tmp_path / "lay.csv").write_text("well,perturbation_id,control_type\nA01,DMSO,negcon\nA02,cpd1,\nA03,cpd2,\n")
    (tmp_path / "plates.csv").write_text("plate,layout,batch\nP1,lay,b1\nP2,lay,b2\n")
    design = read_plates_table(tmp_path / "plates.csv", allow_no_negcon=True)
    rng = np.random.default_rng(5)
    names = [f"emb{i}" for i in range(6)]
    rows = []
    with ScreenStore.create(tmp_path / "screen") as store:
        store.write_design(design)
        store.register_feature_set("subcell", kind="subcell", feature_names=names)
        for plate in ("P1", "P2"):
            for well in ("A01", "A02", "A03"):
                for site in (1, 2, 3):
                    n = int(rng.integers(1, 6)) if (plate, well) != ("P2", "A03") else 0
                    x = rng.normal(size=(n, 6)).astype(np.float32)
                    df = pl.DataFrame({"plate": [plate] * n, "well": [well] * n, "site": [site] * n,
                                       "cell_id": list(range(1, n + 1))},
                                      schema={"plate": pl.String, "well": pl.String, "site": pl.Int64,
                                              "cell_id": pl.Int64}).with_columns(
                        pl.Series("features", x, dtype=pl.Array(pl.Float32, 6)))
                    store.write_cell_features("subcell", df, plate=plate, well=well, site=site)
                    rows += [dict(plate=plate, well=well, site=site, **dict(zip(names, v.astype(float)))) for v in x]
        prof = well_profiles_from_store(store, feature_set="subcell")
    cells = pd.DataFrame(rows)
    site = cells.groupby(["plate", "well", "site"])[names].median().reset_index()
    well = site.groupby(["plate", "well"])[names].mean().reset_index()
    assert prof.height == 5  # P2/A03 has no cells
    assert prof.columns[:2] == ["Metadata_Plate", "Metadata_Well"] and prof.columns[-6:] == names
    assert {"Metadata_perturbation_id", "Metadata_control_type", "Metadata_Batch"} <= set(prof.columns)
    assert np.allclose(prof.select(names).to_numpy(), well[names].to_numpy(), rtol=1e-6)
    n_cells = cells.groupby(["plate", "well"]).size().to_numpy()
    assert prof["Metadata_Object_Count"].to_list() == n_cells.tolist()
    assert prof["Metadata_Site_Count"].to_list() == [3, 3, 3, 3, 3]
    assert prof.filter(pl.col("Metadata_Well") == "A01")["Metadata_control_type"].to_list() == ["negcon"] * 2
