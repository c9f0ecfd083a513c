"""Tables in, tables out: the one polars/pandas adapter of :mod:`~subcell_screen.profiles` and
:mod:`~subcell_screen.score`.

Profiles arrive in pycytominer's wide layout (``Metadata_*`` columns plus one numeric column per feature), and
metadata tables in copairs' layout, as a polars or a pandas DataFrame (or, for profiles, a CSV/TSV/Parquet
path: :func:`load_profiles`). The operations work on polars/numpy; pandas is touched only to read the input
and to write the result back into a copy of it, so that its metadata columns, index and dtypes come back
unchanged. This module owns the rules both packages share:

* :func:`infer_features` — which columns are features (``features="infer"``, pycytominer's rule plus SubCell
  embedding columns);
* :func:`feature_frame` — feature values as Float64, numbers stored as text parsed, missing-value strings
  (``"nan"``, ``"None"``, ...) read as missing;
* :func:`row_mask` and :data:`NEGCON` — one way to select rows (the ``controls`` of normalisation and scoring,
  the ``samples`` of feature selection): a polars expression, a ``{column: value}`` mapping, a pandas query
  string or a boolean mask;
* :func:`groups_of` — row groups (plates, batches) with nulls as their own group.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

logger = logging.getLogger(__name__)

__all__ = ["NEGCON", "METADATA_PREFIX", "COMPARTMENTS", "MISSING_TOKENS", "PANDAS_NA_VALUES", "THREADS",
           "ColumnNotFoundError", "load_profiles", "as_frame", "infer_features", "feature_frame", "row_mask",
           "query_mask", "groups_of", "Groups", "require_columns", "columns_of", "is_pandas", "check_frame",
           "format_names"]

METADATA_PREFIX = "Metadata_"

#: The rows of the negative-control wells in the layout's ``Metadata_`` convention; the default ``controls`` of
#: every scoring function (normalisation fits on all rows unless given controls, as pycytominer's
#: ``samples="all"``).
NEGCON: pl.Expr = pl.col("Metadata_control_type") == "negcon"

#: pycytominer's default CellProfiler compartments of ``features="infer"`` (``infer_cp_features``).
COMPARTMENTS = ("Cells", "Cytoplasm", "Nuclei")

#: SubCell embedding columns this package writes (``feat0000``; ``<pass>_feat0000`` for several passes), which
#: ``features="infer"`` takes as well as the CellProfiler compartments.
_EMBEDDING = re.compile(r"^(?:.+_)?feat\d+$")

#: Text read as a missing value in a feature column (after stripping and lower-casing), as pycytominer's
#: ``normalize`` does for CellProfiler exports that write missing values as ``"nan"`` or ``"None"``.
MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "none", "null"})

#: Strings pandas' ``read_csv`` reads as missing by default (so a CSV reads the same as in pycytominer).
PANDAS_NA_VALUES = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
              "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]

#: How many offending names an error or warning lists before it says "and N more".
_MAX_NAMES = 8

#: Threads for column-wise numpy work, grouped reductions and page decoding (numpy, the median kernel and the
#: codecs release the GIL); the CPUs this process may run on, at most 8.
THREADS = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class ColumnNotFoundError(KeyError, ValueError):
    """A column named by an argument is not in the table (a ``KeyError`` and a ``ValueError``)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


def format_names(names: Sequence[Any], limit: int = _MAX_NAMES) -> str:
    """``'a', 'b' and 3 more``: names for an error message."""
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# -- frames ------------------------------------------------------------------------------------------------


def is_pandas(obj: Any) -> bool:
    """True for a pandas DataFrame (checked without importing pandas)."""
    return type(obj).__module__.split(".")[0] == "pandas" and hasattr(obj, "columns") and hasattr(obj, "iloc")


def check_frame(profiles: Any, *, name: str = "profiles") -> None:
    """Raise ``TypeError`` unless ``profiles`` is a polars or pandas DataFrame."""
    if not (isinstance(profiles, pl.DataFrame) or is_pandas(profiles)):
        raise TypeError(f"{name} must be a polars or pandas DataFrame, got {type(profiles).__name__}")


