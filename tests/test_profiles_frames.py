"""Tests for subcell_screen.profiles.frames, the one polars/pandas adapter of profiles and score: the forms of
a row selection (``controls`` / ``samples``), file reading, feature parsing."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import polars as pl
import pytest

from subcell_screen.profiles import frames
from subcell_screen.profiles.frames import NEGCON, ColumnNotFoundError, feature_frame, load_profiles, row_mask


@pytest.fixture
def meta() -> pl.DataFrame:
    return pl.DataFrame({"Metadata_control_type": ["negcon", None, "trt", "negcon"],
                         "Metadata_broad_sample": ["DMSO", "c1", "c2", "DMSO"], "Metadata_dose": [0.0, 1.0, 3.0, 0.0],
                         "Cells_x": [1.0, 2.0, 3.0, 4.0]})


def test_row_selection_forms_agree(meta):
    want = np.array([True, False, False, True])
    for frame in (meta, meta.to_pandas()):
        assert np.array_equal(row_mask(frame, NEGCON), want)  # nulls count as not selected
        assert np.array_equal(row_mask(frame, {"Metadata_control_type": "negcon"}), want)
        assert np.array_equal(row_mask(frame, {"Metadata_broad_sample": ["DMSO", "nope"]}), want)
        assert np.array_equal(row_mask(frame, "Metadata_broad_sample == 'DMSO'"), want)
        assert np.array_equal(row_mask(frame, "Metadata_dose < 0.5 and Metadata_broad_sample == 'DMSO'"), want)
        assert np.array_equal(row_mask(frame, want), want)
        assert np.array_equal(row_mask(frame, pl.Series(want)), want)
        assert row_mask(frame, None).all() and row_mask(frame, "all").all()


def test_row_selection_errors_name_the_problem(meta):
    with pytest.raises(ColumnNotFoundError, match="'Metadata_nope'"):
        row_mask(meta, pl.col("Metadata_nope") == 1)
    with pytest.raises(KeyError, match="Metadata_nope"):
        row_mask(meta, {"Metadata_nope": 1})
    with pytest.raises(ValueError, match="names no column"):
        row_mask(meta, "nope == 1")
    with pytest.raises(ValueError, match="boolean mask of length 4"):
        row_mask(meta, np.array([1, 0, 1]))
    with pytest.raises(ValueError, match="must evaluate to booleans"):
        row_mask(meta, pl.col("Metadata_dose") + 1)


def test_load_profiles_reads_what_pycytominer_reads(tmp_path):
    df = pd.DataFrame({"Metadata_Well": ["A01", "A02", "A03"], "Cells_x": [1.5, np.nan, 3.0],
                       "Nuclei_y": ["1", "NA", "None"]})
    text = df.to_csv(index=False, sep=";")
    (tmp_path / "p.csv").write_text(text)
    (tmp_path / "p.txt.gz").write_bytes(gzip.compress(df.to_csv(index=False, sep="\t").encode()))
    df.to_parquet(tmp_path / "p.parquet")
    (tmp_path / "ds").mkdir()
    df.iloc[:2].to_parquet(tmp_path / "ds" / "a.parquet")
    df.iloc[2:].to_parquet(tmp_path / "ds" / "b.parquet")
    for name in ("p.csv", "p.txt.gz", "p.parquet", "ds"):
        got = load_profiles(tmp_path / name)
        assert got.columns == list(df.columns) and got.height == 3, name
        vals = feature_frame(got, ["Cells_x", "Nuclei_y"])
        assert vals["Cells_x"].to_list() == [1.5, None, 3.0], name
        assert vals["Nuclei_y"].to_list() == [1.0, None, None], name
    # quoted delimiters and a byte-order mark (Excel exports)
    (tmp_path / "moa.csv").write_text('\ufeffMetadata_moa,Cells_x\n"a, b|c",1\nd|e,2\nf,3\n', encoding="utf-8")
    moa = load_profiles(tmp_path / "moa.csv")
    assert moa.columns == ["Metadata_moa", "Cells_x"] and moa["Metadata_moa"].to_list() == ["a, b|c", "d|e", "f"]
    (tmp_path / "one.csv").write_text("just_one_column\n1\n2\n")
    with pytest.raises(ValueError, match="could not determine the delimiter of .*one.csv"):
        load_profiles(tmp_path / "one.csv")
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        load_profiles(tmp_path / "missing.parquet")


def test_feature_parsing_keeps_inputs_and_types():
    pdf = pd.DataFrame({"Cells_a": pd.array([1, None, 3], dtype="Int64"), "Cells_b": [True, False, True],
                        "Cells_c": ["4", " 5.5 ", "null"], "Cells_d": [np.nan, 1.0, 2.0]})
    before = pdf.copy()
    out = feature_frame(pdf, list(pdf.columns))
    assert out.schema == pl.Schema(dict.fromkeys(pdf.columns, pl.Float64))
    assert out.rows() == [(1.0, 1.0, 4.0, None), (None, 0.0, 5.5, 1.0), (3.0, 1.0, None, 2.0)]
    pd.testing.assert_frame_equal(pdf, before)
    assert frames.infer_features(pdf) == ["Cells_a", "Cells_b", "Cells_c", "Cells_d"]
    with pytest.raises(ValueError, match="not numeric: 'Cells_e'"):
        frames.infer_features(pl.DataFrame({"Cells_e": [[1.0]]}), ["Cells_e"])
