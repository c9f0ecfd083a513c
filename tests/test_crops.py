"""Cell crops at SubCell scale: geometry (centre, padding, rescale factor, mask dilation), equivalence with
rescale-then-crop, the deferred (GPU-resize) mode, and physical size on a real Cell Painting site."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import tifffile

from subcell_screen.crops import HPA_PIXEL_SIZE_UM, CropBatch, crop_scale, disk, iter_crops
from subcell_screen.io import SiteImage, SiteRecord
from subcell_screen.segment import Segmentation, cells_table, segmentation_qc

DATA = Path(__file__).parent / "data"


def make_site(data: np.ndarray, pixel_size_um: float, names=None) -> SiteImage:
    names = names or tuple(f"ch{i}" for i in range(data.shape[0]))
    rec = SiteRecord(plate="P", well="A01", site=1, channels={n: "" for n in names}, pixel_size_um=pixel_size_um,
                     reader="test")
    return SiteImage(data=data, channel_names=tuple(names), pixel_size_um=pixel_size_um, record=rec)


def make_seg(cells: np.ndarray, pixel_size_um: float) -> Segmentation:
    t = cells_table(cells, cells, pixel_size_um=pixel_size_um, plate="P", well="A01", site=1)
    return Segmentation(plate="P", well="A01", site=1, nuclei=cells, cells=cells, cells_table=t,
                        qc=segmentation_qc(t), method="test", pixel_size_um=pixel_size_um)


def discs(shape, centres, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centres, start=1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = k
    return lab


def all_crops(site, seg, **kw) -> CropBatch:
    batches = list(iter_crops(site, seg, **kw))
    data = np.concatenate([b.data for b in batches])
    keys = pl.concat([b.keys for b in batches])
    mask = np.concatenate([b.mask for b in batches]) if batches[0].mask is not None else None
    return CropBatch(data=data, keys=keys, channel_names=batches[0].channel_names, mask=mask,
                     scale=batches[0].scale, out_size=batches[0].out_size)


@pytest.fixture(scope="module")
def smooth_site():
    """Random smooth 3-channel site (uint16) at 0.598 µm/px with cells in the middle and at the borders."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    raw = ndi.gaussian_filter(rng.normal(size=(3, 90, 110)), (0, 2, 2))
    data = ((raw - raw.min()) / np.ptp(raw) * 4000).astype(np.uint16)
    cells = discs((90, 110), [(45, 55), (3, 4), (86, 107), (10, 100)], 6)
    return make_site(data, 0.598), make_seg(cells, 0.598)


def reference_crops(site: SiteImage, seg: Segmentation, size: int, z: float) -> np.ndarray:
    """Rescale the whole site (torch bilinear, half-pixel centres), then cut zero-padded windows."""
    import torch
    import torch.nn.functional as F

    _, h, w = site.data.shape
    ho, wo = round(h * z), round(w * z)
    full = F.interpolate(torch.from_numpy(site.data.astype(np.float32))[None], size=(ho, wo), mode="bilinear",
                         align_corners=False)[0].numpy()
    out = []
    for cy, cx in seg.cells_table.sort("cell_id").select("centroid_y", "centroid_x").iter_rows():
        oy = int(np.floor((cy + 0.5) * ho / h - 0.5 + 0.5)) - size // 2
        ox = int(np.floor((cx + 0.5) * wo / w - 0.5 + 0.5)) - size // 2
        crop = np.zeros((site.data.shape[0], size, size), np.float32)
        ys, ye, xs, xe = max(oy, 0), min(oy + size, ho), max(ox, 0), min(ox + size, wo)
        if ys < ye and xs < xe:
            crop[:, ys - oy:ye - oy, xs - ox:xe - ox] = full[:, ys:ye, xs:xe]
        out.append(crop)
    return np.stack(out)


@pytest.mark.parametrize("size", [448, 640])
def test_cpu_crops_equal_rescale_then_crop(smooth_site, size):
    site, seg = smooth_site
    got = all_crops(site, seg, crop_size=size, batch_size=3)
    z = 0.598 / HPA_PIXEL_SIZE_UM
    ref = reference_crops(site, seg, size, z)
    assert got.data.shape == (4, 3, size, size) and got.data.dtype == np.float32
    assert got.scale == 1.0 and got.out_size == size
    np.testing.assert_allclose(got.data, ref, atol=4000 * 2e-6)
    assert got.keys["cell_id"].to_list() == [1, 2, 3, 4]
    assert got.keys.schema == pl.Schema({"plate": pl.String, "well": pl.String, "site": pl.Int32,
                                         "cell_id": pl.Int32})


