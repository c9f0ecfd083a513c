"""Loading sites: one site -> ``(C, H, W)`` array, prefetching iteration, and a per-site health check.

Every failure of one site (missing or unreadable channel file, truncated or corrupt TIFF, channels that
disagree in shape or dtype, a header declaring more pixels than the limit, NaN or infinite pixels, a dtype
other than its plate's) becomes a :class:`SiteLoadError` naming the site and the file, so that callers can
record it and go on with the other sites.

Size limits, checked on each file's header before any pixel is allocated (a 300-byte TIFF can declare
60000 x 60000 pixels): at most :data:`MAX_PLANE_PIXELS` pixels per plane (2**28 = 268,435,456, e.g.
16384 x 16384; 512 MiB as uint16) and :data:`MAX_FILE_PIXELS` in a whole file (2**30, e.g. 16 channels of
8192 x 8192 in one OME-TIFF). Microscope fields are far smaller (a 2160 x 2160 sCMOS field is 4.7 M pixels);
whole-slide or stitched-plate images must be tiled into sites first. ``max_plane_pixels=`` on
:func:`load_site`, :func:`probe_site`, :func:`iter_sites` and :func:`check_sites` changes the per-plane limit
(the file limit is then at least as large); the module constants are read at call time.
"""

from __future__ import annotations

import logging
import os
import re
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._errors import (
    ImageTooLargeError,
    MixedDtypeError,
    NonFiniteSiteError,
    PlateUnreadableError,
    SiteLoadError,
)
from ._types import SiteImage, SiteIndex, SiteRecord

logger = logging.getLogger(__name__)

__all__ = ["load_site", "probe_site", "iter_sites", "check_sites", "SiteCheckReport", "MAX_PLANE_PIXELS",
           "MAX_FILE_PIXELS"]

#: Most pixels one plane (Y x X) of a channel file may declare (2**28: 16384 x 16384).
MAX_PLANE_PIXELS = 2 ** 28
#: Most pixels a whole channel file may declare, all planes and samples together (2**30).
MAX_FILE_PIXELS = 2 ** 30

_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]+://")
_HPA_COLOR = re.compile(r"_(red|yellow|blue|green)\.[^.]+$", re.IGNORECASE)
_RGB_PLANE = {"red": 0, "yellow": 0, "green": 1, "blue": 2}


def _split_channel_path(path: str) -> tuple[str, int | None]:
    """``file#3`` -> (``file``, 3); a plain path -> (path, None)."""
    m = re.match(r"^(.*)#(\d+)$", path)
    if m and not os.path.exists(path):
        return m.group(1), int(m.group(2))
    return path, None


