"""Label bookkeeping shared by every feature family.

A site's cell label image decides the rows: row ``k`` is the ``k``-th smallest cell id. Every compartment
(nuclei, cytoplasm, cells) is re-indexed into that row space, so that all families can use
``np.bincount``-style labelled reductions over the same ``1..n`` indices (0 = background).
"""

from __future__ import annotations

import logging
from functools import cached_property

import numpy as np
import scipy.ndimage as ndi

__all__ = ["Objects", "check_labels", "compact_labels", "cytoplasm_labels", "inner_boundary", "outline",
           "shifted_views"]

logger = logging.getLogger(__name__)


def check_labels(labels: np.ndarray, name: str) -> np.ndarray:
    """A 2-D non-negative integer label image (bool becomes int32); errors name the image."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{name} label image must be 2-D (H, W), got shape {labels.shape}")
    if labels.dtype == bool:
        return labels.astype(np.int32)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} label image must hold integers, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{name} label image has negative labels (min {labels.min()})")
    return labels


def compact_labels(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Map label values to row indices ``1..len(ids)`` (0 for background and for ids not in ``ids``).

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
        Label image (0 = background).
    ids : ndarray of int, shape (n,)
        Sorted, unique, positive ids that define the rows.

    Returns
    -------
    ndarray of int32, shape (H, W)
    """
    ids = np.asarray(ids, dtype=np.int64)
    out_dtype = np.int32
    if labels.size == 0 or ids.size == 0:
        return np.zeros(labels.shape, out_dtype)
    top = int(labels.max())
    if top <= 4 * labels.size + 1_000_000:  # dense lookup table
        lut = np.zeros(top + 1, out_dtype)
        keep = ids[ids <= top]
        lut[keep] = np.searchsorted(ids, keep).astype(out_dtype) + 1
        return lut[labels]
    flat = labels.ravel().astype(np.int64)
    pos = np.searchsorted(ids, flat)
    pos_c = np.minimum(pos, ids.size - 1)
    hit = (ids[pos_c] == flat) & (flat > 0)
    return np.where(hit, pos_c + 1, 0).astype(out_dtype).reshape(labels.shape)


