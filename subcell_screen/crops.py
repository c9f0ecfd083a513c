"""Cell crops at SubCell's pixel scale: segmented sites -> fixed-size per-cell windows.

The value object every featurizer consumes is :class:`CropBatch`. :func:`iter_crops` iterates over batches
so that memory stays bounded: never hold a whole plate.

Geometry (one definition, used by both modes)
    A site of ``H x W`` pixels at ``p`` µm/px is rescaled by ``z = p / target_pixel_size_um`` (times
    ``out_size / crop_size`` when the crop is resized, e.g. the 896 -> 448 training convention) to
    ``round(H z) x round(W z)`` pixels with bilinear interpolation, half-pixel centres and clamped edges (the
    convention of ``torch.nn.functional.interpolate(..., align_corners=False)`` and OpenCV ``INTER_LINEAR``).
    Each cell's window is the ``out_size``-pixel square of that rescaled site whose central pixel
    (``out_size // 2``) holds the cell's centroid; pixels beyond the site are zero.

``rescale="cpu"``
    Computes exactly that, but only for the source pixels each window needs: the source window that maps
    onto the output window is cut and resampled (separable bilinear). Cell masks are resampled by nearest
    neighbour (half-pixel centres) and dilated by a disk of ``dilate_px`` output pixels.
``rescale="defer"``
    Returns the square source-resolution window (``w = round(out_size / z)`` px, centred on the centroid),
    with ``scale = out_size / w`` and ``out_size`` set, so that a GPU featurizer resizes it on the device; the
    mask is dilated at source resolution by ``max(1, dilate_px / scale)`` px. The result matches the CPU
    mode up to the rounding of the window (at most half a source pixel at each edge).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from .embed.registry import HPA_PIXEL_SIZE_UM

if TYPE_CHECKING:  # pragma: no cover
    from .io import SiteImage
    from .segment import Segmentation

logger = logging.getLogger(__name__)

__all__ = ["CropBatch", "HPA_PIXEL_SIZE_UM", "CROP_SIZES", "iter_crops", "crop_scale", "disk"]

#: Supported (crop_size, out_size) conventions: 640 (SubCell on HPA), 448, and 896 resized to 448 (training).
CROP_SIZES = ((640, 640), (448, 448), (896, 448))


@dataclass(frozen=True)
class CropBatch:
    """A batch of per-cell crops.

    Attributes
    ----------
    data : ndarray, shape (N, C, H, W), float32
        Crops in the site's channel order and intensity units (not yet min-max normalised). ``H == W ==
        out_size`` when already rescaled (``scale == 1``); otherwise source-resolution windows that the
        featurizer resizes by ``scale`` (e.g. on the GPU) to ``out_size``.
    keys : polars.DataFrame
        One row per crop: ``plate``, ``well``, ``site``, ``cell_id``.
    channel_names : tuple of str
        Name of each of the C channels.
    mask : ndarray, shape (N, 1, H, W), float32, or None
        Cell mask (1 inside the dilated cell, 0 outside), same geometry as ``data``.
    scale : float
        Output pixels per input pixel still to apply (1.0 when ``data`` is at SubCell scale).
    out_size : int
        Side of the final square crop in pixels at SubCell scale.
    """

    data: np.ndarray = field(repr=False)
    keys: pl.DataFrame = field(repr=False)
    channel_names: tuple[str, ...]
    mask: np.ndarray | None = field(default=None, repr=False)
    scale: float = 1.0
    out_size: int = 640

    def __post_init__(self) -> None:
        if self.data.ndim != 4 or self.data.shape[1] != len(self.channel_names):
            raise ValueError(f"crops must be (N, C, H, W) with C = {len(self.channel_names)}, got {self.data.shape}")
        if self.keys.height != self.data.shape[0]:
            raise ValueError(f"{self.keys.height} key rows for {self.data.shape[0]} crops")
        if self.mask is not None and (self.mask.shape[0] != self.data.shape[0] or self.mask.shape[2:] != self.data.shape[2:]):
            raise ValueError(f"mask shape {self.mask.shape} does not match crops {self.data.shape}")

    def __len__(self) -> int:
        return self.data.shape[0]


def crop_scale(pixel_size_um: float, *, target_pixel_size_um: float = HPA_PIXEL_SIZE_UM, crop_size: int = 640,
               out_size: int | None = None) -> float:
    """Output pixels per source pixel: ``pixel_size_um / target_pixel_size_um * out_size / crop_size``."""
    out_size = crop_size if out_size is None else out_size
    return float(pixel_size_um) / float(target_pixel_size_um) * out_size / crop_size


def disk(radius: float) -> np.ndarray:
    """Boolean disk ``{(dy, dx): dy² + dx² <= radius²}``, shape ``(2r+1, 2r+1)`` with ``r = floor(radius)``."""
    r = int(math.floor(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (yy * yy + xx * xx) <= radius * radius


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Binary dilation of a 2-D bool mask by :func:`disk` (OpenCV when available, else SciPy)."""
    if radius <= 0 or not mask.any():
        return mask
    k = disk(radius)
    try:
        import cv2

        return cv2.dilate(mask.astype(np.uint8), k.astype(np.uint8), borderType=cv2.BORDER_CONSTANT,
                          borderValue=0).astype(bool)
    except ImportError:  # pragma: no cover - cv2 comes with cellpose
        from scipy import ndimage as ndi

        return ndi.binary_dilation(mask, structure=k)


