"""CellProfiler-style illumination correction: one function per plate and channel, applied by division.

Recipe (``compute_illumination``; the same recipe as CellProfiler's ``CorrectIlluminationCalculate`` with
"All" images, a smoothing filter and "robust minimum" rescaling, except that the average is a per-pixel
median by default):

1. **Sites.** All sites of the plate; for ``method="median"`` at most ``max_sites`` of them, evenly spaced over
   the plate in index (plate, well, site) order, so that memory stays bounded. Sites that fail to load
   (including sites with NaN or infinite pixels, :class:`~subcell_screen.io.NonFiniteSiteError`) are skipped;
   so are sites whose shape ``(H, W)`` or dtype differs from the plate's, which is the most common
   ``(shape, dtype)`` among the loaded sites (a tie goes to the first site's). Every skipped site is named, with
   the reason, in :attr:`IlluminationFunctions.excluded`, so that one odd site neither stops the plate nor
   changes the other sites' correction; loading a site of another shape with the functions then fails that
   site only (:class:`~subcell_screen.io.SiteLoadError`). A plate with no loadable site raises
   :class:`~subcell_screen.io.PlateUnreadableError`.
2. **Downsample.** Each channel is converted to float32 and block-averaged by an integer factor ``d``
   (``downsample``; default ``max(1, round(min(H, W) / 256))``, i.e. 4 for 1080x1080 sites). Rows/columns
   that do not fill a whole block are dropped at this stage only.
3. **Robust average over sites.** ``method="median"`` (default): per-pixel median over the selected sites
   (memory: ``max_sites x C x (H/d) x (W/d) x 4`` bytes, about 370 MB for 256 five-channel 1080² sites).
   ``method="mean"``: per-pixel mean over all sites, streamed (memory independent of the number of sites).
4. **Smooth.** Gaussian filter (``scipy.ndimage.gaussian_filter``, ``mode="nearest"``) with sigma =
   ``smoothing_um`` / pixel size when both are known, else ``smoothing_fraction x min(H, W)`` pixels
   (default 1/20: 54 px for a 1080² site), applied at the downsampled scale (sigma / d).
5. **Back to full size.** Bilinear interpolation (``scipy.ndimage.map_coordinates``, order 1) from the block
   centres to every pixel of the ``(H, W)`` site.
6. **Robust minimum of 1.** Divide by the function's ``robust_percentile``-th percentile (default 2) and clip
   below at 1, so correction (``pixels / function``) never brightens a pixel and the dimmest 2 % of the field
   keeps its intensity. A channel whose percentile is not positive (e.g. an empty channel) gets all ones.

The functions are float32 ``(H, W)`` arrays; :func:`apply_illumination` divides each channel by its function
and returns float32 pixels. ``ScreenStore.write_illumination(plate, functions, recipe=functions.recipe)``
stores them, ``ScreenStore.read_illumination(plate)`` reads them back, and
``load_site(record, illumination=functions)`` applies them on load.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ._errors import PlateUnreadableError, SiteLoadError
from ._types import SiteImage, SiteIndex, SiteRecord

logger = logging.getLogger(__name__)

__all__ = ["compute_illumination", "apply_illumination", "IlluminationFunctions", "RECIPE_VERSION"]

RECIPE_VERSION = 1


@dataclass(frozen=True, eq=False)
class IlluminationFunctions(Mapping):
    """Channel -> ``(H, W)`` float32 illumination function of one plate (a read-only mapping).

    Attributes
    ----------
    functions : Mapping[str, ndarray]
        Channel name -> function, every value >= 1.
    plate : str
        Plate the functions were computed on.
    n_sites : int
        Sites that entered the average.
    recipe : Mapping[str, object]
        JSON-able parameters of the recipe (for ``ScreenStore.write_illumination``).
    excluded : Mapping[tuple[str, str, int], str]
        ``(plate, well, site)`` -> why the site is not in the functions: it failed to load (missing, corrupt,
        NaN pixels, ...), or its shape or dtype is not the plate's. Only sites that were looked at (all, or the
        ``max_sites`` sample of the median recipe).
    """

    functions: Mapping[str, np.ndarray]
    plate: str
    n_sites: int
    recipe: Mapping[str, object] = field(default_factory=dict)
    excluded: Mapping[tuple[str, str, int], str] = field(default_factory=dict)

    def __getitem__(self, key: str) -> np.ndarray:
        return self.functions[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.functions)

    def __len__(self) -> int:
        return len(self.functions)

    def __repr__(self) -> str:
        shapes = {k: v.shape for k, v in self.functions.items()}
        return f"IlluminationFunctions(plate={self.plate!r}, n_sites={self.n_sites}, functions={shapes})"


def _block_mean(plane: np.ndarray, d: int) -> np.ndarray:
    x = plane.astype(np.float32, copy=False)
    if d == 1:
        return x.copy() if x is plane else x
    h, w = (x.shape[0] // d) * d, (x.shape[1] // d) * d
    return x[:h, :w].reshape(h // d, d, w // d, d).mean(axis=(1, 3), dtype=np.float32)


def _upsample(small: np.ndarray, shape: tuple[int, int], d: int) -> np.ndarray:
    if d == 1 and small.shape == shape:
        return small
    from scipy.ndimage import map_coordinates

    # block k covers full-resolution pixels k*d .. k*d + d - 1; its centre is k*d + (d - 1) / 2
    ys = (np.arange(shape[0], dtype=np.float32) - (d - 1) / 2) / d
    xs = (np.arange(shape[1], dtype=np.float32) - (d - 1) / 2) / d
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return map_coordinates(small, [yy, xx], order=1, mode="nearest").astype(np.float32)


@dataclass
class _Group:
    """Running average input of the sites of one (shape, dtype)."""

    shape: tuple[int, int]
    dtype: str
    d: int
    pixel_size: float | None
    stacks: dict[str, list[np.ndarray]]
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    keys: list[tuple[str, str, int]] = field(default_factory=list)

    def add(self, key: tuple[str, str, int], data: np.ndarray, names: Sequence[str], method: str) -> None:
        for i, c in enumerate(names):
            small = _block_mean(data[i], self.d)
            if method == "median":
                self.stacks[c].append(small)
            elif c in self.sums:
                self.sums[c] += small
            else:
                self.sums[c] = small.astype(np.float64)
        self.keys.append(key)


def _select(records: list[SiteRecord], max_sites: int | None) -> list[SiteRecord]:
    if max_sites is None or len(records) <= max_sites:
        return records
    idx = np.unique(np.linspace(0, len(records) - 1, max_sites).round().astype(int))
    return [records[i] for i in idx]


def compute_illumination(index_or_records: SiteIndex | Iterable[SiteRecord], *, plate: str,
                         channels: Sequence[str] | None = None, method: str = "median", max_sites: int = 256,
                         downsample: int | None = None, smoothing_um: float | None = None,
                         smoothing_fraction: float = 0.05, robust_percentile: float = 2.0,
                         workers: int | None = None, progress: bool | None = None) -> IlluminationFunctions:
    """Illumination functions of one plate (see the module docstring for the exact recipe).

    Parameters
    ----------
    index_or_records
        Site index or records; only the sites of ``plate`` are used.
    plate
        Plate barcode.
    channels
        Channels to compute functions for (default: all channels of the plate's first site).
    method
        ``"median"`` (per-pixel median over at most ``max_sites`` evenly spaced sites) or ``"mean"``
        (streaming mean over all sites).
    max_sites
        Cap on sites for the median (bounds memory); ignored by ``"mean"``.
    downsample
        Integer block-averaging factor before averaging and smoothing (default ``round(min(H, W) / 256)``).
    smoothing_um
        Gaussian sigma in µm (used when the sites' pixel size is known).
    smoothing_fraction
        Gaussian sigma as a fraction of ``min(H, W)`` when ``smoothing_um`` is not usable.
    robust_percentile
        Percentile that is scaled to 1 (values below are clipped to 1).
    workers
        Loader threads (see :func:`~subcell_screen.io.iter_sites`).
    progress
        Progress bar over sites: None (default) when stderr is a terminal, True always, False never.

    Returns
    -------
    IlluminationFunctions
        Channel -> ``(H, W)`` float32 function (>= 1), with ``.recipe`` for the store.

    Raises
    ------
    ValueError
        No site of ``plate``; unknown ``method``.
    PlateUnreadableError
        No site of the plate could be loaded.

    Sites that fail to load, or whose shape or dtype is not the plate's, are left out and named in
    ``.excluded`` (see the module docstring); they never change the other sites' functions.
    """
    from scipy.ndimage import gaussian_filter

    from ._load import iter_sites

    if method not in ("median", "mean"):
        raise ValueError(f"method must be 'median' or 'mean', got {method!r}")
    if not 0 <= robust_percentile < 100:
        raise ValueError(f"robust_percentile must be in [0, 100), got {robust_percentile}")
    records = [r for r in index_or_records if r.plate == plate]
    if not records:
        raise ValueError(f"no site of plate {plate!r} in the index")
    use = _select(records, max_sites if method == "median" else None)
    names = tuple(channels) if channels is not None else tuple(records[0].channels)

    # one accumulator per (shape, dtype): the plate's is the most common, known only at the end
    groups: dict[tuple, _Group] = {}
    failures: dict[tuple[str, str, int], str] = {}
    for rec, img in iter_sites(use, channels=names, workers=workers, raise_on_unreadable_plate=False,
                               progress=progress):
        if isinstance(img, SiteLoadError):
            failures[rec.key] = str(img)
            continue
        h, w = img.data.shape[1:]
        gkey = ((h, w), img.data.dtype.name)
        group = groups.get(gkey)
        if group is None:
            d = max(1, min(int(downsample if downsample is not None else round(min(h, w) / 256)), h, w))
            group = groups[gkey] = _Group(shape=(h, w), dtype=img.data.dtype.name, d=d,
                                          pixel_size=img.pixel_size_um, stacks={c: [] for c in names})
        group.add(rec.key, img.data, names, method)
    if not groups:
        first = next(iter(failures.values()))
        raise PlateUnreadableError(f"plate {plate}: none of its {len(use)} site(s) could be loaded for the "
                                   f"illumination functions; first error: {first}", plates=(plate,))
    # most sites wins; a tie goes to the group seen first (index order), as dicts keep insertion order
    main = max(groups.values(), key=lambda g: len(g.keys))
    excluded = dict(failures)
    for g in groups.values():
        if g is main:
            continue
        what = (f"is {g.shape[0]}x{g.shape[1]}" if g.shape != main.shape else f"has dtype {g.dtype}")
        for key in g.keys:
            excluded[key] = (f"site {key[1]} s{key[2]} {what}, but {len(main.keys)} of plate {plate}'s sites are "
                             f"{main.shape[0]}x{main.shape[1]} {main.dtype}; left out of the illumination "
                             "functions")
    if excluded:
        logger.warning("plate %s: illumination functions from %d site(s); %d left out (%s)", plate,
                       len(main.keys), len(excluded),
                       "; ".join(f"{k[1]} s{k[2]}: {v}" for k, v in list(excluded.items())[:3])
                       + (" ..." if len(excluded) > 3 else ""))
    shape, d, n, pixel_size = main.shape, main.d, len(main.keys), main.pixel_size
    stacks, sums = main.stacks, main.sums
    if smoothing_um is not None and pixel_size:
        sigma = float(smoothing_um) / float(pixel_size)
    else:
        sigma = float(smoothing_fraction) * min(shape)
    functions = {}
    for c in names:
        if method == "median":
            avg = np.median(np.stack(stacks.pop(c)), axis=0).astype(np.float32)
        else:
            avg = (sums.pop(c) / n).astype(np.float32)
        smooth = gaussian_filter(avg, sigma=sigma / d, mode="nearest") if sigma > 0 else avg
        full = _upsample(smooth, shape, d)
        lo = float(np.percentile(full, robust_percentile))
        if not lo > 0 or not np.isfinite(lo):
            logger.warning("plate %s channel %s: illumination function has %.3g at its %g-th percentile; using "
                           "no correction (all ones)", plate, c, lo, robust_percentile)
            f = np.ones(shape, dtype=np.float32)
        else:
            f = np.maximum(full / np.float32(lo), np.float32(1.0)).astype(np.float32)
        functions[c] = f
    recipe = {"version": RECIPE_VERSION, "method": method, "n_sites": n, "n_failed": len(failures),
              "n_excluded": len(excluded),
              "excluded_sites": [f"{k[1]} s{k[2]}" for k in sorted(excluded, key=lambda k: (k[1], k[2]))],
              "max_sites": max_sites if method == "median" else None, "downsample": d, "filter": "gaussian",
              "sigma_px": sigma, "smoothing_um": smoothing_um, "smoothing_fraction": smoothing_fraction,
              "pixel_size_um": pixel_size, "robust_percentile": robust_percentile, "scale": "robust_minimum_1"}
    return IlluminationFunctions(functions=functions, plate=plate, n_sites=n, recipe=recipe, excluded=excluded)


def apply_illumination(site_image: SiteImage, functions: Mapping[str, np.ndarray]) -> SiteImage:
    """Divide each channel by its illumination function.

    Parameters
    ----------
    site_image
        A loaded site (any dtype).
    functions
        Channel -> ``(H, W)`` function (channel names matched case-insensitively). Channels without one are
        only converted to float32.

    Returns
    -------
    SiteImage
        float32 ``(C, H, W)``; the input is not modified.

    Raises
    ------
    ValueError
        A function's shape differs from the site's.
    """
    lower = {k.lower(): v for k, v in functions.items()}
    data = site_image.data.astype(np.float32)  # always a new array
    h, w = data.shape[1:]
    for i, name in enumerate(site_image.channel_names):
        f = lower.get(name.lower())
        if f is None:
            continue
        if f.shape != (h, w):
            where = (f"site {site_image.record.plate} {site_image.record.well} s{site_image.record.site}"
                     if site_image.record is not None else "the site")
            raise ValueError(f"illumination function of channel {name!r} is {f.shape[0]}x{f.shape[1]} but {where} "
                             f"is {h}x{w} (the plate's functions are for its {f.shape[0]}x{f.shape[1]} sites)")
        data[i] /= np.asarray(f, dtype=np.float32)
    return SiteImage(data=data, channel_names=site_image.channel_names, pixel_size_um=site_image.pixel_size_um,
                     record=site_image.record)
