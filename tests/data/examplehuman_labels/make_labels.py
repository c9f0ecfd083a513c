"""Rebuild CellProfiler's ExampleHuman objects and record cp_measure reference values (run once, by hand).

Not run by the tests (they read the outputs). Needs, besides the project's environment, CellProfiler's
image-processing library ``centrosome`` and ``cp_measure`` (with ``mahotas``), e.g.::

    pip install --no-deps --target /tmp/cpref cp-measure==0.3.0 centrosome==1.3.4 mahotas==1.4.19 deprecation
    PYTHONPATH=/tmp/cpref python tests/data/examplehuman_labels/make_labels.py

Objects: ExampleHuman.cppipe (CellProfiler/examples) run step by step with centrosome and scikit-image, with
the final thresholds CellProfiler recorded in ``Image.csv`` (``Threshold_FinalThreshold_{Nuclei,Cells}``):

* Nuclei (IdentifyPrimaryObjects on DNA): Gaussian smoothing sigma 1 (smoothing scale 1.3488),
  ``>= threshold``, 8-connected components; intensity declumping (smoothing filter 2.35 * 8 / 3.5, maxima
  suppression 8 / 1.5 with ``centrosome.cpmorphology.is_local_maximum`` and ``binary_shrink``, watershed of
  ``1 - image``); objects touching the border and outside the 8..80 px diameter range removed; holes filled
  after declumping; relabelled.
* Cells (IdentifySecondaryObjects, propagation on cellbody, regularization 0.05): seeds are the unfiltered
  nuclei minus size-rejected ones not touching the border; ``centrosome.propagate.propagate`` inside
  ``cellbody >= threshold``; ids mapped to the nuclei; holes filled.
* Cytoplasm (IdentifyTertiaryObjects, shrink = yes): cell pixels minus nucleus pixels off the nucleus outline.

Reference values (``cp_measure_reference.parquet``, every 5th object, intensities / 255): cp_measure 0.3.0
texture (scale 3, 256 levels) of Cells x DNA and Nuclei x PH3, radial distribution (object-centred, scaled,
4 bins) of Cells x {DNA, PH3, cellbody}, and Pearson correlation of Cells for the three channel pairs.
"""

from __future__ import annotations

from pathlib import Path

import centrosome.cpmorphology as cpm
import centrosome.outline as cpo
import centrosome.propagate as cpp
import centrosome.smooth as cps
import numpy as np
import polars as pl
import scipy.ndimage as ndi
import skimage.segmentation
import tifffile

HERE = Path(__file__).parent
SRC = HERE.parent / "examplehuman"
CHANNELS = ("DNA", "PH3", "cellbody")


def main() -> None:
    im = {ch: tifffile.imread(SRC / f"AS_09125_050116030001_D03f00d{i}.tif").astype(float) / 255
          for i, ch in enumerate(CHANNELS)}
    thr = pl.read_csv(SRC / "Image.csv.gz").row(0, named=True)
    mask = np.ones(im["DNA"].shape, bool)

    # --- nuclei
    img = im["DNA"]
    smoothed = cps.smooth_with_function_and_mask(
        img, lambda x: ndi.gaussian_filter(x, 1.3488 / 0.6744 / 2.0, mode="constant", cval=0), mask)
    labeled, _ = ndi.label(smoothed >= thr["Threshold_FinalThreshold_Nuclei"], np.ones((3, 3), bool))
    min_size, max_size = 8, 80
    filter_size = 2.35 * min_size / 3.5
    sigma = filter_size / 2.35
    half = max(int(filter_size / 2.0), 1)
    kernel = 1 / np.sqrt(2 * np.pi) / sigma * np.exp(-0.5 * np.arange(-half, half + 1) ** 2 / sigma ** 2)

    def fgauss(x: np.ndarray) -> np.ndarray:
        return ndi.convolve1d(ndi.convolve1d(x, kernel, axis=0, mode="constant"), kernel, axis=1, mode="constant")

    blurred = fgauss(img) / fgauss(np.ones_like(img))
    maxima = cpm.is_local_maximum(blurred, labeled, cpm.strel_disk(max(1, min_size / 1.5 - 0.5)))
    maxima[blurred <= 0] = 0
    maxima = cpm.binary_shrink(maxima)
    lmax, _ = ndi.label(maxima, np.ones((3, 3), bool))
    markers = np.zeros(img.shape, np.int32)
    markers[lmax > 0] = -lmax[lmax > 0]
    unedited = -skimage.segmentation.watershed(connectivity=np.ones((3, 3), bool), image=1 - img,
                                               markers=markers, mask=labeled != 0)
    lab = unedited.copy()
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    lab[np.isin(lab, border[border > 0])] = 0
    area = np.bincount(lab.ravel())[lab]
    lab[(area < np.pi * min_size ** 2 / 4) | (area > np.pi * max_size ** 2 / 4)] = 0
    nuclei, _ = cpm.relabel(cpm.fill_labeled_holes(lab))

    # --- cells
    seeds = unedited.copy()
    edge = np.unique(np.concatenate([seeds[0], seeds[-1], seeds[:, 0], seeds[:, -1]]))
    touching = np.zeros(seeds.max() + 1, bool)
    touching[edge] = True
    seeds[~touching[seeds] & (nuclei == 0)] = 0
    out, _ = cpp.propagate(im["cellbody"], seeds, im["cellbody"] >= thr["Threshold_FinalThreshold_Cells"], 0.05)
    lookup = np.array(ndi.maximum(nuclei, out, list(range(out.max() + 1))), int)
    lookup[0] = 0
    cells = cpm.fill_labeled_holes(lookup[out])

    # --- cytoplasm
    cytoplasm = cells.copy()
    cytoplasm[(nuclei != 0) & (cpo.outline(nuclei) == 0)] = 0
    np.savez_compressed(HERE / "labels.npz", nuclei=nuclei.astype(np.int32), cells=cells.astype(np.int32),
                        cytoplasm=cytoplasm.astype(np.int32))

    # --- cp_measure reference values
    from cp_measure.core.measurecolocalization import get_correlation_pearson
    from cp_measure.core.measureobjectintensitydistribution import get_radial_distribution
    from cp_measure.core.measuretexture import get_texture

    rows = np.arange(0, int(cells.max()), 5)
    cols: dict[str, np.ndarray] = {"cell_id": rows + 1}
    for comp, labels, ch in (("Cells", cells, "DNA"), ("Nuclei", nuclei, "PH3")):
        for k, v in get_texture(labels, im[ch], scale=3, gray_levels=256).items():
            name, rest = k.split("_", 1)
            cols[f"{comp}_Texture_{name}_{ch}_{rest}"] = np.asarray(v)[rows]
    for ch in CHANNELS:
        for k, v in get_radial_distribution(cells, im[ch], scaled=True, bin_count=4).items():
            feature, bins = k.split("_")[-2:] if k.count("_") >= 2 else k.split("_")
            cols[f"Cells_RadialDistribution_{feature}_{ch}_{bins}"] = np.asarray(v)[rows]
    for i, a in enumerate(CHANNELS):
        for b in CHANNELS[i + 1:]:
            r = get_correlation_pearson(im[a], im[b], cells)
            key = next(k for k in r if k.startswith("Correlation"))
            cols[f"Cells_Correlation_Correlation_{a}_{b}"] = np.asarray(r[key], float)[rows]
    pl.DataFrame(cols).write_parquet(HERE / "cp_measure_reference.parquet", compression="zstd",
                                     compression_level=19)


if __name__ == "__main__":
    main()
