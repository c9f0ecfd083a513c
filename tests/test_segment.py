"""Segmentation API, classical segmenter, per-cell tables, QC and store writes (no Cellpose weights needed)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from subcell_screen.channels import custom_channel_map, preset
from subcell_screen.io import SiteImage, SiteRecord
from subcell_screen.segment import (
    CELLS_SCHEMA,
    ClassicalParams,
    Segmentation,
    SegmentationFailure,
    cells_table,
    match_labels,
    pair_cells_nuclei,
    segment_cells,
    segment_nuclei,
    segment_site,
    segment_sites,
    segmentation_qc,
    write_segmentation,
)


def blobs(shape=(200, 260), centers=((50, 60), (60, 180), (140, 100), (150, 200)), radius=12.0,
          cell_radius=26.0, seed=0):
    """Synthetic nuclei (discs) and cytoplasm (larger discs) with noise; returns images and true labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    nuc = np.zeros(shape, np.float32)
    cyto = np.zeros(shape, np.float32)
    truth = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centers, start=1):
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        truth[d2 <= radius ** 2] = k
        nuc += 1000.0 * (d2 <= radius ** 2)
        cyto += 300.0 * (d2 <= cell_radius ** 2)
    nuc = nuc + 100 + rng.normal(0, 10, shape)
    cyto = cyto + 100 + rng.normal(0, 10, shape)
    return nuc.astype(np.float32), cyto.astype(np.float32), truth


def make_site(channels: dict[str, np.ndarray], *, pixel_size_um=0.6, plate="P1", well="B02", site=3):
    names = tuple(channels)
    rec = SiteRecord(plate=plate, well=well, site=site, channels={n: f"{n}.tif" for n in names},
                     pixel_size_um=pixel_size_um, reader="test")
    return SiteImage(data=np.stack(list(channels.values())), channel_names=names, pixel_size_um=pixel_size_um,
                     record=rec)


CMAP = custom_channel_map(channels=["DNA", "AGP"], model_channels="bg", slots={"b": "DNA", "g": "AGP"},
                          nucleus="DNA", cytoplasm="AGP")


# -- segment_nuclei / segment_cells ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64])
def test_segment_nuclei_any_dtype_finds_each_disc(dtype):
    nuc, _, truth = blobs()
    img = nuc / nuc.max() * (200 if dtype == np.uint8 else 4000)
    img = img.astype(dtype)
    before = img.copy()
    labels = segment_nuclei(img, pixel_size_um=0.6)
    assert labels.dtype == np.int32 and labels.shape == img.shape
    np.testing.assert_array_equal(img, before)  # input not mutated
    r = match_labels(labels, truth)
    assert r.f1 == 1.0 and r.mean_matched_iou > 0.85


def test_segment_nuclei_splits_touching_nuclei():
    # two discs of radius 12 px whose centres are 20 px apart overlap in a neck
    nuc, _, truth = blobs(shape=(100, 120), centers=((50, 45), (50, 65)), radius=12)
    truth = np.where(truth > 0, 1 + (np.mgrid[:100, :120][1] >= 55), 0)
    labels = segment_nuclei(nuc, pixel_size_um=0.6)
    assert len(np.unique(labels)) - 1 == 2
    assert match_labels(labels, truth).f1 == 1.0


def test_segment_nuclei_empty_and_constant_images():
    assert segment_nuclei(np.zeros((64, 64), np.uint16), pixel_size_um=0.6).max() == 0
    assert segment_nuclei(np.full((64, 64), 7.0), pixel_size_um=0.6).max() == 0
    rng = np.random.default_rng(1)
    noise = rng.normal(100, 5, (128, 128)).astype(np.float32)
    assert segment_nuclei(noise, pixel_size_um=0.6).max() <= 3  # pure noise: (almost) nothing