def load_profiles(path: str | os.PathLike) -> pl.DataFrame:
    """Read a profile table from a file (pycytominer ``load_profiles``).

    Parameters
    ----------
    path : str or path-like
        A Parquet file or a folder of Parquet files (a dataset), or a delimited text file (``.csv``, ``.tsv``,
        ``.txt``, each optionally gzip-, bzip2- or xz-compressed); the delimiter (comma, tab, semicolon or pipe) is
        detected from the first lines.

    Returns
    -------
    polars.DataFrame
        Text files use pandas' default missing-value strings (``""``, ``"NA"``, ``"nan"``, ``"None"`` ...), so
        the table reads as it does in pycytominer.

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    ValueError
        The delimiter cannot be determined.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"profiles file not found: {p}")
    if p.is_dir():
        files = sorted(p.rglob("*.parquet"))
        if not files:
            raise ValueError(f"{p} is a folder without Parquet files")
        return pl.read_parquet(files)
    with open(p, "rb") as fh:
        magic = fh.read(4)
    if magic == b"PAR1":
        return pl.read_parquet(p)
    raw = p.read_bytes()
    if magic[:2] == b"\x1f\x8b":
        import gzip

        raw = gzip.decompress(raw)
    elif magic[:3] == b"BZh":
        import bz2

        raw = bz2.decompress(raw)
    elif magic[:4] == b"\xfd7zX":
        import lzma

        raw = lzma.decompress(raw)
    if raw.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark
        raw = raw[3:]
    sep = _sniff_delimiter(raw[:65536].decode("utf-8", errors="replace"), p)
    return pl.read_csv(raw, separator=sep, null_values=PANDAS_NA_VALUES, infer_schema_length=None)


def _sniff_delimiter(sample: str, path: Path) -> str:
    """The candidate delimiter that splits the first lines into the same number (> 1) of fields, quotes
    respected (the sample's last line may be cut off, so it is left out)."""
    import csv

    lines = [ln for ln in sample.splitlines()[:21] if ln.strip()]
    if not lines:
        raise ValueError(f"{path} is empty")
    lines = lines[:-1] if len(lines) > 1 else lines
    best, best_n = None, 1
    for sep in (",", "\t", ";", "|"):
        widths = {len(row) for row in csv.reader(lines, delimiter=sep)}
        if len(widths) == 1 and (n := widths.pop()) > best_n:
            best, best_n = sep, n
    if best is None:
        raise ValueError(f"could not determine the delimiter of {path} (tried comma, tab, semicolon, pipe)")
    return best


def as_frame(profiles: Any, *, name: str = "profiles") -> Any:
    """``profiles`` itself when it is a polars or pandas DataFrame, read with :func:`load_profiles` when it is
    a path; ``TypeError`` otherwise."""
    if isinstance(profiles, (str, os.PathLike)):
        return load_profiles(profiles)
    check_frame(profiles, name=name)
    return profiles


def columns_of(profiles: Any) -> list[str]:
    """Column names of a polars or pandas frame, as strings."""
    if isinstance(profiles, pl.LazyFrame):
        return profiles.collect_schema().names()
    return [str(c) for c in profiles.columns]


def n_rows(profiles: Any) -> int:
    return int(profiles.height if isinstance(profiles, pl.DataFrame) else len(profiles))


def require_columns(df: Any, cols: Sequence[str], *, name: str = "meta") -> None:
    """Raise :class:`ColumnNotFoundError` naming the columns of ``cols`` that ``df`` lacks."""
    have = set(columns_of(df))
    missing = [c for c in cols if c not in have]
    if missing:
        raise ColumnNotFoundError(f"{name} has no column(s) {format_names(missing)}; available: "
                                  f"{format_names(sorted(have), 40)}")


def as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


def pick_columns(df: pl.DataFrame, names: Sequence[str]) -> pl.DataFrame:
    """``df.select(names)`` for plain column names, without planning a query (which costs ~0.5 s on a frame
    of thousands of columns)."""
    return pl.DataFrame([df.get_column(c) for c in names])


def polars_view(profiles: Any, columns: Sequence[str]) -> pl.DataFrame:
    """Columns of ``profiles`` as a polars frame (for evaluating key columns and row expressions)."""
    if not columns:
        n = n_rows(profiles)
        return pl.DataFrame().with_columns(pl.repeat(0, n, dtype=pl.Int8).alias("__dummy")).drop("__dummy")
    if is_pandas(profiles):
        return pl.from_pandas(profiles[list(columns)].reset_index(drop=True))
    return pick_columns(profiles, columns)


def to_polars(df: Any) -> pl.DataFrame:
    """The whole frame as polars (pandas: index dropped)."""
    return df if isinstance(df, pl.DataFrame) else pl.from_pandas(df.reset_index(drop=True))


def column_numpy(df: Any, col: str) -> np.ndarray:
    """Values of ``col`` as a numpy array (object dtype for strings and lists; nulls as None/NaN)."""
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


def take(df: Any, rows: np.ndarray) -> Any:
    """Rows ``rows`` (positions) of ``df``; pandas output gets a fresh RangeIndex (copairs' reset_index)."""
    rows = np.asarray(rows, dtype=np.int64)
    if isinstance(df, pl.DataFrame):
        return df[rows] if len(rows) != df.height or not np.array_equal(rows, np.arange(df.height)) else df
    return df.iloc[rows].reset_index(drop=True)


def with_columns(df: Any, new: Mapping[str, np.ndarray], *, index: np.ndarray | None = None) -> Any:
    """A copy of ``df`` with ``new`` columns appended (replacing same-named ones); same frame type.

    ``index`` sets a pandas result's index (ignored for polars).
    """
    if isinstance(df, pl.DataFrame):
        return df.with_columns([pl.Series(k, v) for k, v in new.items()])
    out = df.copy()
    for k, v in new.items():
        out[k] = v
    if index is not None:
        out.index = index
    return out


def as_matrix(feats: Any, *, n: int | None = None, name: str = "feats") -> np.ndarray:
    """A 2-D float numpy view of ``feats`` (ndarray, polars/pandas frame or torch tensor)."""
    if isinstance(feats, pl.DataFrame) or is_pandas(feats):
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


# -- features -----------------------------------------------------------------------------------------------


def _kinds(profiles: Any, cols: Sequence[str]) -> dict[str, str]:
    """``numeric``, ``bool``, ``text`` or ``other`` (nested payloads, dates ...) for each of ``cols``."""
    if is_pandas(profiles):
        import pandas as pd

        out = {}
        for col in cols:
            s = profiles[col]
            if pd.api.types.is_bool_dtype(s):
                out[col] = "bool"
            elif pd.api.types.is_numeric_dtype(s):
                out[col] = "numeric"
            elif (pd.api.types.is_string_dtype(s) or pd.api.types.is_object_dtype(s)) and all(
                    isinstance(v, (str, int, float, np.number)) and not isinstance(v, bool) for v in s.dropna()):
                out[col] = "text"
            else:
                out[col] = "other"
        return out
    schema = profiles.schema  # built on every access: once per call
    out = {}
    for col in cols:
        dt = schema[col]
        if dt == pl.Boolean:
            out[col] = "bool"
        elif dt.is_numeric():
            out[col] = "numeric"
        elif dt in (pl.String, pl.Categorical) or isinstance(dt, pl.Enum):
            out[col] = "text"
        else:
            out[col] = "other"
    return out


def infer_features(
    profiles: Any,
    features: Sequence[str] | str | None = "infer",
    *,
    image_features: bool = False,
    compartments: Sequence[str] = COMPARTMENTS,
) -> list[str]:
    """Feature columns: ``features`` as given (checked), or inferred by name (``"infer"``).

    ``"infer"`` follows pycytominer's ``infer_cp_features``: columns whose name starts with a CellProfiler
    compartment (``Cells``, ``Cytoplasm``, ``Nuclei``, or ``compartments``; plus numeric ``Image_*`` columns
    with ``image_features=True``), skipping nested payloads (lists, structs). It also takes the SubCell
    embedding columns this package writes (``feat0000`` ..., ``<pass>_feat0000`` ...). ``Metadata_*`` columns
    and any other column (e.g. ``ObjectNumber``) are never inferred; pass ``features=[...]`` for other
    feature names.

    Parameters
    ----------
    profiles : polars.DataFrame or pandas.DataFrame
    features : list of str or "infer"
        Explicit feature columns (each must exist and hold numbers, possibly as text), or ``"infer"``
        (``None`` means ``"infer"``).
    image_features : bool
        Also infer numeric ``Image_*`` columns (pycytominer ``image_features``).
    compartments : sequence of str
        Compartment prefixes of ``"infer"`` (title-cased, as pycytominer).

    Returns
    -------
    list of str
        In column order (inferred) or as given.

    Raises
    ------
    ValueError
        No feature column is found; a named feature is missing, duplicated, or holds something other than
        numbers (text is parsed later, see :func:`feature_frame`).
    """
    cols = columns_of(profiles)
    if features is None or (isinstance(features, str) and features == "infer"):
        prefixes = tuple(str(c).title() for c in as_list(compartments))
        if image_features:
            prefixes = (*prefixes, "Image")
        named = [c for c in cols if (c.startswith(prefixes) or _EMBEDDING.match(c))
                 and not c.startswith(METADATA_PREFIX)]
        kinds = _kinds(profiles, named)
        out = [c for c in named if kinds[c] != "other"
               and not (c.startswith("Image_") and kinds[c] not in ("numeric", "bool"))]
        if not out:
            raise ValueError(
                "no feature columns found: features='infer' takes columns named like CellProfiler features "
                f"({', '.join(p + '*' for p in prefixes)}) or SubCell embeddings (feat0000, <pass>_feat0000); "
                "pass features=[...] for other names")
        return out
    if isinstance(features, str):
        raise ValueError("features must be a list of column names or 'infer', not a single string")
    out = list(features)
    have = set(cols)
    missing = [c for c in out if c not in have]
    if missing:
        raise ColumnNotFoundError(f"feature columns not in the profiles: {format_names(missing)}")
    kinds = _kinds(profiles, out)
    bad = [c for c in out if kinds[c] == "other"]
    if bad:
        raise ValueError(f"feature columns must be numeric; not numeric: {format_names(bad)}")
    if len(set(out)) != len(out):
        dup = sorted({c for c in out if out.count(c) > 1})
        raise ValueError(f"duplicate feature names: {format_names(dup)}")
    return out


def _parse_text(s: pl.Series) -> pl.Series:
    """A text column of numbers as Float64: missing-value strings become null; anything else must parse."""
    name = s.name
    df = pl.DataFrame({"raw": s.cast(pl.String)}).with_columns(pl.col("raw").str.strip_chars().alias("clean"))
    df = df.with_columns((pl.col("clean").is_null() | pl.col("clean").str.to_lowercase().is_in(
        list(MISSING_TOKENS))).alias("missing"))
    df = df.with_columns(pl.when(pl.col("missing")).then(None).otherwise(pl.col("clean"))
                         .cast(pl.Float64, strict=False).alias("value"))
    bad = df.get_column("value").is_null() & ~df.get_column("missing")
    if bad.any():
        row = int(bad.arg_max())
        raise ValueError(f"feature column {name!r} holds text that is not a number: {df['raw'][row]!r} "
                         f"(row {row}); pass features=[...] without it or clean the column")
    return df.get_column("value").alias(name)


def feature_frame(profiles: Any, features: Sequence[str]) -> pl.DataFrame:
    """The feature columns as a polars frame of Float64, missing values (NaN or null) as null.

    Booleans become 0/1; text columns are parsed as numbers, with pycytominer's missing-value strings
    (:data:`MISSING_TOKENS`, e.g. ``"nan"``, ``"None"``) read as missing (logged at INFO).

    Raises
    ------
    ValueError
        A text column holds something that is not a number or a missing-value string.
    """
    kinds = _kinds(profiles, features)
    text = [c for c in features if kinds[c] == "text"]
    if is_pandas(profiles):
        plain = [c for c in features if kinds[c] != "text"]
        cols: dict[str, pl.Series] = {}
        if plain:
            arr = profiles[plain].to_numpy(dtype=np.float64, na_value=np.nan)
            cols = {c: pl.Series(c, arr[:, j]) for j, c in enumerate(plain)}
        for c in text:
            vals = profiles[c].to_numpy(dtype=object)
            cols[c] = _parse_text(pl.Series(c, [None if v is None or (isinstance(v, float) and v != v)
                                                else str(v) for v in vals], dtype=pl.String))
        df = pl.DataFrame([cols[c] for c in features]) if features else pl.DataFrame()
    else:
        df = pick_columns(profiles, features) if features else pl.DataFrame()
        if text:
            df = df.with_columns([_parse_text(df.get_column(c)) for c in text])
    if text:
        logger.info("%d feature column(s) stored as text were parsed as numbers: %s", len(text),
                    format_names(text))
    casts = [pl.col(c).cast(pl.Float64) for c, t in df.schema.items() if t != pl.Float64]
    if casts:
        df = df.with_columns(casts)
    has_nan = df.select(pl.any_horizontal(pl.all().is_nan().any())).item() if df.height and df.width else False
    if has_nan:
        df = df.with_columns(pl.all().fill_nan(None))
    return df


# -- rows ---------------------------------------------------------------------------------------------------


_WORD = re.compile(r"`([^`]+)`|\b([A-Za-z_]\w*)\b")


def query_mask(profiles: Any, query: str) -> np.ndarray:
    """Boolean mask of a pandas-query string (``"Metadata_treatment == 'control'"``) evaluated with pandas on
    the columns it names."""
    import pandas as pd

    have = set(columns_of(profiles))
    named = [a or b for a, b in _WORD.findall(query) if (a or b) in have]
    if not named:
        raise ValueError(f"query {query!r} names no column of the table")
    pdf = polars_view(profiles, list(dict.fromkeys(named))).to_pandas()
    try:
        mask = pdf.eval(query)
    except Exception as exc:  # pandas raises many kinds
        raise ValueError(f"invalid query {query!r}: {exc}") from exc
    out = np.asarray(pd.Series(mask).to_numpy(), dtype=bool)
    if out.shape != (len(pdf),):
        raise ValueError(f"query {query!r} does not give one boolean per row")
    return out


def row_mask(profiles: Any, rows: Any, *, name: str = "controls") -> np.ndarray:
    """Boolean numpy mask ``(n_rows,)`` of the rows a selection picks.

    Parameters
    ----------
    profiles : polars.DataFrame or pandas.DataFrame
    rows : polars.Expr, mapping, str, boolean array/Series, or None
        * a polars expression, e.g. :data:`NEGCON` (null results count as not selected);
        * a mapping ``{column: value}`` (every column must match; a list/tuple/set value means "any of");
        * a pandas query string, e.g. ``"Metadata_broad_sample == 'DMSO'"`` (pycytominer's ``samples``;
          ``"all"`` selects every row);
        * a boolean array, list or Series with one entry per row;
        * ``None``: every row.
    name : str
        The argument's name, for error messages.
    """
    n = n_rows(profiles)
    if rows is None or (isinstance(rows, str) and rows == "all"):
        return np.ones(n, dtype=bool)
    if isinstance(rows, pl.Expr):
        roots = rows.meta.root_names()
        missing = [c for c in roots if c not in set(columns_of(profiles))]
        if missing:
            raise ColumnNotFoundError(f"{name} expression refers to columns not in the table: "
                                      f"{format_names(missing)}")
        view = polars_view(profiles, roots) if roots else pl.DataFrame({"__i": np.zeros(n, dtype=np.int8)})
        out = view.select(rows.alias("__mask"))["__mask"]
        if out.len() == 1 and n != 1:
            out = pl.repeat(out[0], n, eager=True)
        if out.dtype != pl.Boolean:
            raise ValueError(f"{name} expression must evaluate to booleans, got {out.dtype}")
        return out.fill_null(False).to_numpy().astype(bool, copy=False)
    if isinstance(rows, str):
        return query_mask(profiles, rows)
    if isinstance(rows, Mapping):
        out = np.ones(n, dtype=bool)
        require_columns(profiles, list(rows), name="the table")
        for col, val in rows.items():
            v = column_numpy(profiles, col)
            if isinstance(val, list | tuple | set | frozenset):
                out &= np.isin(v, list(val))
            else:
                out &= np.asarray(v == val, dtype=bool)
        return out
    arr = np.asarray(rows.to_numpy() if hasattr(rows, "to_numpy") else rows)
    if arr.dtype != bool or arr.shape != (n,):
        raise ValueError(f"{name} must be a polars expression, a {{column: value}} mapping, a query string or a "
                         f"boolean mask of length {n}; got {type(rows).__name__}")
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
        return format_names([self.label(g) for g in gs]).replace('"', "")


def groups_of(profiles: Any, by: str | Sequence[str] | None) -> Groups:
    """Group rows by the ``by`` columns (nulls form their own group); ``None`` means one group."""
    by = as_list(by)
    n = n_rows(profiles)
    if not by:
        return Groups(codes=np.zeros(n, dtype=np.int64), keys=pl.DataFrame(), by=[])
    missing = [c for c in by if c not in set(columns_of(profiles))]
    if missing:
        raise ColumnNotFoundError(f"grouping columns not in the profiles: {format_names(missing)}")
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
