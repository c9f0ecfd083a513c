"""Small helpers that let the scoring functions take polars or pandas frames and return the same type.

Internally every table is read column by column into numpy; results are written back into a frame of the caller's
type (polars by default, pandas when the input was pandas, as copairs users expect).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

__all__: list[str] = []


def is_pandas(df: Any) -> bool:
    """True when ``df`` is a pandas DataFrame (checked without importing pandas)."""
    return type(df).__module__.split(".")[0] == "pandas" and hasattr(df, "iloc")


def check_frame(df: Any, *, name: str = "meta") -> None:
    if not (isinstance(df, pl.DataFrame) or is_pandas(df)):
        raise TypeError(f"{name} must be a polars or pandas DataFrame, got {type(df).__name__}")


def n_rows(df: Any) -> int:
    return int(df.height if isinstance(df, pl.DataFrame) else len(df))


def columns(df: Any) -> list[str]:
    return [str(c) for c in df.columns]


def require_columns(df: Any, cols: Sequence[str], *, name: str = "meta") -> None:
    have = set(columns(df))
    missing = [c for c in cols if c not in have]
    if missing:
        raise KeyError(f"{name} has no column(s) {missing}; available: {sorted(have)[:40]}")


def column_numpy(df: Any, col: str) -> np.ndarray:
    """Values of ``col`` as a numpy array (object dtype for strings; nulls as None/NaN)."""
    if isinstance(df, pl.DataFrame):
        s = df.get_column(col)
        if s.dtype == pl.String or s.dtype == pl.Categorical or s.dtype == pl.Enum:
            return np.asarray(s.cast(pl.String).to_list(), dtype=object)
        if isinstance(s.dtype, pl.List | pl.Array):
            out = np.empty(len(s), dtype=object)
            out[:] = s.to_list()
            return out
        return s.to_numpy()
    return df[col].to_numpy()


def null_mask(values: np.ndarray) -> np.ndarray:
    """Boolean mask of missing entries (None or NaN) in a numpy array of any dtype."""
    if values.dtype.kind == "f":
        return np.isnan(values)
    if values.dtype.kind == "O":
        return np.fromiter((v is None or (isinstance(v, float) and v != v) for v in values), dtype=bool,
                           count=len(values))
    if values.dtype.kind == "M":
        return np.isnat(values)
    return np.zeros(len(values), dtype=bool)


def encode(df: Any, col: str) -> np.ndarray:
    """Integer codes (int64, 0..n_levels-1) of one metadata column; equal values share a code.

    Raises
    ------
    ValueError
        If the column holds missing values (naming the column and the first offending row).
    """
    if isinstance(df, pl.DataFrame):
        s = df.get_column(col)
        bad = s.is_null()
        if s.dtype.is_float():
            bad = bad | s.is_nan()
        if bool(bad.any()):
            row = int(bad.arg_max())
            raise ValueError(f"metadata column {col!r} has missing values (first at row {row}); "
                             "pair columns must be complete (copairs rule)")
        if s.dtype == pl.Boolean:
            s = s.cast(pl.UInt8)
        if isinstance(s.dtype, pl.List | pl.Array | pl.Struct | pl.Object):
            raise ValueError(f"metadata column {col!r} holds lists; pass it as multilabel_col")
        return (s.rank("dense").cast(pl.Int64) - 1).to_numpy()
    import pandas as pd

    s = df[col]
    codes, _ = pd.factorize(s, use_na_sentinel=True)
    if (codes < 0).any():
        row = int(np.flatnonzero(codes < 0)[0])
        raise ValueError(f"metadata column {col!r} has missing values (first at row {row}); "
                         "pair columns must be complete (copairs rule)")
    return codes.astype(np.int64)


def take(df: Any, rows: np.ndarray) -> Any:
    """Rows ``rows`` (positions) of ``df``; pandas output gets a fresh RangeIndex (copairs' reset_index)."""
    rows = np.asarray(rows, dtype=np.int64)
    if isinstance(df, pl.DataFrame):
        return df[rows] if len(rows) != df.height or not np.array_equal(rows, np.arange(df.height)) else df
    return df.iloc[rows].reset_index(drop=True)


def with_columns(df: Any, new: Mapping[str, np.ndarray], *, index: np.ndarray | None = None) -> Any:
    """A copy of ``df`` with ``new`` columns appended (replacing same-named ones); same frame type."""
    if isinstance(df, pl.DataFrame):
        out = df.with_columns([pl.Series(k, v) for k, v in new.items()])
        return out
    out = df.copy()
    for k, v in new.items():
        out[k] = v
    if index is not None:
        out.index = index
    return out


def frame_like(template: Any, data: Mapping[str, Any], *, schema: Mapping[str, Any] | None = None) -> Any:
    """A new frame of the template's type from a column dict."""
    if is_pandas(template):
        import pandas as pd

        return pd.DataFrame(dict(data))
    return pl.DataFrame(dict(data), schema=schema, strict=False) if schema else pl.DataFrame(dict(data))


_QUERY_COL = re.compile(r"(\w+)\s*[=<>!]+")


def split_filters(specs: Sequence[str], available: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split copairs-style column lists into plain column names and query-string filters.

    Returns ``(columns, queries)``: each entry that is not a column name must be a pandas-query filter such as
    ``"Metadata_x != 'y'"``; the column(s) it names join ``columns``.
    """
    cols: list[str] = []
    queries: list[str] = []
    for spec in specs:
        if spec in available:
            cols.append(spec)
            continue
        named = [c for c in _QUERY_COL.findall(spec) if c in available]
        if not named:
            raise ValueError(f"{spec!r} is neither a metadata column nor a query on one; available: "
                             f"{sorted(available)[:40]}")
        queries.append(spec)
        cols.extend(named)
    return cols, queries


def eval_queries(df: Any, queries: Sequence[str]) -> np.ndarray:
    """Boolean row mask of the AND of pandas-query filters (evaluated with pandas on the named columns)."""
    if not queries:
        return np.ones(n_rows(df), dtype=bool)
    import pandas as pd

    pdf = df.to_pandas() if isinstance(df, pl.DataFrame) else df.reset_index(drop=True)
    expr = " & ".join(f"({q})" for q in queries)
    try:
        mask = pdf.eval(expr)
    except Exception as exc:  # pandas raises many kinds
        raise ValueError(f"invalid query filter {expr!r}: {exc}") from exc
    mask = np.asarray(pd.Series(mask).to_numpy(), dtype=bool)
    if not mask.any():
        raise ValueError(f"no rows match the query filter {expr!r}")
    return mask


def row_mask(meta: Any, spec: Any, *, name: str = "negcon") -> np.ndarray:
    """Boolean mask (N,) selecting rows of ``meta`` from a flexible specification.

    ``spec`` may be a boolean array/Series of length N, a mapping ``{column: value}`` (all must match; a list
    value means "any of"), a polars expression, or a pandas-query string such as ``"Metadata_broad_sample ==
    'DMSO'"``.
    """
    n = n_rows(meta)
    if isinstance(spec, pl.Expr):
        pm = meta if isinstance(meta, pl.DataFrame) else pl.from_pandas(meta.reset_index(drop=True))
        out = pm.select(spec.fill_null(False).alias("_m"))["_m"].to_numpy().astype(bool)
    elif isinstance(spec, str):
        out = eval_queries(meta, [spec])
    elif isinstance(spec, Mapping):
        out = np.ones(n, dtype=bool)
        for col, val in spec.items():
            require_columns(meta, [col])
            v = column_numpy(meta, col)
            if isinstance(val, list | tuple | set | frozenset):
                out &= np.isin(v, list(val))
            else:
                out &= np.asarray(v == val, dtype=bool)
    else:
        out = np.asarray(spec.to_numpy() if hasattr(spec, "to_numpy") else spec, dtype=bool)
    if out.shape != (n,):
        raise ValueError(f"{name} mask has shape {out.shape}, expected ({n},)")
    return out


def to_polars(df: Any) -> pl.DataFrame:
    return df if isinstance(df, pl.DataFrame) else pl.from_pandas(df.reset_index(drop=True))


def as_matrix(feats: Any, *, n: int | None = None, name: str = "feats") -> np.ndarray:
    """A 2-D float numpy view of ``feats`` (ndarray, polars/pandas frame or torch tensor)."""
    if isinstance(feats, pl.DataFrame):
        x = feats.to_numpy()
    elif is_pandas(feats):
        x = feats.to_numpy()
    elif type(feats).__module__.startswith("torch"):
        x = feats.detach().cpu().numpy()
    else:
        x = np.asarray(feats)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {x.shape}")
    if x.dtype.kind not in "fiub":
        raise ValueError(f"{name} must be numeric, got dtype {x.dtype}")
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    if n is not None and x.shape[0] != n:
        raise ValueError(f"{name} has {x.shape[0]} rows but meta has {n}")
    return x
