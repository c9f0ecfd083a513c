"""Per-plate normalisation of well profiles, pycytominer-exact.

``normalize`` fits its statistics on the control rows of every plate (``plate_col``, default
``Metadata_Plate``; ``plate_col=None`` fits once on the whole frame, as a single pycytominer ``normalize``
call does) and transforms all rows of that plate, which is what pycytominer's ``normalize`` does when called
once per plate (the way profiling-recipe, LINCS and subcell-analysis use it). Location/scale statistics of
all groups come from one polars ``group_by`` over the control rows; the transform is one vectorised pass over
the feature columns.

Formulas (``x`` a feature value, statistics over the group's control rows, missing values skipped):

==========================  ===============================================================================
method                      transform
==========================  ===============================================================================
``standardize``             ``(x - mean) / sd``, population sd (ddof 0); sklearn ``StandardScaler``
``robustize``               ``(x - median) / (q75 - q25)``, linear quantiles; sklearn ``RobustScaler``
``mad_robustize``           ``(x - median) / (k * MAD + epsilon)``; ``k = 1.4826`` (``mad_scale="normal"``,
                            pycytominer, epsilon 1e-18) or ``k = 1`` (``mad_scale="unscaled"``, the JUMP
                            recipe's ``mad`` step, which uses epsilon 0)
``spherize``                whitening fitted on the controls: PCA, ZCA, PCA-cor, ZCA-cor (see
                            :func:`fit_spherize`); covariance of the transformed controls is the identity
                            (up to epsilon)
``inverse_normal``          pycytominer's ``inverse_normal``: sklearn ``QuantileTransformer`` (normal output,
                            ``n_quantiles = min(inverse_normal_n_quantiles, n_controls)``) fitted on controls
``rank_inverse_normal``     the JUMP recipe's rank-based inverse normal transform (Blom):
                            ``Phi^-1((rank - c) / (n - 2c + 1))``, ``c = 3/8``, ranks over all rows of the
                            group, ties broken at random (``ties="random"``, seed 0) or averaged
==========================  ===============================================================================

Degenerate input is never turned into silent NaN: a group without control rows, or a feature with no
non-missing control value in a group, raises ``ValueError`` naming the group and features. A zero scale
(constant feature in a group's controls) is handled as pycytominer does (scale 1 for ``standardize`` and
``robustize``; ``MAD + epsilon`` for ``mad_robustize``) with a logged warning naming group and features, or
raises with ``on_zero_scale="error"``; a zero MAD with ``epsilon=0`` always raises.

pycytominer's ``Spherize`` ran its SVD on the raw instead of the centred data from v1.1.0 until PR #748 (its
ZCA output was then not white); the installed pycytominer 1.7.1 contains the fix, and this implementation
follows the corrected algorithm.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl

from .frames import (
    Groups,
    as_frame,
    columns_of,
    feature_frame,
    format_names,
    groups_of,
    in_threads,
    infer_features,
    is_pandas,
    polars_view,
    replace_features,
    row_mask,
)

__all__ = ["normalize", "fit_spherize", "SpherizeFit", "NORMALIZE_METHODS", "SPHERIZE_METHODS"]

logger = logging.getLogger(__name__)

NORMALIZE_METHODS = ("standardize", "robustize", "mad_robustize", "spherize", "inverse_normal",
                     "rank_inverse_normal")
SPHERIZE_METHODS = ("PCA", "ZCA", "PCA-cor", "ZCA-cor")

#: 1 / scipy's ``scale`` argument in pycytominer's RobustMAD (``median_abs_deviation(scale=1/1.4826)``).
MAD_NORMAL = 1.4826

_EPS64 = float(np.finfo(np.float64).eps)


def normalize(
    profiles: Any,
    *,
    method: str = "standardize",
    plate_col: str | Sequence[str] | None = "Metadata_Plate",
    controls: Any = None,
    features: Sequence[str] | Literal["infer"] = "infer",
    image_features: bool = False,
    drop_cosmicqc_rows: bool = False,
    epsilon: float | None = None,
    mad_scale: Literal["normal", "unscaled"] | float = "normal",
    spherize_method: str = "ZCA-cor",
    spherize_center: bool = True,
    spherize_epsilon: float | None = None,
    inverse_normal_n_quantiles: int = 1000,
    rank_offset: float = 3.0 / 8.0,
    ties: Literal["random", "average"] = "random",
    seed: int = 0,
    on_zero_scale: Literal["warn", "error"] = "warn",
) -> Any:
    """Normalise features **per plate** (``plate_col``), fitted on the ``controls`` rows of each plate.

    Unlike one pycytominer ``normalize`` call, which fits on the whole frame, every plate is fitted and
    transformed on its own by default (pycytominer called once per plate, the profiling-recipe way); pass
    ``plate_col=None`` to fit once on all rows as pycytominer does.

    Parameters
    ----------
    profiles : polars.DataFrame, pandas.DataFrame or path
        Wide profiles: ``Metadata_*`` columns plus feature columns, one row per well (or cell); a CSV/TSV/
        Parquet path is read with :func:`~subcell_screen.profiles.frames.load_profiles`.
    method : str
        One of :data:`NORMALIZE_METHODS` (pycytominer's names; default ``standardize`` as in pycytominer).
    plate_col : str or list of str or None
        Column(s) whose groups are fitted and transformed separately (default the plate). ``None`` fits once
        on the whole frame (pycytominer's single call).
    controls : polars.Expr, mapping, query string or boolean mask, optional
        Rows to fit on (pycytominer ``samples``), e.g. :data:`~subcell_screen.profiles.NEGCON` or
        ``"Metadata_control_type == 'negcon'"``; ``None`` fits on all rows (pycytominer ``samples="all"``).
        Every plate must contain control rows.
    features : list of str or "infer"
        Feature columns; ``"infer"`` as pycytominer (see
        :func:`~subcell_screen.profiles.frames.infer_features`). Numbers stored as text are parsed and
        ``"nan"``/``"None"`` strings read as missing.
    image_features : bool
        Also normalise numeric ``Image_*`` columns (with ``features="infer"``).
    drop_cosmicqc_rows : bool
        Drop rows flagged ``True`` in any ``Metadata_cqc_*`` column (coSMicQC flags, e.g. added by
        :func:`~subcell_screen.profiles.annotate` with ``external_metadata``) before normalising, as
        pycytominer does; raises when there is no such column or no row is left.
    epsilon : float, optional
        Fudge factor of ``mad_robustize`` (default 1e-18 as pycytominer; the JUMP recipe uses 0) and of
        ``spherize`` (default 1e-6, added to the singular values).
    mad_scale : {"normal", "unscaled"} or float
        MAD multiplier: ``normal`` = 1.4826 (pycytominer), ``unscaled`` = 1 (JUMP recipe), or a number.
    spherize_method : {"PCA", "ZCA", "PCA-cor", "ZCA-cor"}
    spherize_center : bool
        Centre before whitening (required by the ``-cor`` methods).
    spherize_epsilon : float, optional
        pycytominer's name for ``epsilon`` with ``method="spherize"``.
    inverse_normal_n_quantiles : int
        Landmarks of the ``inverse_normal`` (QuantileTransformer) method.
    rank_offset : float
        Blom offset ``c`` of ``rank_inverse_normal``.
    ties : {"random", "average"}
        Tie handling of ``rank_inverse_normal``: random order (JUMP recipe, reproducible with ``seed``) or
        average ranks.
    seed : int
        Seed of ``rank_inverse_normal`` tie breaking and of ``inverse_normal`` subsampling.
    on_zero_scale : {"warn", "error"}
        What to do with a feature whose scale is zero in a plate's controls (see module docstring).

    Returns
    -------
    polars.DataFrame or pandas.DataFrame
        Same type (polars for a path), rows (less the coSMicQC-flagged ones), row order and columns as
        ``profiles`` (pycytominer keeps only metadata and features, metadata first); feature columns replaced
        by Float64 normalised values (missing inputs stay missing: null in polars, NaN in pandas).
        ``spherize`` with a PCA method renames the feature columns ``PC1`` ... ``PCd`` as pycytominer does.

    Raises
    ------
    ValueError
        Unknown method; a plate without control rows; a feature without any control value in a plate; a
        zero scale that cannot be handled (see ``on_zero_scale``); spherize on controls with missing values.

    Examples
    --------
    >>> import polars as pl
    >>> from subcell_screen.profiles import normalize, NEGCON
    >>> df = pl.DataFrame({"Metadata_Plate": ["a"] * 4, "Metadata_control_type": ["negcon", "negcon", None, None],
    ...                    "Cells_f": [1.0, 3.0, 5.0, 7.0]})
    >>> normalize(df, method="standardize", controls=NEGCON)["Cells_f"].to_list()
    [-1.0, 1.0, 3.0, 5.0]
    """
    profiles = as_frame(profiles)
    method = method.lower() if method.lower() in NORMALIZE_METHODS else method
    if method not in NORMALIZE_METHODS:
        raise ValueError(f"method must be one of {NORMALIZE_METHODS}, got {method!r}")
    if on_zero_scale not in ("warn", "error"):
        raise ValueError(f"on_zero_scale must be 'warn' or 'error', got {on_zero_scale!r}")
    if drop_cosmicqc_rows:
        profiles = _drop_cosmicqc_rows(profiles)
    feats = infer_features(profiles, features, image_features=image_features)
    groups = groups_of(profiles, plate_col)
    mask = row_mask(profiles, controls, name="controls")
    values = feature_frame(profiles, feats)
    if method != "rank_inverse_normal":
        _check_controls_present(groups, mask)

    rename: dict[str, str] = {}
    if method == "standardize":
        out = _standardize(values, groups, mask, on_zero_scale)
    elif method == "robustize":
        out = _robustize(values, groups, mask, on_zero_scale)
    elif method == "mad_robustize":
        eps = 1e-18 if epsilon is None else float(epsilon)
        out = _mad_robustize(values, groups, mask, _mad_constant(mad_scale), eps, on_zero_scale)
    elif method == "spherize":
        if epsilon is not None and spherize_epsilon is not None and float(epsilon) != float(spherize_epsilon):
            raise ValueError(f"epsilon={epsilon} and spherize_epsilon={spherize_epsilon} disagree; give one")
        eps = 1e-6 if epsilon is None and spherize_epsilon is None else float(
            spherize_epsilon if spherize_epsilon is not None else epsilon)
        out = _spherize(values, groups, mask, spherize_method, spherize_center, eps)
        if spherize_method.startswith("PCA"):
            rename = {f: f"PC{i + 1}" for i, f in enumerate(feats)}
    elif method == "inverse_normal":
        out = _quantile_normal(values, groups, mask, inverse_normal_n_quantiles, seed)
    else:
        if controls is not None:
            logger.warning("normalize(rank_inverse_normal) ranks all rows of each group; controls are ignored")
        out = _rank_inverse_normal(values, groups, rank_offset, ties, seed)
    return replace_features(profiles, out, rename=rename)


def _drop_cosmicqc_rows(profiles: Any) -> Any:
    """``profiles`` without the rows flagged ``True`` in any ``Metadata_cqc_*`` column (pycytominer)."""
    qc = [c for c in columns_of(profiles) if c.startswith("Metadata_cqc_")]
    if not qc:
        raise ValueError("drop_cosmicqc_rows: no QC columns with the prefix 'Metadata_cqc_' (add coSMicQC flags "
                         "with annotate(..., external_metadata=...) first)")
    flags = polars_view(profiles, qc).select(pl.any_horizontal(pl.all().cast(pl.Boolean).fill_null(False))
                                             .alias("f"))["f"].to_numpy()
    if flags.all():
        raise ValueError(f"drop_cosmicqc_rows: all {flags.size} rows are flagged in {format_names(qc)}; "
                         "nothing left to normalise")
    logger.info("normalize: dropped %d row(s) flagged by coSMicQC (%s)", int(flags.sum()), format_names(qc))
    keep = ~flags
    return profiles[keep] if is_pandas(profiles) else profiles.filter(pl.Series(keep))


# -- statistics -----------------------------------------------------------------------------------------


def _check_controls_present(groups: Groups, mask: np.ndarray) -> None:
    counts = np.bincount(groups.codes[mask], minlength=groups.n)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise ValueError(f"no control rows in {empty.size} group(s): {groups.labels(empty)}; "
                         "check the controls expression or the layout's control wells")


def _control_frame(values: pl.DataFrame, groups: Groups, mask: np.ndarray) -> pl.DataFrame:
    ctrl = values.filter(pl.Series(mask)) if not mask.all() else values
    return ctrl.with_columns(pl.Series("__gid", groups.codes[mask]))


def _group_stat(ctrl: pl.DataFrame, expr: pl.Expr, n_groups: int) -> np.ndarray:
    """``(n_groups, n_features)`` float64 statistic, one polars group_by over the control rows."""
    res = ctrl.group_by("__gid").agg(expr).sort("__gid")
    arr = res.drop("__gid").to_numpy().astype(np.float64, copy=False)
    if res.height != n_groups:  # cannot happen after _check_controls_present
        raise AssertionError("a group lost its control rows")
    return arr


def _check_stats(stat: np.ndarray, groups: Groups, feats: list[str]) -> None:
    bad = ~np.isfinite(stat)
    if bad.any():
        gi, fi = np.nonzero(bad)
        pairs = [f"{groups.label(g)}: {feats[f]!r}" for g, f in zip(gi, fi)]
        raise ValueError(f"{bad.sum()} feature(s) have no non-missing control value in their group, so "
                         f"they cannot be normalised: {format_names(pairs)}; drop them first (feature_select "
                         "operation='drop_na_columns') or fit on more rows")


def _report_zero(zero: np.ndarray, groups: Groups, feats: list[str], *, method: str, handling: str,
                 on_zero_scale: str) -> None:
    if not zero.any():
        return
    gi, fi = np.nonzero(zero)
    pairs = [f"{groups.label(g)}: {feats[f]!r}" for g, f in zip(gi, fi)]
    msg = (f"normalize({method}): {zero.sum()} feature(s) have zero scale in their group's controls: "
           f"{format_names(pairs)}")
    if on_zero_scale == "error":
        raise ValueError(msg + "; drop constant features first (feature_select operation="
                               "'variance_threshold') or pass on_zero_scale='warn'")
    logger.warning("%s; %s", msg, handling)


def _apply(values: pl.DataFrame, codes: np.ndarray, center: np.ndarray, scale: np.ndarray) -> pl.DataFrame:
    """``(x - center[group]) / scale[group]`` for every feature column.

    One copy of the features into a Fortran array (polars gathers its chunks), transformed in place column by
    column on a few threads, returned as a frame over that array.
    """
    single = center.shape[0] == 1
    center_t = np.ascontiguousarray(center.T)  # (d, groups): one contiguous row per feature
    scale_t = np.ascontiguousarray(scale.T)
    names = values.columns
    x = values.to_numpy(order="fortran", writable=True).astype(np.float64, copy=False)  # NaN where missing

    def work(cols: range) -> None:
        tmp = None if single else np.empty(x.shape[0])
        for j in cols:
            xj = x[:, j]
            if single:
                xj -= center_t[j, 0]
                xj /= scale_t[j, 0]
            else:
                xj -= np.take(center_t[j], codes, out=tmp)
                xj /= np.take(scale_t[j], codes, out=tmp)

    in_threads(work, len(names))
    # one Series per column (views of the Fortran array); pl.from_numpy(x.T, orient="col") takes a single
    # feature's (1, n) array for one Array-typed column
    out = pl.DataFrame([pl.Series(c, x[:, j]) for j, c in enumerate(names)]) if names else pl.DataFrame()
    missing = [c for c in names if values.get_column(c).null_count()]
    return out.with_columns(pl.col(c).fill_nan(None) for c in missing) if missing else out


def _standardize(values, groups, mask, on_zero_scale):
    ctrl = _control_frame(values, groups, mask)
    mean = _group_stat(ctrl, pl.all().mean(), groups.n)
    _check_stats(mean, groups, values.columns)
    var = _group_stat(ctrl, pl.all().var(ddof=0), groups.n)
    n = _group_stat(ctrl, pl.all().count(), groups.n)
    # sklearn's near-constant test (_is_constant_feature) on the raw variance, then scale 1
    constant = var <= n * _EPS64 * var + (n * mean * _EPS64) ** 2
    _report_zero(constant, groups, values.columns, method="standardize", on_zero_scale=on_zero_scale,
                 handling="scaled by 1 (centred only), as sklearn's StandardScaler in pycytominer")
    scale = np.where(constant, 1.0, np.sqrt(var))
    return _apply(values, groups.codes, mean, scale)


def _robustize(values, groups, mask, on_zero_scale):
    ctrl = _control_frame(values, groups, mask)
    med = _group_stat(ctrl, pl.all().median(), groups.n)
    _check_stats(med, groups, values.columns)
    q25 = _group_stat(ctrl, pl.all().quantile(0.25, interpolation="linear"), groups.n)
    q75 = _group_stat(ctrl, pl.all().quantile(0.75, interpolation="linear"), groups.n)
    iqr = q75 - q25
    constant = iqr < 10 * _EPS64  # sklearn's _handle_zeros_in_scale
    _report_zero(constant, groups, values.columns, method="robustize", on_zero_scale=on_zero_scale,
                 handling="scaled by 1 (centred only), as sklearn's RobustScaler in pycytominer")
    return _apply(values, groups.codes, med, np.where(constant, 1.0, iqr))


def _mad_constant(mad_scale: str | float) -> float:
    if mad_scale == "normal":
        return MAD_NORMAL
    if mad_scale == "unscaled":
        return 1.0
    if isinstance(mad_scale, (int, float)) and not isinstance(mad_scale, bool) and mad_scale > 0:
        return float(mad_scale)
    raise ValueError(f"mad_scale must be 'normal', 'unscaled' or a positive number, got {mad_scale!r}")


def _mad_robustize(values, groups, mask, k, eps, on_zero_scale):
    ctrl = _control_frame(values, groups, mask)
    med = _group_stat(ctrl, pl.all().median(), groups.n)
    _check_stats(med, groups, values.columns)
    dev = _apply(ctrl.drop("__gid"), groups.codes[mask], med, np.ones_like(med))
    dev = dev.select(pl.all().abs()).with_columns(pl.Series("__gid", groups.codes[mask]))
    mad = _group_stat(dev, pl.all().median(), groups.n)
    # scipy.stats.median_abs_deviation(scale=1/k) divides by its scale argument
    scaled = mad / (1.0 / k) if k != 1.0 else mad
    scale = scaled + eps
    zero = mad == 0
    if (scale == 0).any():
        gi, fi = np.nonzero(scale == 0)
        pairs = [f"{groups.label(g)}: {values.columns[f]!r}" for g, f in zip(gi, fi)]
        raise ValueError(f"normalize(mad_robustize): {int((scale == 0).sum())} feature(s) have MAD 0 in their "
                         f"group's controls and epsilon is 0, which would divide by zero: {format_names(pairs)}; "
                         "drop them first (JUMP recipe 'var' step, feature_select) or set epsilon > 0")
    _report_zero(zero, groups, values.columns, method="mad_robustize", on_zero_scale=on_zero_scale,
                 handling=f"divided by epsilon={eps:g} as pycytominer does (values can become very large)")
    return _apply(values, groups.codes, med, scale)


# -- spherize --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpherizeFit:
    """A fitted whitening transform: ``y = ((x - mean) / sd) @ W`` (``W`` given in low-rank form).

    Attributes
    ----------
    method : str
        ``PCA``, ``ZCA``, ``PCA-cor`` or ``ZCA-cor``.
    mean, sd : numpy.ndarray
        ``(d,)`` centring and scaling (``sd`` is 1 for PCA/ZCA, ``mean`` 0 when not centred).
    basis : numpy.ndarray
        ``(d, k)`` right singular vectors of the fitted (centred/scaled) controls.
    inv_sigma : numpy.ndarray
        ``(k,)`` ``sqrt(n - 1) / (s_i + epsilon)``.
    fill : float
        Multiplier of the orthogonal complement of ``basis`` (ZCA with n <= d: ``sqrt(n-1)/(s_r + eps)``,
        pycytominer's filling of the missing singular values); 0 when ``basis`` is complete.
    """

    method: str
    mean: np.ndarray
    sd: np.ndarray
    basis: np.ndarray
    inv_sigma: np.ndarray
    fill: float
    rank: int

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Whiten rows ``x`` ``(n, d)`` -> ``(n, d)``."""
        z = (x - self.mean) / self.sd
        proj = z @ self.basis
        if self.method.startswith("PCA"):
            return proj * self.inv_sigma
        out = (proj * (self.inv_sigma - self.fill)) @ self.basis.T
        if self.fill:
            out += self.fill * z
        return out


def fit_spherize(controls: np.ndarray, *, method: str = "ZCA-cor", center: bool = True, epsilon: float = 1e-6,
                 label: str = "controls", feature_names: Sequence[str] | None = None) -> SpherizeFit:
    """Fit a whitening transform on control rows (pycytominer 1.7.1 ``Spherize``, the corrected algorithm).

    ``-cor`` methods standardise first (population sd). The SVD of the centred (and scaled) controls
    ``X = U S V^T`` gives ``W = V diag(1 / (s + epsilon)) sqrt(n - 1)``; ZCA rotates back (``W V^T``). With
    ``n <= d`` the singular values past the rank ``r`` are filled with ``s_r`` as pycytominer does. The
    transformed controls then have sample covariance (ddof 1) ``diag((s / (s + eps))^2)`` (PCA) or
    ``V diag((s / (s + eps))^2) V^T`` (ZCA), the identity for ``epsilon = 0`` and ``n > d``.

    Parameters
    ----------
    controls : numpy.ndarray
        ``(n, d)`` float64 control rows without missing values.
    method, center, epsilon
        As pycytominer's ``Spherize``.
    label : str
        Names the rows in error messages (e.g. the plate).
    feature_names : sequence of str, optional
        Names the columns in error messages.

    Returns
    -------
    SpherizeFit
    """
    if method not in SPHERIZE_METHODS:
        raise ValueError(f"spherize_method must be one of {SPHERIZE_METHODS}, got {method!r}")
    if method.endswith("-cor") and not center:
        raise ValueError("PCA-cor and ZCA-cor require spherize_center=True")
    x = np.asarray(controls, dtype=np.float64)
    n, d = x.shape
    if n < 2:
        raise ValueError(f"spherize needs at least 2 control rows, {label} has {n}")
    mean = x.mean(axis=0) if center else np.zeros(d)
    sd = np.ones(d)
    if method.endswith("-cor"):
        var = x.var(axis=0)
        zero = var == 0
        if zero.any():
            idx = np.flatnonzero(zero).tolist()
            names = [feature_names[i] for i in idx] if feature_names is not None else idx
            raise ValueError(f"spherize {method}: {int(zero.sum())} feature(s) have zero variance in the "
                             f"controls of {label}: {format_names(names)}; "
                             "remove low-variance features first")
        sd = np.sqrt(var)
    z = (x - mean) / sd
    full = method.startswith("PCA") and n <= d
    _, s, vt = np.linalg.svd(z, full_matrices=full)
    tol = (s.max() if s.size else 0.0) * max(n, d) * _EPS64  # numpy.linalg.matrix_rank's default
    r = int((s > tol).sum())
    expected = min(d, n - 1 if center else n)
    if r < expected:
        logger.warning("spherize: controls of %s have rank %d < %d (n=%d, d=%d): collinear features; the "
                       "missing directions are scaled by 1/(s_r + epsilon) as pycytominer does", label, r,
                       expected, n, d)
    if r == 0:
        raise ValueError(f"spherize: controls of {label} have rank 0 (all rows identical)")
    root = np.sqrt(n - 1)
    if n > d:
        return SpherizeFit(method, mean, sd, vt.T, root / (s + epsilon), 0.0, r)
    # n <= d: pycytominer fills the singular values past the rank with s[r-1]
    sig = np.concatenate([s[:r], np.repeat(s[r - 1], d - r)]) + epsilon
    if full:  # PCA needs LAPACK's basis of the complement to reproduce pycytominer's PC columns
        return SpherizeFit(method, mean, sd, vt.T, root / sig, 0.0, r)
    return SpherizeFit(method, mean, sd, vt[:r].T, root / sig[:r], float(root / sig[-1]) if d > r else 0.0, r)


def _group_rows(codes: np.ndarray, n_groups: int) -> list[np.ndarray]:
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(n_groups + 1))
    return [order[bounds[g]:bounds[g + 1]] for g in range(n_groups)]


def _spherize(values, groups, mask, method, center, eps):
    x = values.to_numpy().astype(np.float64, copy=False)
    nan_ctrl = np.isnan(x[mask]).any(axis=0)
    if nan_ctrl.any():
        raise ValueError(f"spherize: {int(nan_ctrl.sum())} feature(s) have missing values in the control rows: "
                         f"{format_names([values.columns[j] for j in np.flatnonzero(nan_ctrl)])}; drop or impute them")
    nan_rows = np.isnan(x).any(axis=1)
    if nan_rows.any():
        logger.warning("spherize: %d row(s) have missing feature values; they mix into every output feature "
                       "and come back entirely missing", int(nan_rows.sum()))
    out = np.empty_like(x)
    for g, rows in enumerate(_group_rows(groups.codes, groups.n)):
        fit = fit_spherize(x[rows[mask[rows]]], method=method, center=center, epsilon=eps,
                           label=groups.label(g), feature_names=values.columns)
        out[rows] = fit.transform(x[rows])
    return _frame_from(out, values.columns)


def _frame_from(arr: np.ndarray, names: list[str]) -> pl.DataFrame:
    df = pl.DataFrame([pl.Series(c, arr[:, j]) for j, c in enumerate(names)]) if names else pl.DataFrame()
    if np.isnan(arr).any():
        df = df.with_columns(pl.all().fill_nan(None))
    return df


# -- inverse normal transforms ---------------------------------------------------------------------------


def _quantile_normal(values, groups, mask, n_quantiles, seed):
    from sklearn.preprocessing import QuantileTransformer

    x = values.to_numpy().astype(np.float64, copy=False)
    out = np.empty_like(x)
    for rows in _group_rows(groups.codes, groups.n):
        fit_rows = x[rows[mask[rows]]]
        qt = QuantileTransformer(n_quantiles=min(n_quantiles, fit_rows.shape[0]), output_distribution="normal",
                                 random_state=seed)
        out[rows] = qt.fit(fit_rows).transform(x[rows])
    return _frame_from(out, values.columns)


def _rank_inverse_normal(values, groups, c, ties, seed):
    from scipy import special, stats

    if ties not in ("random", "average"):
        raise ValueError(f"ties must be 'random' or 'average', got {ties!r}")
    x = values.to_numpy().astype(np.float64, copy=False)
    out = np.empty_like(x)
    for rows in _group_rows(groups.codes, groups.n):
        xg = x[rows]
        if ties == "random":  # the JUMP recipe's rank_int_array: shuffle, ordinal ranks, unshuffle
            perm = np.random.default_rng(seed).permutation(len(rows))
            ranks = np.empty_like(xg)
            ranks[perm] = stats.rankdata(xg[perm], method="ordinal", axis=0, nan_policy="omit")
        else:
            ranks = stats.rankdata(xg, method="average", axis=0, nan_policy="omit")
        n = (~np.isnan(xg)).sum(axis=0)
        out[rows] = special.ndtri((ranks - c) / (n - 2 * c + 1))
    return _frame_from(out, values.columns)
