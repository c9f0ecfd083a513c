"""Tests for subcell_screen.profiles.read_site_arrays: the store's per-site Parquet files read into numpy."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from subcell_screen.profiles import _read, read_site_arrays, site_profiles
from subcell_screen.profiles._aggregate import aggregate_array
from subcell_screen.store import ScreenStore

KEYS = {"plate": pl.String, "well": pl.String, "site": pl.Int64, "cell_id": pl.Int64}


def _cells(plate, well, site, n, d, rng, dtype=pl.Float32):
    x = rng.normal(size=(n, d)).astype(np.float32 if dtype == pl.Float32 else np.float64)
    x[:, 0] = -0.0  # signed zeros survive
    return pl.DataFrame({"plate": [plate] * n, "well": [well] * n, "site": [site] * n,
                         "cell_id": list(range(1, n + 1))}, schema=KEYS).with_columns(
        pl.Series("features", x, dtype=pl.Array(dtype, d)))


@pytest.fixture()
def polars_calls(monkeypatch):
    """Files the reader hands to polars (0 when every file takes the fast path)."""
    calls = []
    original = _read._read_polars

    def spy(path, column):
        calls.append(path.name)
        return original(path, column)

    monkeypatch.setattr(_read, "_read_polars", spy)
    return calls


def _store(tmp_path, sizes, d=5, dtype=pl.Float32, seed=0):
    rng = np.random.default_rng(seed)
    store = ScreenStore.create(tmp_path / "screen")
    store.register_feature_set("fs", kind="subcell", feature_names=[f"e{i}" for i in range(d)])
    for (plate, well, site), n in sizes.items():
        store.write_cell_features("fs", _cells(plate, well, site, n, d, rng, dtype), plate=plate, well=well,
                                  site=site)
    return store


def _reference(files):
    """What polars reads from the same files, in the same order."""
    parts = [pl.read_parquet(f) for f in files]
    return pl.concat([p for p in parts if p.height])


SIZES = {("P1", "A01", 1): 3, ("P1", "A01", 2): 0, ("P1", "B02", 1): 1, ("P1", "B02", 3): 250,
         ("P2", "A01", 1): 7, ("P2", "C11", 12): 2}


@pytest.mark.parametrize("dtype", [pl.Float32, pl.Float64])
def test_fast_path_reads_what_polars_reads(tmp_path, polars_calls, dtype):
    store = _store(tmp_path, SIZES, d=64 if dtype == pl.Float32 else 9, dtype=dtype)
    files = store.cell_feature_files("fs")
    got = read_site_arrays(files, threads=2)
    ref = _reference(files)
    assert polars_calls == []  # every file decoded by the fast path (not a test of polars against itself)
    assert got.x.dtype == (np.float32 if dtype == pl.Float32 else np.float64)
    assert np.array_equal(got.x, ref["features"].to_numpy())
    assert np.signbit(got.x[:, 0]).all()
    assert got.sites.rows() == [(p, w, s, n) for (p, w, s), n in sorted(SIZES.items()) if n]
    assert got.offsets.tolist() == [0, 3, 4, 254, 261, 263]
    assert np.array_equal(got.site_codes(), np.repeat(np.arange(5), [3, 1, 250, 7, 2]))


def test_site_profiles_equal_aggregate_array(tmp_path):
    store = _store(tmp_path, SIZES, d=6)
    files = store.cell_feature_files("fs")
    arrays = read_site_arrays(files)
    for method in ("median", "mean"):
        ours = site_profiles(arrays, method=method)
        ref = aggregate_array(pl.scan_parquet(files), by=["plate", "well", "site"], method=method)
        assert ours.equals(ref)


def test_files_that_are_not_the_plain_layout_go_to_polars(tmp_path, polars_calls):
    store = _store(tmp_path, {("P1", "A01", 1): 4, ("P1", "A02", 1): 5}, d=4)
    rng = np.random.default_rng(1)
    # keys in the file differ from its path: the footer statistics do not prove them, polars reads the rows
    odd = pl.concat([_cells("P1", "B07", 2, 3, 4, rng), _cells("P1", "B08", 2, 2, 4, rng)])
    store.write_cell_features("fs", odd, plate="P1", well="A03", site=1)
    # a file written by pyarrow with dictionary-encoded values (another schema encoding, too)
    table = _cells("P1", "A04", 1, 6, 4, rng).to_arrow()
    pq.write_table(table, store.cells_dir("fs", "P1") / "A04_s1.parquet", use_dictionary=True)
    # (a file the store did not write is not in its manifest: read it by path)
    files = store.cell_feature_files("fs") + [store.cells_dir("fs", "P1") / "A04_s1.parquet"]
    got = read_site_arrays(files)
    assert sorted(polars_calls) == ["A03_s1.parquet", "A04_s1.parquet"]
    assert got.sites.rows() == [("P1", "A01", 1, 4), ("P1", "A02", 1, 5), ("P1", "B07", 2, 3), ("P1", "B08", 2, 2),
                                ("P1", "A04", 1, 6)]
    assert np.array_equal(got.x, _reference(files)["features"].to_numpy())


def _page_values(path, column=4) -> list[int]:
    """Values per data page of a column chunk."""
    meta = pq.ParquetFile(path).metadata.row_group(0).column(column)
    data = path.read_bytes()
    pos, end, out = meta.data_page_offset, meta.data_page_offset + meta.total_compressed_size, []
    while pos < end:
        header, pos = _read._struct(data, pos)
        pos += header[3]
        out.append(header[5][1] if 5 in header else header[8][1])
    return out


@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_pyarrow_files_with_many_pages(tmp_path, polars_calls, version):
    """pyarrow-written files (data page v1 or v2, small pages): still the fast path, rows across pages."""
    rng = np.random.default_rng(2)
    folder = tmp_path / "cells" / "fs" / "plate=P9"
    folder.mkdir(parents=True)
    frames = []
    for site in (1, 2):
        df = _cells("P9", "H12", site, 300, 13, rng)
        frames.append(df)
        pq.write_table(df.to_arrow(), folder / f"H12_s{site}.parquet", data_page_version=version,
                       use_dictionary=["plate", "well"], compression="zstd", data_page_size=4096,
                       write_statistics=True)
    pages = _page_values(folder / "H12_s1.parquet")
    assert len(pages) >= 4 and sum(pages) == 300 * 13
    got = read_site_arrays(sorted(folder.glob("*.parquet")))
    assert polars_calls == []
    assert np.array_equal(got.x, pl.concat(frames)["features"].to_numpy())
    assert got.sites.rows() == [("P9", "H12", 1, 300), ("P9", "H12", 2, 300)]


def test_bad_columns_are_reported(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "cells" / "fs" / "plate=P1"
    folder.mkdir(parents=True)
    df = _cells("P1", "A01", 1, 3, 4, rng)
    df.with_columns(pl.col("features").cast(pl.List(pl.Float32))).write_parquet(folder / "A01_s1.parquet")
    with pytest.raises(ValueError, match="fixed-width float array"):
        read_site_arrays([folder / "A01_s1.parquet"])
    df.with_columns(pl.when(pl.col("cell_id") == 2).then(None).otherwise(pl.col("features")).alias("features")
                    ).write_parquet(folder / "A01_s2.parquet")
    with pytest.raises(ValueError, match="null rows"):
        read_site_arrays([folder / "A01_s2.parquet"])
    _cells("P1", "A02", 1, 2, 5, rng).write_parquet(folder / "A02_s1.parquet")
    df.write_parquet(folder / "A01_s3.parquet")
    with pytest.raises(ValueError, match="different widths"):
        read_site_arrays([folder / "A01_s3.parquet", folder / "A02_s1.parquet"])


def test_thrift_pattern_of_paths():
    assert _read._path_pattern(["plate"]) == b"\x19\x18\x05plate"
    assert _read._path_pattern(["features", "list", "element"]) == b"\x19\x38\x08features\x04list\x07element"
    assert _read._enc_varint(3056) == b"\xf0\x17"
    data = pa.py_buffer(b"\xf0\x17")
    assert _read._varint(memoryview(data).cast("B"), 0) == (3056, 2)


def test_level_checks_follow_rows_across_page_boundaries():
    layout = _read._FastLayout(column="features", width=4, dtype=np.dtype("<f4"), prefix=b"", max_def=3,
                               key_patterns={}, column_pattern=b"", leaf_patterns=[])
    # a page starting 5 values into the data (inside the 2nd row): levels 1 1 1 0 1 1 1 0
    bits = [(5 + i) % 4 != 0 for i in range(8)]
    packed = bytes([0x03, sum(b << i for i, b in enumerate(bits))])  # one bit-packed group of 8
    layout._check_rep(memoryview(packed), 0, 2, 8, seen=5)
    with pytest.raises(ValueError, match="rows are not 4 values long"):
        layout._check_rep(memoryview(packed), 0, 2, 8, seen=4)
    run = bytes([16 << 1, 3])  # RLE: 16 x level 3
    layout._check_def(memoryview(run), 0, 2, 16)
    with pytest.raises(ValueError, match="missing"):
        layout._check_def(memoryview(bytes([16 << 1, 2])), 0, 2, 16)
    assert _read._levels(memoryview(bytes([0x03, 0b11100100])), 0, 2, 4, 2).tolist() == [0, 1, 2, 3]