class _Source:
    """One channel file, opened lazily: header (shape, dtype) first, pixels on demand."""

    def __init__(self, path: str, key: tuple[str, str, int], maxworkers: int | None,
                 max_plane_pixels: int | None = None) -> None:
        self.path = path
        self.key = key
        self.maxworkers = maxworkers
        self.max_plane_pixels = max_plane_pixels
        self._tif = None
        self._array: np.ndarray | None = None  # decoded (C, H, W) or (H, W[, S]) for non-TIFF / multi-channel
        self.shape: tuple[int, ...] = ()
        self.dtype: np.dtype | None = None
        self.axes = ""

    def fail(self, reason: str) -> SiteLoadError:
        return SiteLoadError(reason, key=self.key, path=self.path)

    def open(self) -> None:
        if _URI.match(self.path):
            raise self.fail("remote URIs are not read by load_site; copy the images to a local or mounted folder")
        if not os.path.exists(self.path):
            raise self.fail("channel file not found")
        if not os.path.isfile(self.path):
            raise self.fail("not a file")
        low = self.path.lower()
        try:
            if low.endswith((".tif", ".tiff")):
                self._open_tiff()
            else:
                self._open_pil()
        except SiteLoadError:
            self.close()
            raise
        except Exception as exc:  # noqa: BLE001 - any reader failure is this file's failure
            self.close()
            raise self.fail(f"cannot read image ({type(exc).__name__}: {exc})") from exc

    def _open_tiff(self) -> None:
        import tifffile

        try:
            self._tif = tifffile.TiffFile(self.path)
        except PermissionError:
            raise self.fail("permission denied") from None
        tif = self._tif
        if not tif.series:
            raise self.fail("TIFF has no image series")
        series = tif.series[0]
        self.shape = tuple(series.shape)
        self.axes = series.axes
        self._check_size()  # before walking the pages of a file that may declare millions of them
        size = tif.filehandle.size
        for page in series.pages:
            if page is None:
                continue
            ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts) if n]
            if ends and max(ends) > size:
                raise self.fail(f"truncated TIFF: image data ends at byte {max(ends)} but the file has {size} "
                                "bytes")
            if not ends and page.shape and int(np.prod(page.shape)) > 0:
                raise self.fail("TIFF page has no image data (corrupt file)")
        self.shape = tuple(series.shape)
        self.dtype = np.dtype(series.dtype)
        self.axes = series.axes

    def _open_pil(self) -> None:
        from PIL import Image

        try:
            with Image.open(self.path) as im:
                w, h = im.size
                self.shape, self.axes = (h, w, len(im.getbands())), "YXS"
                self._check_size()  # the header only: nothing decoded yet
                im.load()
                arr = np.asarray(im)
        except PermissionError:
            raise self.fail("permission denied") from None
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(f"image too large to decode ({exc})", key=self.key, path=self.path) from None
        self._array = arr
        self.shape = arr.shape
        self.dtype = arr.dtype
        self.axes = "YX" if arr.ndim == 2 else "YXS"

    def _check_size(self) -> None:
        """Refuse a header that declares more pixels than the limits (nothing is allocated yet)."""
        if not self.shape:
            return
        dims = dict(zip(self.axes, self.shape))
        if "Y" in dims and "X" in dims:
            h, w = dims["Y"], dims["X"]
        else:
            h, w = self.shape[-2:] if len(self.shape) >= 2 else (1, self.shape[0])
        plane_limit = MAX_PLANE_PIXELS if self.max_plane_pixels is None else int(self.max_plane_pixels)
        file_limit = max(MAX_FILE_PIXELS, plane_limit)
        plane, total = int(h) * int(w), int(np.prod(self.shape, dtype=object))
        if plane > plane_limit:
            raise ImageTooLargeError(
                f"image declares {h}x{w} pixels per plane ({plane:,} pixels), over the limit of {plane_limit:,} "
                "pixels per plane (subcell_screen.io.MAX_PLANE_PIXELS, or max_plane_pixels=); a corrupt or "
                "hostile header, or an image that must be tiled into sites first", key=self.key, path=self.path)
        if total > file_limit:
            raise ImageTooLargeError(
                f"file declares shape {self.shape} (axes {self.axes}): {total:,} pixels, over the limit of "
                f"{file_limit:,} pixels per file (subcell_screen.io.MAX_FILE_PIXELS)", key=self.key,
                path=self.path)

    # -- geometry of one plane --------------------------------------------------------------------------

    def _squeezed(self) -> tuple[str, tuple[int, ...]]:
        axes, shape = zip(*[(a, n) for a, n in zip(self.axes, self.shape) if n != 1 or a in "YX"]) \
            if self.shape else ((), ())
        return "".join(axes), tuple(shape)

    def plane_shape(self, index: int | None) -> tuple[int, int]:
        """(H, W) of the plane this channel reads; raises if the file does not hold one such plane."""
        axes, shape = self._squeezed()
        if index is None:
            if axes == "YX":
                return shape
            if axes == "YXS" and shape[2] in (3, 4):
                return shape[:2]  # colour file: one plane is picked (HPA colour files), see read()
            raise self.fail(f"expected a single-channel 2-D image, got shape {self.shape} (axes {self.axes}); "
                            "multi-channel files must be read as OME-TIFF (<file>#<channel>)")
        caxes = [a for a in axes if a not in "YX"]
        if caxes not in ([], ["C"], ["S"], ["I"], ["Q"]):
            raise self.fail(f"multi-channel file has axes {self.axes} with shape {self.shape}; only C/Y/X images "
                            "are supported (no z-stacks or time series)")
        n = shape[axes.index(caxes[0])] if caxes else 1
        if index >= n:
            raise self.fail(f"file has {n} channel(s), channel #{index} requested")
        return (shape[axes.index("Y")], shape[axes.index("X")])

    def read(self, index: int | None, out: np.ndarray) -> None:
        """Decode the plane into ``out`` (H, W), keeping dtype."""
        try:
            if self._tif is not None and index is None and self._squeezed()[0] == "YX":
                page = self._tif.series[0].pages[0]
                page.asarray(out=out.reshape(page.shape), maxworkers=self.maxworkers)
                return
            arr = self._full()
            axes, _ = self._squeezed()
            if index is None:
                if arr.ndim == 3:  # colour file
                    out[...] = self._pick_colour(arr)
                else:
                    out[...] = arr
                return
            if arr.ndim == 2:
                out[...] = arr
                return
            caxis = next(i for i, a in enumerate(axes) if a not in "YX")
            plane = np.take(arr, index, axis=caxis)
            if axes.replace(axes[caxis], "") == "XY":
                plane = plane.T
            out[...] = plane
        except SiteLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - corrupt compressed data and friends
            raise self.fail(f"cannot decode image data ({type(exc).__name__}: {exc})") from exc

    def _full(self) -> np.ndarray:
        if self._array is None:
            arr = self._tif.series[0].asarray(maxworkers=self.maxworkers)
            self._array = arr.reshape(self._squeezed()[1])
        return self._array

    def _pick_colour(self, arr: np.ndarray) -> np.ndarray:
        rgb = arr[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return rgb[..., 0]
        m = _HPA_COLOR.search(self.path)
        if m:
            return rgb[..., _RGB_PLANE[m.group(1).lower()]]
        raise self.fail(f"colour image (shape {arr.shape}) where one channel was expected")

    def close(self) -> None:
        if self._tif is not None:
            try:
                self._tif.close()
            finally:
                self._tif = None


def _resolve_channels(record: SiteRecord, channels: Sequence[str] | None) -> list[tuple[str, str]]:
    if channels is None:
        return list(record.channels.items())
    lower = {k.lower(): k for k in record.channels}
    out = []
    for name in channels:
        k = lower.get(str(name).lower())
        if k is None:
            raise SiteLoadError(f"no channel {name!r}; the site has {', '.join(record.channels)}", key=record.key)
        out.append((k, record.channels[k]))
    return out


def _open_sources(record: SiteRecord, chans: list[tuple[str, str]], maxworkers: int | None,
                  max_plane_pixels: int | None = None
                  ) -> tuple[dict[str, _Source], list[tuple[str, _Source, int | None]]]:
    sources: dict[str, _Source] = {}
    plan = []
    try:
        for name, path in chans:
            file, index = _split_channel_path(path)
            src = sources.get(file)
            if src is None:
                src = _Source(file, record.key, maxworkers, max_plane_pixels)
                sources[file] = src
                src.open()
            plan.append((name, src, index))
    except BaseException:
        for s in sources.values():
            s.close()
        raise
    return sources, plan


def _check_geometry(record: SiteRecord, plan) -> tuple[tuple[int, int], np.dtype]:
    ref = None
    for name, src, index in plan:
        hw = src.plane_shape(index)
        if ref is None:
            ref = (name, src, hw)
            continue
        rname, rsrc, rhw = ref
        if hw != rhw:
            raise SiteLoadError(f"channel {name!r} is {hw[0]}x{hw[1]} but channel {rname!r} ({rsrc.path}) is "
                                f"{rhw[0]}x{rhw[1]}; all channels of a site must have one shape",
                                key=record.key, path=src.path)
        if src.dtype != rsrc.dtype:
            raise SiteLoadError(f"channel {name!r} is {src.dtype} but channel {rname!r} ({rsrc.path}) is "
                                f"{rsrc.dtype}; all channels of a site must have one dtype",
                                key=record.key, path=src.path)
    return ref[2], ref[1].dtype


def probe_site(record: SiteRecord, *, channels: Sequence[str] | None = None,
               max_plane_pixels: int | None = None) -> tuple[tuple[int, int, int], np.dtype]:
    """Check a site's files without decoding pixels.

    Catches missing, unreadable, truncated and non-image files, headers that declare more pixels than the
    limit (:class:`ImageTooLargeError`) and shape/dtype disagreements between channels (not corrupt compressed
    data inside an intact file, nor NaN pixels: :func:`load_site` finds those).

    ``max_plane_pixels`` overrides :data:`MAX_PLANE_PIXELS`.

    Returns
    -------
    shape : tuple of int
        ``(C, H, W)``.
    dtype : numpy.dtype

    Raises
    ------
    SiteLoadError
    """
    chans = _resolve_channels(record, channels)
    if not chans:
        raise SiteLoadError("site has no channels", key=record.key)
    sources, plan = _open_sources(record, chans, 1, max_plane_pixels)
    try:
        (h, w), dtype = _check_geometry(record, plan)
    finally:
        for s in sources.values():
            s.close()
    return (len(plan), h, w), dtype


def _load(record: SiteRecord, *, channels: Sequence[str] | None, illumination: Mapping[str, np.ndarray] | None,
          maxworkers: int | None, max_plane_pixels: int | None = None) -> SiteImage:
    chans = _resolve_channels(record, channels)
    if not chans:
        raise SiteLoadError("site has no channels", key=record.key)
    sources, plan = _open_sources(record, chans, maxworkers, max_plane_pixels)
    try:
        (h, w), dtype = _check_geometry(record, plan)
        try:
            data = np.empty((len(plan), h, w), dtype=dtype)
            for i, (_, src, index) in enumerate(plan):
                src.read(index, data[i])
        except MemoryError:  # within the limits, but not in this worker's memory: this site fails, not the run
            raise SiteLoadError(f"out of memory loading {len(plan)}x{h}x{w} {np.dtype(dtype).name} pixels",
                                key=record.key, path=plan[0][1].path) from None
    finally:
        for s in sources.values():
            s.close()
    if data.dtype.kind in "fc":
        _check_finite(record, data, plan)
    image = SiteImage(data=data, channel_names=tuple(n for n, _, _ in plan), pixel_size_um=record.pixel_size_um,
                      record=record)
    if illumination:
        from .illumination import apply_illumination

        try:
            image = apply_illumination(image, illumination)
        except ValueError as exc:
            raise SiteLoadError(f"illumination correction failed: {exc}", key=record.key,
                                path=plan[0][1].path) from exc
    return image


def _check_finite(record: SiteRecord, data: np.ndarray, plan) -> None:
    """Refuse NaN/inf pixels: they poison every mean, median and the plate's illumination functions."""
    bad = ~np.isfinite(data).reshape(len(plan), -1).all(axis=1)
    if not bad.any():
        return
    i = int(np.flatnonzero(bad)[0])
    name, src, _ = plan[i]
    n = int(np.count_nonzero(~np.isfinite(data[i])))
    others = [plan[j][0] for j in np.flatnonzero(bad)[1:]]
    more = f" (also channel(s) {', '.join(others)})" if others else ""
    raise NonFiniteSiteError(f"channel {name!r} has {n:,} of {data[i].size:,} pixels NaN or infinite{more}; "
                             "sites with non-finite pixels are not measured", key=record.key, path=src.path)


def load_site(record: SiteRecord, *, illumination: Mapping[str, np.ndarray] | None = None,
              channels: Sequence[str] | None = None, max_plane_pixels: int | None = None) -> SiteImage:
    """Load one site as a ``(C, H, W)`` array.

    Parameters
    ----------
    record
        A record of a :class:`SiteIndex` (from :func:`read_plate`).
    illumination
        Channel -> ``(H, W)`` float32 illumination function (from
        :func:`~subcell_screen.io.illumination.compute_illumination` or ``ScreenStore.read_illumination``);
        when given, the pixels are divided by it and returned as float32. Channels without a function are
        converted to float32 unchanged.
    channels
        Load only these channels, in this order (case-insensitive names); default all, in acquisition order.
    max_plane_pixels
        Per-plane pixel limit checked on the headers (default :data:`MAX_PLANE_PIXELS`).

    Returns
    -------
    SiteImage
        ``data`` is ``(C, H, W)`` in the files' dtype (no rescaling: 12-bit data in uint16 stays 0..4095), or
        float32 with illumination correction.

    Raises
    ------
    SiteLoadError
        A channel file is missing, unreadable, truncated or corrupt, or channels disagree in shape or dtype.
        The message names the site and the file. Subclasses: :class:`ImageTooLargeError` (a header declares
        more pixels than the limit), :class:`NonFiniteSiteError` (NaN or infinite pixels).
    """
    return _load(record, channels=channels, illumination=illumination, maxworkers=None,
                 max_plane_pixels=max_plane_pixels)


def _illumination_for(illumination, plate: str, warned: set | None = None):
    if not illumination:
        return None
    values = list(illumination.values())
    if values and all(isinstance(v, Mapping) for v in values):  # plate -> channel -> function
        funcs = illumination.get(plate)
        if funcs is None and warned is not None and plate not in warned:
            warned.add(plate)
            logger.warning("no illumination functions for plate %s; its sites are loaded uncorrected", plate)
        return funcs
    return illumination


def iter_sites(records: Iterable[SiteRecord] | SiteIndex, *,
               illumination: Mapping[str, Any] | None = None, channels: Sequence[str] | None = None,
               prefetch: int | None = None, workers: int | None = None, raise_on_unreadable_plate: bool = True,
               progress: bool | None = None, max_plane_pixels: int | None = None
               ) -> Iterator[tuple[SiteRecord, SiteImage | SiteLoadError]]:
    """Load sites ahead of use in background threads, in order, never stopping at a bad site.

    TIFF decoding (imagecodecs) releases the GIL, so threads overlap disk reads and decompression with the
    caller's work.

    Parameters
    ----------
    records
        Site records (or a :class:`SiteIndex`).
    illumination
        Channel -> function applied to every site, or plate -> (channel -> function).
    channels
        Load only these channels (see :func:`load_site`).
    prefetch
        Sites loaded ahead (bounded queue; memory is about ``prefetch`` sites). Default ``2 * workers``.
    workers
        Loader threads; default ``min(4, cpu_count)``. ``0`` loads in the calling thread.
    raise_on_unreadable_plate
        After the last site, raise :class:`PlateUnreadableError` if some plate had no loadable site (all of
        its failures have been yielded first, so the caller has recorded them).
    progress
        Progress bar: None (default) when stderr is a terminal, True always, False never.
    max_plane_pixels
        Per-plane pixel limit (default :data:`MAX_PLANE_PIXELS`).

    Yields
    ------
    record, SiteImage or SiteLoadError
    """
    recs = list(records)
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    workers = max(0, int(workers))
    prefetch = max(1, int(prefetch) if prefetch is not None else 2 * max(workers, 1))
    ok_plates: dict[str, int] = {}
    failures: dict[str, list[str]] = {}
    bar = _progress_bar(len(recs), "loading sites", progress)
    warned: set[str] = set()

    def job(rec: SiteRecord):
        try:
            return _load(rec, channels=channels, illumination=_illumination_for(illumination, rec.plate, warned),
                         maxworkers=1 if workers > 1 else None, max_plane_pixels=max_plane_pixels)
        except SiteLoadError as exc:
            return exc

    def account(rec, result):
        if isinstance(result, SiteLoadError):
            failures.setdefault(rec.plate, []).append(str(result))
            logger.warning("%s", result)
        else:
            ok_plates[rec.plate] = ok_plates.get(rec.plate, 0) + 1
        if bar is not None:
            bar.update(1)

    try:
        if workers == 0:
            for rec in recs:
                result = job(rec)
                account(rec, result)
                yield rec, result
        else:
            from concurrent.futures import ThreadPoolExecutor

            ex = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="subcell-load")
            try:
                pending: deque = deque()
                it = iter(recs)
                for rec in it:
                    pending.append((rec, ex.submit(job, rec)))
                    if len(pending) >= prefetch:
                        break
                while pending:
                    rec, fut = pending.popleft()
                    result = fut.result()
                    nxt = next(it, None)
                    if nxt is not None:
                        pending.append((nxt, ex.submit(job, nxt)))
                    account(rec, result)
                    yield rec, result
            finally:
                ex.shutdown(wait=True, cancel_futures=True)
    finally:
        if bar is not None:
            bar.close()
    if raise_on_unreadable_plate:
        dead = sorted(p for p in failures if p not in ok_plates)
        if dead:
            raise PlateUnreadableError(_dead_plates_message(dead, failures), plates=tuple(dead))


