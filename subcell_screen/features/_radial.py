"""RadialDistribution family (CellProfiler MeasureObjectIntensityDistribution, scaled bins).

Each object pixel gets a normalised distance ``d_centre / (d_centre + d_edge + 0.001)``, where ``d_centre``
is the 8-connected geodesic distance inside the object from its centre pixel (steps 1 and sqrt(2), which is
what CellProfiler's ``propagate`` on a blank image computes) and ``d_edge`` the Euclidean distance to the
nearest pixel outside the object. Bin ``k`` of ``n`` holds pixels with ``k/n <= distance < (k+1)/n``.

Per bin and channel: ``FracAtD`` (fraction of the object's total intensity in the bin), ``MeanFrac``
(``FracAtD`` over the fraction of the object's pixels in the bin) and ``RadialCV`` (coefficient of
variation of the mean intensity over 8 wedges around the centre).
"""

from __future__ import annotations

import numpy as np

from ._objects import Objects

__all__ = ["RADIAL_FEATURES", "radial_feature_names", "RadialGeometry", "radial_geometry", "radial_features"]

RADIAL_FEATURES: tuple[str, ...] = ("FracAtD", "MeanFrac", "RadialCV")


def radial_feature_names(channel: str, bins: int) -> list[str]:
    """``<Feature>_<channel>_<k>of<n>`` suffixes for one channel."""
    return [f"{f}_{channel}_{k}of{bins}" for f in RADIAL_FEATURES for k in range(1, bins + 1)]


class RadialGeometry:
    """Per-pixel bin and wedge of one compartment (shared by all channels).

    Attributes
    ----------
    good : ndarray of bool, shape (N,)
        Object pixels reached from the centre.
    lab0 : ndarray of int64
        0-based object row of each good pixel.
    bin : ndarray of int64
        Radial bin (0..bins-1) of each good pixel.
    wedge : ndarray of int64
        Wedge (0..7) of each good pixel.
    bins : int
    n : int
    """

    def __init__(self, good: np.ndarray, lab0: np.ndarray, bin_: np.ndarray, wedge: np.ndarray,
                 bins: int, n: int) -> None:
        self.good, self.lab0, self.bin, self.wedge, self.bins, self.n = good, lab0, bin_, wedge, bins, n


def _self_centres(objs: Objects) -> np.ndarray:
    """Flat pixel index of each object's point farthest from its edge (first in C order on ties)."""
    centre = np.full(objs.n, -1, np.int64)
    if objs.pix.size == 0:
        return centre
    d = objs.distance_to_edge(pad=False)
    d2 = np.rint(d * d).astype(np.int64)  # squared distances are integers
    key = (objs.lab << 32) | d2
    key.sort()
    ends = np.cumsum(objs.area) - 1
    dmax = np.full(objs.n + 1, -1, np.int64)
    has = objs.area > 0
    dmax[1:][has] = key[ends[has]] & 0xFFFFFFFF
    cand = d2 == dmax[objs.lab]
    lab_c = objs.lab[cand]
    pix_c = objs.pix[cand]
    first = np.unique(lab_c, return_index=True)  # pix is ascending, so the first hit is the C-order first
    centre[first[0] - 1] = pix_c[first[1]]
    return centre


_SQRT2 = float(np.sqrt(2.0))


