"""Items of a map: consensus profiles per perturbation (or per perturbation and dose) with their annotations."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

__all__ = ["Items", "consensus_items", "split_terms", "item_ids"]

logger = logging.getLogger(__name__)

#: Separator of multi-valued annotation entries (``"HDAC inhibitor|HSP inhibitor"``).
TERM_SEPARATOR = "|"


@dataclass(frozen=True, eq=False)
class Items:
    """Consensus profiles of the items of a map.

    Attributes
    ----------
    frame : polars.DataFrame
        One row per item, sorted by ``by`` (nulls last): the ``by`` columns, ``item`` (text id, see
        :func:`item_ids`), ``n_profiles`` (rows combined), then one String column per annotation holding the
        item's terms joined by ``|`` (null when it has none).
    x : ndarray, (n_items, n_features), float64
        Consensus profiles, in ``frame`` order.
    terms : dict of str to list of frozenset of str
        Annotation -> the terms of each item (``frame`` order).
    excluded : polars.DataFrame
        Items left out (``by`` columns, ``item``, ``reason``): non-finite or all-zero consensus profiles.
    rows : list of ndarray
        Rows of the input frame combined into each item (``frame`` order).
    """

    frame: pl.DataFrame = field(repr=False)
    x: np.ndarray = field(repr=False)
    terms: dict[str, list[frozenset[str]]] = field(repr=False)
    excluded: pl.DataFrame = field(repr=False)
    rows: list[np.ndarray] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return self.frame.height


def split_terms(value: object) -> frozenset[str]:
    """Terms of one annotation entry: text split on ``|``, stripped, empty parts dropped (null -> none)."""
    if value is None:
        return frozenset()
    if isinstance(value, float) and not np.isfinite(value):
        return frozenset()
    text = value if isinstance(value, str) else _number_text(value)
    return frozenset(t.strip() for t in text.split(TERM_SEPARATOR) if t.strip())


def _number_text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else repr(value)
    return str(value)


def item_ids(keys: pl.DataFrame) -> list[str]:
    """Text id of each item: its ``by`` values joined by ``" @ "`` (nulls as ``NA``; ``1.0`` as ``1``).

    Raises
    ------
    ValueError
        If two items get the same text (e.g. ``1`` and ``"1"`` in an untyped column).
    """
    ids = [" @ ".join("NA" if v is None else (v if isinstance(v, str) else _number_text(v)) for v in row)
           for row in keys.iter_rows()]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise ValueError(f"two items have the same id {dup!r}; make the 'by' columns unambiguous")
    return ids


def consensus_items(
    profiles: pl.DataFrame,
    *,
    by: Sequence[str],
    features: Sequence[str],
    annotations: Sequence[str] = (),
    method: str = "median",
) -> Items:
    """Combine the rows of ``profiles`` that share the ``by`` values into one consensus profile per item.

    Parameters
    ----------
    profiles : polars.DataFrame
        Wide profiles (one row per well or per perturbation).
    by : sequence of str
        Columns identifying an item (rows with null keys form their own item).
    features : sequence of str
        Feature columns.
    annotations : sequence of str
        Columns whose terms are collected per item (the union over its rows, ``|``-separated values split).
    method : {"median", "mean"}
        Per-feature consensus over an item's rows; missing values are skipped.

    Returns
    -------
    Items
    """
    if method not in ("median", "mean"):
        raise ValueError(f"method must be 'median' or 'mean', got {method!r}")
    by = list(by)
    keyed = profiles.select(by).with_row_index("_row")
    groups = keyed.group_by(by).agg(pl.col("_row")).sort(by, nulls_last=True)
    x_all = profiles.select(features).cast(pl.Float64).to_numpy()
    rows = [np.asarray(r, dtype=np.int64) for r in groups["_row"].to_list()]
    x = np.empty((len(rows), len(features)))
    reduce = np.nanmedian if method == "median" else np.nanmean
    with np.errstate(all="ignore"), _quiet_nan_warnings():
        for i, r in enumerate(rows):
            x[i] = reduce(x_all[r], axis=0) if len(r) > 1 else x_all[r[0]]
    keys = groups.select(by)
    ids = item_ids(keys)
    frame = keys.with_columns(pl.Series("item", ids, dtype=pl.String),
                              pl.Series("n_profiles", [len(r) for r in rows], dtype=pl.Int32))
    terms: dict[str, list[frozenset[str]]] = {}
    for col in annotations:
        values = profiles[col].to_list()
        per_item = [frozenset().union(*(split_terms(values[j]) for j in r)) for r in rows]
        terms[col] = per_item
        frame = frame.with_columns(pl.Series(col, [TERM_SEPARATOR.join(sorted(t)) if t else None for t in per_item],
                                             dtype=pl.String))
    finite = np.isfinite(x).all(axis=1)
    norms = np.linalg.norm(np.where(np.isfinite(x), x, 0), axis=1)
    # a consensus at the controls' centre (e.g. the negative controls themselves after normalisation) is
    # zero up to rounding: its direction, and so its cosine similarity, is noise
    scale = float(np.median(norms[finite])) if finite.any() else 0.0
    nonzero = norms > max(scale * 1e-9, np.finfo(np.float64).tiny)
    keep = finite & nonzero
    reasons = np.where(~finite, "consensus profile has missing or non-finite values",
                       "consensus profile is zero (at the controls' centre: cosine similarity undefined)")
    excluded = frame.filter(pl.Series(~keep)).select(*by, "item").with_columns(
        pl.Series("reason", reasons[~keep].tolist(), dtype=pl.String))
    if excluded.height:
        logger.warning("phenotypic map: %d item(s) left out (%s), e.g. %s", excluded.height,
                       "; ".join(sorted(set(excluded["reason"].to_list()))), excluded["item"].head(3).to_list())
    sel = np.flatnonzero(keep)
    return Items(frame=frame[sel.tolist()] if excluded.height else frame, x=x[sel],
                 terms={k: [v[i] for i in sel] for k, v in terms.items()}, excluded=excluded,
                 rows=[rows[i] for i in sel])


class _quiet_nan_warnings:
    """Silence numpy's "All-NaN slice" / "Mean of empty slice" warnings (such items are reported instead)."""

    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)