def _dead_plates_message(dead: list[str], failures: Mapping[str, list[str]]) -> str:
    lines = [f"plate {p}: none of its {len(failures[p])} site(s) could be loaded; first error: {failures[p][0]}"
             for p in dead]
    return "\n".join(lines)


def _progress_bar(total: int, desc: str, progress: bool | None):
    if progress is False:
        return None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="site", disable=None if progress is None else not progress)
    return None if bar.disable else bar


# ----------------------------------------------------------------------------------------------------------
# health check


@dataclass(frozen=True)
class SiteCheckReport:
    """Outcome of :func:`check_sites`.

    Attributes
    ----------
    n_ok, n_failed : int
        Sites that loaded (or probed) fine / failed.
    failures : tuple of ((plate, well, site), message)
        One entry per failed site, in index order.
    plates : Mapping[str, tuple[int, int]]
        Plate -> (ok, failed).
    shapes : Mapping[tuple[int, int, int], int]
        ``(C, H, W)`` -> number of sites with that shape (ok sites).
    dtypes : Mapping[str, int]
        dtype name -> number of sites.
    """

    n_ok: int
    n_failed: int
    failures: tuple[tuple[tuple[str, str, int], str], ...]
    plates: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    shapes: Mapping[tuple[int, int, int], int] = field(default_factory=dict)
    dtypes: Mapping[str, int] = field(default_factory=dict)

    @property
    def n_sites(self) -> int:
        return self.n_ok + self.n_failed

    def summary(self, *, max_messages: int = 10) -> str:
        """Human-readable summary: counts, then the first failure messages."""
        lines = [f"{self.n_sites} site(s): {self.n_ok} ok, {self.n_failed} failed"]
        for plate, (ok, bad) in self.plates.items():
            lines.append(f"  plate {plate}: {ok} ok, {bad} failed")
        for (shape, n) in self.shapes.items():
            lines.append(f"  {n} site(s) of shape (C, H, W) = {shape}")
        for dt, n in self.dtypes.items():
            lines.append(f"  {n} site(s) of dtype {dt}")
        for _key, msg in self.failures[:max_messages]:
            lines.append(f"  FAILED {msg}")
        if len(self.failures) > max_messages:
            lines.append(f"  ... and {len(self.failures) - max_messages} more failure(s)")
        return "\n".join(lines)


