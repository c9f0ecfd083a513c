"""Shared helpers of the profiles package: input frames, feature inference, groups, row masks.

Profiles arrive in pycytominer's wide layout (``Metadata_*`` columns plus one numeric column per feature) as
a polars or a pandas DataFrame. The operations work on polars/numpy; pandas is touched only to read the
input and to write the result back into a copy of it, so that its metadata columns, index and dtypes come
back unchanged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

logger = logging.getLogger(__name__)

METADATA_PREFIX = "Metadata_"

#: Rows of the negative-control wells in the layout's ``Metadata_`` convention.
NEGCON: pl.Expr = pl.col("Metadata_control_type") == "negcon"

#: How many offending names an error or warning lists before it says "and N more".
_MAX_NAMES = 8

#: Threads for column-wise numpy work, grouped reductions and page decoding (numpy, the median kernel and the
#: codecs release the GIL); the CPUs this process may run on, at most 8.
THREADS = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def is_pandas(obj: Any) -> bool:
    """True for a pandas DataFrame (checked without importing pandas)."""
    return type(obj).__module__.split(".")[0] == "pandas" and hasattr(obj, "columns") and hasattr(obj, "iloc")


def columns_of(profiles: Any) -> list[str]:
    """Column names of a polars or pandas frame, as strings."""
    if isinstance(profiles, pl.LazyFrame):
        return profiles.collect_schema().names()
    return [str(c) for c in profiles.columns]


def check_frame(profiles: Any, *, name: str = "profiles") -> None:
    """Raise ``TypeError`` unless ``profiles`` is a polars or pandas DataFrame."""
    if not (isinstance(profiles, pl.DataFrame) or is_pandas(profiles)):
        raise TypeError(f"{name} must be a polars or pandas DataFrame, got {type(profiles).__name__}")


def _numeric_pandas(series: Any) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_numeric_dtype(series)) and not pd.api.types.is_bool_dtype(series)


def infer_features(profiles: Any, features: Sequence[str] | None = None) -> list[str]:
    """Feature columns: ``features`` as given (checked), or every numeric column not prefixed ``Metadata_``.

    Parameters
    ----------
    profiles : polars.DataFrame or pandas.DataFrame
    features : sequence of str, optional
        Explicit feature columns; each must exist and be numeric.

    Returns
    -------
    list of str

    Raises
    ------
    ValueError
        A named feature is missing or not numeric, or no feature column is found.
    """
    cols = columns_of(profiles)
    if isinstance(features, str):
        raise ValueError("features must be a list of column names, not a single string")
    if is_pandas(profiles):
        numeric = {c for c in cols if _numeric_pandas(profiles[c])}
    else:
        schema = profiles.schema
        numeric = {c for c in cols if schema[c].is_numeric()}
    if features is None:
        out = [c for c in cols if not c.startswith(METADATA_PREFIX) and c in numeric]
        if not out:
            raise ValueError("no numeric non-Metadata_ feature columns found; pass features=[...]")
        return out
    out = list(features)
    missing = [c for c in out if c not in set(cols)]
    if missing:
        raise ValueError(f"feature columns not in the profiles: {_names(missing)}")
    bad = [c for c in out if c not in numeric]
    if bad:
        raise ValueError(f"feature columns must be numeric; not numeric: {_names(bad)}")
    if len(set(out)) != len(out):
        dup = sorted({c for c in out if out.count(c) > 1})
        raise ValueError(f"duplicate feature names: {_names(dup)}")
    return out


def _names(names: Sequence[Any], limit: int = _MAX_NAMES) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


def feature_frame(profiles: Any, features: Sequence[str]) -> pl.DataFrame:
    """The feature columns as a polars frame of Float64, missing values (NaN or null) as null."""
    if is_pandas(profiles):
        arr = profiles[list(features)].to_numpy(dtype=np.float64, na_value=np.nan)
        df = pl.DataFrame(arr, schema=list(features), orient="row")
    else:
        df = pick_columns(profiles, features)
    casts = [pl.col(c).cast(pl.Float64) for c, t in df.schema.items() if t != pl.Float64]
    if casts:
        df = df.with_columns(casts)
    has_nan = df.select(pl.any_horizontal(pl.all().is_nan().any())).item() if df.height and df.width else False
    if has_nan:
        df = df.with_columns(pl.all().fill_nan(None))
    return df


def pick_columns(df: pl.DataFrame, names: Sequence[str]) -> pl.DataFrame:
    """``df.select(names)`` for plain column names, without planning a query (which costs ~0.5 s on a frame
    of thousands of columns)."""
    return pl.DataFrame([df.get_column(c) for c in names])


def polars_view(profiles: Any, columns: Sequence[str]) -> pl.DataFrame:
    """Columns of ``profiles`` as a polars frame (for evaluating key columns and row expressions)."""
    if not columns:
        n = profiles.height if isinstance(profiles, pl.DataFrame) else len(profiles)
        return pl.DataFrame().with_columns(pl.repeat(0, n, dtype=pl.Int8).alias("__dummy")).drop("__dummy")
    if is_pandas(profiles):
        return pl.from_pandas(profiles[list(columns)].reset_index(drop=True))
    return pick_columns(profiles, columns)


def n_rows(profiles: Any) -> int:
    return profiles.height if isinstance(profiles, pl.DataFrame) else len(profiles)


def row_mask(profiles: Any, rows: pl.Expr | pl.Series | np.ndarray | Sequence[bool] | None, *,
             name: str = "controls") -> np.ndarray:
    """Boolean numpy mask of the rows selected by a polars expression (or a boolean series/array).

    ``None`` selects every row. Null results of the expression count as not selected.
    """
    n = n_rows(profiles)
    if rows is None:
        return np.ones(n, dtype=bool)
    if isinstance(rows, pl.Expr):
        roots = rows.meta.root_names()
        missing = [c for c in roots if c not in set(columns_of(profiles))]
        if missing:
            raise ValueError(f"{name} expression refers to columns not in the profiles: {_names(missing)}")
        view = polars_view(profiles, roots) if roots else pl.DataFrame({"__i": np.zeros(n, dtype=np.int8)})
        out = view.select(rows.alias("__mask"))["__mask"]
        if out.len() == 1 and n != 1:
            out = pl.repeat(out[0], n, eager=True)
        if out.dtype != pl.Boolean:
            raise ValueError(f"{name} expression must evaluate to booleans, got {out.dtype}")
        return out.fill_null(False).to_numpy().astype(bool, copy=False)
    arr = np.asarray(rows.to_numpy() if isinstance(rows, pl.Series) else rows)
    if arr.dtype != bool or arr.shape != (n,):
        raise ValueError(f"{name} must be a polars expression or a boolean mask of length {n}")
    return arr


@dataclass(frozen=True)
class Groups:
    """Row groups of a frame (e.g. plates).

    Attributes
    ----------
    codes : numpy.ndarray
        ``(n_rows,)`` int64 group index of every row, in order of first appearance.
    keys : polars.DataFrame
        One row per group with the ``by`` columns (empty column list when ungrouped).
    by : list of str
    """

    codes: np.ndarray
    keys: pl.DataFrame
    by: list[str]

    @property
    def n(self) -> int:
        return self.keys.height if self.by else 1

    def label(self, g: int) -> str:
        """Readable name of group ``g``, e.g. ``Metadata_Plate='P1'``."""
        if not self.by:
            return "all rows"
        row = self.keys.row(int(g))
        return ", ".join(f"{c}={v!r}" for c, v in zip(self.by, row))

    def labels(self, gs: Sequence[int] | np.ndarray) -> str:
        return _names([self.label(g) for g in gs]).replace('"', "")


def groups_of(profiles: Any, by: str | Sequence[str] | None) -> Groups:
    """Group rows by the ``by`` columns (nulls form their own group); ``None`` means one group."""
    by = as_list(by)
    n = n_rows(profiles)
    if not by:
        return Groups(codes=np.zeros(n, dtype=np.int64), keys=pl.DataFrame(), by=[])
    missing = [c for c in by if c not in set(columns_of(profiles))]
    if missing:
        raise ValueError(f"grouping columns not in the profiles: {_names(missing)}")
    keys = polars_view(profiles, by)
    uniq = keys.unique(maintain_order=True)
    coded = keys.join(uniq.with_row_index("__gid"), on=by, how="left", nulls_equal=True, maintain_order="left")
    return Groups(codes=coded["__gid"].to_numpy().astype(np.int64), keys=uniq, by=by)


def replace_features(profiles: Any, values: pl.DataFrame, *, rename: dict[str, str] | None = None) -> Any:
    """A copy of ``profiles`` whose feature columns (``values.columns``) are replaced, order kept.

    ``rename`` maps old feature names to new ones (e.g. PCA components).
    """
    rename = rename or {}
    if is_pandas(profiles):
        out = profiles.copy()
        for c in values.columns:
            out[c] = values[c].to_numpy()  # nulls -> NaN
        return out.rename(columns=rename) if rename else out
    out = profiles.with_columns(values)
    return out.rename(rename) if rename else out


def from_polars_result(profiles: Any, result: pl.DataFrame) -> Any:
    """Return ``result`` as the type of ``profiles`` (pandas: floats with NaN for missing)."""
    if is_pandas(profiles):
        return result.to_pandas()
    return result


def in_threads(work: Callable[[range], None], d: int, *, chunk: int = 256) -> None:
    """Call ``work(range)`` on consecutive chunks of ``range(d)``, on up to :data:`THREADS` threads.

    ``work`` must only write disjoint outputs per chunk, and must not call BLAS (OpenBLAS threads itself,
    which stalls inside Python threads).
    """
    chunks = [range(i, min(i + chunk, d)) for i in range(0, d, chunk)]
    if THREADS > 1 and len(chunks) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(THREADS, len(chunks))) as pool:
            list(pool.map(work, chunks))
    else:
        for c in chunks:
            work(c)
