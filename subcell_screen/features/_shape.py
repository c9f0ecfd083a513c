"""AreaShape family (CellProfiler MeasureObjectSizeShape), including Zernike shape moments."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np

from ._objects import Objects

__all__ = ["SHAPE_FEATURES", "zernike_indexes", "shape_feature_names", "shape_features", "perimeters",
           "minimum_enclosing_circle"]

#: Scalar AreaShape features, in output order (Zernike moments follow).
SHAPE_FEATURES: tuple[str, ...] = (
    "Area", "Perimeter", "FormFactor", "Compactness", "Solidity", "Extent", "EquivalentDiameter",
    "Eccentricity", "MajorAxisLength", "MinorAxisLength", "Orientation",
    "MaximumRadius", "MeanRadius", "MedianRadius",
)

# scikit-image's perimeter weights for the 3x3 code of a border pixel (skimage.measure.perimeter)
_PERIMETER_WEIGHTS = np.zeros(50)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1
_PERIMETER_WEIGHTS[[21, 33]] = math.sqrt(2)
_PERIMETER_WEIGHTS[[13, 23]] = (1 + math.sqrt(2)) / 2


def zernike_indexes(degree: int) -> list[tuple[int, int]]:
    """``(n, m)`` of the Zernike moments up to radial degree ``degree``: ``0 <= m <= n``, ``n - m`` even.

    Degree 9 gives CellProfiler's 30 moments ``Zernike_0_0`` ... ``Zernike_9_9``.
    """
    return [(n, m) for n in range(degree + 1) for m in range(n % 2, n + 1, 2)]


def shape_feature_names(zernike_degree: int) -> list[str]:
    """AreaShape feature names (without compartment prefix) for a Zernike degree (-1: none)."""
    return [*SHAPE_FEATURES, *[f"Zernike_{n}_{m}" for n, m in zernike_indexes(zernike_degree)]]


def perimeters(objs: Objects) -> np.ndarray:
    """Perimeter of each object as ``skimage.measure.regionprops(...).perimeter`` computes it (4-connected
    border pixels weighted by their 8-neighbourhood code), for all objects at once."""
    idx = objs.index
    interior = idx != 0
    padded = np.pad(idx, 1)
    c = padded[1:-1, 1:-1]
    for sl in ((slice(None, -2), slice(1, -1)), (slice(2, None), slice(1, -1)),
               (slice(1, -1), slice(None, -2)), (slice(1, -1), slice(2, None))):
        interior &= padded[sl] == c
    border = (idx != 0) & ~interior
    bpad = np.pad(np.where(border, idx, 0), 1)
    code = np.zeros(idx.shape, np.int64)
    for sl, w in (((slice(None, -2), slice(1, -1)), 2), ((slice(2, None), slice(1, -1)), 2),
                  ((slice(1, -1), slice(None, -2)), 2), ((slice(1, -1), slice(2, None)), 2),
                  ((slice(None, -2), slice(None, -2)), 10), ((slice(None, -2), slice(2, None)), 10),
                  ((slice(2, None), slice(None, -2)), 10), ((slice(2, None), slice(2, None)), 10)):
        code += w * (bpad[sl] == c)
    code += 1
    lab = idx[border].astype(np.int64)
    return np.bincount(lab, weights=_PERIMETER_WEIGHTS[np.minimum(code[border], 49)],
                       minlength=objs.n + 1)[1:]


def _hull(points: np.ndarray) -> np.ndarray:
    """Vertices of the convex hull of ``points`` (k, 2) in counter-clockwise order; the distinct points
    themselves when they are fewer than 3 or collinear."""
    from scipy.spatial import ConvexHull, QhullError

    if points.shape[0] >= 3:
        try:
            return points[ConvexHull(points).vertices]
        except QhullError:  # collinear
            pass
    return np.unique(points, axis=0)


def _convex_areas(polygons: list[np.ndarray | None], origins: np.ndarray) -> np.ndarray:
    """Number of grid points inside each convex polygon by the crossing-number rule, all polygons at once.

    Equal to ``grid_points_in_poly`` of scikit-image <= 0.16 (``x`` = row, ``y`` = column, an edge counts for
    ``min(y_i, y_j) <= y < max(y_i, y_j)`` and the point is left of it when ``x < x_intersection``),
    evaluated in each polygon's local frame (``origins``: top-left grid point). For a convex polygon every
    grid column is crossed by 0 or 2 edges, and the points between the two crossings are inside.
    """
    n = len(polygons)
    out = np.full(n, np.nan)
    xs, ys, xj, yj, obj = [], [], [], [], []
    for k, poly in enumerate(polygons):
        if poly is None:
            continue
        v = poly - origins[k]
        xs.append(v[:, 0])
        ys.append(v[:, 1])
        xj.append(np.roll(v[:, 0], 1))
        yj.append(np.roll(v[:, 1], 1))
        obj.append(np.full(v.shape[0], k))
        out[k] = 0
    if not obj:
        return out
    xi, yi, xj_, yj_, ok = (np.concatenate(a) for a in (xs, ys, xj, yj, obj))
    lo = np.ceil(np.minimum(yi, yj_)).astype(np.int64)
    hi = np.ceil(np.maximum(yi, yj_)).astype(np.int64)  # integer columns y with min <= y < max
    reps = np.maximum(hi - lo, 0)
    e = np.repeat(np.arange(xi.size), reps)
    y = (lo[e] + np.arange(e.size) - np.repeat(np.cumsum(reps) - reps, reps)).astype(np.float64)
    x_int = (xj_[e] - xi[e]) * (y - yi[e]) / (yj_[e] - yi[e]) + xi[e]
    key = ok[e] * (1 << 32) + (y.astype(np.int64) + (1 << 20))
    order = np.lexsort((x_int, key))
    key, x_int = key[order], x_int[order]
    first = np.ones(key.size, bool)
    first[1:] = key[1:] != key[:-1]
    starts = np.flatnonzero(first)
    ends = np.append(starts[1:], key.size) - 1
    counts = np.maximum(np.ceil(x_int[ends]) - np.ceil(x_int[starts]), 0)
    np.add.at(out, key[starts] >> 32, counts)
    return out


def _circle2(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float, float]:
    # CellProfiler's (centrosome's) arithmetic, so that points on the circle round the same way
    return (a[0] + b[0]) / 2, (a[1] + b[1]) / 2, math.sqrt((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2) / 2


def _circle3(a: tuple[float, float], b: tuple[float, float],
             c: tuple[float, float]) -> tuple[float, float, float]:
    d = 2 * (a[0] * (b[1] - c[1]) + b[0] * (c[1] - a[1]) + c[0] * (a[1] - b[1]))
    if abs(d) < 1e-12:  # collinear: the farthest pair spans the circle
        return max((_circle2(p, q) for p, q in ((a, b), (a, c), (b, c))), key=lambda t: t[2])
    # centrosome's circumcentre formula (Y = row, X = column), radius measured to the first point
    a2 = a[0] ** 2 + a[1] ** 2
    b2 = b[0] ** 2 + b[1] ** 2
    c2 = c[0] ** 2 + c[1] ** 2
    dd = 2 * (a[1] * (b[0] - c[0]) + b[1] * (c[0] - a[0]) + c[1] * (a[0] - b[0]))
    cx = (a2 * (b[0] - c[0]) + b2 * (c[0] - a[0]) + c2 * (a[0] - b[0])) / dd
    cy = (a2 * (c[1] - b[1]) + b2 * (a[1] - c[1]) + c2 * (b[1] - a[1])) / dd
    return cy, cx, max(math.sqrt((p[0] - cy) ** 2 + (p[1] - cx) ** 2) for p in (a, b, c))


def minimum_enclosing_circle(points: np.ndarray | list) -> tuple[np.ndarray, float]:
    """Smallest circle containing ``points`` (shape (k, 2), k >= 1); Welzl's algorithm, fixed random order.

    Returns
    -------
    centre : ndarray, shape (2,)
    radius : float
    """
    pts = sorted({(float(p[0]), float(p[1])) for p in np.asarray(points).tolist()})
    if len(pts) == 1:
        return np.array(pts[0]), 0.0
    order = np.random.default_rng(0).permutation(len(pts))
    pts = [pts[i] for i in order]
    eps = 1e-9
    cx, cy, r = pts[0][0], pts[0][1], 0.0
    for i in range(1, len(pts)):
        p = pts[i]
        if math.hypot(p[0] - cx, p[1] - cy) <= r + eps:
            continue
        cx, cy, r = p[0], p[1], 0.0
        for j in range(i):
            q = pts[j]
            if math.hypot(q[0] - cx, q[1] - cy) <= r + eps:
                continue
            cx, cy, r = _circle2(p, q)
            for k in range(j):
                t = pts[k]
                if math.hypot(t[0] - cx, t[1] - cy) <= r + eps:
                    continue
                cx, cy, r = _circle3(p, q, t)
    return np.array([cx, cy]), r


def _row_extremes(objs: Objects) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leftmost and rightmost pixel of every (object, row): all the points a convex hull can need.

    Returns rows, cols (float64) and their object row index (0-based), grouped by object.
    """
    order = np.argsort(objs.lab, kind="stable")  # per object, pixels stay in row-major order
    pix = objs.pix[order]
    lab = objs.lab[order]
    y, x = np.divmod(pix, objs.shape[1])
    if pix.size == 0:
        e = np.zeros(0)
        return e, e, e.astype(np.int64)
    run = np.flatnonzero((np.diff(lab) != 0) | (np.diff(y) != 0)) + 1
    first = np.concatenate([[0], run])
    last = np.concatenate([run - 1, [pix.size - 1]])
    take = np.unique(np.concatenate([first, last]))
    return y[take].astype(np.float64), x[take].astype(np.float64), lab[take] - 1


