"""Offline classical segmentation: thresholds, distance transforms and seeded watersheds.

Every length is given in µm and converted with the pixel size, so one set of defaults serves Cell Painting
(20x, ~0.6 µm/px) and HPA (63x, ~0.08 µm/px) images. Images whose nuclei span more than
``working_diameter_px`` pixels (HPA-like magnifications) are segmented on a block-averaged copy and the
labels are upsampled (nearest neighbour), which keeps the cost per site independent of magnification.

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

Cells
    A watershed seeded by the nuclei over a landscape that adds the cytoplasm channel's (log) intensity
    gradient and a distance-from-nucleus term, restricted to a permissive log-Otsu foreground of the
    cytoplasm channel (plus the nuclei) and to ``max_cell_radius_um`` around the nuclei. Cell k contains
    nucleus k. Without a cytoplasm channel, nuclei are expanded by ``cell_expansion_um``.

The defaults were chosen on hand-labelled nuclei (BBBC039 U2OS at 20x, the DSB2018 sample of StarDist) and
checked against CellProfiler's counts on its ExampleHuman image and a pediatric Cell Painting site; see
``benchmarks/segmentation_accuracy.py``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np

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
        Weight of the distance-from-nucleus term (per nucleus radius) against the intensity gradient
        (normalised to its median over the foreground) in the cell watershed.
    working_diameter_px : float
        Nuclei spanning more pixels than this are segmented on a block-averaged image (0: never).
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
    distance_weight: float = 0.5
    working_diameter_px: float = 48.0
    cell_threshold_factor: float = 1.0

    def __post_init__(self) -> None:
        for name in ("nucleus_diameter_um", "cell_expansion_um", "max_cell_radius_um"):
            if not getattr(self, name) > 0:
                raise ValueError(f"classical segmentation parameter {name} must be > 0, got {getattr(self, name)}")
        if self.min_nucleus_area_um2 is not None and self.min_nucleus_area_um2 < 0:
            raise ValueError(f"min_nucleus_area_um2 must be >= 0, got {self.min_nucleus_area_um2}")

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


def _upsample_labels(labels: np.ndarray, k: int, shape: tuple[int, int]) -> np.ndarray:
    return np.repeat(np.repeat(labels, k, axis=0), k, axis=1)[: shape[0], : shape[1]]


def _working_factor(params: ClassicalParams, pixel_size_um: float) -> int:
    d_px = params.nucleus_diameter_um / pixel_size_um
    if params.working_diameter_px <= 0 or d_px <= params.working_diameter_px:
        return 1
    return max(1, int(d_px // (params.working_diameter_px * 2 / 3)))


def _background(smooth: np.ndarray, radius_px: float) -> np.ndarray:
    """Large-scale background: grey opening with a disk at a reduced resolution, box-blurred, upsampled."""
    from scipy import ndimage as ndi

    step = max(1, int(radius_px // 8))
    small = smooth[::step, ::step]
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
                    linear_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
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

    Returns
    -------
    signal : ndarray, shape (H, W), float32
        Background-subtracted smoothed intensities divided by the threshold (foreground is ``> 1``).
    mask : ndarray of bool, shape (H, W)
    """
    from scipy import ndimage as ndi

    smooth = ndi.gaussian_filter(image, smooth_px) if smooth_px > 0.3 else image
    signal = np.clip(smooth - _background(smooth, scale_px), 0, None)
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
    cyto_image : ndarray, shape (H, W), any integer or float dtype, or None
        Cytoplasm stain. None: nuclei are expanded by ``params.cell_expansion_um`` (see Notes).
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
    Without a cytoplasm channel the expansion is bounded by a permissive foreground of the nuclear channel
    (half its nuclear threshold) when that foreground is at least 1.5x larger than the nuclei, i.e. when the
    channel carries cytoplasmic signal; otherwise the expansion is bounded only by the distance.
    """
    params = params or ClassicalParams()
    nuclei = np.asarray(nuclei)
    if nuclei.ndim != 2:
        raise ValueError(f"nucleus labels must be 2-D, got shape {nuclei.shape}")
    nuclei = nuclei.astype(np.int32, copy=False)
    for name, other in (("cytoplasm image", cyto_image), ("nuclei image", nuclei_image)):
        if other is not None and np.shape(other) != nuclei.shape:
            raise ValueError(f"{name} shape {np.shape(other)} differs from the nucleus labels {nuclei.shape}")
    if not (nuclei > 0).any():
        return np.zeros(nuclei.shape, np.int32)
    k = _working_factor(params, pixel_size_um)
    if k > 1:
        small_nuc = nuclei[k // 2::k, k // 2::k]  # nearest-neighbour downsampling keeps label ids
        small = classical_cells(
            small_nuc, None if cyto_image is None else _block_mean(_as_float(cyto_image, "cytoplasm image"), k),
            pixel_size_um=pixel_size_um * k, params=replace(params, working_diameter_px=0),
            nuclei_image=None if nuclei_image is None else _block_mean(_as_float(nuclei_image, "nuclei image"), k))
        cells = _upsample_labels(small, k, nuclei.shape)
        # full-resolution nuclei always lie inside their own cell
        return np.where(nuclei > 0, nuclei, np.where(np.isin(cells, np.unique(nuclei)), cells, 0)).astype(np.int32)
    return _cells(nuclei, cyto_image, pixel_size_um, params, nuclei_image)


def _cells(nuclei: np.ndarray, cyto_image: np.ndarray | None, pixel_size_um: float, params: ClassicalParams,
           nuclei_image: np.ndarray | None) -> np.ndarray:
    from scipy import ndimage as ndi
    from skimage.filters import sobel
    from skimage.segmentation import watershed

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
    img = _as_float(cyto_image, "cytoplasm image")
    signal, fg = foreground_mask(img, scale_px=max(2.0, 3 * d_px), smooth_px=params.smooth_fraction * d_px,
                                 linear_fraction=0.0)
    fg = signal > params.cell_threshold_factor
    fg = ndi.binary_fill_holes(fg | nuc_mask)
    dist_from_nuclei = ndi.distance_transform_edt(~nuc_mask)
    fg &= dist_from_nuclei <= params.max_cell_radius_um / pixel_size_um
    grad = sobel(np.log1p(signal))
    scale = float(np.median(grad[fg])) if fg.any() else 1.0
    land = grad / (scale if scale > 0 else 1.0) + params.distance_weight * dist_from_nuclei / max(1.0, d_px / 2)
    cells = watershed(land, markers=nuclei, mask=fg)
    return cells.astype(np.int32)