def test_crop_is_centred_on_the_cell():
    # a radially symmetric spot centred on each cell: its intensity centroid lands on the central pixel
    shape, centres = (120, 120), [(40, 50), (77, 81)]
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = sum(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.0 ** 2)) for cy, cx in centres)
    site, seg = make_site(img[None].astype(np.float32), 0.6), make_seg(discs(shape, centres, 8), 0.6)
    crops = all_crops(site, seg, crop_size=256).data[:, 0]
    gy, gx = np.mgrid[:256, :256]
    z = 0.6 / HPA_PIXEL_SIZE_UM
    for crop, (cy, cx) in zip(crops, centres):
        w = crop / crop.sum()
        expected = [(c + 0.5) * round(120 * z) / 120 - 0.5 for c in (cy, cx)]
        offset = [e - np.floor(e + 0.5) for e in expected]  # sub-pixel part of the centre
        assert (w * gy).sum() == pytest.approx(128 + offset[0], abs=0.05)
        assert (w * gx).sum() == pytest.approx(128 + offset[1], abs=0.05)


def test_zero_padding_at_borders(smooth_site):
    site, seg = smooth_site
    crops = all_crops(site, seg, crop_size=448).data
    z = 0.598 / HPA_PIXEL_SIZE_UM
    # cell 2 is centred at (3, 4) px: the window starts ~ (3.5 z - 0.5 - 224) rows above the image
    cy, cx = seg.cells_table.filter(pl.col("cell_id") == 2).select("centroid_y", "centroid_x").row(0)
    top = 224 - int(np.floor((cy + 0.5) * round(90 * z) / 90))
    left = 224 - int(np.floor((cx + 0.5) * round(110 * z) / 110))
    assert top > 0 and left > 0
    assert (crops[1][:, :top] == 0).all() and (crops[1][:, :, :left] == 0).all()
    assert (crops[1][:, top:, left:] > 0).mean() > 0.99  # inside the image: real (positive) pixels
    # the centre cell's window lies fully inside: no padding
    assert (crops[0] > 0).all()


def test_rescale_factor_gives_physical_size():
    r_px, p = 10, 0.598
    cells = discs((80, 80), [(40, 40)], r_px)
    site = make_site(np.ones((1, 80, 80), np.float32), p)
    got = all_crops(site, make_seg(cells, p), crop_size=640, mask=True, dilate_px=0)
    area_um2 = got.mask.sum() * HPA_PIXEL_SIZE_UM ** 2
    assert area_um2 == pytest.approx((cells > 0).sum() * p * p, rel=0.01)
    assert crop_scale(p) == pytest.approx(p / HPA_PIXEL_SIZE_UM)
    # training convention 896 -> 448: half the scale, same field of view as an 896-px crop
    half = all_crops(site, make_seg(cells, p), crop_size=896, out_size=448, mask=True, dilate_px=0)
    assert half.data.shape[-1] == 448 and half.out_size == 448
    assert half.mask.sum() == pytest.approx(got.mask.sum() / 4, rel=0.02)


def test_mask_dilation_is_a_disk_of_dilate_px_at_target_scale():
    from scipy import ndimage as ndi

    cells = discs((60, 60), [(30, 28)], 5)
    cells[30:33, 20:40] = 1  # non-convex cell
    img = np.random.default_rng(0).uniform(1, 2, (2, 60, 60)).astype(np.float32)
    site, seg = make_site(img, 0.6), make_seg(cells, 0.6)
    m0 = all_crops(site, seg, crop_size=256, mask=True, dilate_px=0)
    m7 = all_crops(site, seg, crop_size=256, mask=True, dilate_px=7)
    plain = all_crops(site, seg, crop_size=256)
    assert plain.mask is None
    expected = ndi.binary_dilation(m0.mask[0, 0] > 0, structure=disk(7))
    np.testing.assert_array_equal(m7.mask[0, 0] > 0, expected)
    assert m7.mask.sum() > m0.mask.sum()
    # masked crops are the plain crops inside the dilated mask, zero outside
    np.testing.assert_array_equal(m7.data, plain.data * m7.mask)
    assert m7.mask.dtype == np.float32 and m7.mask.shape == (1, 1, 256, 256)


def test_defer_mode_windows_and_device_resize(smooth_site):
    import torch
    import torch.nn.functional as F
    from scipy import ndimage as ndi

    site, seg = smooth_site
    dfr = all_crops(site, seg, crop_size=448, mask=True, rescale="defer")
    z = 0.598 / HPA_PIXEL_SIZE_UM
    w = round(448 / z)
    assert dfr.data.shape == (4, 3, w, w) and dfr.out_size == 448
    assert dfr.scale == pytest.approx(448 / w)
    # each window is the source square of side w centred (within half a pixel) on the centroid, zero-padded
    padded = np.pad(site.data.astype(np.float32), ((0, 0), (w, w), (w, w)))
    for crop, msk, (cid, cy, cx) in zip(dfr.data, dfr.mask,
                                        seg.cells_table.sort("cell_id").select("cell_id", "centroid_y",
                                                                               "centroid_x").iter_rows()):
        oy, ox = int(np.floor(cy - w / 2 + 1)), int(np.floor(cx - w / 2 + 1))
        assert abs(oy + (w - 1) / 2 - cy) <= 0.5 and abs(ox + (w - 1) / 2 - cx) <= 0.5
        expected = padded[:, oy + w:oy + 2 * w, ox + w:ox + 2 * w]
        np.testing.assert_array_equal(crop, expected * msk)
        # mask: the cell dilated at source scale by max(1, 7 / scale) px
        cell = np.pad(seg.cells == cid, w)[oy + w:oy + 2 * w, ox + w:ox + 2 * w]
        np.testing.assert_array_equal(msk[0] > 0, ndi.binary_dilation(cell, structure=disk(1.0)))
    # resized on the device, an interior window matches the CPU crop (up to the window's rounding, at most
    # half a source pixel; at the image border the device resize blends with the zero padding instead)
    smooth = make_site(ndi.gaussian_filter(site.data.astype(np.float32), (0, 6, 6)), 0.598)
    cpu = all_crops(smooth, seg, crop_size=448, cell_ids=[1])
    dfr = all_crops(smooth, seg, crop_size=448, rescale="defer", cell_ids=[1])
    up = F.interpolate(torch.from_numpy(dfr.data), size=(448, 448), mode="bilinear", align_corners=False).numpy()
    assert np.corrcoef(cpu.data.ravel(), up.ravel())[0, 1] > 0.99
    assert np.abs(cpu.data - up).mean() < 0.01 * cpu.data.mean()


