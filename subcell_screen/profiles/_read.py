"""Fast reading of the screen store's per-site Parquet files into one numpy matrix.

The store writes one zstd Parquet file per site (``cells/<feature_set>/plate=<plate>/<well>_s<site>.parquet``)
with key columns and a fixed-width ``features`` column (``pl.Array(pl.Float32, D)``). Parquet has no
fixed-size list type, so the column is stored as a nested list with repetition and definition levels;
generic readers (polars, pyarrow, DuckDB) decode those levels value by value, at ~150-200 MB/s on one core.
For these files the levels carry no information (every row holds exactly ``D`` non-missing values), so the
reader here checks that they are what they must be and copies the PLAIN-encoded values straight out of the
decompressed pages.

Every file goes through strict checks, and any file that does not pass them is read with polars instead
(same result, slower):

* the Parquet footer's schema is byte-identical to that of the first file, whose Arrow schema declares
  ``column`` a ``fixed_size_list<float | double>[D]`` with one repetition level;
* one row group; the column chunk holds ``num_rows * D`` values, no dictionary page; data pages (v1 or v2)
  PLAIN-encoded, compressed with a codec pyarrow provides;
* every definition level is the maximum (no missing list, row or value) and the repetition levels start a
  new row exactly every ``D`` values;
* the file's path is ``.../plate=<plate>/<well>_s<site>.parquet`` and the footer statistics of the
  ``plate``, ``well`` and ``site`` columns (min = max = that key, no nulls) prove every row has these keys.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from .frames import THREADS

logger = logging.getLogger(__name__)

__all__ = ["SiteArrays", "read_site_arrays"]

#: Parquet compression codec ids -> pyarrow codec names (LZO and Hadoop-framed LZ4 are not supported).
_CODECS = {1: "snappy", 2: "gzip", 4: "brotli", 6: "zstd", 7: "lz4_raw"}
_FILE_NAME = re.compile(r"^(?P<well>.+)_s(?P<site>-?\d+)\.parquet$")
_KEYS = ("plate", "well", "site")


@dataclass(frozen=True)
class SiteArrays:
    """Per-cell feature vectors of many sites, concatenated site by site.

    Attributes
    ----------
    sites : polars.DataFrame
        One row per site with cells: ``plate`` (str), ``well`` (str), ``site`` (int64), ``n_cells`` (int64),
        in the order of the files read.
    x : numpy.ndarray
        ``(sum(n_cells), D)`` float32 (or float64, the files' element type); the cells of site ``i`` are rows
        ``offsets[i]:offsets[i + 1]``, in file order.
    """

    sites: pl.DataFrame
    x: np.ndarray

    @property
    def offsets(self) -> np.ndarray:
        """``(n_sites + 1,)`` int64 row offsets of the sites in :attr:`x`."""
        return np.concatenate([[0], np.cumsum(self.sites["n_cells"].to_numpy())]).astype(np.int64)

    def site_codes(self) -> np.ndarray:
        """``(n_cells,)`` int64 index of every row's site."""
        return np.repeat(np.arange(self.sites.height, dtype=np.int64), self.sites["n_cells"].to_numpy())


def read_site_arrays(files: Sequence[str | Path], *, column: str = "features", threads: int | None = None,
                     progress: bool | None = None) -> SiteArrays:
    """Read the ``column`` arrays and site keys of per-site Parquet files of the screen store.

    Parameters
    ----------
    files : sequence of path
        Per-site files (``ScreenStore.cell_feature_files``). Files without rows are skipped.
    column : str
        The fixed-width feature-array column (``pl.Array(pl.Float32 | pl.Float64, D)``).
    threads : int, optional
        Threads decoding pages (decompression releases the GIL); default ``frames.THREADS``.
    progress : bool, optional
        Progress bar over the files read with polars (those not in the store's plain layout): None (default)
        when stderr is a terminal, True always, False never.

    Returns
    -------
    SiteArrays

    Raises
    ------
    ValueError
        ``column`` is missing from a non-empty file, is not a fixed-width float array, or the files disagree
        on its width.
    """
    from tqdm.auto import tqdm

    files = [Path(f) for f in files]
    if threads is None:
        threads = THREADS
    fast = _FastLayout.from_files(files, column)
    parsed: list[_Parsed | None] = [None] * len(files)

    def parse(i: int) -> None:
        parsed[i] = fast.parse(files[i]) if fast is not None else None

    _run(parse, len(files), threads)
    slow = [i for i, p in enumerate(parsed) if p is None]
    slow_parts = {}
    disable = (None if progress is None else not progress) if slow else True
    for i in tqdm(slow, desc="site files (polars)", unit="file", disable=disable):
        slow_parts[i] = _read_polars(files[i], column)
    if slow:
        logger.info("read_site_arrays: %d of %d file(s) read with polars (not the store's plain layout)",
                    len(slow), len(files))
    widths = {p.x.shape[1] for parts in slow_parts.values() for p in parts}
    dtypes = {p.x.dtype for parts in slow_parts.values() for p in parts}
    if fast is not None and any(p is not None for p in parsed):
        widths.add(fast.width)
        dtypes.add(fast.dtype)
    if len(widths) > 1:
        raise ValueError(f"column {column!r} has different widths in the files: {sorted(widths)}")
    width = widths.pop() if widths else 0
    dtype = np.result_type(*dtypes) if dtypes else np.dtype(np.float32)

    plates, wells, site_ids, counts, sources = [], [], [], [], []
    for i in range(len(files)):
        if parsed[i] is not None:
            p = parsed[i]
            if p.n_rows:
                plates.append(p.plate)
                wells.append(p.well)
                site_ids.append(p.site)
                counts.append(p.n_rows)
                sources.append(p)
        else:
            for part in slow_parts[i]:
                plates.append(part.plate)
                wells.append(part.well)
                site_ids.append(part.site)
                counts.append(part.x.shape[0])
                sources.append(part)
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    x = np.empty((int(offsets[-1]), width), dtype=dtype)

    def fill(k: int) -> None:
        src = sources[k]
        out = x[offsets[k]:offsets[k + 1]]
        if isinstance(src, _Parsed):
            fast.decode(src, out.reshape(-1))
        else:
            out[:] = src.x

    _run(fill, len(sources), threads)
    sites = pl.DataFrame({"plate": plates, "well": wells, "site": site_ids, "n_cells": counts},
                         schema={"plate": pl.String, "well": pl.String, "site": pl.Int64, "n_cells": pl.Int64})
    return SiteArrays(sites=sites, x=x)


def _run(fn, n: int, threads: int) -> None:
    if threads > 1 and n > 64:
        from concurrent.futures import ThreadPoolExecutor

        step = max(1, n // (threads * 8))
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(lambda s: [fn(i) for i in range(s, min(s + step, n))], range(0, n, step)))
    else:
        for i in range(n):
            fn(i)


# -- polars fallback --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Part:
    plate: str
    well: str
    site: int
    x: np.ndarray


def _read_polars(path: Path, column: str) -> list[_Part]:
    schema = pl.read_parquet_schema(path)
    if not schema:
        return []
    missing = [c for c in (*_KEYS, column) if c not in schema]
    if missing:
        raise ValueError(f"{path}: columns {missing} missing (has {list(schema)})")
    dt = schema[column]
    if not isinstance(dt, pl.Array) or dt.inner not in (pl.Float32, pl.Float64):
        raise ValueError(f"{path}: column {column!r} must be a fixed-width float array, got {dt}")
    df = pl.read_parquet(path, columns=[*_KEYS, column])
    if df.height == 0:
        return []
    if df[column].null_count():
        raise ValueError(f"{path}: column {column!r} has {df[column].null_count()} null rows")
    out = []
    keyed = df.with_row_index("__row")
    for (plate, well, site), g in keyed.group_by(list(_KEYS), maintain_order=True):
        arr = g[column].to_numpy()
        out.append(_Part(plate=plate, well=well, site=int(site), x=arr.reshape(g.height, dt.size)))
    return out


# -- fast path --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Parsed:
    path: Path
    data: bytes
    plate: str
    well: str
    site: int
    n_rows: int
    codec: int
    first_page: int
    end: int


class _FastLayout:
    """What every fast-path file must look like, learned from the first non-empty file."""

    def __init__(self, column: str, width: int, dtype: np.dtype, prefix: bytes, max_def: int,
                 key_patterns: dict[str, bytes], column_pattern: bytes, leaf_patterns: list[bytes]) -> None:
        self.column = column
        self.width = width
        self.dtype = dtype
        self.prefix = prefix  # FileMetaData bytes up to the end of the schema list
        self.max_def = max_def
        self.key_patterns = key_patterns
        self.column_pattern = column_pattern
        self.leaf_patterns = leaf_patterns  # path_in_schema of every column: bounds of a column's metadata
        self._valid: set[tuple] = set()  # level sections already checked (set.add is thread-safe)

    @classmethod
    def from_files(cls, files: list[Path], column: str) -> _FastLayout | None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        for f in files:
            try:
                pf = pq.ParquetFile(f)
            except Exception:  # noqa: BLE001 - unreadable here: the polars fallback reports it
                return None
            if pf.metadata.num_rows == 0:
                continue
            arrow = pf.schema_arrow
            if column not in arrow.names or any(k not in arrow.names for k in _KEYS):
                return None
            typ = arrow.field(column).type
            if not pa.types.is_fixed_size_list(typ) or typ.value_type not in (pa.float32(), pa.float64()):
                return None
            leaves = [pf.metadata.schema.column(i) for i in range(pf.metadata.num_columns)]
            leaf = [c for c in leaves if c.path.split(".")[0] == column]
            if len(leaf) != 1 or leaf[0].max_repetition_level != 1:
                return None
            path = leaf[0].path.split(".")
            data = f.read_bytes()
            start, _ = _footer(data)
            meta, _ = _struct(data, start)
            if 2 not in meta:
                return None
            prefix_end = _skip_to_field(data, start, 3)
            if prefix_end is None:
                return None
            return cls(column=column, width=typ.list_size,
                       dtype=np.dtype("<f4") if typ.value_type == pa.float32() else np.dtype("<f8"),
                       prefix=data[start:prefix_end], max_def=leaf[0].max_definition_level,
                       key_patterns={k: _path_pattern([k]) for k in _KEYS},
                       column_pattern=_path_pattern(path),
                       leaf_patterns=[_path_pattern(c.path.split(".")) for c in leaves])
        return None

    def parse(self, path: Path) -> _Parsed | None:
        """Footer checks of one file; ``None`` sends the file to polars."""
        try:
            return self._parse(path)
        except (IndexError, ValueError, KeyError, TypeError):
            return None

    def _parse(self, path: Path) -> _Parsed | None:
        name = _FILE_NAME.match(path.name)
        plate_dir = path.parent.name
        if name is None or not plate_dir.startswith("plate="):
            return None
        plate, well, site = plate_dir[len("plate="):], name["well"], int(name["site"])
        data = path.read_bytes()
        start, end = _footer(data)
        if not data.startswith(self.prefix, start):
            return None
        p = start + len(self.prefix)
        if data[p] != 0x16:  # field 3 (num_rows, i64) right after the schema
            return None
        v, p = _varint(data, p + 1)
        n_rows = _zigzag(v)
        if n_rows == 0:
            return _Parsed(path, b"", plate, well, site, 0, 0, 0, 0)
        if data[p] != 0x19 or data[p + 1] != 0x1C:  # field 4: a list of exactly one row group
            return None
        meta = self._column_meta(data, p, end, self.column_pattern)
        if meta is None or meta.get(5) != n_rows * self.width or meta.get(4) not in (0, *_CODECS):
            return None
        first = meta[9]
        if 11 in meta and meta[11] is not None:  # a dictionary page: not the plain layout
            return None
        # each column's metadata lies between its path_in_schema and the next column's
        starts = sorted(data.find(pat, p, end) for pat in self.leaf_patterns)
        if starts[0] < 0:
            return None
        for key, value in (("plate", plate.encode()), ("well", well.encode()),
                           ("site", int(site).to_bytes(8, "little", signed=True))):
            if not self._constant_column(data, starts + [end], key, value):
                return None
        last = first + meta[7]
        if not 4 <= first < last <= start:
            return None
        return _Parsed(path, data, plate, well, site, n_rows, meta[4], first, last)

    @staticmethod
    def _column_meta(data: bytes, lo: int, hi: int, pattern: bytes) -> dict | None:
        q = data.find(pattern, lo, hi)
        if q < 0 or data.find(pattern, q + 1, hi) >= 0:
            return None
        # the path is field 3, after type (1) and encodings (2); offsets and sizes are fields 4-11
        fields, _ = _struct(data, q, last_field=2, stop_after=11)
        return fields

    def _constant_column(self, data: bytes, bounds: list[int], key: str, value: bytes) -> bool:
        """Whether the footer statistics of column ``key`` say: no nulls, min = max = ``value``.

        Looks for the statistics struct as polars writes it (null_count 0, max_value, min_value; as bounds,
        max = min proves every value) inside this column's metadata (``bounds``: sorted offsets of every
        column's ``path_in_schema``, then the end); statistics written any other way are parsed.
        """
        q = data.find(self.key_patterns[key], bounds[0], bounds[-1])
        if q < 0 or q not in bounds:
            return False
        stop = bounds[bounds.index(q) + 1]
        size = _enc_varint(len(value))
        if data.find(b"\x36\x00\x28" + size + value + b"\x18" + size + value, q, stop) >= 0:
            return True  # polars' encoding, found without parsing
        stats = _struct(data, q, last_field=2, stop_after=12)[0].get(12) or {}  # any other writer
        return stats.get(3) == 0 and stats.get(5) == value and stats.get(6) == value

    def decode(self, parsed: _Parsed, out: np.ndarray) -> None:
        """Copy the values of a parsed file into ``out`` (flat, ``n_rows * D``); falls back to polars."""
        try:
            self._decode(parsed, out)
        except (IndexError, ValueError, KeyError, TypeError) as exc:
            logger.debug("read_site_arrays: %s: %s; reading it with polars", parsed.path, exc)
            parts = _read_polars(parsed.path, self.column)
            if len(parts) != 1 or parts[0].x.size != out.size or (parts[0].plate, parts[0].well, parts[0].site) != (
                    parsed.plate, parsed.well, parsed.site):
                raise ValueError(f"{parsed.path}: inconsistent file (keys or row count differ from its footer)") from exc
            out[:] = parts[0].x.reshape(-1)

    def _decode(self, parsed: _Parsed, out: np.ndarray) -> None:
        import pyarrow as pa

        data, pos, seen, total = parsed.data, parsed.first_page, 0, out.size
        codec = _CODECS.get(parsed.codec)
        item = self.dtype.itemsize
        view = memoryview(data)
        while pos < parsed.end:
            header, pos = _struct(data, pos)
            kind, raw_size, size = header[1], header[2], header[3]
            body = view[pos:pos + size]
            pos += size
            if kind == 0:  # DATA_PAGE (v1): rep levels, def levels (each with a 4-byte length), values
                h = header[5]
                nv = h[1]
                if h.get(2) != 0 or h.get(3) != 3 or h.get(4) != 3:
                    raise ValueError("values not PLAIN-encoded or levels not RLE")
                page = pa.decompress(body, decompressed_size=raw_size, codec=codec) if codec else body
                page = memoryview(page).cast("B")  # pyarrow buffers export signed bytes
                rep_len = int.from_bytes(page[:4], "little")
                self._check_rep(page, 4, 4 + rep_len, nv, seen)
                q = 4 + rep_len
                def_len = int.from_bytes(page[q:q + 4], "little")
                self._check_def(page, q + 4, q + 4 + def_len, nv)
                values = page[q + 4 + def_len:]
            elif kind == 3:  # DATA_PAGE_V2: levels uncompressed and unprefixed, then (compressed) values
                h = header[8]
                nv, rep_len, def_len = h[1], h[6], h[5]
                if h.get(4) != 0 or h.get(2, 0) != 0:
                    raise ValueError("values not PLAIN-encoded or with nulls")
                self._check_rep(body, 0, rep_len, nv, seen)
                self._check_def(body, rep_len, rep_len + def_len, nv)
                rest = body[rep_len + def_len:]
                if h.get(7, True) and codec:
                    rest = memoryview(pa.decompress(rest, decompressed_size=raw_size - rep_len - def_len,
                                                    codec=codec)).cast("B")
                values = rest
            elif kind == 1:  # index page: skip
                continue
            else:
                raise ValueError(f"page type {kind} (dictionary pages are not the plain layout)")
            if seen + nv > total or len(values) < nv * item:
                raise ValueError("more values than rows * D")
            out[seen:seen + nv] = np.frombuffer(values, dtype=self.dtype, count=nv)
            seen += nv
        if seen != total:
            raise ValueError(f"{seen} values for {total}")

    def _check_def(self, buf, lo: int, hi: int, n: int) -> None:
        raw = bytes(buf[lo:hi])
        if ("def", n, raw) in self._valid:  # the same bytes decode to the same levels
            return
        if not (_levels(buf, lo, hi, n, self.max_def.bit_length()) == self.max_def).all():
            raise ValueError("missing values or lists")
        self._remember(("def", n, raw))

    def _check_rep(self, buf, lo: int, hi: int, n: int, seen: int) -> None:
        raw = bytes(buf[lo:hi])
        key = ("rep", seen % self.width, n, raw)
        if key in self._valid:
            return
        want = (np.arange(seen, seen + n) % self.width != 0).astype(np.uint8)
        if not np.array_equal(_levels(buf, lo, hi, n, 1), want):
            raise ValueError(f"rows are not {self.width} values long")
        self._remember(key)

    def _remember(self, key: tuple) -> None:
        if len(self._valid) < 4096:
            self._valid.add(key)


def _levels(buf, lo: int, hi: int, n: int, width: int) -> np.ndarray:
    """Decode ``n`` values of the RLE / bit-packed hybrid encoding in ``buf[lo:hi]``."""
    out = np.empty(n, dtype=np.uint8)
    i, p = 0, lo
    nbytes = (width + 7) // 8
    while i < n:
        if p >= hi:
            raise ValueError("truncated levels")
        h, p = _varint(buf, p)
        if h & 1:  # bit-packed groups of 8 values
            groups = h >> 1
            size = groups * width
            bits = np.unpackbits(np.frombuffer(buf[p:p + size], dtype=np.uint8), bitorder="little")
            vals = bits if width == 1 else (bits.reshape(-1, width) << np.arange(width, dtype=np.uint8)).sum(
                axis=1, dtype=np.uint8)
            k = min(groups * 8, n - i)
            out[i:i + k] = vals[:k]
            i += k
            p += size
        else:  # a run of one value
            k = h >> 1
            if k == 0 or i + k > n:
                raise ValueError("bad run length")
            out[i:i + k] = int.from_bytes(buf[p:p + nbytes], "little")
            i += k
            p += nbytes
    return out


# -- thrift compact protocol (the subset Parquet footers and page headers use) ------------------------------


def _footer(data: bytes) -> tuple[int, int]:
    if len(data) < 12 or data[-4:] != b"PAR1" or data[:4] != b"PAR1":
        raise ValueError("not a Parquet file")
    size = int.from_bytes(data[-8:-4], "little")
    start = len(data) - 8 - size
    if start < 4:
        raise ValueError("bad footer length")
    return start, len(data) - 8


def _path_pattern(parts: Sequence[str]) -> bytes:
    """Bytes of ColumnMetaData field 3 (``path_in_schema``, a list of strings) as a compact-protocol writer
    emits them after field 2."""
    out = bytearray([0x19])
    out += bytes([(len(parts) << 4) | 8]) if len(parts) < 15 else bytes([0xF8]) + _enc_varint(len(parts))
    for s in parts:
        e = s.encode()
        out += _enc_varint(len(e)) + e
    return bytes(out)


def _enc_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _varint(buf, p: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[p]
        p += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, p
        shift += 7


def _zigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def _value(buf, p: int, t: int):
    if t == 1:
        return True, p
    if t == 2:
        return False, p
    if t == 3:
        return buf[p], p + 1
    if t in (4, 5, 6):
        v, p = _varint(buf, p)
        return _zigzag(v), p
    if t == 7:
        return bytes(buf[p:p + 8]), p + 8
    if t == 8:
        n, p = _varint(buf, p)
        return bytes(buf[p:p + n]), p + n
    if t in (9, 10):
        h = buf[p]
        p += 1
        n, et = h >> 4, h & 15
        if n == 15:
            n, p = _varint(buf, p)
        out = []
        for _ in range(n):
            if et in (1, 2):
                out.append(buf[p] == 1)
                p += 1
            else:
                v, p = _value(buf, p, et)
                out.append(v)
        return out, p
    if t == 11:
        n, p = _varint(buf, p)
        if n == 0:
            return {}, p
        kt, vt = buf[p] >> 4, buf[p] & 15
        p += 1
        out = {}
        for _ in range(n):
            k, p = _value(buf, p, kt)
            out[k], p = _value(buf, p, vt)
        return out, p
    if t == 12:
        return _struct(buf, p)
    raise ValueError(f"thrift type {t}")


def _struct(buf, p: int, *, last_field: int = 0, stop_after: int | None = None) -> tuple[dict, int]:
    """Decode a struct from ``p`` (or the rest of one whose previous field id was ``last_field``); with
    ``stop_after``, return (position undefined) at the first field with a larger id."""
    out: dict = {}
    fid = last_field
    while True:
        h = buf[p]
        p += 1
        if h == 0:
            return out, p
        t, delta = h & 15, h >> 4
        if delta:
            fid += delta
        else:
            v, p = _varint(buf, p)
            fid = _zigzag(v)
        if stop_after is not None and fid > stop_after:
            return out, -1
        if t == 1 or t == 2:
            out[fid] = t == 1
        else:
            out[fid], p = _value(buf, p, t)


def _skip_to_field(buf, p: int, field: int) -> int | None:
    """Offset of the header of top-level field ``field`` of the struct at ``p`` (``None`` if absent)."""
    fid = 0
    while True:
        h = buf[p]
        if h == 0:
            return None
        t, delta = h & 15, h >> 4
        q = p + 1
        if delta:
            nfid = fid + delta
        else:
            v, q = _varint(buf, q)
            nfid = _zigzag(v)
        if nfid == field:
            return p
        fid = nfid
        if t not in (1, 2):
            _, q = _value(buf, q, t)
        p = q
