"""Illumination correction: a known vignetting is recovered and flattened; storage round trip; failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from subcell_screen import ScreenStore
from subcell_screen.io import (
    IlluminationFunctions,
    PlateUnreadableError,
    apply_illumination,
    compute_illumination,
    load_site,
    read_plate,
)

H, W = 96, 128


def vignetting(shape, *, center=(0.5, 0.5), strength=0.6) -> np.ndarray:
    """Radial falloff 1 - strength * (r / r_max)^2, 1 at ``center`` (fractions of height/width)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = center[0] * (h - 1), center[1] * (w - 1)
    r2 = (yy - cy) ** 2 + (xx - cx) ** 2
    return 1.0 - strength * r2 / r2.max()


def _site(rng, shape, vig, *, cells=True) -> np.ndarray:
    """Flat background 1000 plus bright blobs ("cells"), times the vignetting, with shot noise; uint16."""
    img = np.full(shape, 1000.0)
    if cells:
        yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
        for _ in range(6):
            cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
            img += 3000.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (shape[0] / 25) ** 2))
    return rng.poisson(img * vig).astype(np.uint16)


def _write_plate(folder: Path, *, n_sites: int, shape=(H, W), seed=0) -> dict:
    rng = np.random.default_rng(seed)
    vig = {1: vignetting(shape), 2: vignetting(shape, center=(0.3, 0.7), strength=0.4)}
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(1, n_sites + 1):
        for ch in (1, 2):
            tifffile.imwrite(folder / f"r01c{(s - 1) // 9 + 1:02d}f{(s - 1) % 9 + 1:02d}p01-ch{ch}sk1fk1fl1.tiff",
                             _site(rng, shape, vig[ch]), compression="zlib")
    return vig


def _cv(x: np.ndarray) -> float:
    return float(x.std() / x.mean())


@pytest.fixture
def plate(tmp_path):
    vig = _write_plate(tmp_path / "P1" / "Images", n_sites=27)
    return read_plate(tmp_path, channel_names="1=DNA,2=ER"), vig


def test_median_recipe_recovers_and_flattens_vignetting(plate):
    index, vig = plate
    funcs = compute_illumination(index, plate="P1")
    assert isinstance(funcs, IlluminationFunctions) and set(funcs) == {"DNA", "ER"}
    assert funcs.n_sites == 27 and funcs.recipe["method"] == "median" and funcs.recipe["downsample"] == 1
    json.dumps(dict(funcs.recipe))  # storable
    rng = np.random.default_rng(99)
    for name, ch in (("DNA", 1), ("ER", 2)):
        f = funcs[name]
        assert f.shape == (H, W) and f.dtype == np.float32
        assert f.min() == pytest.approx(1.0) and np.percentile(f, 2) == pytest.approx(1.0, abs=1e-3)
        truth = np.maximum(vig[ch] / np.percentile(vig[ch], 2), 1.0)
        assert np.abs(f / truth - 1).max() < 0.06  # the known falloff, within 6 % everywhere
        flat = rng.poisson(20000.0 * vig[ch]).astype(np.uint16)  # a flat field seen through the optics
        from subcell_screen.io import SiteImage

        site = SiteImage(data=flat[None], channel_names=(name,), pixel_size_um=None, record=index.records[0])
        corrected = apply_illumination(site, funcs)
        before, after = _cv(flat.astype(float)), _cv(corrected.data[0])
        assert corrected.data.dtype == np.float32
        assert before > 0.08 and after < before / 5, (name, before, after)
        assert site.data.dtype == np.uint16 and np.array_equal(site.data[0], flat)  # input untouched


def test_mean_recipe_and_site_cap(plate):
    index, vig = plate
    mean = compute_illumination(index, plate="P1", method="mean", channels=["DNA"])
    assert list(mean) == ["DNA"] and mean.recipe["max_sites"] is None and mean.n_sites == 27
    truth = np.maximum(vig[1] / np.percentile(vig[1], 2), 1.0)
    median = compute_illumination(index, plate="P1", channels=["DNA"])
    err_mean = np.abs(mean["DNA"] / truth - 1).max()
    err_median = np.abs(median["DNA"] / truth - 1).max()
    # bright cells pull a plain mean (CellProfiler's default average) off; the median is the robust average
    assert err_median < 0.06 and err_mean < 0.2 and err_median < err_mean / 2, (err_median, err_mean)
    capped = compute_illumination(index, plate="P1", max_sites=5)
    assert capped.n_sites == 5 and capped.recipe["n_sites"] == 5