def test_segment_cells_ids_match_and_cells_contain_nuclei():
    nuc, cyto, truth = blobs()
    nuclei, cells = segment_cells(nuc, cyto, pixel_size_um=0.6)
    assert nuclei.dtype == cells.dtype == np.int32
    ids = np.unique(nuclei)[1:]
    np.testing.assert_array_equal(ids, np.unique(cells)[1:])
    np.testing.assert_array_equal(ids, np.arange(1, 5))
    assert (cells[nuclei > 0] == nuclei[nuclei > 0]).all()
    # cells follow the cytoplasm discs (radius 26 px): area within 15 %
    area = np.bincount(cells.ravel())[1:]
    np.testing.assert_allclose(area, np.pi * 26 ** 2, rtol=0.15)


def test_segment_cells_without_cytoplasm_expands_nuclei_by_fixed_distance():
    nuc, _, _ = blobs()
    nuclei, cells = segment_cells(nuc, None, pixel_size_um=0.6)
    # 6 µm at 0.6 µm/px = 10 px: disc of radius ~12 grows to ~22 px
    area = np.bincount(cells.ravel())[1:]
    np.testing.assert_allclose(area, np.pi * 22 ** 2, rtol=0.12)
    assert (cells[nuclei > 0] == nuclei[nuclei > 0]).all()


def test_parameters_scale_with_pixel_size():
    """The same physical scene sampled at 0.6 and 0.3 µm/px gives the same nuclei (in µm²)."""
    nuc, _, _ = blobs(shape=(200, 260), radius=12)
    fine, _, _ = blobs(shape=(400, 520), centers=((100, 120), (120, 360), (280, 200), (300, 400)), radius=24)
    a = segment_nuclei(nuc, pixel_size_um=0.6)
    b = segment_nuclei(fine, pixel_size_um=0.3)
    area_a = np.bincount(a.ravel())[1:] * 0.36
    area_b = np.bincount(b.ravel())[1:] * 0.09
    assert len(area_a) == len(area_b) == 4
    np.testing.assert_allclose(np.sort(area_a), np.sort(area_b), rtol=0.1)


def test_hpa_scale_uses_working_resolution_and_keeps_shape():
    # HPA-like: 0.08 µm/px, nuclei 12 µm = 150 px across
    nuc, cyto, truth = blobs(shape=(600, 700), centers=((200, 200), (400, 500)), radius=75, cell_radius=150)
    nuclei, cells = segment_cells(nuc, cyto, pixel_size_um=0.08)
    assert nuclei.shape == nuc.shape
    r = match_labels(nuclei, truth)
    assert r.f1 == 1.0 and r.mean_matched_iou > 0.9
    assert (cells[nuclei > 0] == nuclei[nuclei > 0]).all()


def test_bad_inputs_raise_clear_errors():
    nuc, cyto, _ = blobs()
    with pytest.raises(ValueError, match="2-D"):
        segment_nuclei(nuc[None], pixel_size_um=0.6)
    with pytest.raises(ValueError, match="pixel size"):
        segment_nuclei(nuc, pixel_size_um=0)
    with pytest.raises(ValueError, match="unknown segmentation method"):
        segment_nuclei(nuc, pixel_size_um=0.6, method="stardist")
    with pytest.raises(ValueError, match="only used with method='cellpose'"):
        segment_nuclei(nuc, pixel_size_um=0.6, model=object())
    with pytest.raises(ValueError, match="differs"):
        segment_cells(nuc, cyto[:10], pixel_size_um=0.6)
    with pytest.raises(ValueError, match="nucleus_diameter_um"):
        ClassicalParams(nucleus_diameter_um=0)


def test_cellpose_method_without_weights_fails_loudly_never_falls_back():
    nuc, _, _ = blobs()
    from subcell_screen.segment import CellposeWeightsError

    with pytest.raises(CellposeWeightsError, match="classical"):
        segment_nuclei(nuc, pixel_size_um=0.6, method="cellpose")


# -- pairing -----------------------------------------------------------------------------------------------

