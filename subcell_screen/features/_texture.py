"""Texture family: Haralick features of per-object grey-level co-occurrence matrices (CellProfiler MeasureTexture).

CellProfiler computes, for every object, the symmetric co-occurrence matrix of its quantised pixels at
offset ``scale`` in four directions and passes it to ``mahotas.features.haralick(..., ignore_zeros=True)``.
Here the matrices are never built densely: the co-occurring pairs of all objects are counted at once
(one ``np.unique`` over packed ``(object, level_i, level_j)`` codes), and every Haralick sum is a weighted
``np.bincount`` over those sparse entries. The formulas are mahotas' (log base 2 entropies, ``Correlation``
1 for a constant object, ``DifferenceVariance`` the variance of the ``p_{x-y}`` vector of length
``max level + 1``, ``InfoMeas2`` with ``exp``), so values agree with CellProfiler to round-off.
"""

from __future__ import annotations

import numpy as np

from ._objects import Objects, shifted_views

__all__ = ["HARALICK_FEATURES", "DIRECTIONS", "quantize", "texture_feature_names", "cooccurring_pairs",
           "texture_features"]

#: The 13 Haralick features, CellProfiler's names and order.
HARALICK_FEATURES: tuple[str, ...] = (
    "AngularSecondMoment", "Contrast", "Correlation", "Variance", "InverseDifferenceMoment", "SumAverage",
    "SumVariance", "SumEntropy", "Entropy", "DifferenceVariance", "DifferenceEntropy", "InfoMeas1", "InfoMeas2",
)

#: (row, col) steps of the four 2-D directions, in mahotas' order (0: horizontal, 1: diagonal, 2: vertical,
#: 3: anti-diagonal); CellProfiler numbers them 00..03.
DIRECTIONS: tuple[tuple[int, int], ...] = ((0, 1), (1, 1), (1, 0), (1, -1))


def quantize(scaled: np.ndarray, levels: int = 256) -> np.ndarray:
    """CellProfiler's texture quantisation of an image in [0, 1].

    ``skimage.util.img_as_ubyte`` (round to 0..255) and, for ``levels != 256``,
    ``rescale_intensity(in_range=(0, 255), out_range=(0, levels - 1))`` truncated to integers. Values
    outside [0, 1] are clipped first.

    Parameters
    ----------
    scaled : ndarray of float, shape (H, W)
        Intensities in CellProfiler units.
    levels : int
        Number of grey levels, 2..256.

    Returns
    -------
    ndarray of uint8, shape (H, W)
    """
    if not 2 <= levels <= 256:
        raise ValueError(f"texture grey levels must be in 2..256, got {levels}")
    q = np.rint(np.clip(np.nan_to_num(scaled, nan=0.0), 0.0, 1.0) * 255).astype(np.uint8)
    if levels != 256:
        from skimage.exposure import rescale_intensity

        q = rescale_intensity(q, in_range=(0, 255), out_range=(0, levels - 1)).astype(np.uint8)
    return q


def texture_feature_names(scales: tuple[int, ...], levels: int) -> list[str]:
    """``<Feature>_<scale>_<direction:02d>_<levels>`` suffixes (channel goes before scale in full names)."""
    return [f"{f}_{s}_{d:02d}_{levels}" for s in scales for d in range(len(DIRECTIONS)) for f in HARALICK_FEATURES]


def _entropy_terms(p: np.ndarray) -> np.ndarray:
    out = np.zeros_like(p)
    nz = p > 0
    out[nz] = -p[nz] * np.log2(p[nz])
    return out


def _haralick(n: int, obj: np.ndarray, i: np.ndarray, j: np.ndarray, cnt: np.ndarray,
              maxv: np.ndarray) -> np.ndarray:
    """Haralick features from sparse symmetric co-occurrence entries.

    ``obj, i, j, cnt``: entries ``P[obj][i, j] = cnt`` of the full symmetric matrices (0-based objects),
    ``maxv``: number of grey levels of each object's matrix (max level + 1). Returns (n, 13); rows of
    objects without entries are NaN.
    """
    nl = int(maxv.max()) if maxv.size else 1
    total = np.bincount(obj, weights=cnt, minlength=n)
    p = cnt / total[obj]
    fi, fj = i.astype(np.float64), j.astype(np.float64)
    out = np.full((n, 13), np.nan)

    def s(w: np.ndarray) -> np.ndarray:
        return np.bincount(obj, weights=w, minlength=n)

    px = np.bincount(obj * nl + i, weights=p, minlength=n * nl).reshape(n, nl)  # = py (symmetric)
    k = np.arange(nl, dtype=np.float64)
    ux = px @ k
    vx = px @ (k * k) - ux ** 2
    sx = np.sqrt(np.clip(vx, 0, None))
    diff = np.abs(fi - fj)
    asm = s(p * p)
    contrast = s(diff * diff * p)
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = np.where(sx == 0, 1.0, (s(fi * fj * p) - ux * ux) / (sx * sx))
    idm = s(p / (1 + diff * diff))
    sum_avg = s((fi + fj) * p)
    sum_var = s((fi + fj) ** 2 * p) - sum_avg ** 2
    psum = np.bincount(obj * (2 * nl) + i + j, weights=p, minlength=n * 2 * nl).reshape(n, 2 * nl)
    sum_entropy = _entropy_terms(psum).sum(axis=1)
    entropy = s(_entropy_terms(p))
    pdiff = np.bincount(obj * nl + np.abs(i - j), weights=p, minlength=n * nl).reshape(n, nl)
    with np.errstate(divide="ignore", invalid="ignore"):
        diff_var = (pdiff ** 2).sum(axis=1) / maxv - 1.0 / maxv ** 2  # numpy var over maxv entries
    diff_entropy = _entropy_terms(pdiff).sum(axis=1)
    hx = _entropy_terms(px).sum(axis=1)
    log_px = np.zeros_like(px)
    log_px[px > 0] = np.log2(px[px > 0])
    hxy1 = -s(p * (log_px[obj, i] + log_px[obj, j]))
    hxy2 = 2 * hx  # entropy of px (x) py, with sum(px) = 1
    with np.errstate(divide="ignore", invalid="ignore"):
        info1 = np.where(hx == 0, entropy - hxy1, (entropy - hxy1) / hx)
    info2 = np.sqrt(np.clip(1 - np.exp(-2.0 * (hxy2 - entropy)), 0, None))
    cols = (asm, contrast, corr, vx, idm, sum_avg, sum_var, sum_entropy, entropy, diff_var, diff_entropy,
            info1, info2)
    has = total > 0
    for c, v in enumerate(cols):
        out[has, c] = v[has]
    return out


