"""Correlation family: Pearson correlation between channels within each object (CellProfiler
MeasureColocalization ``Correlation_Correlation_<a>_<b>``)."""

from __future__ import annotations

import numpy as np

from ._objects import Objects

__all__ = ["correlation_features"]


def correlation_features(objs: Objects, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Pearson correlation of every channel pair ``a < b`` (in the given order) over each object's pixels.

    Parameters
    ----------
    objs : Objects
    values : dict
        Channel name -> float64 intensities of the compartment's pixels (``Objects.pix`` order).

    Returns
    -------
    dict
        ``Correlation_<a>_<b>`` -> ndarray (n,): ``sum(dx * dy) / sqrt(sum(dx^2) * sum(dy^2))`` with ``dx``,
        ``dy`` the deviations from the object's means. NaN where a channel is constant over the object or
        the object is empty (CellProfiler: 0/0).
    """
    names = list(values)
    area = objs.area.astype(np.float64)
    centred = {}
    for name in names:
        v = values[name]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = objs.sum_by_label(v) / area
        centred[name] = v - np.concatenate([[0.0], np.nan_to_num(mean)])[objs.lab]
    ss = {name: objs.sum_by_label(centred[name] ** 2) for name in names}
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            with np.errstate(invalid="ignore", divide="ignore"):
                r = objs.sum_by_label(centred[a] * centred[b]) / np.sqrt(ss[a] * ss[b])
            r[(ss[a] == 0) | (ss[b] == 0)] = np.nan
            out[f"Correlation_{a}_{b}"] = r
    return out