def test_pair_cells_nuclei_matches_ids_and_handles_orphans():
    cells = np.zeros((40, 60), np.int32)
    cells[0:20, 0:20] = 7     # cell with one nucleus
    cells[0:20, 30:60] = 3    # cell with two nuclei
    cells[25:40, 0:20] = 9    # cell without a nucleus -> dropped
    nuclei = np.zeros_like(cells)
    nuclei[5:10, 5:10] = 2
    nuclei[5:10, 35:40] = 5
    nuclei[5:10, 45:50] = 6
    nuclei[30:35, 40:45] = 4  # nucleus in no cell -> becomes its own cell
    n_out, c_out = pair_cells_nuclei(nuclei, cells)
    np.testing.assert_array_equal(np.unique(c_out), [0, 1, 2, 3])
    np.testing.assert_array_equal(np.unique(n_out), [0, 1, 2, 3])
    assert (c_out[n_out > 0] == n_out[n_out > 0]).all()
    assert (c_out[25:40, 0:20] == 0).all()
    two = c_out[0, 30]
    assert (n_out[5:10, 35:40] == two).all() and (n_out[5:10, 45:50] == two).all()
    assert (c_out[30:35, 40:45] == n_out[30:35, 40:45]).all() and n_out[32, 42] > 0


# -- per-cell table and QC ---------------------------------------------------------------------------------

def test_cells_table_columns_and_values_against_skimage():
    from skimage.measure import regionprops

    nuc, cyto, _ = blobs(centers=((50, 60), (60, 180), (140, 100), (188, 240)))  # last one touches the border
    nuclei, cells = segment_cells(nuc, cyto, pixel_size_um=0.5)
    t = cells_table(nuclei, cells, pixel_size_um=0.5, plate="P", well="A01", site=2)
    assert t.schema == pl.Schema(CELLS_SCHEMA)
    assert t["cell_id"].to_list() == [1, 2, 3, 4]
    assert t["nucleus_id"].to_list() == [1, 2, 3, 4]
    for row, rp in zip(t.iter_rows(named=True), regionprops(cells)):
        assert row["cell_area_um2"] == pytest.approx(rp.area * 0.25)
        assert (row["centroid_y"], row["centroid_x"]) == pytest.approx(rp.centroid)
        assert (row["bbox_y0"], row["bbox_x0"], row["bbox_y1"], row["bbox_x1"]) == rp.bbox
        assert row["nucleus_area_um2"] == pytest.approx((nuclei == rp.label).sum() * 0.25)
        assert row["solidity"] == pytest.approx(rp.solidity)
        assert row["eccentricity"] == pytest.approx(rp.eccentricity)
    assert t["touches_border"].to_list() == [False, False, False, True]
    qc = segmentation_qc(t)
    area = t["cell_area_um2"].to_numpy()
    assert qc.n_cells == 4 and qc.n_border == 1 and qc.border_fraction == 0.25 and not qc.empty
    assert qc.area_median_um2 == pytest.approx(np.median(area))
    assert qc.area_iqr_um2 == pytest.approx(np.percentile(area, 75) - np.percentile(area, 25))


def test_empty_site_table_and_qc():
    t = cells_table(np.zeros((8, 8), np.int32), np.zeros((8, 8), np.int32), pixel_size_um=0.6)
    assert t.height == 0 and t.schema == pl.Schema(CELLS_SCHEMA)
    qc = segmentation_qc(t)
    assert qc.empty and qc.n_cells == 0 and np.isnan(qc.area_median_um2)


# -- sites -------------------------------------------------------------------------------------------------

def test_segment_site_uses_channel_map_and_site_pixel_size():
    nuc, cyto, truth = blobs()
    site = make_site({"AGP": cyto, "DNA": nuc})  # channel order differs from the map's
    seg = segment_site(site, channel_map=CMAP)
    assert isinstance(seg, Segmentation)
    assert seg.key == ("P1", "B02", 3) and seg.method == "classical" and seg.pixel_size_um == 0.6
    assert match_labels(seg.nuclei, truth).f1 == 1.0
    assert seg.cells_table["plate"].unique().to_list() == ["P1"]
    assert seg.cells_table["site"].unique().to_list() == [3]
    assert seg.qc.n_cells == 4