def test_downsampled_recipe_on_larger_sites(tmp_path):
    shape = (256, 320)
    vig = _write_plate(tmp_path / "BIG", n_sites=9, shape=shape, seed=3)
    index = read_plate(tmp_path, channel_names="1=DNA,2=ER")
    funcs = compute_illumination(index, plate="BIG", downsample=4, smoothing_fraction=0.04)
    assert funcs.recipe["downsample"] == 4 and funcs["DNA"].shape == shape
    truth = np.maximum(vig[1] / np.percentile(vig[1], 2), 1.0)
    assert np.abs(funcs["DNA"] / truth - 1).max() < 0.06
    # smoothing given in µm uses the pixel size
    index_px = read_plate(tmp_path, channel_names="1=DNA,2=ER", pixel_size_um=0.5)
    by_um = compute_illumination(index_px, plate="BIG", downsample=4, smoothing_um=5.0)
    assert by_um.recipe["sigma_px"] == pytest.approx(10.0)


def test_store_round_trip_and_load_site_applies(plate, tmp_path):
    index, _ = plate
    funcs = compute_illumination(index, plate="P1")
    with ScreenStore.create(tmp_path / "screen") as store:
        store.write_illumination("P1", funcs, recipe=funcs.recipe)
        back = store.read_illumination("P1")
        rec_json = store.sql("SELECT recipe FROM illumination WHERE channel = 'DNA'")["recipe"][0]
    assert json.loads(rec_json)["method"] == "median"
    for k in funcs:
        np.testing.assert_array_equal(back[k], funcs[k])
    rec = index.records[4]
    raw = load_site(rec)
    corrected = load_site(rec, illumination=back)
    assert corrected.data.dtype == np.float32 and raw.data.dtype == np.uint16
    np.testing.assert_allclose(corrected.data, raw.data.astype(np.float32) / np.stack([back["DNA"], back["ER"]]),
                               rtol=1e-6)
    # a function for one channel only: the other is converted to float32 unchanged
    partial = load_site(rec, illumination={"er": back["ER"]})
    np.testing.assert_array_equal(partial.data[0], raw.data[0].astype(np.float32))


def test_wrong_shape_function_is_a_site_error(plate):
    from subcell_screen.io import SiteLoadError

    index, _ = plate
    bad = {"DNA": np.ones((10, 10), np.float32)}
    with pytest.raises(ValueError, match=r"illumination function of channel 'DNA' is 10x10 but site"):
        apply_illumination(load_site(index.records[0]), bad)
    with pytest.raises(SiteLoadError, match="illumination correction failed"):
        load_site(index.records[0], illumination=bad)


def test_failed_sites_are_skipped_and_a_dead_plate_raises(tmp_path):
    _write_plate(tmp_path / "P1", n_sites=4)
    (tmp_path / "P1" / "r01c01f02p01-ch1sk1fk1fl1.tiff").write_bytes(b"broken")
    index = read_plate(tmp_path, channel_names="1=DNA,2=ER")
    funcs = compute_illumination(index, plate="P1")
    assert funcs.n_sites == 3 and funcs.recipe["n_failed"] == 1
    for p in (tmp_path / "P1").glob("*ch1*"):
        p.write_bytes(b"broken")
    with pytest.raises(PlateUnreadableError, match=r"plate P1: none of its 4 site\(s\) could be loaded"):
        compute_illumination(index, plate="P1")
    with pytest.raises(ValueError, match="no site of plate 'P9'"):
        compute_illumination(index, plate="P9")
    with pytest.raises(ValueError, match="method must be"):
        compute_illumination(index, plate="P1", method="max")


def test_iter_sites_applies_per_plate_functions(plate):
    from subcell_screen.io import iter_sites

    index, _ = plate
    funcs = compute_illumination(index, plate="P1", max_sites=9)
    out = list(iter_sites(index.records[:3], illumination={"P1": funcs}, workers=2))
    for rec, img in out:
        assert img.data.dtype == np.float32
        np.testing.assert_array_equal(img.data, load_site(rec, illumination=funcs).data)
    other = list(iter_sites(index.records[:1], illumination={"P2": funcs}, workers=0))  # no functions for P1
    assert other[0][1].data.dtype == np.uint16


# -- issue 17 items 3-5: a bad site is excluded from its plate's functions and fails alone ---------------------