def _axis_samples(center: float, n_src: int, n_out_total: int, size: int) -> tuple:
    """Bilinear sample plan along one axis for an output window of ``size`` px.

    Returns (valid, i0, i1, lam, nearest): ``valid`` marks output pixels inside the rescaled site; ``i0``,
    ``i1`` source indices and ``lam`` weights for them; ``nearest`` half-pixel nearest source indices.
    """
    z = n_out_total / n_src
    c_out = (center + 0.5) * z - 0.5
    origin = int(math.floor(c_out + 0.5)) - size // 2
    t = origin + np.arange(size)
    valid = (t >= 0) & (t < n_out_total)
    tv = t[valid]
    src = np.maximum((tv + 0.5) / z - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_src - 1)
    i1 = np.minimum(i0 + 1, n_src - 1)
    lam = (src - i0).astype(np.float32)
    lam[i1 == i0] = 0.0
    nearest = np.minimum(np.floor((tv + 0.5) / z).astype(np.int64), n_src - 1)
    return valid, i0, i1, lam, nearest


def _crop_cpu(data: np.ndarray, labels: np.ndarray, cell_id: int, center: tuple[float, float],
              shape_out: tuple[int, int], size: int, want_mask: bool, dilate_px: float
              ) -> tuple[np.ndarray, np.ndarray | None]:
    c, h, w = data.shape
    vy, y0, y1, ly, ny = _axis_samples(center[0], h, shape_out[0], size)
    vx, x0, x1, lx, nx = _axis_samples(center[1], w, shape_out[1], size)
    out = np.zeros((c, size, size), np.float32)
    mask = None
    if vy.any() and vx.any():
        r0, r1 = int(y0.min()), int(y1.max()) + 1
        c0, c1 = int(x0.min()), int(x1.max()) + 1
        win = data[:, r0:r1, c0:c1].astype(np.float32, copy=False)
        rows = win[:, y0 - r0, :] * (1 - ly)[None, :, None] + win[:, y1 - r0, :] * ly[None, :, None]
        cols = rows[:, :, x0 - c0] * (1 - lx) + rows[:, :, x1 - c0] * lx
        iy, ix = np.flatnonzero(vy), np.flatnonzero(vx)
        out[:, iy[0]:iy[-1] + 1, ix[0]:ix[-1] + 1] = cols
        if want_mask:
            m = np.zeros((size, size), bool)
            m[iy[0]:iy[-1] + 1, ix[0]:ix[-1] + 1] = labels[np.ix_(ny, nx)] == cell_id
            mask = _dilate(m, dilate_px)
    elif want_mask:
        mask = np.zeros((size, size), bool)
    return out, mask


