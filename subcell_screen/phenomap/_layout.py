"""2-D layout of the map: seeded t-SNE on cosine distances (PCA for a handful of items)."""

from __future__ import annotations

import numpy as np

__all__ = ["layout_2d"]

#: Below this many items t-SNE is not meaningful; the layout is the first two principal components.
_MIN_TSNE = 8


def layout_2d(unit: np.ndarray, *, seed: int = 0, perplexity: float | None = None) -> np.ndarray:
    """Two-dimensional coordinates of unit-norm profiles.

    t-SNE (scikit-learn, Barnes-Hut, cosine metric, PCA initialisation, ``random_state=seed``): local
    neighbourhoods of the kNN graph stay together, and the same inputs and seed give the same coordinates.
    UMAP would need a new dependency for a picture of the same neighbourhoods. Fewer than 8 items are laid
    out on their first two principal components (signs fixed so the largest loading is positive).

    Parameters
    ----------
    unit : ndarray, (n, d)
        Unit-norm consensus profiles.
    seed : int
        Random seed.
    perplexity : float, optional
        Default ``min(30, (n - 1) / 3)``.

    Returns
    -------
    ndarray, (n, 2), float64
        Coordinates, centred, scaled to unit RMS radius (arbitrary units).
    """
    unit = np.asarray(unit, dtype=np.float64)
    n = unit.shape[0]
    if n == 0:
        return np.zeros((0, 2))
    if n < _MIN_TSNE:
        xy = _pca2(unit)
    else:
        from sklearn.manifold import TSNE

        perp = float(perplexity) if perplexity is not None else min(30.0, (n - 1) / 3.0)
        perp = min(perp, n - 1.0 - 1e-9)
        tsne = TSNE(n_components=2, perplexity=perp, metric="cosine", init="pca", random_state=seed,
                    learning_rate="auto", n_jobs=1)
        xy = tsne.fit_transform(unit)
    xy = xy - xy.mean(axis=0)
    rms = float(np.sqrt((xy ** 2).sum(axis=1).mean()))
    return xy / rms if rms > 0 else xy


def _pca2(x: np.ndarray) -> np.ndarray:
    c = x - x.mean(axis=0)
    u, s, vt = np.linalg.svd(c, full_matrices=False)
    xy = np.zeros((x.shape[0], 2))
    k = min(2, len(s))
    xy[:, :k] = u[:, :k] * s[:k]
    for j in range(k):  # deterministic sign
        if vt[j][np.argmax(np.abs(vt[j]))] < 0:
            xy[:, j] = -xy[:, j]
    return xy
