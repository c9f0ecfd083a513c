"""The compiled grouped-median kernel: networks, exactness against numpy/pandas, NaN and edge values."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from subcell_screen.profiles import _aggregate, _median, reduce_groups

pytest.importorskip("numba")


@pytest.mark.parametrize("n", range(1, 17))
def test_median_network_selects_middle_on_all_zero_one_inputs(n):
    # 0-1 principle: a comparator network that puts the k-th order statistic in place for every 0/1 input
    # does so for every input
    net = _median.median_network(n)
    inputs = np.array(list(itertools.product((0, 1), repeat=n)), dtype=np.int8)
    v = inputs.copy()
    for i, j in net:
        lo, hi = np.minimum(v[:, i], v[:, j]), np.maximum(v[:, i], v[:, j])
        v[:, i], v[:, j] = lo, hi
    srt = np.sort(inputs, axis=1)
    for k in {(n - 1) // 2, n // 2}:
        assert np.array_equal(v[:, k], srt[:, k])


@pytest.mark.parametrize("n", [17, 31, 64, 85, 100, 257])
def test_median_network_random_inputs(n):
    rng = np.random.default_rng(n)
    net = _median.median_network(n)
    full = len(_median._batcher_pairs(n))
    assert 0 < len(net) <= full
    v = rng.normal(size=(200, n))
    srt = np.sort(v, axis=1)
    for i, j in net:
        lo, hi = np.minimum(v[:, i], v[:, j]), np.maximum(v[:, i], v[:, j])
        v[:, i], v[:, j] = lo, hi
    assert np.array_equal(v[:, (n - 1) // 2], srt[:, (n - 1) // 2])
    assert np.array_equal(v[:, n // 2], srt[:, n // 2])


def _groups(rng, n_groups, lo, hi):
    counts = rng.integers(lo, hi + 1, n_groups)
    codes = rng.permutation(np.repeat(np.arange(n_groups), counts))
    return codes


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_equals_numpy_median_bitwise(dtype):
    rng = np.random.default_rng(0)
    codes = _groups(rng, 60, 1, 40)
    n, d = codes.size, 37  # width not a multiple of the lane count
    x = (rng.normal(size=(n, d)) * rng.uniform(1e-3, 1e3, d)).astype(dtype)
    x[rng.random((n, d)) < 0.05] = 0.0
    x[rng.random((n, d)) < 0.02] = -0.0
    x[rng.random((n, d)) < 0.01] = np.inf
    x[rng.random((n, d)) < 0.01] = -np.inf
    x[5, 3] = np.finfo(dtype).max
    x[6, 3] = -np.finfo(dtype).max
    x[7, 4] = np.finfo(dtype).tiny / 4  # subnormal
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=60)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    groups = np.arange(60)
    med, bad = _median.grouped_median_network(x, order, starts, counts, groups, threads=2)
    assert not bad.any()
    ref = np.stack([np.median(x[codes == g].astype(np.float64), axis=0) for g in groups])
    assert med.dtype == np.float64
    np.testing.assert_array_equal(med, ref)


def test_kernel_flags_groups_with_nan_and_reduce_groups_skips_them_like_pandas():
    import pandas as pd
    rng = np.random.default_rng(1)
    codes = _groups(rng, 30, 2, 25)
    x = rng.normal(size=(codes.size, 20)).astype(np.float32)
    x[codes == 3, 7] = np.nan  # a whole group-feature missing
    x[np.flatnonzero(codes == 4)[0], 2] = np.nan
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=30)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    _, bad = _median.grouped_median_network(x, order, starts, counts, np.arange(30))
    assert set(np.flatnonzero(bad)) == {3, 4}
    got = reduce_groups(x, codes, 30, "median")
    ref = pd.DataFrame(x.astype(np.float64)).groupby(codes).median().to_numpy()
    np.testing.assert_array_equal(got, ref)
    assert np.isnan(got[3, 7]) and not np.isnan(got[4, 2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reduce_groups_same_with_and_without_kernel(monkeypatch, dtype):
    rng = np.random.default_rng(2)
    codes = _groups(rng, 40, 0, 90)  # includes empty groups
    x = rng.normal(size=(codes.size, 300)).astype(dtype)
    x[rng.random(x.shape) < 0.001] = np.nan
    with_kernel = reduce_groups(x, codes, 40, "median")
    monkeypatch.setattr(_median, "available", lambda: False)
    without = reduce_groups(x, codes, 40, "median")
    np.testing.assert_array_equal(with_kernel, without)


def test_reduce_groups_groups_beyond_the_network_size(monkeypatch):
    monkeypatch.setattr(_median, "MAX_NETWORK_SIZE", 8)
    rng = np.random.default_rng(3)
    codes = np.repeat(np.arange(4), [3, 8, 9, 20])
    x = rng.normal(size=(codes.size, 5)).astype(np.float32)
    got = reduce_groups(x, codes, 4, "median")
    ref = np.stack([np.median(x[codes == g].astype(np.float64), axis=0) for g in range(4)])
    np.testing.assert_array_equal(got, ref)


def test_kernel_rejects_bad_input():
    x = np.zeros((4, 3), dtype=np.float32)
    order = np.arange(4)
    counts = np.array([4])
    with pytest.raises(TypeError, match="float32 or float64"):
        _median.grouped_median_network(x.astype(np.int32), order, np.array([0]), counts, np.array([0]))
    with pytest.raises(ValueError, match="C-contiguous"):
        _median.grouped_median_network(np.asfortranarray(np.zeros((4, 3), np.float32)), order, np.array([0]),
                                       counts, np.array([0]))
    assert _aggregate._THREADS >= 1


def test_aggregate_array_reads_many_chunks_in_place_like_one_block():
    import polars as pl

    from subcell_screen.profiles import aggregate_array

    rng = np.random.default_rng(4)
    parts = []
    for _ in range(7):  # one frame per "file", as pl.scan_parquet(files).collect() gives
        n = int(rng.integers(3, 30))
        x = rng.normal(size=(n, 24)).astype(np.float32)
        parts.append(pl.DataFrame({"plate": ["P"] * n, "well": rng.choice(["A01", "A02", "B01"], n)}).with_columns(
            pl.Series("features", x, dtype=pl.Array(pl.Float32, 24))))
    parts[3] = parts[3].slice(2)  # a chunk with an offset into its buffers
    many = pl.concat(parts, rechunk=False)
    assert many["features"].n_chunks() == 7
    rows = _aggregate._array_rows(many, "features")
    assert isinstance(rows, _median.Rows)
    one = many.rechunk()
    np.testing.assert_array_equal(rows.stack(), one["features"].to_numpy())
    got = aggregate_array(many, by=["plate", "well"])
    ref = aggregate_array(one, by=["plate", "well"])
    assert got.equals(ref)
    x = one["features"].to_numpy().astype(np.float64)
    wells = one["well"].to_numpy()
    for w, row in zip(got["well"], got["features"].to_numpy()):
        np.testing.assert_array_equal(row, np.median(x[wells == w], axis=0))


def test_aggregate_array_inner_nulls_read_as_missing():
    import polars as pl

    from subcell_screen.profiles import aggregate_array

    df = pl.DataFrame({"well": ["A", "A", "A"], "features": [[1.0, 5.0], [2.0, None], [4.0, 7.0]]},
                      schema={"well": pl.String, "features": pl.Array(pl.Float32, 2)})
    assert not isinstance(_aggregate._array_rows(df, "features"), _median.Rows)
    out = aggregate_array(df, by="well")
    np.testing.assert_array_equal(out["features"].to_numpy()[0], [2.0, 6.0])


def test_network_pruning_numba_equals_python():
    for n in (2, 3, 9, 85, 300):
        pairs = _median._batcher_pairs(n)
        ref = _median._prune_py(pairs, (n - 1) // 2, n // 2)
        got = _median._prune_numba()(pairs, (n - 1) // 2, n // 2)
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("method", ["median", "mean"])
def test_aggregate_float32_wide_equals_float64_and_pandas(method):
    import pandas as pd
    import polars as pl

    from subcell_screen.profiles import aggregate
    rng = np.random.default_rng(5)
    n = 400
    x = rng.normal(size=(n, 12)).astype(np.float32)
    x[rng.random(x.shape) < 0.02] = np.nan
    names = [f"Cells_f{i}" for i in range(12)]
    wells = rng.choice([f"A{i:02d}" for i in range(1, 9)], n)
    f32 = pl.DataFrame({"Metadata_Well": wells}).with_columns(
        [pl.Series(nm, x[:, i]) for i, nm in enumerate(names)])
    f32 = f32.with_columns(pl.col("Cells_f3").fill_nan(None))  # nulls and NaN both missing
    f64 = f32.with_columns(pl.col(names).cast(pl.Float64))
    got32 = aggregate(f32, by="Metadata_Well", method=method)
    got64 = aggregate(f64, by="Metadata_Well", method=method)
    assert got32.equals(got64)
    ref = pd.DataFrame(x.astype(np.float64), columns=names).groupby(wells).agg(method)
    np.testing.assert_allclose(got32.select(names).to_numpy(), ref.to_numpy(), rtol=0 if method == "median" else 1e-12)


def test_reduce_groups_rejects_codes_that_do_not_fit():
    x = np.zeros((4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="one entry per row"):
        reduce_groups(x, np.array([0, 1, 0]), 2, "median")
    with pytest.raises(ValueError, match=r"codes must lie in 0\.\.1, got 0\.\.2"):
        reduce_groups(x, np.array([0, 1, 2, 0]), 2, "median")