def check_sites(index: SiteIndex | Iterable[SiteRecord], *, store=None, decode: bool = False,
                workers: int | None = None, raise_on_unreadable_plate: bool = True,
                progress: bool | None = None, max_plane_pixels: int | None = None) -> SiteCheckReport:
    """Check that every site loads; record the outcome in a screen store.

    Besides each site's own files, one rule spans a plate: all its sites must have one dtype. A plate's
    dtype is the one most of its readable sites have (a tie goes to the first such site in index order);
    sites of another dtype fail with :class:`MixedDtypeError`, naming the site, its file and both dtypes.
    (Features of a float site in 0..1 and of uint16 sites in 0..65535 would be on scales 65535 apart, and no
    rescaling rule is safe without knowing how the float file was made.)

    Parameters
    ----------
    index
        Sites to check.
    store
        A writable :class:`~subcell_screen.store.ScreenStore`: every site is registered in ``sites``
        (reader, channels, pixel size, height, width, dtype); failed sites get status ``failed`` and the
        error message (``load: ...``), and ``site_stages`` gets a ``load`` row (``ok``/``failed``) per site.
        Ok sites keep their status, except that a site failed earlier at ``load`` goes back to ``pending``.
    decode
        Decode all pixels (finds corrupt compressed data; costs a full read). Default: headers only (missing,
        unreadable, truncated files and shape/dtype disagreements).
    workers
        Threads (default ``min(4, cpu_count)``).
    raise_on_unreadable_plate
        Raise :class:`PlateUnreadableError` (after writing the store) when a plate has no readable site.
    max_plane_pixels
        Per-plane pixel limit (default :data:`MAX_PLANE_PIXELS`): larger files fail with
        :class:`ImageTooLargeError` before anything is allocated.

    Returns
    -------
    SiteCheckReport
    """
    recs = list(index)
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    results: list[tuple[SiteRecord, tuple | SiteLoadError]] = []
    if decode:
        for rec, res in iter_sites(recs, workers=workers, raise_on_unreadable_plate=False, progress=progress,
                                   max_plane_pixels=max_plane_pixels):
            results.append((rec, res if isinstance(res, SiteLoadError) else (res.data.shape, res.data.dtype)))
    else:
        def job(rec):
            try:
                return probe_site(rec, max_plane_pixels=max_plane_pixels)
            except SiteLoadError as exc:
                return exc

        bar = _progress_bar(len(recs), "checking sites", progress)
        if workers > 1 and len(recs) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=workers) as ex:
                for rec, res in zip(recs, ex.map(job, recs)):
                    results.append((rec, res))
                    if bar is not None:
                        bar.update(1)
        else:
            for rec in recs:
                results.append((rec, job(rec)))
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()

    results = _refuse_minority_dtypes(results)
    plates: dict[str, list[int]] = {}
    shapes: dict[tuple, int] = {}
    dtypes: dict[str, int] = {}
    failures = []
    for rec, res in results:
        counts = plates.setdefault(rec.plate, [0, 0])
        if isinstance(res, SiteLoadError):
            counts[1] += 1
            failures.append((rec.key, str(res)))
        else:
            counts[0] += 1
            shape, dtype = res
            shapes[tuple(int(x) for x in shape)] = shapes.get(tuple(int(x) for x in shape), 0) + 1
            dtypes[np.dtype(dtype).name] = dtypes.get(np.dtype(dtype).name, 0) + 1
    report = SiteCheckReport(n_ok=sum(c[0] for c in plates.values()), n_failed=len(failures),
                             failures=tuple(failures), plates={p: tuple(c) for p, c in plates.items()},
                             shapes=shapes, dtypes=dtypes)
    if store is not None:
        _record_in_store(store, results)
    logger.info("site check: %d ok, %d failed", report.n_ok, report.n_failed)
    if raise_on_unreadable_plate:
        dead = sorted(p for p, (ok, bad) in report.plates.items() if ok == 0 and bad > 0)
        if dead:
            by_plate: dict[str, list[str]] = {}
            for key, msg in failures:
                by_plate.setdefault(key[0], []).append(msg)
            raise PlateUnreadableError(_dead_plates_message(dead, by_plate), plates=tuple(dead), report=report)
    return report