def cooccurring_pairs(objs: Objects, scales: tuple[int, ...]) -> dict[tuple[int, int], tuple[np.ndarray, ...]]:
    """Pixel pairs ``(flat index a, flat index b, object row 0-based)`` of each (scale, direction) whose two
    pixels belong to the same object (computed once per compartment, shared by all channels)."""
    idx = objs.index
    h, w = idx.shape
    flat = np.arange(idx.size, dtype=np.int64).reshape(h, w)
    out = {}
    for scale in scales:
        if scale < 1:
            raise ValueError(f"texture scale must be >= 1 pixel, got {scale}")
        for d, (dy, dx) in enumerate(DIRECTIONS):
            la, lb = shifted_views(idx, dy * scale, dx * scale)
            fa, fb = shifted_views(flat, dy * scale, dx * scale)
            m = (la == lb) & (la != 0)
            out[scale, d] = (fa[m], fb[m], la[m].astype(np.int64) - 1)
    return out


def texture_features(objs: Objects, quantized: np.ndarray, *, scales: tuple[int, ...] = (3,),
                     levels: int = 256, pairs: dict | None = None) -> dict[str, np.ndarray]:
    """Haralick features of one compartment in one (quantised) channel.

    Parameters
    ----------
    objs : Objects
        The compartment.
    quantized : ndarray of uint8, shape (H, W)
        Output of :func:`quantize` (level 0 is ignored, as CellProfiler's ``ignore_zeros``).
    scales : tuple of int
        Pixel offsets of the co-occurring pairs.
    levels : int
        Grey levels used for ``quantized`` (only for the feature names).
    pairs : dict, optional
        :func:`cooccurring_pairs` of ``objs`` (computed when not given).

    Returns
    -------
    dict
        ``<Feature>_<scale>_<dd>_<levels>`` -> float64 array (n,). An object without any co-occurring
        non-zero pair in one of the four directions at a scale gets NaN for all features of that scale
        (CellProfiler catches mahotas' error the same way).
    """
    n = objs.n
    if pairs is None:
        pairs = cooccurring_pairs(objs, scales)
    qflat = quantized.ravel()
    lab_pix = objs.lab
    q_pix = qflat[objs.pix].astype(np.int64)
    maxv = np.ones(n, np.int64)
    if q_pix.size:
        key = np.sort((lab_pix << 8) | q_pix)  # max level per object = last of its group
        last = np.flatnonzero(np.diff(key >> 8)).tolist() + [key.size - 1]
        maxv[(key[last] >> 8) - 1] = (key[last] & 255) + 1
    out: dict[str, np.ndarray] = {}
    for scale in scales:
        per_dir = []
        for d in range(len(DIRECTIONS)):
            ia, ib, lab = pairs[scale, d]
            a = qflat[ia].astype(np.int64)
            b = qflat[ib].astype(np.int64)
            keep = (a != 0) & (b != 0)
            a, b, lab = a[keep], b[keep], lab[keep]
            code = (lab << 16) | (np.minimum(a, b) << 8) | np.maximum(a, b)
            uniq, cnt = np.unique(code, return_counts=True)
            o = uniq >> 16
            i = (uniq >> 8) & 255
            j = uniq & 255
            cnt = cnt.astype(np.float64)
            off = i != j
            # full symmetric matrix: P = C + C^T, so an off-diagonal pair appears at (i, j) and (j, i)
            obj_f = np.concatenate([o, o[off]])
            i_f = np.concatenate([i, j[off]])
            j_f = np.concatenate([j, i[off]])
            c_f = np.concatenate([np.where(off, cnt, 2 * cnt), cnt[off]])
            per_dir.append(_haralick(n, obj_f, i_f, j_f, c_f, maxv.astype(np.float64)))
        missing = np.zeros(n, bool)
        for f in per_dir:
            missing |= np.isnan(f[:, 0])
        for d, f in enumerate(per_dir):
            f[missing] = np.nan
            for c, name in enumerate(HARALICK_FEATURES):
                out[f"{name}_{scale}_{d:02d}_{levels}"] = f[:, c]
    return out
