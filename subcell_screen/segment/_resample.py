"""Segmenting at a working resolution: images area-averaged down, label images brought back up exactly.

A 20x Cell Painting site (0.6-0.65 µm/px) samples its cells far more finely than segmentation needs: nuclei
span ~20 px and cells ~50 px. Segmenting a copy at a coarser *working* pixel size (e.g. 1.3 µm/px) costs
about ``(acquired / working)²`` of the full-resolution work. The label images are then mapped back onto the
acquisition's pixel grid by nearest neighbour, which keeps every object and its id (each working pixel covers
at least one acquired pixel), so the per-cell tables, crops and features downstream see labels of the
acquired size and the acquired pixel size.

Any real factor works (not only integers): downscaling averages each working pixel's footprint on the acquired
grid, with fractional weights at its edges (exact area averaging, separable, as sparse matrices).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MIN_WORKING_NUCLEUS_PX", "working_shape", "working_pixel_size", "downscale_image", "upscale_labels", "downscale_labels"]

#: Fewest pixels a nucleus may span at a working pixel size: the lower end of Cellpose-SAM's size-invariant
#: range (below it Cellpose would enlarge the image again), and where the classical segmenter's splitting of
#: touching nuclei starts to fail.
MIN_WORKING_NUCLEUS_PX = 7.5


def working_shape(shape: tuple[int, ...], *, pixel_size_um: float,
                  working_pixel_size_um: float | None) -> tuple[int, int] | None:
    """(H', W') of an (H, W) image resampled to ``working_pixel_size_um``, or None when that is not smaller.

    Parameters
    ----------
    shape : tuple of int
        ``(..., H, W)``; only the last two are used.
    pixel_size_um : float
        µm per pixel of the image.
    working_pixel_size_um : float or None
        µm per pixel to segment at; None, or not coarser than ``pixel_size_um``: None (never upsampled).

    Returns
    -------
    (int, int) or None
        ``round(H * pixel_size_um / working_pixel_size_um)`` (at least 1), likewise for W.
    """
    if working_pixel_size_um is None:
        return None
    if not (pixel_size_um > 0 and math.isfinite(pixel_size_um)):
        raise ValueError(f"pixel size must be a positive number, got {pixel_size_um!r}")
    if not (working_pixel_size_um > 0 and math.isfinite(working_pixel_size_um)):
        raise ValueError(f"working pixel size must be a positive number, got {working_pixel_size_um!r}")
    f = pixel_size_um / working_pixel_size_um
    h, w = int(shape[-2]), int(shape[-1])
    if f >= 1.0:
        return None
    out = (max(1, int(round(h * f))), max(1, int(round(w * f))))
    return None if out == (h, w) else out


def working_pixel_size(shape: tuple[int, ...], small: tuple[int, int], *, pixel_size_um: float) -> float:
    """µm per pixel of an (H, W) image of pixel size ``pixel_size_um`` resampled to ``small`` (H', W').

    The geometric mean of the two axes' scales (they differ by the rounding of :func:`working_shape` only).
    """
    h, w = int(shape[-2]), int(shape[-1])
    return float(pixel_size_um) * math.sqrt((h * w) / (small[0] * small[1]))


def _area_weights(n_in: int, n_out: int):
    """(n_out, n_in) sparse matrix averaging each output pixel's footprint [i s, (i+1) s) on the input."""
    from scipy import sparse

    s = n_in / n_out
    start = np.arange(n_out) * s
    stop = np.minimum(start + s, n_in)
    rows, cols, vals = [], [], []
    first = np.floor(start).astype(np.int64)
    for k in range(int(math.ceil(s)) + 1):
        j = first + k
        overlap = np.minimum(j + 1, stop) - np.maximum(j, start)
        ok = (overlap > 1e-12) & (j < n_in)
        rows.append(np.flatnonzero(ok))
        cols.append(j[ok])
        vals.append(overlap[ok])
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    m = sparse.csr_matrix((v, (r, c)), shape=(n_out, n_in))
    sums = np.asarray(m.sum(axis=1)).ravel()  # = s except for rounding at the far edge
    return sparse.diags(1.0 / sums) @ m


def downscale_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Area-average an image (or a stack of images) down to ``shape``.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (C, H, W), any integer or float dtype
        Not modified. Non-finite values must have been handled by the caller.
    shape : (int, int)
        (H', W') with H' <= H and W' <= W.

    Returns
    -------
    ndarray, shape (H', W') or (C, H', W'), float32
        Each output pixel is the mean of the input over its footprint (fractional pixels weighted by their
        covered area), so the mean intensity is preserved.
    """
    a = np.asarray(image)
    if a.ndim == 3:
        return np.stack([downscale_image(c, shape) for c in a])
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D image or a (C, H, W) stack, got shape {a.shape}")
    h, w = a.shape
    if shape[0] > h or shape[1] > w or min(shape) < 1:
        raise ValueError(f"cannot downscale a {h}x{w} image to {shape[0]}x{shape[1]}")
    x = a.astype(np.float64, copy=False)
    if shape[0] != h:
        x = _area_weights(h, shape[0]) @ x
    if shape[1] != w:
        x = (_area_weights(w, shape[1]) @ np.ascontiguousarray(x.T)).T
    return np.ascontiguousarray(x, dtype=np.float32)


def _nearest(n_from: int, n_to: int) -> np.ndarray:
    """Index into an axis of length ``n_from`` for each of ``n_to`` pixel centres on the same extent."""
    idx = np.floor((np.arange(n_to) + 0.5) * (n_from / n_to)).astype(np.int64)
    return np.minimum(idx, n_from - 1)


def upscale_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Label image at a working resolution -> the acquisition's (larger) grid, by nearest neighbour.

    Parameters
    ----------
    labels : ndarray, shape (H', W'), int
    shape : (int, int)
        (H, W) with H >= H' and W >= W'.

    Returns
    -------
    ndarray, shape (H, W), same dtype
        Every label of ``labels`` is present (each working pixel covers at least one acquired pixel) with its
        id; ``downscale_labels(upscale_labels(x, shape), x.shape)`` equals ``x``.
    """
    lab = np.asarray(labels)
    if shape[0] < lab.shape[0] or shape[1] < lab.shape[1]:
        raise ValueError(f"cannot upscale {lab.shape[0]}x{lab.shape[1]} labels to {shape[0]}x{shape[1]}")
    return lab[np.ix_(_nearest(lab.shape[0], shape[0]), _nearest(lab.shape[1], shape[1]))]


def downscale_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour sample of a label image on a coarser grid (ids kept; tiny objects may vanish)."""
    lab = np.asarray(labels)
    return lab[np.ix_(_nearest(lab.shape[0], shape[0]), _nearest(lab.shape[1], shape[1]))]
