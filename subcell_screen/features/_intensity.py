"""Intensity family (CellProfiler MeasureObjectIntensity) and labelled order statistics."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._objects import Objects

__all__ = ["Channel", "INTENSITY_FEATURES", "intensity_features", "grouped_sort", "cp_quantile", "np_median"]

#: Intensity features per compartment and channel, in output order.
INTENSITY_FEATURES: tuple[str, ...] = (
    "IntegratedIntensity", "MeanIntensity", "StdIntensity", "MinIntensity", "MaxIntensity",
    "LowerQuartileIntensity", "MedianIntensity", "UpperQuartileIntensity", "MADIntensity",
    "MassDisplacement",
    "IntegratedIntensityEdge", "MeanIntensityEdge", "StdIntensityEdge", "MinIntensityEdge", "MaxIntensityEdge",
)

_KEY_BITS = 32
_KEY_MASK = (1 << _KEY_BITS) - 1


@dataclass(frozen=True)
class Channel:
    """One image channel as measured.

    Attributes
    ----------
    name : str
        Channel name used in feature names.
    data : ndarray, shape (H, W)
        Pixels in their original dtype (not rescaled).
    scale : float
        Divisor that converts ``data`` to CellProfiler's intensity units (255 for uint8, 65535 for uint16,
        1 for float).
    """

    name: str
    data: np.ndarray = field(repr=False)
    scale: float

    @property
    def integer(self) -> bool:
        """Whether pixel values are non-negative integers below 2**31 (exact integer sort keys)."""
        kind = self.data.dtype.kind
        if kind == "b":
            return True
        if kind == "u":
            return self.data.dtype.itemsize <= 4 and (self.data.size == 0 or int(self.data.max()) < 2**31)
        if kind == "i":
            return self.data.size == 0 or (int(self.data.min()) >= 0 and int(self.data.max()) < 2**31)
        return False


def grouped_sort(lab: np.ndarray, values: np.ndarray, *, integer: bool) -> np.ndarray:
    """Values sorted ascending within each label, label groups in ascending label order.

    Parameters
    ----------
    lab : ndarray of int64, shape (N,)
        Label (>= 1) of each value.
    values : ndarray, shape (N,)
        Values; with ``integer=True`` they must be integers in ``[0, 2**31)``.
    integer : bool
        Use the values themselves as sort keys (exact, no extra sort); otherwise their ranks.

    Returns
    -------
    ndarray of float64, shape (N,)
    """
    if values.size == 0:
        return np.zeros(0)
    lab = lab.astype(np.int64, copy=False)
    if integer:
        key = (lab << _KEY_BITS) | values.astype(np.int64)
        key.sort()
        return (key & _KEY_MASK).astype(np.float64)
    uniq, inv = np.unique(values, return_inverse=True)
    key = (lab << _KEY_BITS) | inv.astype(np.int64).ravel()
    key.sort()
    return uniq[key & _KEY_MASK].astype(np.float64)


def cp_quantile(sorted_values: np.ndarray, starts: np.ndarray, areas: np.ndarray, fraction: float) -> np.ndarray:
    """CellProfiler's per-object quantile: linear interpolation at position ``start + area * fraction``.

    This is MeasureObjectIntensity's convention (not ``numpy.percentile``'s ``(n - 1) * q``): the value
    at sorted position ``floor(p)`` and ``floor(p) + 1`` are interpolated, and the last value is used when
    there is no upper neighbour. Empty objects give 0.
    """
    out = np.zeros(areas.shape[0])
    if sorted_values.size == 0:
        return out
    q = starts.astype(np.float64) + areas * fraction
    qi = q.astype(np.int64)
    qf = q - np.floor(q)
    inner = qi < starts + areas - 1
    hi = np.minimum(qi + 1, sorted_values.size - 1)
    qi_c = np.minimum(qi, sorted_values.size - 1)
    out[inner] = sorted_values[qi_c[inner]] * (1 - qf[inner]) + sorted_values[hi[inner]] * qf[inner]
    last = ~inner & (areas > 0)
    out[last] = sorted_values[qi_c[last]]
    return out


def np_median(sorted_values: np.ndarray, starts: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """``numpy.median`` of each group of sorted values (mean of the two middle values); NaN when empty."""
    out = np.full(areas.shape[0], np.nan)
    has = areas > 0
    if not has.any():
        return out
    lo = starts[has] + (areas[has] - 1) // 2
    hi = starts[has] + areas[has] // 2
    out[has] = (sorted_values[lo] + sorted_values[hi]) / 2
    return out


def _group_stats(objs: Objects, lab: np.ndarray, v: np.ndarray, *, integer: bool) -> dict[str, np.ndarray]:
    """Sum, mean, population std, min, max of values grouped by label (0 for empty groups)."""
    n = objs.n
    area = np.bincount(lab, minlength=n + 1)[1:]
    has = area > 0
    vf = v.astype(np.float64)
    total = np.bincount(lab, weights=vf, minlength=n + 1)[1:]
    mean = np.zeros(n)
    np.divide(total, area, out=mean, where=has)
    dev = vf - np.concatenate([[0.0], mean])[lab]
    var = np.zeros(n)
    np.divide(np.bincount(lab, weights=dev * dev, minlength=n + 1)[1:], area, out=var, where=has)
    srt = grouped_sort(lab, v, integer=integer)
    starts = np.cumsum(area) - area
    vmin = np.zeros(n)
    vmax = np.zeros(n)
    if srt.size:
        vmin[has] = srt[starts[has]]
        vmax[has] = srt[starts[has] + area[has] - 1]
    return {"area": area, "has": has, "total": total, "mean": mean, "std": np.sqrt(var), "min": vmin,
            "max": vmax, "sorted": srt, "starts": starts}


def intensity_features(objs: Objects, channel: Channel) -> dict[str, np.ndarray]:
    """Intensity features of one compartment in one channel.

    Returns
    -------
    dict
        Feature name (from :data:`INTENSITY_FEATURES`) -> float64 array of shape (n,), in CellProfiler
        units (pixel values divided by ``channel.scale``). Empty objects give 0 (CellProfiler's
        zero-initialised arrays); ``MassDisplacement`` is NaN when the object's total intensity is 0 (as in
        CellProfiler, 0/0).
    """
    s = float(channel.scale)
    lab = objs.lab
    v = channel.data.ravel()[objs.pix]
    integer = channel.integer
    g = _group_stats(objs, lab, v, integer=integer)
    area, has, srt, starts = g["area"], g["has"], g["sorted"], g["starts"]

    lq = cp_quantile(srt, starts, area, 0.25)
    med = cp_quantile(srt, starts, area, 0.5)
    uq = cp_quantile(srt, starts, area, 0.75)

    # MAD: CellProfiler's quantile 0.5 of |x - median| within the object
    med_full = np.concatenate([[0.0], med])
    if integer:
        # the median is a mean of two integers, so 2 * |x - median| is an exact integer
        twice_dev = np.abs(2 * v.astype(np.int64) - np.rint(2 * med_full).astype(np.int64)[lab])
        mad = cp_quantile(grouped_sort(lab, twice_dev, integer=True), starts, area, 0.5) / 2
    else:
        dev = np.abs(v.astype(np.float64) - med_full[lab])
        mad = cp_quantile(grouped_sort(lab, dev, integer=False), starts, area, 0.5)

    # mass displacement: distance between the binary and intensity-weighted centroids (pixels)
    y, x = objs.yx
    vf = v.astype(np.float64)
    cy, cx = objs.centroid
    with np.errstate(invalid="ignore", divide="ignore"):
        iy = objs.sum_by_label(y * vf) / g["total"]
        ix = objs.sum_by_label(x * vf) / g["total"]
        mass_disp = np.hypot(cy - iy, cx - ix)
    mass_disp[~has] = 0.0

    edge = objs.edge_mask
    e = _group_stats(objs, lab[edge], v[edge], integer=integer)

    out = {
        "IntegratedIntensity": g["total"] / s,
        "MeanIntensity": g["mean"] / s,
        "StdIntensity": g["std"] / s,
        "MinIntensity": g["min"] / s,
        "MaxIntensity": g["max"] / s,
        "LowerQuartileIntensity": lq / s,
        "MedianIntensity": med / s,
        "UpperQuartileIntensity": uq / s,
        "MADIntensity": mad / s,
        "MassDisplacement": mass_disp,
        "IntegratedIntensityEdge": e["total"] / s,
        "MeanIntensityEdge": e["mean"] / s,
        "StdIntensityEdge": e["std"] / s,
        "MinIntensityEdge": e["min"] / s,
        "MaxIntensityEdge": e["max"] / s,
    }
    return out