def _crop_defer(data: np.ndarray, labels: np.ndarray, cell_id: int, center: tuple[float, float], w: int,
                want_mask: bool, dilate_src: float) -> tuple[np.ndarray, np.ndarray | None]:
    c, h, wd = data.shape
    # the window's centre (origin + (w - 1) / 2) is within half a pixel of the centroid
    oy = int(math.floor(center[0] - w / 2 + 1))
    ox = int(math.floor(center[1] - w / 2 + 1))
    out = np.zeros((c, w, w), np.float32)
    ys, ye = max(oy, 0), min(oy + w, h)
    xs, xe = max(ox, 0), min(ox + w, wd)
    mask = np.zeros((w, w), bool) if want_mask else None
    if ys < ye and xs < xe:
        out[:, ys - oy:ye - oy, xs - ox:xe - ox] = data[:, ys:ye, xs:xe]
        if want_mask:
            mask[ys - oy:ye - oy, xs - ox:xe - ox] = labels[ys:ye, xs:xe] == cell_id
            mask = _dilate(mask, dilate_src)
    return out, mask


def iter_crops(site: SiteImage, segmentation: Segmentation, *, target_pixel_size_um: float = HPA_PIXEL_SIZE_UM,
               crop_size: int = 640, out_size: int | None = None, mask: bool = False, dilate_px: float = 7,
               batch_size: int = 64, rescale: str = "cpu", exclude_border: bool = False,
               channels: Sequence[str] | None = None, cell_ids: Sequence[int] | None = None
               ) -> Iterator[CropBatch]:
    """Per-cell crops of one site at SubCell's pixel scale, in batches.

    Equivalent to rescaling the site to ``target_pixel_size_um`` and cutting a ``crop_size`` window centred
    on each cell (zero-padded at the borders), then resizing it to ``out_size``; see the module docstring
    for the exact geometry and the two modes.

    Parameters
    ----------
    site : SiteImage
        Pixels ``(C, H, W)``; any dtype (crops are float32 in the same intensity units).
    segmentation : Segmentation
        Labels of the same site (``cells`` of shape ``(H, W)``) and its per-cell table (centroids).
    target_pixel_size_um : float
        Output pixel size before the optional resize (SubCell/HPA: 0.0800885 µm/px).
    crop_size : int
        Window side at ``target_pixel_size_um`` (640 default; 448; 896 with ``out_size=448`` for the
        training convention).
    out_size : int, optional
        Side of the returned crops (default ``crop_size``).
    mask : bool
        Multiply crops by the cell's mask dilated by ``dilate_px`` (output pixels) and return the masks.
    dilate_px : float
        Mask dilation radius in output pixels.
    batch_size : int
        Crops per batch. Memory per batch is ``batch_size x C x out_size² x 4`` bytes in ``cpu`` mode.
    rescale : {"cpu", "defer"}
        Resample here, or return source-resolution windows for on-device resizing.
    exclude_border : bool
        Skip cells that touch the image border.
    channels : sequence of str, optional
        Channels to crop, in this order (default: all of the site's channels).
    cell_ids : sequence of int, optional
        Only these cells (default: all cells in the table).

    Yields
    ------
    CropBatch
        ``data`` ``(N, C, S, S)`` float32 with keys ``plate``, ``well``, ``site``, ``cell_id``; in ``cpu``
        mode ``S == out_size`` and ``scale == 1``; in ``defer`` mode ``S`` is the source window and
        ``scale == out_size / S``.

    Raises
    ------
    ValueError
        Unknown pixel size, shape mismatch between site and labels, bad sizes or mode.
    """
    if rescale not in ("cpu", "defer"):
        raise ValueError(f"rescale must be 'cpu' or 'defer', got {rescale!r}")
    out_size = crop_size if out_size is None else int(out_size)
    if crop_size < 1 or out_size < 1 or batch_size < 1:
        raise ValueError(f"crop_size, out_size and batch_size must be >= 1, got {crop_size}, {out_size}, "
                         f"{batch_size}")
    if not target_pixel_size_um > 0:
        raise ValueError(f"target_pixel_size_um must be > 0, got {target_pixel_size_um}")
    rec = site.record
    where = f"site {rec.plate}/{rec.well}/s{rec.site}"
    p = site.pixel_size_um if site.pixel_size_um is not None else segmentation.pixel_size_um
    if p is None or not p > 0:
        raise ValueError(f"{where}: unknown pixel size; set [images].pixel_size_um in the run config")
    if segmentation.pixel_size_um and not math.isclose(p, segmentation.pixel_size_um, rel_tol=1e-6):
        raise ValueError(f"{where}: image pixel size {p} µm differs from the segmentation's "
                         f"{segmentation.pixel_size_um} µm")
    labels = segmentation.cells
    if labels.shape != site.data.shape[1:]:
        raise ValueError(f"{where}: labels {labels.shape} do not match the image {site.data.shape[1:]}")
    if channels is None:
        data, names = site.data, tuple(site.channel_names)
    else:
        lower = [c.lower() for c in site.channel_names]
        missing = [c for c in channels if c.lower() not in lower]
        if missing:
            raise ValueError(f"{where}: no channel(s) {missing}; channels: {', '.join(site.channel_names)}")
        idx = [lower.index(c.lower()) for c in channels]
        data, names = site.data[idx], tuple(site.channel_names[i] for i in idx)

    table = segmentation.cells_table
    if exclude_border:
        table = table.filter(~pl.col("touches_border"))
    if cell_ids is not None:
        table = table.filter(pl.col("cell_id").is_in(list(cell_ids)))
    table = table.sort("cell_id")
    ids = table["cell_id"].to_numpy()
    cy, cx = table["centroid_y"].to_numpy(), table["centroid_x"].to_numpy()

    z = crop_scale(p, target_pixel_size_um=target_pixel_size_um, crop_size=crop_size, out_size=out_size)
    h, w = labels.shape
    shape_out = (max(1, int(round(h * z))), max(1, int(round(w * z))))
    if rescale == "cpu":
        side, scale = out_size, 1.0
    else:
        side = max(1, int(round(out_size / z)))
        scale = out_size / side
    for start in range(0, len(ids), batch_size):
        sl = slice(start, min(start + batch_size, len(ids)))
        n = sl.stop - sl.start
        batch = np.zeros((n, len(names), side, side), np.float32)
        masks = np.zeros((n, 1, side, side), np.float32) if mask else None
        for j, k in enumerate(range(sl.start, sl.stop)):
            centre = (float(cy[k]), float(cx[k]))
            if rescale == "cpu":
                crop, m = _crop_cpu(data, labels, int(ids[k]), centre, shape_out, out_size, mask, dilate_px)
            else:
                crop, m = _crop_defer(data, labels, int(ids[k]), centre, side, mask,
                                      max(1.0, dilate_px / scale) if dilate_px > 0 else 0.0)
            if m is not None:
                crop *= m
                masks[j, 0] = m  # type: ignore[index]
            batch[j] = crop
        keys = pl.DataFrame({"plate": [rec.plate] * n, "well": [rec.well] * n,
                             "site": np.full(n, int(rec.site), np.int32), "cell_id": ids[sl].astype(np.int32)},
                            schema={"plate": pl.String, "well": pl.String, "site": pl.Int32, "cell_id": pl.Int32})
        yield CropBatch(data=batch, keys=keys, channel_names=names, mask=masks, scale=scale, out_size=out_size)
