"""Classical segmenter against real ground truth: hand-labelled nuclei (BBBC039, DSB2018) and CellProfiler's
segmentation of its ExampleHuman image and of a pediatric Cell Painting site.

Pixel sizes of the ground-truth sets are assumptions documented in benchmarks/segmentation_accuracy.py
(BBBC039 0.656 µm/px, DSB2018 0.5, ExampleHuman 0.8; the pediatric site is 0.598 from its metadata).
The numbers pinned below are what the segmenter reached when written, minus a small margin:
per-image F1@0.5 0.949 / 0.979 / 0.958 / 0.423 (A12 is a field of fragmented, apoptotic nuclei that the
annotators labelled piece by piece) / 0.929, pooled F1 0.897, mean matched IoU 0.864.

Cells are compared with CellProfiler's own cells (its Propagation): on ExampleHuman (the cell labels rebuilt in
``tests/data/examplehuman_labels``) F1@0.5 0.904, mean matched IoU 0.829, median area 1.08x CellProfiler's
(the watershed of the intensity gradient used before reached F1 0.747, mIoU 0.701, area 1.04x); on the
pediatric site F1 0.903, mIoU 0.872 (before 0.903, 0.821).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from subcell_screen.segment import match_labels, segment_cells, segment_nuclei

BBBC039_PX, DSB_PX, EH_PX, PED_PX = 0.656, 0.5, 0.8, 0.598
DATA = Path(__file__).parent / "data"


def bbbc039_truth(path: Path) -> np.ndarray:
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


def drop_border(labels: np.ndarray) -> np.ndarray:
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.where(np.isin(labels, edge[edge > 0]), 0, labels)


def n_objects(labels: np.ndarray) -> int:
    return int((np.unique(labels) > 0).sum())


@pytest.fixture(scope="module")
def gt_results():
    data_dir = DATA
    rows = {}
    for img in sorted((data_dir / "bbbc039" / "images").glob("*.tif")):
        truth = bbbc039_truth(data_dir / "bbbc039" / "masks" / f"{img.stem}.png")
        pred = segment_nuclei(tifffile.imread(img), pixel_size_um=BBBC039_PX)
        rows[img.stem[8:13]] = match_labels(pred, truth)
    truth = tifffile.imread(data_dir / "dsb2018" / "mask2d.tif")
    pred = segment_nuclei(tifffile.imread(data_dir / "dsb2018" / "img2d.tif"), pixel_size_um=DSB_PX)
    rows["dsb2018"] = match_labels(pred, truth)
    return rows


def test_ground_truth_object_counts(gt_results):
    # fixture sanity: the README's object counts
    assert {k: r.n_true for k, r in gt_results.items()} == {
        "A02_s": 110, "A06_s": 71, "A09_s": 156, "A12_s": 69, "dsb2018": 125}


def test_f1_at_iou_05_on_hand_labelled_nuclei(gt_results):
    f1 = {k: r.f1 for k, r in gt_results.items()}
    floors = {"A02_s": 0.93, "A06_s": 0.96, "A09_s": 0.94, "A12_s": 0.38, "dsb2018": 0.90}
    for k, lo in floors.items():
        assert f1[k] >= lo, (k, f1[k])
    tp = sum(r.tp for r in gt_results.values())
    n = sum(r.n_true + r.n_pred for r in gt_results.values())
    pooled = 2 * tp / n
    assert pooled >= 0.88  # goal: >= 0.80
    assert np.mean(list(f1.values())) >= 0.83


def test_mean_matched_iou(gt_results):
    miou = [r.mean_matched_iou for r in gt_results.values()]
    assert np.mean(miou) >= 0.84
    assert min(miou) >= 0.74


@pytest.fixture(scope="module")
def examplehuman_segmentation():
    d = DATA / "examplehuman"
    dna = tifffile.imread(d / "AS_09125_050116030001_D03f00d0.tif")
    body = tifffile.imread(d / "AS_09125_050116030001_D03f00d2.tif")
    return segment_cells(dna, body, pixel_size_um=EH_PX)


def test_examplehuman_nucleus_count_vs_cellprofiler(data_dir, examplehuman_segmentation):
    d = data_dir / "examplehuman"
    import polars as pl

    n_cp = pl.read_csv(d / "Nuclei.csv.gz").height
    assert n_cp == 289
    nuclei, cells = examplehuman_segmentation
    ratio = n_objects(drop_border(nuclei)) / n_cp  # CellProfiler discarded border objects
    assert 0.85 <= ratio <= 1.15, ratio
    # cell bodies: median area within 20 % of CellProfiler's (381 px)
    cp_area = pl.read_csv(d / "Cells.csv.gz")["AreaShape_Area"].median()
    area = np.bincount(drop_border(cells).ravel())[1:]
    assert abs(np.median(area[area > 0]) / cp_area - 1) <= 0.2


def test_examplehuman_cells_match_cellprofiler_cells(examplehuman_segmentation):
    # CellProfiler's ExampleHuman cells (Propagation from its nuclei on the cell-body stain), rebuilt as labels
    cp_cells = np.load(DATA / "examplehuman_labels" / "labels.npz")["cells"]
    _, cells = examplehuman_segmentation
    r = match_labels(drop_border(cells), drop_border(cp_cells))
    assert r.f1 >= 0.85 and r.mean_matched_iou >= 0.78, r


def cp_outline_objects(path: Path, nuclei: np.ndarray | None = None) -> np.ndarray:
    from scipy import ndimage as ndi
    from skimage.segmentation import expand_labels

    outline = tifffile.imread(path).max(axis=-1) > 0
    lab, _ = ndi.label(ndi.binary_fill_holes(outline) & ~outline)
    lab = np.where(np.bincount(lab.ravel())[lab] >= 50, lab, 0)
    if nuclei is not None:
        ids = np.unique(nuclei)[1:]
        c = np.rint(np.array(ndi.center_of_mass(nuclei > 0, nuclei, ids))).astype(int)
        keep = np.zeros(lab.max() + 1, bool)
        keep[lab[c[:, 0], c[:, 1]]] = True
        keep[0] = False
        lab = np.where(keep[lab], lab, 0)
    return expand_labels(lab, 1.5)


def test_pediatric_cellpainting_counts_vs_cellprofiler(data_dir):
    d = data_dir / "cellpainting" / "pediatric_site_full"
    dna = tifffile.imread(d / "r03c03f03p01-ch5sk1fk1fl1.tiff")
    agp = tifffile.imread(d / "r03c03f03p01-ch3sk1fk1fl1.tiff")
    cp_nuc = cp_outline_objects(d / "NucleiOutlines_BR00143976_C03_3.tiff")
    cp_cells = cp_outline_objects(d / "CellsOutlines_BR00143976_C03_3.tiff", cp_nuc)
    assert (n_objects(cp_nuc), n_objects(cp_cells)) == (37, 29)
    nuclei, cells = segment_cells(dna, agp, pixel_size_um=PED_PX)
    for ours, ref in ((nuclei, cp_nuc), (cells, cp_cells)):
        ours = drop_border(ours)
        ratio = n_objects(ours) / n_objects(ref)
        assert 0.85 <= ratio <= 1.15, ratio
        agree = match_labels(ours, ref)
        assert agree.f1 >= 0.8  # the objects themselves agree, not only their number
    assert agree.mean_matched_iou >= 0.84  # and the cells' outlines (0.872; 0.821 before propagation)