def _hull_geometry(objs: Objects) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Convex area (pixel count) and minimum enclosing circle (centre, radius) of every object.

    The only per-object loop of the module (a ``scipy.spatial.ConvexHull`` of each object's row extremes
    and a minimum enclosing circle of its few hull vertices). Convex area counts pixel centres inside the
    hull of the pixels' edge midpoints with a crossing-number test, as scikit-image <= 0.16 (used by
    CellProfiler 4.0) did. The enclosing circle is fitted to pixel centres (CellProfiler's
    ``minimum_enclosing_circle``).
    """
    n = objs.n
    centres = np.full((n, 2), np.nan)
    radii = np.full(n, np.nan)
    ry, rx, rk = _row_extremes(objs)
    bounds = np.searchsorted(rk, np.arange(n + 1))
    pts_all = np.stack([ry, rx], axis=1)
    diamond = np.array([[0.0, -0.5], [0.0, 0.5], [-0.5, 0.0], [0.5, 0.0]])
    polygons: list[np.ndarray | None] = [None] * n
    origins = np.zeros((n, 2))
    for k in range(n):
        a, b = bounds[k], bounds[k + 1]
        if a == b:
            continue
        hull = _hull(pts_all[a:b])
        centres[k], radii[k] = minimum_enclosing_circle(hull)
        polygons[k] = _hull((hull[:, None, :] + diamond[None]).reshape(-1, 2))
        sl = objs.slices[k]
        origins[k] = sl[0].start, sl[1].start
    return _convex_areas(polygons, origins), centres, radii


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


def _radial_coefficients(n: int, m: int) -> dict[int, float]:
    """Coefficient of ``(r^2)^a`` in ``R_n^m(r) / r^m`` (Zernike radial polynomial)."""
    out = {}
    for k in range((n - m) // 2 + 1):
        out[(n - m) // 2 - k] = ((-1) ** k * math.factorial(n - k)
                                 / (math.factorial(k) * math.factorial((n + m) // 2 - k)
                                    * math.factorial((n - m) // 2 - k)))
    return out


def _zernike(objs: Objects, indexes: list[tuple[int, int]], centres: np.ndarray,
             radii: np.ndarray) -> np.ndarray:
    """``|sum over pixels of V_nm(x, y)| / (pi r^2)`` for each object, shape (n, K).

    Pixel coordinates are taken relative to the object's minimum enclosing circle and scaled by its
    radius; pixels with ``r^2 > 1`` are ignored (as in CellProfiler; whether a pixel on the circle itself
    counts depends on round-off, so some objects differ from CellProfiler in the last digits). Single-pixel
    objects (radius 0) give NaN, as in CellProfiler.

    Every moment is a combination of the complex moments ``sum (r^2)^a z^m`` (``z = y + i x``), which are
    computed for each object as one small matrix product over its pixels.
    """
    n, k = objs.n, len(indexes)
    out = np.full((n, k), np.nan)
    if objs.pix.size == 0 or k == 0:
        return out
    order, starts = objs.by_label
    y, x = objs.yx
    seg = objs.lab[order] - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        ym = (y[order] - centres[seg, 0]) / radii[seg]
        xm = (x[order] - centres[seg, 1]) / radii[seg]
    r2 = xm * xm + ym * ym
    amax = max((zn - zm) // 2 for zn, zm in indexes)
    mmax = max(zm for _, zm in indexes)
    # feature-major layout: every object's pixels are a contiguous column range of each row
    powers = np.empty((amax + 1, r2.size))  # (r^2)^a, 0 outside the unit circle
    powers[0] = r2 <= 1
    for a in range(1, amax + 1):
        np.multiply(powers[a - 1], r2, out=powers[a])
    zc = np.empty((2 * (mmax + 1), r2.size))  # Re z^m, Im z^m
    zc[0], zc[1] = 1.0, 0.0
    for m in range(1, mmax + 1):
        zr, zi = zc[2 * m - 2], zc[2 * m - 1]
        zc[2 * m] = zr * ym - zi * xm
        zc[2 * m + 1] = zr * xm + zi * ym
    moments = np.full((n, amax + 1, 2 * (mmax + 1)), np.nan)
    ends = starts + objs.area
    with _single_threaded_blas():  # many small products: BLAS threads only contend
        for row in np.flatnonzero(objs.area > 0):
            a, b = starts[row], ends[row]
            moments[row] = powers[:, a:b] @ zc[:, a:b].T
    for i, (zn, zm) in enumerate(indexes):
        re = np.zeros(n)
        im = np.zeros(n)
        for a, coef in _radial_coefficients(zn, zm).items():
            re += coef * moments[:, a, 2 * zm]
            im += coef * moments[:, a, 2 * zm + 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            out[:, i] = np.sqrt(re * re + im * im) / (np.pi * radii ** 2)
    out[radii == 0] = np.nan
    return out


def shape_features(objs: Objects, *, zernike_degree: int = 9) -> dict[str, np.ndarray]:
    """AreaShape features of one compartment.

    Returns
    -------
    dict
        Name (from :func:`shape_feature_names`) -> float64 array, shape (n,). Empty objects: ``Area`` and
        ``Perimeter`` 0, everything else NaN. One-pixel objects: ``Perimeter`` 0, ``FormFactor`` NaN
        (CellProfiler: inf), Zernike NaN (CellProfiler: NaN).
    """
    n = objs.n
    area = objs.area.astype(np.float64)
    has = area > 0
    perim = perimeters(objs)

    # second moments (two-pass, about the centroid) -> inertia tensor as scikit-image defines it
    y, x = objs.yx
    cy, cx = objs.centroid
    seg = objs.lab - 1
    dy = y - cy[seg] if y.size else y
    dx = x - cx[seg] if x.size else x
    with np.errstate(invalid="ignore", divide="ignore"):
        a = objs.sum_by_label(dx * dx) / area   # cols variance  (tensor[0, 0])
        c = objs.sum_by_label(dy * dy) / area   # rows variance  (tensor[1, 1])
        b = -objs.sum_by_label(dx * dy) / area  # tensor[0, 1]
        half_trace = (a + c) / 2
        disc = np.sqrt(((a - c) / 2) ** 2 + b ** 2)
        l1 = np.clip(half_trace + disc, 0, None)
        l2 = np.clip(half_trace - disc, 0, None)
        ecc = np.where(l1 == 0, 0.0, np.sqrt(np.clip(1 - l2 / l1, 0, None)))
        orientation = np.where(a - c == 0, np.where(b < 0, -np.pi / 4, np.pi / 4),
                               0.5 * np.arctan2(-2 * b, c - a))

    bbox_area = np.full(n, np.nan)
    for k, sl in enumerate(objs.slices):
        if sl is not None:
            bbox_area[k] = (sl[0].stop - sl[0].start) * (sl[1].stop - sl[1].start)

    # radii from the distance to the object edge (image border counts as edge)
    d = objs.distance_to_edge(pad=True)
    from ._intensity import grouped_sort, np_median

    max_r = np.full(n, np.nan)
    mean_r = np.full(n, np.nan)
    med_r = np.full(n, np.nan)
    if d.size:
        d2 = np.rint(d * d).astype(np.int64)  # squared Euclidean distances are integers
        srt = np.sqrt(grouped_sort(objs.lab, d2, integer=True))
        starts = np.cumsum(objs.area) - objs.area
        max_r[has] = srt[starts[has] + objs.area[has] - 1]
        mean_r[has] = objs.sum_by_label(d)[has] / area[has]
        med_r = np_median(srt, starts, objs.area)

    convex_area, centres, radii = _hull_geometry(objs)

    with np.errstate(invalid="ignore", divide="ignore"):
        out = {
            "Area": area,
            "Perimeter": perim,
            "FormFactor": np.where(perim > 0, 4 * np.pi * area / np.where(perim > 0, perim, 1) ** 2, np.nan),
            "Compactness": perim ** 2 / (4 * np.pi * area),
            "Solidity": area / convex_area,
            "Extent": area / bbox_area,
            "EquivalentDiameter": np.sqrt(4 * area / np.pi),
            "Eccentricity": ecc,
            "MajorAxisLength": 4 * np.sqrt(l1),
            "MinorAxisLength": 4 * np.sqrt(l2),
            "Orientation": np.degrees(orientation),
            "MaximumRadius": max_r,
            "MeanRadius": mean_r,
            "MedianRadius": med_r,
        }
    for name in SHAPE_FEATURES[2:]:
        out[name] = np.where(has, out[name], np.nan)
    if zernike_degree >= 0:
        idx = zernike_indexes(zernike_degree)
        zern = _zernike(objs, idx, centres, radii)
        for i, (zn, zm) in enumerate(idx):
            out[f"Zernike_{zn}_{zm}"] = zern[:, i]
    return out
