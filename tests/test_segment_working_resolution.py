"""Segmentation at a working pixel size (``[segmentation].working_pixel_size_um``): images area-averaged down,
labels mapped back onto the acquired grid exactly, and masks as good as at full resolution on real images.

Accuracy is checked with the classical segmenter on the real fixtures (hand-labelled BBBC039 nuclei, 0.656 µm/px;
the pediatric Cell Painting site, 1080² at 0.598 µm/px). Real Cellpose-SAM weights are not available offline, so
the Cellpose path is checked for its mechanics (shapes, every object kept, the config reaching the model) with a
hand-built network; its accuracy needs real weights (``benchmarks/segmentation_accuracy.py
--working-pixel-size``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from subcell_screen.config import config_from_dict
from subcell_screen.segment import (
    ClassicalParams,
    downscale_image,
    downscale_labels,
    match_labels,
    segment_cells,
    segment_nuclei,
    segment_site,
    segmenter_from_config,
    upscale_labels,
    working_pixel_size,
    working_shape,
)

DATA = Path(__file__).parent / "data"
BBBC039_PX, PED_PX = 0.656, 0.598


def _bbbc039_truth(path: Path) -> np.ndarray:
    from PIL import Image
    from scipy import ndimage as ndi

    red = np.asarray(Image.open(path))[..., 0]
    out = np.zeros(red.shape, np.int32)
    n = 0
    for k in (1, 2, 3):
        lab, nk = ndi.label(red == k)
        out[lab > 0] = lab[lab > 0] + n
        n += nk
    return out


def _pooled_f1(results) -> float:
    tp = sum(r.tp for r in results)
    return 2 * tp / sum(r.n_true + r.n_pred for r in results)


# -- resampling ---------------------------------------------------------------------------------------------

def test_working_shape_never_upsamples_and_rounds():
    assert working_shape((1080, 1080), pixel_size_um=0.65, working_pixel_size_um=1.3) == (540, 540)
    assert working_shape((5, 1080, 1000), pixel_size_um=0.65, working_pixel_size_um=1.0) == (702, 650)
    assert working_shape((1080, 1080), pixel_size_um=0.65, working_pixel_size_um=0.5) is None
    assert working_shape((1080, 1080), pixel_size_um=0.65, working_pixel_size_um=0.65) is None
    assert working_shape((1080, 1080), pixel_size_um=0.65, working_pixel_size_um=None) is None
    assert working_pixel_size((1080, 1080), (540, 540), pixel_size_um=0.65) == pytest.approx(1.3)
    with pytest.raises(ValueError, match="working pixel size"):
        working_shape((10, 10), pixel_size_um=0.65, working_pixel_size_um=-1.0)


def test_downscale_is_an_exact_area_average():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 4096, (60, 90)).astype(np.uint16)
    # integer factor: the block mean
    blocks = img.astype(np.float64).reshape(30, 2, 30, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(downscale_image(img, (30, 30)), blocks, rtol=1e-6)
    # real factor: every output pixel is the mean over its footprint; the image mean is preserved
    small = downscale_image(img, (41, 47))
    assert small.dtype == np.float32 and small.shape == (41, 47)
    assert small.mean() == pytest.approx(img.mean(), rel=1e-6)
    # the first output pixel covers rows [0, 60/41) and columns [0, 90/47) of the input
    sy, sx = 60 / 41, 90 / 47
    wy = np.array([1.0, sy - 1.0])
    wx = np.array([1.0, sx - 1.0])
    want = (wy[:, None] * wx[None, :] * img[:2, :2]).sum() / (sy * sx)
    assert small[0, 0] == pytest.approx(want, rel=1e-6)
    # a stack is resampled channel by channel; the input is not modified
    stack = np.stack([img, img // 2])
    before = stack.copy()
    out = downscale_image(stack, (41, 47))
    np.testing.assert_allclose(out[1], downscale_image(img // 2, (41, 47)))
    np.testing.assert_array_equal(stack, before)


def test_upscaled_labels_keep_every_object_and_id_and_round_trip():
    rng = np.random.default_rng(1)
    for small_shape, big_shape in (((540, 540), (1080, 1080)), ((41, 47), (60, 90)), ((37, 41), (100, 77))):
        lab = rng.integers(0, 300, small_shape).astype(np.int32)
        up = upscale_labels(lab, big_shape)
        assert up.shape == big_shape and up.dtype == lab.dtype
        assert set(np.unique(up)) == set(np.unique(lab))
        np.testing.assert_array_equal(downscale_labels(up, small_shape), lab)
    # an integer factor is a plain pixel repeat
    lab = rng.integers(0, 9, (5, 6))
    np.testing.assert_array_equal(upscale_labels(lab, (10, 12)), np.repeat(np.repeat(lab, 2, 0), 2, 1))
    with pytest.raises(ValueError, match="cannot upscale"):
        upscale_labels(lab, (4, 12))


# -- accuracy on real images (classical segmenter) -----------------------------------------------------------

@pytest.fixture(scope="module")
def bbbc039():
    out = []
    for img in sorted((DATA / "bbbc039" / "images").glob("*.tif")):
        out.append((img.stem[8:13], tifffile.imread(img),
                    _bbbc039_truth(DATA / "bbbc039" / "masks" / f"{img.stem}.png")))
    assert len(out) == 4
    return out


def test_bbbc039_nuclei_at_1um_match_full_resolution_and_ground_truth(bbbc039):
    # 0.656 -> 1.0 µm/px: 2.3x fewer pixels; nuclei still ~15 px across
    params = ClassicalParams(working_pixel_size_um=1.0)
    vs_full, full_vs_truth, work_vs_truth = [], [], []
    for name, img, truth in bbbc039:
        full = segment_nuclei(img, pixel_size_um=BBBC039_PX)
        work = segment_nuclei(img, pixel_size_um=BBBC039_PX, params=params)
        assert work.shape == img.shape and work.dtype == np.int32
        r = match_labels(work, full)
        vs_full.append(r)
        full_vs_truth.append(match_labels(full, truth))
        work_vs_truth.append(match_labels(work, truth))
        if name != "A12_s":  # A12: fragmented apoptotic nuclei, ambiguous at any resolution
            assert r.f1 >= 0.95, (name, r.f1)
    assert _pooled_f1(vs_full) >= 0.95  # measured 0.978
    # as good against the hand labels: pooled F1 0.882 vs 0.887 at full resolution
    assert _pooled_f1(work_vs_truth) >= _pooled_f1(full_vs_truth) - 0.015


@pytest.fixture(scope="module")
def pediatric_site():
    from subcell_screen.channels import preset
    from subcell_screen.io import SiteImage, SiteRecord

    folder = DATA / "cellpainting"
    files = {"DNA": folder / "pediatric_site_full" / "r03c03f03p01-ch5sk1fk1fl1.tiff",
             "AGP": folder / "pediatric_site_full" / "r03c03f03p01-ch3sk1fk1fl1.tiff",
             "ER": folder / "pediatric_site_more" / "r03c03f03p01-ch2sk1fk1fl1.tiff",
             "Mito": folder / "pediatric_site_more" / "r03c03f03p01-ch4sk1fk1fl1.tiff",
             "RNA": folder / "pediatric_site_more" / "r03c03f03p01-ch6sk1fk1fl1.tiff"}
    names = ("DNA", "ER", "RNA", "AGP", "Mito")
    data = np.stack([tifffile.imread(files[c]) for c in names])
    assert data.shape == (5, 1080, 1080)
    rec = SiteRecord(plate="BR00143976", well="C03", site=3, channels={c: str(files[c]) for c in names},
                     pixel_size_um=PED_PX, reader="test")
    return SiteImage(data=data, channel_names=names, pixel_size_um=PED_PX, record=rec), preset("cellpainting")


def test_cell_painting_site_at_twice_the_pixel_size_matches_full_resolution(pediatric_site):
    site, cmap = pediatric_site
    before = site.data.copy()
    full = segment_site(site, channel_map=cmap)
    work = segment_site(site, channel_map=cmap, params=ClassicalParams(working_pixel_size_um=2 * PED_PX))
    np.testing.assert_array_equal(site.data, before)
    assert work.nuclei.shape == work.cells.shape == (1080, 1080)
    assert work.pixel_size_um == PED_PX  # labels on the acquired grid, areas in acquired µm²
    nuc, cell = match_labels(work.nuclei, full.nuclei), match_labels(work.cells, full.cells)
    assert full.n_cells >= 40 and nuc.f1 >= 0.95 and cell.f1 >= 0.95, (full.n_cells, nuc.f1, cell.f1)
    # cell k contains nucleus k, as at full resolution
    inside = work.nuclei > 0
    np.testing.assert_array_equal(work.cells[inside], work.nuclei[inside])
    # the per-cell table is in acquired pixels and µm²: areas agree with the full-resolution result
    med_full = float(np.median(full.cells_table["cell_area_um2"].to_numpy()))
    med_work = float(np.median(work.cells_table["cell_area_um2"].to_numpy()))
    assert med_work == pytest.approx(med_full, rel=0.05)


def test_segment_cells_working_resolution_equals_doing_it_by_hand(pediatric_site):
    # the classical path: segment the area-averaged images at the working pixel size, upscale the labels
    site, _ = pediatric_site
    dna, agp = site.data[0], site.data[3]
    w = 1.2
    nuc, cells = segment_cells(dna, agp, pixel_size_um=PED_PX, params=ClassicalParams(working_pixel_size_um=w))
    small = working_shape(dna.shape, pixel_size_um=PED_PX, working_pixel_size_um=w)
    p = working_pixel_size(dna.shape, small, pixel_size_um=PED_PX)
    n_s, c_s = segment_cells(downscale_image(dna, small), downscale_image(agp, small), pixel_size_um=p)
    np.testing.assert_array_equal(nuc, upscale_labels(n_s, dna.shape))
    np.testing.assert_array_equal(cells, upscale_labels(c_s, dna.shape))


# -- config -> segmenter ----------------------------------------------------------------------------------

def _cfg(**seg):
    return config_from_dict({"screen": {"path": "s"}, "images": {"source": "i"}, "plates": {"table": "p.csv"},
                             "channels": {"preset": "cellpainting"}, "segmentation": seg})


def test_config_option_reaches_both_segmenters(monkeypatch):
    cfg = _cfg(working_pixel_size_um=1.3)
    assert segmenter_from_config(cfg.segmentation).params.working_pixel_size_um == 1.3
    assert segmenter_from_config(_cfg().segmentation).params.working_pixel_size_um is None
    seen = {}

    def fake_load(model, **kwargs):
        seen.update(kwargs)
        return object()

    import subcell_screen.segment._cellpose as cp

    monkeypatch.setattr(cp, "load_cellpose", fake_load)
    seg = segmenter_from_config(_cfg(method="cellpose", working_pixel_size_um=1.3).segmentation)
    assert seg.method == "cellpose" and seen["working_pixel_size_um"] == 1.3
    assert seg.params.working_pixel_size_um == 1.3


def test_config_refuses_a_working_pixel_size_too_coarse_for_the_nuclei():
    from subcell_screen import ConfigError

    with pytest.raises(ConfigError, match=r"\[segmentation\].working_pixel_size_um: .*span 6.0 px"):
        _cfg(working_pixel_size_um=2.0)
    with pytest.raises(ConfigError, match="working_pixel_size_um"):
        _cfg(working_pixel_size_um=0)
    assert _cfg(working_pixel_size_um=2.0, nucleus_diameter_um=16.0).segmentation.working_pixel_size_um == 2.0


def test_classical_params_reject_a_bad_working_pixel_size():
    with pytest.raises(ValueError, match="working_pixel_size_um"):
        ClassicalParams(working_pixel_size_um=float("nan"))


# -- the Cellpose path (a hand-built network; accuracy needs real weights) -----------------------------------

def test_cellpose_at_a_working_pixel_size_returns_full_size_labels_with_every_object():
    pytest.importorskip("cellpose")
    torch = pytest.importorskip("torch")
    from test_segment_cellpose import blobnet_class, synth

    from subcell_screen.segment import CellposeSegmenter

    torch.manual_seed(0)
    rng = np.random.default_rng(3)
    img, cyto, truth = synth(rng, size=(160, 160), n=6, rmin=9.0, rmax=12.0, cyto=True)
    settings = {"device": "cpu", "nucleus_diameter_um": 10.0, "cell_diameter_um": 20.0, "workers": 0}
    full = CellposeSegmenter.from_network(blobnet_class()(), **settings)
    work = CellposeSegmenter.from_network(blobnet_class()(), working_pixel_size_um=0.75, **settings)
    assert work.describe()["working_pixel_size_um"] == 0.75
    # batched: one site finer than the working size, one already coarser (left as acquired)
    out = work.segment_many([(img, cyto), (img, None)], pixel_size_um=[0.5, 1.0])
    n_work, c_work = out[0]
    assert n_work.shape == c_work.shape == img.shape
    inside = n_work > 0
    np.testing.assert_array_equal(c_work[inside], n_work[inside])  # cell k contains nucleus k
    # equal to segmenting the area-averaged images by hand and upscaling the labels
    small = working_shape(img.shape, pixel_size_um=0.5, working_pixel_size_um=0.75)
    assert small == (107, 107)
    n_s, c_s = full.segment(downscale_image(img, small), downscale_image(cyto, small),
                            pixel_size_um=working_pixel_size(img.shape, small, pixel_size_um=0.5))
    np.testing.assert_array_equal(n_work, upscale_labels(n_s, img.shape))
    np.testing.assert_array_equal(c_work, upscale_labels(c_s, img.shape))
    # the coarser site: exactly what the segmenter without a working size gives
    ref = full.segment_many([(img, None)], pixel_size_um=1.0)[0]
    np.testing.assert_array_equal(out[1][0], ref[0])
    np.testing.assert_array_equal(out[1][1], ref[1])
    # the hand-built network finds the blobs at both resolutions
    n_full = full.nuclei(img, pixel_size_um=0.5)
    assert match_labels(n_full, truth).f1 >= 0.9 and match_labels(n_work, truth).f1 >= 0.9


def test_the_run_segments_at_the_configured_working_pixel_size(tmp_path):
    # every [segmentation] key applies to `subcell-screen run`: at 1.196 µm/px (2x the 0.598 µm/px site) the
    # stored label images are 2x2 blocks (360x270 tiles -> 180x135), at the acquired size they are not
    import realplates as rp

    from subcell_screen.config import load_config
    from subcell_screen.pipeline import run
    from subcell_screen.store import ScreenStore

    masks = {}
    for name, working in (("acquired", None), ("working", 2 * rp.PIXEL_SIZE_UM)):
        folder = tmp_path / name
        images = folder / "images"
        rp.write_phenix_plate(images, "P1", {"B02": 0, "B03": 5})
        rp.write_layout(folder / "lay.csv", {"B02": "DMSO", "B03": "BRD-K50691590"})
        rp.write_plates_table(folder / "plates.csv", {"P1": "lay"})
        seg = {"method": "classical"} if working is None else {"method": "classical", "working_pixel_size_um": working}
        cfg = load_config(rp.example_config(folder, images=images, plates_table=folder / "plates.csv",
                                            segmentation=seg, embedding=rp.FAST_FEATURES))
        run(cfg, stages=("segment",), progress=False)
        with ScreenStore.open(cfg.screen.path, read_only=True) as store:
            masks[name] = [store.read_masks("P1", w, 1) for w in ("B02", "B03")]

    def blocky(lab):
        return np.array_equal(np.repeat(np.repeat(lab[::2, ::2], 2, 0), 2, 1), lab)

    for (nuc_a, cell_a), (nuc_w, cell_w) in zip(masks["acquired"], masks["working"]):
        assert nuc_w.shape == nuc_a.shape == (360, 270)
        assert blocky(nuc_w) and blocky(cell_w) and not blocky(nuc_a) and not blocky(cell_a)
        assert match_labels(nuc_w, nuc_a).f1 >= 0.9 and match_labels(cell_w, cell_a).f1 >= 0.9