def _refuse_minority_dtypes(results: list[tuple[SiteRecord, Any]]) -> list[tuple[SiteRecord, Any]]:
    """Turn readable sites whose dtype is not their plate's into :class:`MixedDtypeError` results."""
    counts: dict[str, dict[str, int]] = {}
    for rec, res in results:
        if not isinstance(res, SiteLoadError):
            by_dtype = counts.setdefault(rec.plate, {})
            name = np.dtype(res[1]).name
            by_dtype[name] = by_dtype.get(name, 0) + 1
    mixed = {p: c for p, c in counts.items() if len(c) > 1}
    if not mixed:
        return results
    main = {p: max(c, key=c.get) for p, c in mixed.items()}  # dicts keep first-seen order: ties -> first site
    out = []
    for rec, res in results:
        plate = rec.plate
        if plate in main and not isinstance(res, SiteLoadError) and np.dtype(res[1]).name != main[plate]:
            dt, n_main, n_ok = np.dtype(res[1]).name, mixed[plate][main[plate]], sum(mixed[plate].values())
            path = _split_channel_path(next(iter(rec.channels.values())))[0] if rec.channels else None
            res = MixedDtypeError(
                f"site is {dt}, but {n_main} of plate {plate}'s {n_ok} readable sites are {main[plate]}; one plate "
                f"must have one dtype (intensity features of {dt} and {main[plate]} pixels are on different "
                f"scales). Convert this site's files to {main[plate]}, or give them a plate of their own",
                key=rec.key, path=path)
            logger.warning("%s", res)
        out.append((rec, res))
    return out