def test_segment_site_cellpainting_preset_and_missing_pixel_size():
    nuc, cyto, _ = blobs()
    z = np.zeros_like(nuc)
    site = make_site({"DNA": nuc, "ER": z, "RNA": z, "AGP": cyto, "Mito": z}, pixel_size_um=None)
    with pytest.raises(ValueError, match=r"P1/B02/s3.*pixel size"):
        segment_site(site, channel_map=preset("cellpainting"))
    seg = segment_site(site, channel_map=preset("cellpainting"), pixel_size_um=0.6)
    assert seg.n_cells == 4


def test_segment_sites_records_failures_and_continues():
    nuc, cyto, _ = blobs()
    good = make_site({"DNA": nuc, "AGP": cyto}, site=1)
    bad = make_site({"DNA": nuc, "RNA": cyto}, site=2)  # no AGP channel
    out = list(segment_sites([good, bad, make_site({"DNA": nuc, "AGP": cyto}, site=3)], channel_map=CMAP))
    assert [type(o).__name__ for o in out] == ["Segmentation", "SegmentationFailure", "Segmentation"]
    assert out[1].key == ("P1", "B02", 2) and "AGP" in out[1].error


def test_write_segmentation_to_store(tmp_path):
    from subcell_screen.store import ScreenStore

    nuc, cyto, _ = blobs()
    seg = segment_site(make_site({"DNA": nuc, "AGP": cyto}), channel_map=CMAP)
    with ScreenStore.create(tmp_path / "screen") as store:
        store.register_sites(pl.DataFrame({"plate": ["P1"], "well": ["B02"], "site": [3]},
                                          schema_overrides={"site": pl.Int32}))
        write_segmentation(store, seg)
        write_segmentation(store, seg)  # idempotent
        n, c = store.read_masks("P1", "B02", 3)
        np.testing.assert_array_equal(c, seg.cells)
        np.testing.assert_array_equal(n, seg.nuclei)
        cells = store.read_table("cells", plate="P1")
        assert cells.height == 4 and cells.sort("cell_id")["cell_id"].to_list() == [1, 2, 3, 4]
        qc = store.read_table("segmentation_qc")
        assert qc.height == 1 and qc["n_cells"][0] == 4
        st = store.read_table("site_stages")
        assert st["status"].to_list() == ["ok"] and st["n_cells"].to_list() == [4]
        assert store.sql("SELECT method FROM masks")["method"].to_list() == ["classical"]
        write_segmentation(store, SegmentationFailure(0, "ValueError: boom", "P1", "B02", 3))
        assert store.read_table("site_stages")["status"].to_list() == ["failed"]
        assert store.read_table("sites")["status"].to_list() == ["failed"]


def test_import_is_lazy():
    code = ("import sys, subcell_screen.segment, subcell_screen.crops; "
            "print(sorted(m for m in ('torch', 'cellpose', 'skimage', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_segmenter_from_config(tmp_path, caplog):
    from subcell_screen.config import SegmentationSection
    from subcell_screen.segment import CellposeWeightsError, segmenter_from_config

    kw = segmenter_from_config(SegmentationSection(nucleus_diameter_um=15, min_nucleus_area_um2=20))
    assert kw.method == "classical" and kw.model is None
    assert kw.params.nucleus_diameter_um == 15 and kw.params.min_nucleus_area_um2 == 20
    with pytest.raises(CellposeWeightsError, match="classical"):
        segmenter_from_config(SegmentationSection(method="cellpose"))
    with pytest.raises(CellposeWeightsError, match="does not exist"):
        segmenter_from_config(SegmentationSection(method="cellpose", weights=tmp_path / "w.pth"))
    kw = segmenter_from_config(SegmentationSection(method="cellpose", allow_fallback=True))
    assert kw.method == "classical" and "allow_fallback" in kw.fallback
    assert "allow_fallback" in caplog.text
