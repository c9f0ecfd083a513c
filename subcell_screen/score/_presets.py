"""Standard pair designs: phenotypic activity, replicate retrieval, phenotypic (MoA/target) consistency.

The designs follow copairs' examples and the JUMP recipe (see the table in ``docs/profiling`` §2.4):

=========================  ==========================  ===========  ===========  ==================================
analysis                   pos_sameby                  pos_diffby   neg_sameby   neg_diffby
=========================  ==========================  ===========  ===========  ==================================
phenotypic activity        [*by, reference index]      []           [*opt]       [perturbation, reference index]
replicate retrieval        [*by]                       [plate]      [*opt]       [perturbation]
phenotypic consistency     [labels] (multilabel)       []           []           [labels]
=========================  ==========================  ===========  ===========  ==================================

The reference index (copairs' ``assign_reference_index``) gives every negative-control row its own id and every
other row -1, so controls never pair with each other as positives and treated rows of different perturbations
never pair as negatives: negatives of a treated row are exactly the control rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from ..profiles import frames as fr
from ._map import average_precision, fraction_retrieved, mean_average_precision, multilabel_average_precision

logger = logging.getLogger(__name__)

__all__ = ["RetrievalResult", "assign_reference_index", "phenotypic_activity", "replicate_retrieval",
           "phenotypic_consistency"]
_REF = "Metadata_Reference_Index"


@dataclass(frozen=True)
class RetrievalResult:
    """Result of a preset.

    Attributes
    ----------
    ap : DataFrame
        Per-profile AP table (same frame type as the input metadata; controls removed).
    map : DataFrame
        Per-group mAP table with ``p_value``, ``corrected_p_value``, ``below_p``, ``below_corrected_p``.
    fraction_retrieved : float
        Share of groups with ``corrected_p_value < threshold``.
    design : dict
        The pair rules used (``pos_sameby`` ...), for the record.
    """

    ap: Any = field(repr=False)
    map: Any = field(repr=False)
    fraction_retrieved: float
    design: dict[str, list[str]]


def assign_reference_index(
    meta: Any,
    condition: Any,
    *,
    reference_col: str = _REF,
    default_value: int = -1,
) -> Any:
    """Copy of ``meta`` with a reference-index column, like ``copairs.matching.assign_reference_index``.

    Parameters
    ----------
    meta : DataFrame (polars or pandas)
    condition : str, mapping, polars expression or bool array
        Selects the reference rows (e.g. ``"Metadata_broad_sample == 'DMSO'"`` or
        ``{"Metadata_control_type": "negcon"}``).
    reference_col : str
    default_value : int
        Value for non-reference rows.

    Returns
    -------
    DataFrame
        Reference rows get their own index (pandas: the index label, as copairs; polars: the row position), all
        other rows ``default_value``.
    """
    fr.check_frame(meta)
    mask = fr.row_mask(meta, condition, name="condition")
    ids = meta.index.to_numpy() if fr.is_pandas(meta) else np.arange(fr.n_rows(meta))
    ref = np.where(mask, ids, default_value).astype(np.int64)
    return fr.with_columns(meta, {reference_col: ref})


def _filled_codes_frame(meta: Any, cols: Sequence[str], ctrl: np.ndarray) -> pl.DataFrame:
    """Polars frame of ``cols`` with missing values allowed only on control rows (filled with a sentinel)."""
    out = {}
    for c in dict.fromkeys(cols):
        v = fr.column_numpy(meta, c)
        miss = fr.null_mask(v)
        if (miss & ~ctrl).any():
            row = int(np.flatnonzero(miss & ~ctrl)[0])
            raise ValueError(f"metadata column {c!r} is missing at row {row}, a non-control row")
        s = pl.Series(c, [None if m else str(x) for x, m in zip(v, miss)], dtype=pl.String) if miss.any() \
            else pl.Series(c, v)
        if miss.any():
            s = s.fill_null("\x00control")
        out[c] = s
    return pl.DataFrame(out)


def _attach(meta: Any, work_ap: pl.DataFrame, keep: np.ndarray) -> Any:
    cols = ["n_pos_pairs", "n_total_pairs", "average_precision", "normalized_average_precision"]
    sub = fr.take(meta, np.flatnonzero(keep))
    vals = {c: work_ap.get_column(c).to_numpy()[keep] for c in cols}
    return fr.with_columns(sub, vals)


def phenotypic_activity(
    meta: Any,
    feats: Any,
    *,
    pert_col: str = "Metadata_perturbation_id",
    controls: Any = fr.NEGCON,
    by: Sequence[str] | None = None,
    neg_sameby: Sequence[str] = (),
    null_size: int = 10000,
    threshold: float = 0.05,
    seed: int | None = 0,
    distance: str | Callable = "cosine",
    batch_size: int | None = None,
    backend: str = "auto",
    device: Any = None,
    progress: bool | None = None,
) -> RetrievalResult:
    """Phenotypic activity: can a perturbation's replicates be retrieved against negative controls?

    Parameters
    ----------
    meta : DataFrame, N rows
    feats : (N, D) array
        Normalised profiles (e.g. robust z-scored against each plate's controls).
    pert_col : str
        Perturbation identifier.
    controls : polars expression, mapping, query string or bool array
        Negative-control rows (default ``Metadata_control_type == "negcon"``).
    by : list of str, optional
        Group columns (default ``[pert_col]``); e.g. ``[pert_col, "Metadata_concentration"]`` scores each dose.
        Replicates share all ``by`` columns.
    neg_sameby : list of str
        Restrict negatives, e.g. ``["Metadata_Plate"]`` for same-plate controls only (copairs' example uses
        none).
    null_size, threshold, seed
        Passed to :func:`mean_average_precision`.
    distance, batch_size, backend, device
        Passed to :func:`average_precision`.

    Returns
    -------
    RetrievalResult
        ``map`` has one row per group; a group is *active* when ``below_corrected_p``.
    """
    fr.check_frame(meta)
    by = list(by) if by is not None else [pert_col]
    fr.require_columns(meta, [pert_col, *by, *neg_sameby])
    ctrl = fr.row_mask(meta, controls)
    if not ctrl.any():
        raise ValueError(f"no negative-control rows match controls={controls!r}")
    work = _filled_codes_frame(meta, [pert_col, *by, *neg_sameby], ctrl)
    ids = np.where(ctrl, np.arange(len(ctrl)), -1)
    work = work.with_columns(pl.Series(_REF, ids))
    design = {"pos_sameby": list(dict.fromkeys([*by, _REF])), "pos_diffby": [], "neg_sameby": list(neg_sameby),
              "neg_diffby": [pert_col, _REF]}
    ap_all = average_precision(work, feats, **design, distance=distance, batch_size=batch_size, backend=backend,
                               device=device, progress_bar=progress)
    ap = _attach(meta, ap_all, ~ctrl)
    m = mean_average_precision(ap, sameby=by, null_size=null_size, threshold=threshold, seed=seed,
                               progress_bar=progress)
    return RetrievalResult(ap=ap, map=m, fraction_retrieved=fraction_retrieved(m), design=design)


def replicate_retrieval(
    meta: Any,
    feats: Any,
    *,
    pert_col: str = "Metadata_perturbation_id",
    plate_col: str = "Metadata_Plate",
    controls: Any = fr.NEGCON,
    by: Sequence[str] | None = None,
    neg_sameby: Sequence[str] = (),
    null_size: int = 10000,
    threshold: float = 0.05,
    seed: int | None = 0,
    distance: str | Callable = "cosine",
    batch_size: int | None = None,
    backend: str = "auto",
    device: Any = None,
    progress: bool | None = None,
) -> RetrievalResult:
    """Replicate retrieval: replicates on *other plates* against other perturbations (JUMP "nonrep" mAP).

    Positives share ``by`` (default ``[pert_col]``) and differ in ``plate_col``; negatives are rows of other
    perturbations (optionally sharing ``neg_sameby``, e.g. the plate). Negative-control rows are removed
    first (pass ``controls=None`` to keep them as an ordinary perturbation).

    Returns
    -------
    RetrievalResult
    """
    fr.check_frame(meta)
    by = list(by) if by is not None else [pert_col]
    fr.require_columns(meta, [pert_col, plate_col, *by, *neg_sameby])
    keep = ~fr.row_mask(meta, controls) if controls is not None else np.ones(fr.n_rows(meta), dtype=bool)
    x = fr.as_matrix(feats, n=fr.n_rows(meta))
    sub = fr.take(meta, np.flatnonzero(keep))
    design = {"pos_sameby": list(by), "pos_diffby": [plate_col], "neg_sameby": list(neg_sameby),
              "neg_diffby": [pert_col]}
    ap = average_precision(sub, x[keep], **design, distance=distance, batch_size=batch_size, backend=backend,
                           device=device, progress_bar=progress)
    m = mean_average_precision(ap, sameby=by, null_size=null_size, threshold=threshold, seed=seed,
                               progress_bar=progress)
    return RetrievalResult(ap=ap, map=m, fraction_retrieved=fraction_retrieved(m), design=design)


def _active_ids(active: Any, pert_col: str) -> set | None:
    if active is None:
        return None
    if isinstance(active, pl.DataFrame) or fr.is_pandas(active):
        ids = fr.column_numpy(active, pert_col)
        calls = np.asarray(fr.column_numpy(active, "below_corrected_p"), dtype=bool)
        return set(ids[calls].tolist())
    if isinstance(active, Iterable) and not isinstance(active, str):
        return set(active)
    raise TypeError("active must be a mAP table (with below_corrected_p) or an iterable of perturbation ids")


def consensus_profiles(
    meta: Any,
    feats: Any,
    *,
    by: Sequence[str],
    method: str = "median",
    keep: Sequence[str] = (),
) -> tuple[pl.DataFrame, np.ndarray]:
    """Consensus profile per group (median or mean over its rows).

    Returns
    -------
    (polars.DataFrame, (G, D) float64 ndarray)
        Group keys (plus the first value of each ``keep`` column and ``n_wells``), sorted by key, and the
        consensus profiles row-aligned with them.
    """
    if method not in ("median", "mean"):
        raise ValueError(f"method must be 'median' or 'mean', got {method!r}")
    x = fr.as_matrix(feats, n=fr.n_rows(meta))
    pm = fr.to_polars(meta).select([*by, *[k for k in keep if k not in by]]).with_row_index("_row")
    groups = (pm.group_by(list(by)).agg(pl.col("_row"), *[pl.col(k).first() for k in keep if k not in by])
              .sort(list(by), nulls_last=True))
    rows = groups.get_column("_row").to_list()
    red = np.median if method == "median" else np.mean
    prof = np.stack([red(x[np.asarray(r)], axis=0) for r in rows]) if rows else np.zeros((0, x.shape[1]))
    keys = groups.drop("_row").with_columns(pl.Series("n_wells", [len(r) for r in rows]))
    return keys, prof


def phenotypic_consistency(
    meta: Any,
    feats: Any,
    *,
    label_col: str = "Metadata_moa",
    sep: str | None = "|",
    pert_col: str = "Metadata_perturbation_id",
    controls: Any = fr.NEGCON,
    active: Any = None,
    aggregate: str = "median",
    null_size: int = 10000,
    threshold: float = 0.05,
    seed: int | None = 0,
    distance: str | Callable = "cosine",
    backend: str = "auto",
    device: Any = None,
    progress: bool | None = None,
) -> RetrievalResult:
    """Phenotypic consistency: do perturbations sharing a MoA/target label retrieve each other?

    copairs' recipe: keep active perturbations, take one consensus profile per perturbation (median of its
    wells), split labels on ``sep`` into lists, and score multilabel AP with positives sharing a label and
    negatives sharing none; mAP per label.

    Parameters
    ----------
    label_col : str
        MoA or target column (strings joined by ``sep``, or already lists when ``sep`` is None).
    active : mAP table or iterable of ids, optional
        Perturbations to keep (a :func:`phenotypic_activity` map table keeps its ``below_corrected_p`` rows).

    Returns
    -------
    RetrievalResult
        ``ap`` is the multilabel AP table of consensus profiles; ``map`` has one row per label.
    """
    fr.check_frame(meta)
    fr.require_columns(meta, [pert_col, label_col])
    keep = ~fr.row_mask(meta, controls) if controls is not None else np.ones(fr.n_rows(meta), dtype=bool)
    ids = _active_ids(active, pert_col)
    if ids is not None:
        keep &= np.isin(fr.column_numpy(meta, pert_col), list(ids))
    x = fr.as_matrix(feats, n=fr.n_rows(meta))
    sub = fr.take(meta, np.flatnonzero(keep))
    keys, prof = consensus_profiles(sub, x[keep], by=[pert_col], method=aggregate, keep=[label_col])
    labels = keys.get_column(label_col).to_list()
    lists = []
    for v in labels:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            lists.append([])
        elif isinstance(v, str):
            lists.append([t.strip() for t in (v.split(sep) if sep else [v]) if t.strip()])
        else:
            lists.append([str(t) for t in v])
    has = np.array([len(v) > 0 for v in lists])
    table = keys.with_columns(pl.Series(label_col, lists, dtype=pl.List(pl.String)))
    table = table.filter(pl.Series(has))
    prof = prof[has]
    design = {"pos_sameby": [label_col], "pos_diffby": [], "neg_sameby": [], "neg_diffby": [label_col]}
    ap = multilabel_average_precision(table, prof, **design, multilabel_col=label_col, distance=distance,
                                      backend=backend, device=device, progress_bar=progress)
    m = mean_average_precision(ap, sameby=[label_col], null_size=null_size, threshold=threshold, seed=seed,
                               progress_bar=progress)
    return RetrievalResult(ap=ap, map=m, fraction_retrieved=fraction_retrieved(m), design=design)