def test_options_and_errors(smooth_site):
    site, seg = smooth_site
    got = all_crops(site, seg, crop_size=64, exclude_border=True, channels=["CH2", "ch0"])
    assert got.keys["cell_id"].to_list() == [1, 4]  # the two others touch the border
    assert got.channel_names == ("ch2", "ch0")
    assert [len(b) for b in iter_crops(site, seg, crop_size=32, batch_size=3)] == [3, 1]
    assert list(iter_crops(site, seg, crop_size=32, cell_ids=[])) == []
    with pytest.raises(ValueError, match="rescale"):
        list(iter_crops(site, seg, rescale="gpu"))
    with pytest.raises(ValueError, match="no channel"):
        list(iter_crops(site, seg, channels=["DNA"]))
    bad = make_seg(np.zeros((10, 10), np.int32), 0.598)
    with pytest.raises(ValueError, match="do not match"):
        list(iter_crops(site, bad))
    nopx = make_site(site.data, None)
    seg_nopx = Segmentation(**{**seg.__dict__, "pixel_size_um": None})
    with pytest.raises(ValueError, match="pixel size"):
        list(iter_crops(nopx, seg_nopx))


def test_real_cellpainting_site_crops_have_the_right_physical_size():
    from subcell_screen.channels import custom_channel_map
    from subcell_screen.segment import segment_site

    d = DATA / "cellpainting" / "pediatric_site_full"
    dna = tifffile.imread(d / "r03c03f03p01-ch5sk1fk1fl1.tiff")
    agp = tifffile.imread(d / "r03c03f03p01-ch3sk1fk1fl1.tiff")
    site = make_site(np.stack([dna, agp]), 0.598, names=("DNA", "AGP"))
    cmap = custom_channel_map(channels=["DNA", "AGP"], model_channels="bg", slots={"b": "DNA", "g": "AGP"},
                              nucleus="DNA", cytoplasm="AGP")
    seg = segment_site(site, channel_map=cmap)
    table = seg.cells_table.filter(~pl.col("touches_border")).sort("cell_id")
    assert table.height >= 25
    # 640 px at 0.0800885 µm/px = 51.3 µm of the specimen (85.7 source px at 0.598 µm/px): most of these
    # pediatric cells are larger and get cut; a 1280-px window (102.5 µm) holds most of them whole
    t = table
    reach = np.max(np.stack([t["centroid_y"] - t["bbox_y0"], t["bbox_y1"] - t["centroid_y"],
                             t["centroid_x"] - t["bbox_x0"], t["bbox_x1"] - t["centroid_x"]]), axis=0)
    for size in (640, 1280):
        area_um2 = []
        for b in iter_crops(site, seg, crop_size=size, mask=True, dilate_px=0, exclude_border=True, batch_size=8):
            assert b.data.shape[1:] == (2, size, size)
            area_um2.extend(b.mask.reshape(len(b), -1).sum(1) * HPA_PIXEL_SIZE_UM ** 2)
        area_um2 = np.array(area_um2)
        assert len(area_um2) == t.height
        fits = reach < (size / (0.598 / HPA_PIXEL_SIZE_UM)) / 2 - 1  # every pixel of the cell in the window
        np.testing.assert_allclose(area_um2[fits], t["cell_area_um2"].to_numpy()[fits], rtol=0.03)
        # cells reaching clearly past the window lose pixels (a ~2 px band at the limit can go either way)
        clipped = reach > (size / (0.598 / HPA_PIXEL_SIZE_UM)) / 2 + 1
        assert (area_um2[clipped] < t["cell_area_um2"].to_numpy()[clipped]).all()
    assert fits.sum() >= 20
    dfr = all_crops(site, seg, crop_size=640, rescale="defer", exclude_border=True, batch_size=64)
    assert dfr.data.shape[-1] == round(640 / (0.598 / HPA_PIXEL_SIZE_UM)) == 86
    assert dfr.scale == pytest.approx(640 / 86)