def _record_in_store(store, results) -> None:
    """Register the checked sites and their ``load`` outcome (the store owns the site status rules)."""
    import json

    import polars as pl

    rows = []
    stages = []
    for rec, res in results:
        failed = isinstance(res, SiteLoadError)
        shape = None if failed else res[0]
        rows.append({"plate": rec.plate, "well": rec.well, "site": int(rec.site), "reader": rec.reader,
                     "channels": json.dumps(dict(rec.channels)), "pixel_size_um": rec.pixel_size_um,
                     "pixel_size_source": rec.pixel_size_source, "height": None if failed else int(shape[1]),
                     "width": None if failed else int(shape[2]), "dtype": None if failed else np.dtype(res[1]).name})
        stages.append({"plate": rec.plate, "well": rec.well, "site": int(rec.site), "stage": "load",
                       "status": "failed" if failed else "ok", "error": str(res) if failed else None})
    if not rows:
        return
    schema = {"plate": pl.String, "well": pl.String, "site": pl.Int32, "reader": pl.String, "channels": pl.String,
              "pixel_size_um": pl.Float64, "pixel_size_source": pl.String, "height": pl.Int32, "width": pl.Int32,
              "dtype": pl.String}
    store.register_sites(pl.DataFrame(rows, schema=schema))
    store.record_site_stages(pl.DataFrame(stages, schema={"plate": pl.String, "well": pl.String, "site": pl.Int32,
                                                          "stage": pl.String, "status": pl.String,
                                                          "error": pl.String}))
