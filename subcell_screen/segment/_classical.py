"""Offline classical segmentation: thresholds, distance transforms, seeded watersheds and propagation.

Every length is given in µm and converted with the pixel size, so one set of defaults serves Cell Painting
(20x, ~0.6 µm/px) and HPA (63x, ~0.08 µm/px) images. Images whose nuclei span more than
``working_diameter_px`` pixels (HPA-like magnifications) are segmented on a block-averaged copy and the
labels are upsampled (nearest neighbour), which keeps the cost per site independent of magnification.
``ClassicalParams.working_pixel_size_um`` (``[segmentation].working_pixel_size_um``) does the same at any
chosen pixel size and real factor, first (:mod:`subcell_screen.segment._resample`).

Nuclei
    1. Gaussian smoothing, σ = ``smooth_fraction`` x the nucleus diameter.
    2. Background subtraction: a large-scale estimate (grey opening with a disk of one nucleus diameter at
       a reduced resolution, then a box blur) is subtracted, so uneven illumination does not move the
       threshold.
    3. Robust threshold: the larger of Otsu's threshold on log intensities (which keeps dim nuclei) and
       ``linear_otsu_fraction`` x Otsu's threshold on linear intensities (which rejects faint debris).
    4. Local contrast: a pixel stays foreground only if it reaches ``peak_fraction`` of the brightest
       pixel within ``peak_window`` x the diameter (a half-maximum boundary for each nucleus, adaptive to
       its own brightness; it also opens the dim gap between touching nuclei). Holes are filled.
    5. Splitting: h-maxima (height ``split_h_fraction`` x the nucleus radius, at least 0.5 px) of the
       smoothed Euclidean distance transform seed a watershed on the negative distance, which splits
       touching nuclei along their necks.
    6. Size filter: objects smaller than ``min_area_fraction`` x a typical nucleus' area are removed.

Cells (in the manner of CellProfiler's IdentifySecondaryObjects, "Propagation")
    1. Signal: the cytoplasm channel smoothed and background-subtracted as for nuclei (background scale
       three nucleus diameters), in units of its log-Otsu threshold. Several cytoplasm channels (a
       (C, H, W) stack) are averaged in these units, so each stain fills the others' gaps.
    2. Per-cell threshold: the global threshold, lowered for a cell whose own cytoplasm is dim against it
       to ``cell_relative_threshold`` x the cell's level (the median above-threshold signal of its Voronoi
       territory), but not below ``cell_min_threshold`` x the global threshold; see
       :func:`_cell_thresholds`. Confluent fields and stains that fade towards the cell edge (ER, RNA) keep
       their periphery; on sparse fields with a dark background nothing changes.
    3. Foreground: pixels above their cell's threshold within ``max_cell_radius_um`` of a nucleus, plus the
       nuclei, plus holes that touch a nucleus (a dim cytoplasm next to a nucleus is that cell's).
    4. Propagation: every foreground pixel goes to the nucleus with the cheapest path to it; a path costs
       ``sqrt(|grad s|^2 + w^2)`` per nucleus radius travelled (``s`` the signal over its median cytoplasm
       level, ``w`` = ``distance_weight``), so cell borders follow dim gaps and bright membranes where the
       image shows them and fall half-way between nuclei where it does not.
    5. Holes enclosed by a single cell are filled (a gap enclosed by several cells stays background).
    Cell k contains nucleus k. Without a cytoplasm channel, nuclei are expanded by ``cell_expansion_um``.

The nucleus defaults were chosen on hand-labelled nuclei (BBBC039 U2OS at 20x, the DSB2018 sample of StarDist)
and checked against CellProfiler's counts on its ExampleHuman image and a pediatric Cell Painting site. The
cell defaults were checked against CellProfiler's cells on those two images (agreement F1 at IoU 0.5 of about
0.90 on both) and against the ground truth of simulated HPA and Cell Painting sites
(:func:`subcell_screen.simulate.render_site`); see ``benchmarks/segmentation_accuracy.py``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np

from ._resample import downscale_image, downscale_labels, upscale_labels, working_pixel_size, working_shape

logger = logging.getLogger(__name__)

#: Robust SDs of background noise the foreground threshold must exceed.
NOISE_K = 6.0

__all__ = ["ClassicalParams", "classical_nuclei", "classical_cells", "expand_nuclei", "foreground_mask"]


@dataclass(frozen=True)
class ClassicalParams:
    """Parameters of the classical segmenter (lengths in µm, areas in µm²).

    Attributes
    ----------
    nucleus_diameter_um : float
        Typical nucleus diameter; sets the smoothing, background, local-contrast and splitting scales.
        Results change little between about 0.7x and 1.5x the true diameter.
    min_nucleus_area_um2 : float or None
        Smallest nucleus kept (None: ``min_area_fraction`` x the area of a typical nucleus).
    smooth_fraction : float
        Gaussian σ as a fraction of the nucleus diameter.
    linear_otsu_fraction : float
        The threshold is at least this fraction of Otsu's threshold on linear intensities.
    peak_fraction : float
        Local-contrast floor: fraction of the local maximum a foreground pixel must reach (0: off).
    peak_window : float
        Side of the local-maximum window as a fraction of the nucleus diameter.
    split_h_fraction : float
        Height of the distance-transform maxima that seed separate nuclei, as a fraction of the nucleus
        radius (smaller splits more).
    min_area_fraction : float
        Default minimum nucleus area as a fraction of a typical nucleus' area.
    cell_expansion_um : float
        Distance nuclei grow by when there is no cytoplasm channel.
    max_cell_radius_um : float
        Cells never extend farther than this from their nucleus.
    distance_weight : float
        Regularisation of the cell propagation (CellProfiler's "regularization factor", made independent of
        the image's intensity scale and pixel size): the cost of one nucleus radius of path, against a change
        of the cytoplasm signal by its median level. Large values give the Voronoi split between nuclei
        inside the foreground; small values let intensity edges decide the borders.
    working_diameter_px : float
        Nuclei spanning more pixels than this are segmented on a block-averaged image (0: never).
    working_pixel_size_um : float or None
        Segment at this pixel size (µm/px): finer images are area-averaged down to it and the labels brought
        back to the image's grid by nearest neighbour (``[segmentation].working_pixel_size_um``; see
        :mod:`subcell_screen.segment._resample`). None: at the image's own pixel size.
    cell_threshold_factor : float
        Multiplies every cell's foreground threshold (below 1: larger cells).
    cell_relative_threshold : float
        A cell's threshold is at most this fraction of its own cytoplasm level (median signal above the
        global threshold in its territory), when that is below the global threshold (0: the global threshold
        for every cell). The default, one half, puts the border of a blurred cell edge at half its height,
        as ``peak_fraction`` does for nuclei.
    cell_min_threshold : float
        Lower bound of the per-cell threshold, as a fraction of the global threshold (guards the noise).
    cell_fill_nucleus_holes : bool
        Add holes of the cell foreground that touch a nucleus to the foreground.
    """

    nucleus_diameter_um: float = 12.0
    min_nucleus_area_um2: float | None = None
    smooth_fraction: float = 0.04
    linear_otsu_fraction: float = 0.5
    peak_fraction: float = 0.5
    peak_window: float = 0.5
    split_h_fraction: float = 0.05
    min_area_fraction: float = 0.12
    cell_expansion_um: float = 6.0
    max_cell_radius_um: float = 40.0
    distance_weight: float = 1.0
    working_diameter_px: float = 48.0
    working_pixel_size_um: float | None = None
    cell_threshold_factor: float = 1.0
    cell_relative_threshold: float = 0.5
    cell_min_threshold: float = 0.5
    cell_fill_nucleus_holes: bool = True

    def __post_init__(self) -> None:
        for name in ("nucleus_diameter_um", "cell_expansion_um", "max_cell_radius_um"):
            if not getattr(self, name) > 0:
                raise ValueError(f"classical segmentation parameter {name} must be > 0, got {getattr(self, name)}")
        if self.min_nucleus_area_um2 is not None and self.min_nucleus_area_um2 < 0:
            raise ValueError(f"min_nucleus_area_um2 must be >= 0, got {self.min_nucleus_area_um2}")
        w = self.working_pixel_size_um
        if w is not None and not (w > 0 and math.isfinite(w)):
            raise ValueError(f"working_pixel_size_um must be a positive number of µm per pixel, got {w}")

    def with_(self, **changes: object) -> ClassicalParams:
        """A copy with some fields changed (None values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _as_float(image: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating) or a.dtype == bool):
        raise TypeError(f"{name} must have an integer or float dtype, got {a.dtype}")
    a = a.astype(np.float32, copy=True)
    bad = ~np.isfinite(a)
    if bad.any():
        a[bad] = 0.0
    return a