def _geodesic_from_centres(objs: Objects, centre: np.ndarray) -> np.ndarray:
    """8-connected geodesic distance (steps 1 and sqrt 2) inside each object from its centre pixel.

    The free-space chamfer distance ``max(|dy|, |dx|) + (sqrt 2 - 1) min(|dy|, |dx|)`` is a lower bound;
    where every pixel of an object has an 8-neighbour in the same object that is one step closer by exactly
    that step, it is attained by a path inside the object and is the geodesic distance. Only objects
    failing this check (concave ones) go through a shortest-path search (``skimage.graph.MCP_Geometric``)
    on a canvas of their packed bounding boxes. Pixels not connected to the centre get ``inf``.
    """
    from skimage.graph import MCP_Geometric

    h, w = objs.shape
    lab0 = objs.lab - 1
    ok_row = centre >= 0
    cy, cx = np.divmod(np.where(ok_row, centre, 0), w)
    y, x = np.divmod(objs.pix, w)
    ady = np.abs(y - cy[lab0]).astype(np.float64)
    adx = np.abs(x - cx[lab0]).astype(np.float64)
    d = np.maximum(ady, adx) + (_SQRT2 - 1) * np.minimum(ady, adx)
    dimg = np.zeros((h, w))
    dimg.ravel()[objs.pix] = d
    supported = np.zeros((h, w), bool)
    idx = objs.index
    pad_i = np.pad(idx, 1)
    pad_d = np.pad(dimg, 1)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == dx == 0:
                continue
            step = _SQRT2 if dy and dx else 1.0
            qi = pad_i[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
            qd = pad_d[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
            supported |= (qi == idx) & (np.abs(qd + step - dimg) < 1e-9)
    sup = supported.ravel()[objs.pix] | (d == 0)
    bad_rows = np.unique(lab0[~sup & ok_row[lab0]])
    out = np.where(ok_row[lab0], d, np.inf)
    if bad_rows.size:
        canvas, cy_c, cx_c = objs.packed(pad=True, rows=bad_rows)
        sel = np.isin(lab0, bad_rows)
        starts_at = np.searchsorted(objs.pix, centre[bad_rows])
        costs = np.where(canvas, 1.0, np.inf)
        starts = list(zip(cy_c[starts_at].tolist(), cx_c[starts_at].tolist()))
        cum, _ = MCP_Geometric(costs, fully_connected=True).find_costs(starts)
        out[sel] = cum[cy_c[sel], cx_c[sel]]
    return out


def radial_geometry(objs: Objects, *, bins: int, centres_yx: tuple[np.ndarray, np.ndarray] | None = None
                    ) -> RadialGeometry:
    """Bin and wedge of every pixel of ``objs``.

    Parameters
    ----------
    objs : Objects
    bins : int
        Number of scaled radial bins.
    centres_yx : (ndarray, ndarray), optional
        Preferred centre of each object (row, col; NaN where none), e.g. the centroid of its nucleus. It is
        rounded to the nearest pixel (CellProfiler: ``int(c + 0.5)``) and used when that pixel belongs to
        the object; otherwise, and when None, the object's own centre (the pixel farthest from its edge)
        is used, as CellProfiler does.
    """
    if bins < 1:
        raise ValueError(f"radial_bins must be >= 1, got {bins}")
    n = objs.n
    h, w = objs.shape
    centre = _self_centres(objs)
    if centres_yx is not None:
        cy, cx = centres_yx
        ok = np.isfinite(cy) & np.isfinite(cx)
        ri = np.floor(np.where(ok, cy, -1) + 0.5).astype(np.int64)
        ci = np.floor(np.where(ok, cx, -1) + 0.5).astype(np.int64)
        ok &= (ri >= 0) & (ri < h) & (ci >= 0) & (ci < w)
        rows = np.flatnonzero(ok)
        inside = objs.index[ri[rows], ci[rows]] == rows + 1
        centre[rows[inside]] = ri[rows[inside]] * w + ci[rows[inside]]

    d_centre = np.full(objs.pix.size, np.inf)
    has_centre = centre >= 0
    if objs.pix.size and has_centre.any():
        d_centre = _geodesic_from_centres(objs, centre)
    good = np.isfinite(d_centre)
    d_edge = objs.distance_to_edge(pad=False)
    norm = d_centre[good] / (d_centre[good] + d_edge[good] + 0.001)
    bin_ = np.minimum((norm * bins).astype(np.int64), bins - 1)
    lab0 = objs.lab[good] - 1
    py, px = np.divmod(objs.pix[good], w)
    cy_, cx_ = np.divmod(centre[lab0], w)
    wedge = ((py > cy_).astype(np.int64) + 2 * (px > cx_) + 4 * (np.abs(py - cy_) > np.abs(px - cx_)))
    return RadialGeometry(good, lab0, bin_, wedge, bins, n)


def radial_features(geom: RadialGeometry, values: np.ndarray) -> dict[str, np.ndarray]:
    """Radial features of one channel.

    Parameters
    ----------
    geom : RadialGeometry
    values : ndarray of float64, shape (N,)
        Intensities (CellProfiler units) of the compartment's pixels, in ``Objects.pix`` order.

    Returns
    -------
    dict
        ``FracAtD``/``MeanFrac``/``RadialCV`` -> ndarray (n, bins). ``FracAtD`` and ``MeanFrac`` are NaN
        when the object's total intensity is 0 (CellProfiler: 0/0); ``RadialCV`` is 0 for a bin without
        pixels and NaN when the bin's wedge means average to 0.
    """
    n, bins = geom.n, geom.bins
    v = values[geom.good]
    cell_bin = geom.lab0 * bins + geom.bin
    hist = np.bincount(cell_bin, weights=v, minlength=n * bins).reshape(n, bins)
    count = np.bincount(cell_bin, minlength=n * bins).reshape(n, bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = hist / hist.sum(axis=1, keepdims=True)
        frac_px = count / count.sum(axis=1, keepdims=True)
        mean_frac = frac / (frac_px + np.finfo(float).eps)
    key = cell_bin * 8 + geom.wedge
    wsum = np.bincount(key, weights=v, minlength=n * bins * 8).reshape(n, bins, 8)
    wcnt = np.bincount(key, minlength=n * bins * 8).reshape(n, bins, 8)
    filled = wcnt > 0
    k = filled.sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(filled, wsum / np.where(filled, wcnt, 1), 0.0)
        mu = means.sum(axis=2) / k
        var = (np.where(filled, (means - mu[..., None]) ** 2, 0.0)).sum(axis=2) / k
        cv = np.sqrt(var) / mu
    cv[k == 0] = 0.0
    return {"FracAtD": frac, "MeanFrac": mean_frac, "RadialCV": cv}
