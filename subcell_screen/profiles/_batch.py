"""Batch correction of well profiles across plates or batches (Harmony via the maintained ``harmonypy``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import polars as pl

from .frames import (
    as_list,
    check_frame,
    columns_of,
    feature_frame,
    format_names,
    infer_features,
    polars_view,
    replace_features,
    require_columns,
)

__all__ = ["correct_batch", "BATCH_METHODS"]

logger = logging.getLogger(__name__)

BATCH_METHODS = ("harmony",)


def correct_batch(
    profiles: Any,
    *,
    batch_col: str | Sequence[str] = "Metadata_Batch",
    method: str = "harmony",
    features: Sequence[str] | Literal["infer"] = "infer",
    n_components: int | None = None,
    nclust: int | None = None,
    max_iter_harmony: int = 20,
    theta: float | Sequence[float] | None = None,
    sigma: float = 0.1,
    seed: int = 0,
    ncores: int = 0,
) -> Any:
    """Remove batch effects from profiles with Harmony (Korsunsky et al. 2019; ``harmonypy``).

    Harmony soft-clusters the profiles and regresses the batch out of each cluster, so that profiles of
    different batches mix while the biology that separates clusters is kept. The JUMP recipe runs it on its
    final (sphered) features with ``nclust=300, max_iter_harmony=20``.

    Parameters
    ----------
    profiles : polars.DataFrame or pandas.DataFrame
        Wide profiles without missing feature values (normalise and feature-select first).
    batch_col : str or list of str
        Batch column(s) (``Metadata_Batch``, or ``Metadata_Plate`` for plate effects).
    method : {"harmony"}
    features : list of str or "infer"
        ``"infer"`` as pycytominer (see :func:`~subcell_screen.profiles.frames.infer_features`).
    n_components : int, optional
        Run Harmony on the first ``n_components`` principal components (of the centred features) instead
        of the features; the output feature columns are then ``PC1`` ... ``PCk``.
    nclust : int, optional
        Harmony clusters (default ``min(n/30, 100)``, harmonypy's).
    max_iter_harmony, theta, sigma
        harmonypy parameters (``theta`` default 2).
    seed : int
        harmonypy ``random_state``.
    ncores : int
        harmonypy threads (0: one per physical core).

    Returns
    -------
    polars.DataFrame or pandas.DataFrame
        Same type, rows and other columns; features replaced by the corrected values (Float64).

    Raises
    ------
    ValueError
        Missing feature values, a single batch, or unknown method.
    """
    check_frame(profiles)
    if method not in BATCH_METHODS:
        raise ValueError(f"method must be one of {BATCH_METHODS}, got {method!r}")
    by = as_list(batch_col)
    require_columns(profiles, by, name="profiles (batch_col)")
    feats = infer_features(profiles, features)
    if not feats:
        logger.warning("correct_batch: no feature columns (all removed by feature selection?); nothing to correct")
        return profiles.copy() if type(profiles).__module__.split(".")[0] == "pandas" else profiles
    values = feature_frame(profiles, feats)
    nulls = values.null_count().row(0)
    bad = [f for f, n in zip(feats, nulls) if n]
    if bad:
        raise ValueError(f"correct_batch: feature(s) with missing values: {format_names(bad)}; drop or impute "
                         "them")
    batches = polars_view(profiles, by).select(
        pl.concat_str([pl.col(c).cast(pl.String).fill_null("<null>") for c in by], separator="|").alias("b"))["b"]
    if batches.n_unique() < 2:
        raise ValueError(f"correct_batch: only one batch in {by}; nothing to correct")
    x = values.to_numpy().astype(np.float64, copy=False)
    names = feats
    if n_components is not None:
        k = int(n_components)
        if not 1 <= k <= min(x.shape):
            raise ValueError(f"n_components must be in 1..{min(x.shape)}, got {n_components}")
        xc = x - x.mean(axis=0)
        u, s, _ = np.linalg.svd(xc, full_matrices=False)
        x = u[:, :k] * s[:k]
        names = [f"PC{i + 1}" for i in range(k)]
    import harmonypy

    logger.info("correct_batch: Harmony over %s (%d batches) on %d x %d", by, batches.n_unique(), *x.shape)
    ho = harmonypy.run_harmony(x, {"batch": batches.to_list()}, ["batch"], theta=theta, sigma=sigma,
                               nclust=nclust, max_iter_harmony=max_iter_harmony, random_state=seed,
                               ncores=ncores, verbose=False)
    z = np.asarray(ho.Z_corr, dtype=np.float64)
    if z.shape != x.shape:
        z = z.T
    out = pl.DataFrame(z, schema=names, orient="row")
    if n_components is None:
        return replace_features(profiles, out)
    return _replace_with_components(profiles, feats, out)


def _replace_with_components(profiles: Any, feats: list[str], comps: pl.DataFrame) -> Any:
    keep = [c for c in columns_of(profiles) if c not in set(feats)]
    if type(profiles).__module__.split(".")[0] == "pandas":
        out = profiles[keep].copy()
        for c in comps.columns:
            out[c] = comps[c].to_numpy()
        return out
    return profiles.select(keep).with_columns(comps)