def outline(labels: np.ndarray) -> np.ndarray:
    """Boolean image of object pixels with an 8-neighbour of another value, or on the image border.

    This is CellProfiler's object outline (``centrosome.outline.outline``), used for the shrunken-nucleus
    cytoplasm.
    """
    diff = np.zeros(labels.shape, bool)
    for a, b in (((slice(1, None), slice(None)), (slice(None, -1), slice(None))),
                 ((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
                 ((slice(1, None), slice(1, None)), (slice(None, -1), slice(None, -1))),
                 ((slice(1, None), slice(None, -1)), (slice(None, -1), slice(1, None)))):
        d = labels[a] != labels[b]
        diff[a] |= d
        diff[b] |= d
    if diff.size:
        diff[0, :] = diff[-1, :] = True
        diff[:, 0] = diff[:, -1] = True
    return diff & (labels != 0)


def inner_boundary(labels: np.ndarray) -> np.ndarray:
    """Boolean image of object pixels with a 4-neighbour (inside the image) of another value.

    Equal to ``skimage.segmentation.find_boundaries(labels, mode="inner") & (labels != 0)``, which is
    what CellProfiler's MeasureObjectIntensity uses for its ``*Edge`` features.
    """
    diff = np.zeros(labels.shape, bool)
    for a, b in (((slice(1, None), slice(None)), (slice(None, -1), slice(None))),
                 ((slice(None), slice(1, None)), (slice(None), slice(None, -1)))):
        d = labels[a] != labels[b]
        diff[a] |= d
        diff[b] |= d
    return diff & (labels != 0)


def cytoplasm_labels(nuclei: np.ndarray, cells: np.ndarray, *, shrink_nuclei: bool = False) -> np.ndarray:
    """Cytoplasm label image: cell pixels not covered by any nucleus; ids are the cell ids.

    Parameters
    ----------
    nuclei, cells : ndarray of int, shape (H, W)
        Label images (0 = background).
    shrink_nuclei : bool
        CellProfiler's IdentifyTertiaryObjects "shrink smaller object prior to subtraction": nucleus
        outline pixels (see :func:`outline`) stay in the cytoplasm. Default False (cytoplasm = cell minus
        nucleus).

    Returns
    -------
    ndarray, shape (H, W), dtype of ``cells``
    """
    nuclei = check_labels(nuclei, "nuclei")
    cells = check_labels(cells, "cells")
    if nuclei.shape != cells.shape:
        raise ValueError(f"nuclei {nuclei.shape} and cells {cells.shape} label images differ in shape")
    covered = nuclei != 0
    if shrink_nuclei:
        covered &= ~outline(nuclei)
    out = cells.copy()
    out[covered] = 0
    return out


def shifted_views(image: np.ndarray, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    """Views ``(a, b)`` of ``image`` with ``b[y, x] == image[y + dy, x + dx]`` (``dy >= 0``), over the overlap."""
    if dy < 0:
        raise ValueError("dy must be >= 0")
    h, w = image.shape
    a = image[0:max(h - dy, 0), max(0, -dx):max(w - max(0, dx), 0)]
    b = image[dy:h, max(0, dx):max(w - max(0, -dx), 0)]
    return a, b


class Objects:
    """The objects of one compartment, indexed by row (``1..n``; 0 = background).

    Geometry that several families need (pixel coordinates, centroids, outlines, colouring, distance to
    the object edge) is computed once, on first use.

    Parameters
    ----------
    name : str
        Compartment name (``Nuclei``, ``Cytoplasm``, ``Cells``).
    index : ndarray of int32, shape (H, W)
        Row index image from :func:`compact_labels`.
    n : int
        Number of rows (cells) of the site.
    """

    def __init__(self, name: str, index: np.ndarray, n: int) -> None:
        self.name = name
        self.index = index
        self.n = int(n)
        self.shape = index.shape
        flat = index.ravel()
        self.pix = np.flatnonzero(flat)
        self.lab = flat[self.pix].astype(np.int64)
        self.area = np.bincount(self.lab, minlength=self.n + 1)[1:].astype(np.int64)

    # -- pixel geometry ------------------------------------------------------------------------------------

    @cached_property
    def yx(self) -> tuple[np.ndarray, np.ndarray]:
        """Row and column of every object pixel, float64."""
        y, x = np.divmod(self.pix, self.shape[1])
        return y.astype(np.float64), x.astype(np.float64)

    def sum_by_label(self, weights: np.ndarray) -> np.ndarray:
        """Sum of per-pixel ``weights`` for each row, shape (n,)."""
        return np.bincount(self.lab, weights=weights, minlength=self.n + 1)[1:]

    @cached_property
    def by_label(self) -> tuple[np.ndarray, np.ndarray]:
        """``(order, starts)``: ``pix[order]`` groups pixels by label (row-major within a label), and
        object ``k``'s pixels are ``order[starts[k]:starts[k] + area[k]]``."""
        order = np.argsort(self.lab, kind="stable")
        return order, np.cumsum(self.area) - self.area

    @cached_property
    def centroid(self) -> tuple[np.ndarray, np.ndarray]:
        """Centroid (row, col) of each object; NaN for empty objects."""
        y, x = self.yx
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sum_by_label(y) / self.area, self.sum_by_label(x) / self.area

    @cached_property
    def slices(self) -> list:
        """``scipy.ndimage.find_objects`` bounding boxes, one per row (None when empty)."""
        sl = ndi.find_objects(self.index, max_label=self.n)
        return list(sl) + [None] * (self.n - len(sl))

    @cached_property
    def edge_mask(self) -> np.ndarray:
        """Whether each object pixel is an edge pixel (:func:`inner_boundary`), bool (N,)."""
        return inner_boundary(self.index).ravel()[self.pix]

    # -- distances -----------------------------------------------------------------------------------------

    def packed(self, *, pad: bool, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All objects copied side by side onto one canvas, each in its own bounding box plus a margin.

        One array operation on the canvas (a distance transform, a shortest-path search) then treats every
        object on its own, which is exact and much cheaper than one full-image pass per colour.

        Parameters
        ----------
        pad : bool
            Whether the image border counts as outside the object. When False, an object cut by the image
            border gets a wide band of "object" pixels beyond that border on the canvas, so that distances
            to the nearest outside pixel only see pixels inside the image.

        rows : ndarray of int, optional
            Only these objects (0-based rows); the others are left off the canvas.

        Returns
        -------
        canvas : ndarray of bool, shape (Hc, Wc)
            Object pixels (and border bands when ``pad`` is False).
        cy, cx : ndarray of int64, shape (N,)
            Canvas position of every object pixel (``Objects.pix`` order; meaningless for objects left off).
        """
        wanted = None if rows is None else set(np.asarray(rows).tolist())
        h, w = self.shape
        boxes = []
        for k, sl in enumerate(self.slices):
            if sl is None or (wanted is not None and k not in wanted):
                boxes.append(None)
                continue
            y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
            big = max(y1 - y0, x1 - x0) + 2
            m = [1, 1, 1, 1]  # top, bottom, left, right
            if not pad:
                m = [big if y0 == 0 else 1, big if y1 == h else 1, big if x0 == 0 else 1, big if x1 == w else 1]
            boxes.append((k, y0, y1, x0, x1, m))
        present = [b for b in boxes if b is not None]
        total = sum((b[2] - b[1] + b[5][0] + b[5][1]) * (b[4] - b[3] + b[5][2] + b[5][3]) for b in present)
        width = max([int(np.sqrt(max(total, 1)) * 1.3)]
                    + [b[4] - b[3] + b[5][2] + b[5][3] for b in present])
        places = {}
        cy = cx = shelf = 0
        for k, y0, y1, x0, x1, m in present:
            bh, bw = y1 - y0 + m[0] + m[1], x1 - x0 + m[2] + m[3]
            if cx + bw > width:
                cy, cx, shelf = cy + shelf, 0, 0
            places[k] = (cy, cx)
            cx += bw
            shelf = max(shelf, bh)
        canvas = np.zeros((cy + shelf, width), bool)
        dy = np.zeros(self.n + 1, np.int64)
        dx = np.zeros(self.n + 1, np.int64)
        for k, y0, y1, x0, x1, m in present:
            py, px = places[k]
            bh, bw = y1 - y0 + m[0] + m[1], x1 - x0 + m[2] + m[3]
            if not pad:
                box = canvas[py:py + bh, px:px + bw]
                if m[0] > 1:
                    box[:m[0]] = True
                if m[1] > 1:
                    box[bh - m[1]:] = True
                if m[2] > 1:
                    box[:, :m[2]] = True
                if m[3] > 1:
                    box[:, bw - m[3]:] = True
            canvas[py + m[0]:py + m[0] + y1 - y0, px + m[2]:px + m[2] + x1 - x0] = self.index[y0:y1, x0:x1] == k + 1
            dy[k + 1] = py + m[0] - y0
            dx[k + 1] = px + m[2] - x0
        y, x = np.divmod(self.pix, w)
        return canvas, y + dy[self.lab], x + dx[self.lab]

    def distance_to_edge(self, *, pad: bool) -> np.ndarray:
        """Euclidean distance of each object pixel to the nearest pixel outside its object, float64 (N,).

        ``pad=True`` treats the image border as outside (CellProfiler's MeasureObjectSizeShape radii);
        ``pad=False`` does not (CellProfiler's ``distance_to_edge``, used by radial distribution).
        """
        key = "_dte_pad" if pad else "_dte"
        cached = self.__dict__.get(key)
        if cached is not None:
            return cached
        out = np.zeros(self.pix.size)
        if self.pix.size:
            canvas, cy, cx = self.packed(pad=pad)
            out = ndi.distance_transform_edt(canvas)[cy, cx]
        self.__dict__[key] = out
        return out