def _block_mean(image: np.ndarray, k: int) -> np.ndarray:
    """Mean over k x k blocks (edge blocks padded by reflection)."""
    h, w = image.shape
    ph, pw = (-h) % k, (-w) % k
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw)), mode="reflect" if min(h, w) > 1 else "edge")
    return image.reshape(image.shape[0] // k, k, image.shape[1] // k, k).mean(axis=(1, 3), dtype=np.float32)


def _block_min(image: np.ndarray, k: int) -> np.ndarray:
    """Minimum over k x k blocks (edge blocks padded by edge values)."""
    h, w = image.shape
    ph, pw = (-h) % k, (-w) % k
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw)), mode="edge")
    return image.reshape(image.shape[0] // k, k, image.shape[1] // k, k).min(axis=(1, 3))


def _upsample_labels(labels: np.ndarray, k: int, shape: tuple[int, int]) -> np.ndarray:
    return np.repeat(np.repeat(labels, k, axis=0), k, axis=1)[: shape[0], : shape[1]]


def _working_factor(params: ClassicalParams, pixel_size_um: float) -> int:
    d_px = params.nucleus_diameter_um / pixel_size_um
    if params.working_diameter_px <= 0 or d_px <= params.working_diameter_px:
        return 1
    return max(1, int(d_px // (params.working_diameter_px * 2 / 3)))


def _background(smooth: np.ndarray, radius_px: float, *, min_pool: bool = False) -> np.ndarray:
    """Large-scale background: grey opening with a disk at a reduced resolution, box-blurred, upsampled.

    ``min_pool``: reduce the resolution by block minima instead of sampling every ``step``-th pixel, so
    background gaps narrower than a block (between confluent cells) are not skipped.
    """
    from scipy import ndimage as ndi

    step = max(1, int(radius_px // 8))
    small = _block_min(smooth, step) if (min_pool and step > 1) else smooth[::step, ::step]
    r = max(1, int(round(radius_px / step)))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = (yy ** 2 + xx ** 2) <= r * r
    opened = ndi.grey_opening(small, footprint=disk, mode="nearest")
    opened = ndi.uniform_filter(opened, size=2 * r + 1, mode="nearest")
    if step == 1:
        return opened
    zoom = (smooth.shape[0] / small.shape[0], smooth.shape[1] / small.shape[1])
    big = ndi.zoom(opened, zoom, order=1, mode="nearest")
    return big[: smooth.shape[0], : smooth.shape[1]]


def _robust_threshold(values: np.ndarray, linear_fraction: float) -> float:
    """max(Otsu on log1p(values), linear_fraction x Otsu on values), over the positive values."""
    from skimage.filters import threshold_otsu

    v = values[values > 0]
    if v.size < 16 or np.ptp(v) == 0:
        return float("inf")
    t_log = float(np.expm1(threshold_otsu(np.log1p(v))))
    return max(t_log, linear_fraction * float(threshold_otsu(v))) if linear_fraction > 0 else t_log


def foreground_mask(image: np.ndarray, *, scale_px: float, smooth_px: float,
                    linear_fraction: float = 0.5, min_pool: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed, background-subtracted signal and its thresholded foreground.

    Parameters
    ----------
    image : ndarray, shape (H, W), float32
    scale_px : float
        Radius of the background structuring element, px.
    smooth_px : float
        Gaussian σ, px.
    linear_fraction : float
        See :func:`_robust_threshold`.
    min_pool : bool
        Estimate the background from block minima (see :func:`_background`); used for cytoplasm stains,
        whose only background in a confluent field is the narrow gaps between cells.

    Returns
    -------
    signal : ndarray, shape (H, W), float32
        Background-subtracted smoothed intensities divided by the threshold (foreground is ``> 1``).
    mask : ndarray of bool, shape (H, W)
    """
    from scipy import ndimage as ndi

    smooth = ndi.gaussian_filter(image, smooth_px) if smooth_px > 0.3 else image
    signal = np.clip(smooth - _background(smooth, scale_px, min_pool=min_pool), 0, None)
    thr = _robust_threshold(signal, linear_fraction)
    if not np.isfinite(thr) or thr <= 0:
        return np.zeros_like(signal), np.zeros(signal.shape, bool)
    # noise floor: the threshold must clear the background class by NOISE_K robust SDs (pure noise -> empty)
    bg = signal[signal <= thr]
    if bg.size > 16:
        med = float(np.median(bg))
        mad = 1.4826 * float(np.median(np.abs(bg - med)))
        thr = max(thr, med + NOISE_K * mad)
    signal = (signal / thr).astype(np.float32)
    return signal, signal > 1.0


def classical_nuclei(image: np.ndarray, *, pixel_size_um: float,
                     params: ClassicalParams | None = None) -> np.ndarray:
    """Segment nuclei in a DNA-stain image.

    Parameters
    ----------
    image : ndarray, shape (H, W), any integer or float dtype
        Nuclear stain (not modified).
    pixel_size_um : float
        µm per pixel.
    params : ClassicalParams, optional

    Returns
    -------
    ndarray, shape (H, W), int32
        Nucleus labels 1..N (0 = background), numbered in raster order of each object's first pixel.
    """
    params = params or ClassicalParams()
    img = _as_float(image, "nuclei image")
    small_shape = working_shape(img.shape, pixel_size_um=pixel_size_um,
                                working_pixel_size_um=params.working_pixel_size_um)
    if small_shape is not None:
        small = classical_nuclei(downscale_image(img, small_shape),
                                 pixel_size_um=working_pixel_size(img.shape, small_shape, pixel_size_um=pixel_size_um),
                                 params=replace(params, working_pixel_size_um=None))
        return upscale_labels(small, img.shape)
    k = _working_factor(params, pixel_size_um)
    if k > 1:
        small = classical_nuclei(_block_mean(img, k), pixel_size_um=pixel_size_um * k,
                                 params=replace(params, working_diameter_px=0))
        return _upsample_labels(small, k, img.shape)
    return _nuclei(img, pixel_size_um, params)


def _nuclei(img: np.ndarray, pixel_size_um: float, params: ClassicalParams) -> np.ndarray:
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    d_px = params.nucleus_diameter_um / pixel_size_um
    signal, fg = foreground_mask(img, scale_px=max(2.0, d_px), smooth_px=params.smooth_fraction * d_px,
                                 linear_fraction=params.linear_otsu_fraction)
    if params.peak_fraction > 0 and fg.any():
        size = max(3, int(round(params.peak_window * d_px)) | 1)
        fg &= signal >= params.peak_fraction * ndi.maximum_filter(signal, size=size)
    fg = ndi.binary_fill_holes(fg)
    min_area_um2 = (params.min_nucleus_area_um2 if params.min_nucleus_area_um2 is not None
                    else params.min_area_fraction * math.pi * params.nucleus_diameter_um ** 2 / 4)
    min_area_px = max(1, int(round(min_area_um2 / pixel_size_um ** 2)))
    comp, _ = ndi.label(fg)
    comp = _remove_small_labels(comp, min_area_px)
    fg = comp > 0
    if not fg.any():
        return np.zeros(img.shape, np.int32)
    dist = ndi.distance_transform_edt(fg).astype(np.float32)
    dist = ndi.gaussian_filter(dist, max(0.5, 0.05 * d_px))
    dist[~fg] = 0
    h = max(0.5, params.split_h_fraction * d_px / 2)
    markers = _h_maxima_markers(dist, comp, h)
    labels = watershed(-dist, markers, mask=fg)
    labels = _remove_small_labels(labels, min_area_px)
    return _renumber(labels)


def _h_maxima_markers(dist: np.ndarray, comp: np.ndarray, h: float) -> np.ndarray:
    """Labelled h-maxima of ``dist`` inside each labelled component of ``comp`` (computed per component,
    fast on sparse images); a component without such a maximum becomes one marker."""
    from scipy import ndimage as ndi
    from skimage.morphology import h_maxima

    seeds = np.zeros(comp.shape, bool)
    for i, sl in enumerate(ndi.find_objects(comp), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in sl)
        own = comp[sl] == i
        peaks = h_maxima(np.where(own, dist[sl], 0), h).astype(bool) & own
        seeds[sl] |= peaks if peaks.any() else own
    markers, _ = ndi.label(seeds)
    return markers


def _remove_small_labels(labels: np.ndarray, min_area_px: int) -> np.ndarray:
    if min_area_px <= 1 or labels.max() == 0:
        return labels
    small = np.bincount(labels.ravel()) < min_area_px
    small[0] = False
    return np.where(small[labels], 0, labels) if small.any() else labels


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Consecutive ids 1..N in raster order of each object's first pixel, int32."""
    ids, first = np.unique(labels.ravel(), return_index=True)
    keep = ids != 0
    order = ids[keep][np.argsort(first[keep])]
    lut = np.zeros(int(labels.max()) + 1, np.int32)
    lut[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return lut[labels]


def expand_nuclei(nuclei: np.ndarray, *, distance_px: float, mask: np.ndarray | None = None) -> np.ndarray:
    """Grow nucleus labels by ``distance_px`` without overlap (the nearest nucleus wins).

    Parameters
    ----------
    nuclei : ndarray, shape (H, W), int
        Nucleus labels.
    distance_px : float
        Growth distance, px.
    mask : ndarray of bool, shape (H, W), optional
        Growth stays inside ``mask`` (nuclei themselves are always kept).

    Returns
    -------
    ndarray, shape (H, W), int32
    """
    from skimage.segmentation import expand_labels

    cells = expand_labels(np.asarray(nuclei), distance=distance_px).astype(np.int32)
    if mask is not None:
        cells = np.where(mask | (nuclei > 0), cells, 0).astype(np.int32)
    return cells


def classical_cells(nuclei: np.ndarray, cyto_image: np.ndarray | None, *, pixel_size_um: float,
                    params: ClassicalParams | None = None,
                    nuclei_image: np.ndarray | None = None) -> np.ndarray:
    """Grow cells from nuclei.

    Parameters
    ----------
    nuclei : ndarray, shape (H, W), int
        Nucleus labels (0 = background).
    cyto_image : ndarray, shape (H, W) or (C, H, W), any integer or float dtype, or None
        Cytoplasm stain, or a stack of several (e.g. all non-nuclear Cell Painting channels), whose signals
        are averaged in units of each channel's own threshold. None: nuclei are expanded by
        ``params.cell_expansion_um`` (see Notes).
    pixel_size_um : float
        µm per pixel.
    params : ClassicalParams, optional
    nuclei_image : ndarray, shape (H, W), optional
        The nuclear stain; used only when ``cyto_image`` is None.

    Returns
    -------
    ndarray, shape (H, W), int32
        Cell labels carrying the ids of ``nuclei``; cell k contains nucleus k.

    Notes
    -----
    With a cytoplasm channel, cells are propagated from the nuclei inside a per-cell thresholded foreground
    (see the module docstring and :func:`_cell_thresholds`, :func:`_propagate`).

    Without a cytoplasm channel the expansion is bounded by a permissive foreground of the nuclear channel
    (half its nuclear threshold) when that foreground is at least 1.5x larger than the nuclei, i.e. when the
    channel carries cytoplasmic signal; otherwise the expansion is bounded only by the distance.
    """
    params = params or ClassicalParams()
    nuclei = np.asarray(nuclei)
    if nuclei.ndim != 2:
        raise ValueError(f"nucleus labels must be 2-D, got shape {nuclei.shape}")
    nuclei = nuclei.astype(np.int32, copy=False)
    if cyto_image is not None:
        cyto_image = np.asarray(cyto_image)
        if cyto_image.ndim not in (2, 3) or cyto_image.shape[-2:] != nuclei.shape:
            raise ValueError(f"cytoplasm image shape {cyto_image.shape} differs from the nucleus labels "
                             f"{nuclei.shape} (expected (H, W) or (C, H, W))")
    if nuclei_image is not None and np.shape(nuclei_image) != nuclei.shape:
        raise ValueError(f"nuclei image shape {np.shape(nuclei_image)} differs from the nucleus labels {nuclei.shape}")
    if not (nuclei > 0).any():
        return np.zeros(nuclei.shape, np.int32)
    small_shape = working_shape(nuclei.shape, pixel_size_um=pixel_size_um,
                                working_pixel_size_um=params.working_pixel_size_um)
    if small_shape is not None:
        small = classical_cells(
            downscale_labels(nuclei, small_shape),
            None if cyto_image is None else downscale_image(_as_float_stack(cyto_image), small_shape),
            pixel_size_um=working_pixel_size(nuclei.shape, small_shape, pixel_size_um=pixel_size_um),
            params=replace(params, working_pixel_size_um=None),
            nuclei_image=None if nuclei_image is None else downscale_image(_as_float(nuclei_image, "nuclei image"),
                                                                          small_shape))
        return _keep_nuclei_inside(nuclei, upscale_labels(small, nuclei.shape))
    k = _working_factor(params, pixel_size_um)
    if k > 1:
        small_nuc = nuclei[k // 2::k, k // 2::k]  # nearest-neighbour downsampling keeps label ids
        small = classical_cells(
            small_nuc, None if cyto_image is None else np.stack(
                [_block_mean(c, k) for c in _cyto_channels(cyto_image)]),
            pixel_size_um=pixel_size_um * k, params=replace(params, working_diameter_px=0),
            nuclei_image=None if nuclei_image is None else _block_mean(_as_float(nuclei_image, "nuclei image"), k))
        return _keep_nuclei_inside(nuclei, _upsample_labels(small, k, nuclei.shape))
    return _cells(nuclei, cyto_image, pixel_size_um, params, nuclei_image)


def _keep_nuclei_inside(nuclei: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Cells computed at a coarser grid, made to hold every full-resolution nucleus (cell k contains nucleus k)."""
    return np.where(nuclei > 0, nuclei, np.where(np.isin(cells, np.unique(nuclei)), cells, 0)).astype(np.int32)


def _as_float_stack(cyto_image: np.ndarray) -> np.ndarray:
    """A (H, W) or (C, H, W) cytoplasm image as float32 with non-finite values zeroed (one array)."""
    a = np.asarray(cyto_image)
    return _as_float(a, "cytoplasm image") if a.ndim == 2 else np.stack(
        [_as_float(c, "cytoplasm image") for c in a])


def _cells(nuclei: np.ndarray, cyto_image: np.ndarray | None, pixel_size_um: float, params: ClassicalParams,
           nuclei_image: np.ndarray | None) -> np.ndarray:
    from scipy import ndimage as ndi

    d_px = params.nucleus_diameter_um / pixel_size_um
    nuc_mask = nuclei > 0
    if cyto_image is None:
        bound = None
        if nuclei_image is not None:
            signal, _ = foreground_mask(_as_float(nuclei_image, "nuclei image"), scale_px=max(2.0, 2 * d_px),
                                        smooth_px=params.smooth_fraction * d_px,
                                        linear_fraction=params.linear_otsu_fraction)
            loose = signal > 0.5
            if loose.sum() >= 1.5 * nuc_mask.sum():
                bound = ndi.binary_fill_holes(loose)
        return expand_nuclei(nuclei, distance_px=params.cell_expansion_um / pixel_size_um, mask=bound)
    signal = _cytoplasm_signal(cyto_image, d_px, params)
    dist, territory = _territories(nuclei, _cost_grid_factor(d_px))
    thr = _cell_thresholds(signal, territory, nuc_mask, params)
    fg = ((signal > thr[territory]) & (dist <= params.max_cell_radius_um / pixel_size_um)) | nuc_mask
    del dist, territory
    if params.cell_fill_nucleus_holes:
        # a dim region touching a nucleus is that cell's cytoplasm (the dark interior between the membrane
        # and actin of a Cell Painting AGP cell); not a plain fill of all holes, which would also claim the
        # background enclosed by a ring of cells in a sparse field
        fg = _fill_holes_touching(fg, nuc_mask)
    cells = _propagate(nuclei, signal, fg, d_px=d_px, params=params)
    return _fill_label_holes(cells)


def _cost_grid_factor(d_px: float) -> int:
    """Block size of the grid for territories and path costs: pixels of at most a tenth of a nucleus diameter."""
    return max(1, int(d_px // 10))


def _territories(nuclei: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Distance to the nearest nucleus (px) and that nucleus' id (its Voronoi territory), per pixel.

    One distance transform gives both; it runs on k x k blocks (the territories only choose each pixel's
    threshold and bound the cells' reach, which a tenth of a nucleus diameter does not change) and is
    repeated back to full resolution.
    """
    from scipy import ndimage as ndi

    small = _block_max(nuclei, k) if k > 1 else nuclei
    dist, (iy, ix) = ndi.distance_transform_edt(small == 0, return_indices=True)
    territory = small[iy, ix]
    if k == 1:
        return dist, territory
    h, w = nuclei.shape
    return (_upsample_labels(dist.astype(np.float32) * np.float32(k), k, (h, w)),
            _upsample_labels(territory, k, (h, w)))


def _cyto_channels(cyto_image: np.ndarray) -> list[np.ndarray]:
    """The channels of a (H, W) or (C, H, W) cytoplasm image as float32 (H, W) arrays."""
    if cyto_image.ndim == 2:
        return [_as_float(cyto_image, "cytoplasm image")]
    return [_as_float(c, f"cytoplasm image channel {i}") for i, c in enumerate(cyto_image)]


def _cytoplasm_signal(cyto_image: np.ndarray, d_px: float, params: ClassicalParams) -> np.ndarray:
    """Smoothed, background-subtracted cytoplasm signal in units of its global threshold (see
    :func:`foreground_mask`); the mean over the channels of a stack, leaving out channels without a
    threshold (blank or flat), so each stain counts relative to its own brightness."""
    signals = []
    for img in _cyto_channels(cyto_image):
        sig, fg = foreground_mask(img, scale_px=max(2.0, 3 * d_px), smooth_px=params.smooth_fraction * d_px,
                                  linear_fraction=0.0, min_pool=True)
        if fg.any():
            signals.append(sig)
    if not signals:
        return np.zeros(cyto_image.shape[-2:], np.float32)
    return signals[0] if len(signals) == 1 else np.mean(signals, axis=0, dtype=np.float32)


def _cell_thresholds(signal: np.ndarray, territory: np.ndarray, nuc_mask: np.ndarray,
                     params: ClassicalParams) -> np.ndarray:
    """Foreground threshold of each cell, in units of the global threshold (``signal`` is divided by it).

    The global (log-Otsu) threshold separates cells from background when the field has a background class,
    and then the cells' cytoplasm lies far above it (Cell Painting AGP: median ~7x). In confluent fields, or
    with stains that fade towards the thin cell periphery (ER, RNA, microtubules), Otsu splits the cells'
    own intensity distribution instead and cuts off their periphery. So each cell's threshold is lowered to
    ``cell_relative_threshold`` x its own level (the median cytoplasm signal above the global threshold in
    its Voronoi territory) when that is lower, but never below ``cell_min_threshold``; the result is then
    scaled by ``cell_threshold_factor``.

    Returns
    -------
    ndarray, shape (n_nuclei + 1,), float32
        Index 0 (pixels of no territory) holds the global threshold.
    """
    n = int(territory.max(initial=0))
    thr = np.ones(n + 1, np.float32)
    f = params.cell_relative_threshold
    if f > 0 and n:
        sel = (signal > 1.0) & ~nuc_mask & (territory > 0)
        level = _median_by_label(signal[sel], territory[sel], n)
        have = np.isfinite(level)  # a territory without signal above the global threshold keeps it
        thr[have] = np.clip(f * level[have], min(params.cell_min_threshold, 1.0), 1.0)
    return thr * np.float32(params.cell_threshold_factor)


def _median_by_label(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Median of non-negative ``values`` per label 1..n (NaN where a label has no value), by sorting.

    ``scipy.ndimage.median`` takes ~0.5 s on a 1080² site; this a tenth of that.
    """
    out = np.full(n + 1, np.nan, np.float64)
    if values.size == 0:
        return out
    # one float sort of label x span + value (values >= 0) orders by label, then value
    span = float(values.max()) + 1.0
    lab = labels.astype(np.float64)
    v = np.sort(lab * span + values) - np.sort(lab) * span
    counts = np.bincount(labels, minlength=n + 1)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ok = counts > 0
    lo = start[ok] + (counts[ok] - 1) // 2
    hi = start[ok] + counts[ok] // 2
    out[ok] = 0.5 * (v[lo].astype(np.float64) + v[hi])
    return out


def _propagate(nuclei: np.ndarray, signal: np.ndarray, fg: np.ndarray, *, d_px: float,
               params: ClassicalParams) -> np.ndarray:
    """Seeded propagation (CellProfiler's IdentifySecondaryObjects "Propagation") of nuclei inside ``fg``.

    Each foreground pixel goes to the nucleus with the cheapest path to it, a path costing
    ``integral of sqrt(|grad s|^2 + w^2)`` per nucleus radius of length, where ``s`` is the signal normalised
    to the median cytoplasm level and ``w`` = ``distance_weight``. Crossing a dim gap or a bright membrane
    between two cells is expensive, so boundaries follow them; in flat or textured cytoplasm the cost is
    close to the distance and the split is the Voronoi one. Unlike a watershed of the gradient (which, once
    a ridge is crossed, floods everything lower behind it) the cost accumulates along the path.

    The path costs (Dijkstra, :class:`skimage.graph.MCP_Geometric`) are computed on a grid whose pixels are
    at most a tenth of a nucleus diameter (borders need no finer resolution, and the cost falls with the
    square of the block size: ~0.1 s instead of ~0.8 s on a 1080² Cell Painting site); the cells are then
    flooded at full resolution (seeded watershed) over the bilinearly interpolated costs, which keeps their
    outlines at full resolution and every cell connected to its nucleus.
    """
    from scipy import ndimage as ndi
    from skimage.graph import MCP_Geometric
    from skimage.segmentation import watershed

    shape = nuclei.shape
    cyto = fg & (nuclei == 0)
    level = float(np.median(signal[cyto])) if cyto.any() else 0.0
    s = signal / np.float32(level if level > 0 else 1.0)
    k = _cost_grid_factor(d_px)
    if k > 1:
        s = _block_mean(s, k)
        fg_c = _block_mean(fg.astype(np.float32), k) > 0
        seeds = _block_max(nuclei, k)
    else:
        fg_c, seeds = fg, nuclei
    radius_px = max(1.0, d_px / 2 / k)  # nucleus radius on the cost grid
    gy, gx = np.gradient(s)
    step = np.sqrt((gy * gy + gx * gx) * np.float32(radius_px ** 2) + np.float32(params.distance_weight ** 2))
    step = np.where(fg_c, step / np.float32(radius_px), np.inf).astype(np.float64)
    # moving inside a nucleus is free, so one start pixel per nucleus stands for all of it (MCP pays a
    # Python-level cost per start point)
    step[seeds > 0] = 1e-9
    ids, first = np.unique(seeds.ravel(), return_index=True)
    starts = np.column_stack(np.unravel_index(first[ids > 0], seeds.shape))
    costs, _ = MCP_Geometric(step, fully_connected=True).find_costs(starts)
    finite = np.isfinite(costs)
    costs[~finite] = (costs[finite].max() + 1.0) if finite.any() else 0.0
    costs = costs.astype(np.float32)
    if k > 1:  # bilinear, block centres to pixel centres
        costs = ndi.zoom(costs, k, order=1, mode="nearest", grid_mode=True)[: shape[0], : shape[1]]
    cells = watershed(costs, markers=nuclei, mask=fg)
    return cells.astype(np.int32)


def _fill_holes_touching(fg: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """``fg`` with its holes (background not connected to the image border) that touch ``seeds`` filled."""
    from scipy import ndimage as ndi

    holes, n = ndi.label(~fg)
    if n == 0:
        return fg
    touch = np.zeros(n + 1, bool)
    touch[holes[ndi.binary_dilation(seeds, structure=np.ones((3, 3), bool))]] = True
    touch[np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]])] = False
    touch[0] = False
    return fg | touch[holes]


def _fill_label_holes(labels: np.ndarray) -> np.ndarray:
    """Fill every background region that touches exactly one label and not the image border with it.

    Like CellProfiler's ``fill_labeled_holes``: a dark spot inside a cell becomes part of it, but a gap
    enclosed by several cells does not.
    """
    from scipy import ndimage as ndi

    holes, n = ndi.label(labels == 0)
    if n == 0:
        return labels
    enclosed = np.ones(n + 1, bool)
    enclosed[np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]])] = False
    enclosed[0] = False
    sel = enclosed[holes]  # pixels of background regions that do not reach the border
    if not sel.any():
        return labels
    # the largest and smallest label next to each such region (8-neighbourhood)
    big = np.iinfo(np.int32).max
    ids = holes[sel]
    hi = np.zeros(n + 1, np.int64)
    lo = np.full(n + 1, big, np.int64)
    np.maximum.at(hi, ids, ndi.maximum_filter(labels, size=3)[sel])
    np.minimum.at(lo, ids, ndi.minimum_filter(np.where(labels > 0, labels, big), size=3)[sel])
    lut = np.where(enclosed & (hi == lo) & (hi > 0), hi, 0).astype(labels.dtype)
    out = labels.copy()
    out[sel] = lut[ids]
    return out


def _block_max(labels: np.ndarray, k: int) -> np.ndarray:
    """Maximum over k x k blocks (edge blocks padded with 0)."""
    h, w = labels.shape
    padded = np.pad(labels, ((0, (-h) % k), (0, (-w) % k)))
    return padded.reshape(padded.shape[0] // k, k, padded.shape[1] // k, k).max(axis=(1, 3))