def _phenix(folder: Path, s: int, ch: int) -> Path:
    return folder / f"r01c{(s - 1) // 9 + 1:02d}f{(s - 1) % 9 + 1:02d}p01-ch{ch}sk1fk1fl1.tiff"


def _reference(tmp_path, n_sites: int, *, transform=None) -> dict:
    """Functions of the plate's first ``n_sites`` sites (the plate without its bad site)."""
    ref = tmp_path / "ref" / "P1"
    _write_plate(ref, n_sites=n_sites)
    if transform is not None:
        for p in ref.glob("*.tiff"):
            tifffile.imwrite(p, transform(tifffile.imread(p)))
    return dict(compute_illumination(read_plate(ref.parent, channel_names="1=DNA,2=ER"), plate="P1"))


def test_site_of_another_size_is_excluded_and_fails_alone(tmp_path):
    from subcell_screen.io import SiteLoadError, iter_sites

    folder = tmp_path / "img" / "P1"
    _write_plate(folder, n_sites=27)
    rng = np.random.default_rng(5)
    for ch in (1, 2):  # one more site, 64x80, that comes first on the plate (A01 field 0)
        tifffile.imwrite(folder / f"r01c01f00p01-ch{ch}sk1fk1fl1.tiff", rng.integers(0, 4000, (64, 80), np.uint16))
    index = read_plate(folder.parent, channel_names="1=DNA,2=ER")
    odd = index.records[0]
    assert odd.key == ("P1", "A01", 0)
    funcs = compute_illumination(index, plate="P1")          # no ValueError: the plate goes on
    assert funcs.n_sites == 27 and set(funcs.excluded) == {odd.key}
    assert "64x80" in funcs.excluded[odd.key] and "96x128" in funcs.excluded[odd.key]
    assert funcs.recipe["n_excluded"] == 1
    ref = _reference(tmp_path, 27)
    for c in ("DNA", "ER"):  # other sites' correction is exactly that of the plate without the odd site
        np.testing.assert_array_equal(funcs[c], ref[c])
    results = {r.key: res for r, res in iter_sites(index, illumination=funcs, workers=0)}
    assert isinstance(results[odd.key], SiteLoadError) and "64x80" in str(results[odd.key])
    assert sum(not isinstance(v, SiteLoadError) for v in results.values()) == 27


def test_all_nan_site_is_excluded_and_fails(tmp_path):
    from subcell_screen.io import NonFiniteSiteError, SiteLoadError

    folder = tmp_path / "img" / "P1"
    _write_plate(folder, n_sites=10)
    for p in folder.glob("*.tiff"):  # a float32 plate (e.g. exported by another tool)
        tifffile.imwrite(p, tifffile.imread(p).astype(np.float32))
    for ch in (1, 2):
        tifffile.imwrite(_phenix(folder, 10, ch), np.full((H, W), np.nan, np.float32))
    index = read_plate(folder.parent, channel_names="1=DNA,2=ER")
    nan_key = ("P1", "A02", 1)
    assert index.records[-1].key == nan_key
    funcs = compute_illumination(index, plate="P1")
    ref = _reference(tmp_path, 9, transform=lambda a: a.astype(np.float32))
    for c in ("DNA", "ER"):
        assert funcs[c].max() > 1.3  # correction stays on
        np.testing.assert_array_equal(funcs[c], ref[c])
    assert set(funcs.excluded) == {nan_key} and "NaN" in funcs.excluded[nan_key]
    with pytest.raises(NonFiniteSiteError, match=r"channel 'DNA' has 12,288 of 12,288 pixels NaN") as err:
        load_site(index.records[-1])
    assert isinstance(err.value, SiteLoadError) and err.value.path.endswith("r01c02f01p01-ch1sk1fk1fl1.tiff")


def test_a_few_infinite_pixels_fail_the_site(tmp_path):
    from subcell_screen.io import NonFiniteSiteError

    folder = tmp_path / "P1"
    _write_plate(folder, n_sites=1)
    a = tifffile.imread(_phenix(folder, 1, 2)).astype(np.float64)
    a[3, 4], a[5, 6] = np.inf, np.nan
    tifffile.imwrite(_phenix(folder, 1, 2), a)
    tifffile.imwrite(_phenix(folder, 1, 1), tifffile.imread(_phenix(folder, 1, 1)).astype(np.float64))
    rec = read_plate(tmp_path, channel_names="1=DNA,2=ER").records[0]
    with pytest.raises(NonFiniteSiteError, match=r"channel 'ER' has 2 of 12,288 pixels NaN or infinite"):
        load_site(rec)
