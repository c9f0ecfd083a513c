"""Pixels for the reports: read a site's channels, colour composites, label outlines and cell crops."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["read_site_channels", "default_colors", "channel_colors", "display_limits", "composite", "to_rgb",
           "draw_outlines", "crop_around", "downsample"]

logger = logging.getLogger(__name__)

_HIDDEN = ("brightfield", "bf", "phase", "dpc", "transmitted")


def _parse_channels(channels: Any) -> dict[str, str]:
    if channels is None:
        return {}
    if isinstance(channels, str):
        channels = json.loads(channels)
    if isinstance(channels, Mapping):
        return {str(k): str(v) for k, v in channels.items()}
    raise ValueError(f"site channels must be a JSON object name -> path, got {type(channels).__name__}")


def _read_one(path_spec: str, *, base: Path | None) -> np.ndarray:
    import tifffile

    path_text, _, index = path_spec.partition("#")
    path = Path(path_text)
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    data = tifffile.imread(path)
    data = np.asarray(data)
    if index:
        data = data[int(index)]
    data = np.squeeze(data)
    if data.ndim == 3:  # a z-stack or an interleaved RGB: show the max projection of the first axis
        data = data.max(axis=0) if data.shape[0] < data.shape[-1] else data.max(axis=-1)
    if data.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D image, got shape {data.shape}")
    return data


def read_site_channels(
    channels: Mapping[str, str] | str,
    *,
    plate: str,
    well: str,
    site: int,
    pixel_size_um: float | None = None,
    base: Path | None = None,
    only: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Read one site's channel images for display.

    Uses :func:`subcell_screen.io.load_site` when the readers are installed, else reads each listed path
    with tifffile (a ``#<index>`` suffix selects a plane of a multi-channel file; relative paths are taken
    relative to ``base``).

    Parameters
    ----------
    channels
        ``sites.channels``: channel name -> path (a dict or its JSON text).
    plate, well, site, pixel_size_um
        The site's keys (for the reader and for error messages).
    base
        Folder that relative paths are relative to (the screen folder).
    only
        Read only these channels (those shown); default every recorded channel.

    Returns
    -------
    dict of str to ndarray
        Channel name -> ``(H, W)`` array in the file's dtype.

    Raises
    ------
    OSError, ValueError
        If an image cannot be read; the message names the site and the path.
    """
    mapping = _parse_channels(channels)
    if only is not None:
        mapping = {name: spec for name, spec in mapping.items() if name in set(only)}
    if not mapping:
        raise ValueError(f"site {plate}/{well}/{site}: no channel paths recorded in sites.channels"
                         + (f" for channels {list(only)}" if only is not None else ""))
    if base is not None:  # relative paths are relative to the screen folder
        mapping = {name: spec if "://" in spec or Path(spec.partition("#")[0]).is_absolute()
                   else str(Path(base) / spec) for name, spec in mapping.items()}
    try:
        from ..io import SiteRecord, load_site

        record = SiteRecord(plate=plate, well=well, site=int(site), channels=mapping,
                            pixel_size_um=pixel_size_um, reader="report")
        image = load_site(record)
        return {name: np.asarray(image.data[i]) for i, name in enumerate(image.channel_names)}
    except (ImportError, AttributeError):
        pass  # readers not installed: read the files directly
    except Exception as exc:  # noqa: BLE001 - fall back to a plain TIFF read below, which names the file
        logger.debug("load_site failed for %s/%s/%s (%s); reading TIFF files directly", plate, well, site, exc)
    out = {}
    for name, spec in mapping.items():
        try:
            out[name] = _read_one(spec, base=base)
        except Exception as exc:
            raise type(exc)(f"site {plate}/{well}/{site}, channel {name!r}: cannot read {spec}: {exc}") from exc
    return out


def default_colors(names: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """Display colour of each channel by the field's convention, for stores that do not record the run's
    channel map (a run records them in its ``channels`` table; see :func:`channel_colors`).

    Cell Painting dyes and HPA channels take their conventional colours
    (:data:`~subcell_screen.channels.CELLPAINTING_COLORS`, :data:`~subcell_screen.channels.HPA_COLORS`);
    transmitted-light channels (brightfield, phase) are not shown; other channels take the free colours.
    """
    from ..channels import CELLPAINTING_COLORS, COLORS, HPA_COLORS

    lower = {n.lower() for n in names}
    cell_painting = bool(lower & {k.lower() for k in CELLPAINTING_COLORS if k != "ER"})
    convention = {k.lower(): v for k, v in (CELLPAINTING_COLORS if cell_painting else HPA_COLORS).items()}
    colors: dict[str, str] = {}
    for name in names:
        color = convention.get(name.lower())
        if color is not None and color not in colors.values():
            colors[name] = color
    free = [c for c in ("green", "red", "magenta", "yellow", "cyan", "orange") if c not in colors.values()]
    for name in names:
        if name not in colors and name.lower() not in _HIDDEN and free:
            colors[name] = free.pop(0)
    return {name: COLORS[colors[name]] for name in names if name in colors}


def channel_colors(store: Any) -> dict[str, tuple[float, float, float]] | None:
    """Display colours of the channels the last run used (its ``channels`` table), or None if not recorded.

    Channels outside the run's channel map (brightfield, unused stains) have no colour and are not shown.
    """
    from ..channels import parse_color

    try:
        df = store.sql("SELECT channel, color FROM channels WHERE used ORDER BY position")
    except Exception:  # noqa: BLE001 - a store from before the table existed
        return None
    if df.height == 0:
        return None
    return {r["channel"]: parse_color(r["color"]) for r in df.iter_rows(named=True)}


def display_limits(images: Sequence[Mapping[str, np.ndarray]], *,
                   percentiles: tuple[float, float] = (1.0, 99.8)) -> dict[str, tuple[float, float]]:
    """Per-channel display range pooled over several sites (so crops of different wells compare)."""
    names = list(dict.fromkeys(n for im in images for n in im))
    limits = {}
    for name in names:
        pooled = np.concatenate([np.asarray(im[name], dtype=np.float32).ravel()[::7] for im in images if name in im])
        lo, hi = np.percentile(pooled, percentiles)
        limits[name] = (float(lo), float(hi if hi > lo else lo + 1.0))
    return limits


def composite(
    channels: Mapping[str, np.ndarray],
    *,
    colors: Mapping[str, tuple[float, float, float]] | None = None,
    limits: Mapping[str, tuple[float, float]] | None = None,
    percentiles: tuple[float, float] = (1.0, 99.8),
) -> np.ndarray:
    """Additive colour composite of channels.

    Parameters
    ----------
    channels
        Channel name -> ``(H, W)`` array, all one shape.
    colors
        Channel -> RGB in [0, 1] (default :func:`default_colors`; channels without a colour are not shown).
    limits
        Channel -> ``(low, high)`` display range (default: the image's own ``percentiles``).
    percentiles
        Percentiles for the default limits.

    Returns
    -------
    ndarray, shape (H, W, 3), float32 in [0, 1]
    """
    if not channels:
        raise ValueError("composite: no channels")
    colors = dict(default_colors(list(channels)) if colors is None else colors)
    shape = next(iter(channels.values())).shape
    out = np.zeros((*shape, 3), dtype=np.float32)
    for name, image in channels.items():
        if name not in colors:
            continue
        a = np.asarray(image, dtype=np.float32)
        if a.shape != shape:
            raise ValueError(f"composite: channel {name!r} is {a.shape}, expected {shape}")
        if limits is not None and name in limits:
            lo, hi = limits[name]
        else:
            lo, hi = np.percentile(a, percentiles)
        scaled = np.clip((a - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
        out += scaled[..., None] * np.asarray(colors[name], dtype=np.float32)
    # With more than three channels several add into one RGB component (Cell Painting: red from AGP, RNA's
    # yellow and Mito's magenta), and plain addition turns every cell white; each component is divided by the
    # colour weight summed into it (relative to ~3 channels), so that channels sharing one stay distinguishable.
    # A single channel keeps its full range.
    weight = np.zeros(3, dtype=np.float32)
    for name in channels:
        if name in colors:
            weight += np.asarray(colors[name], dtype=np.float32)
    out /= np.maximum(weight / max(1.0, float(np.sqrt(len([n for n in channels if n in colors]) / 3))), 1.0)
    return np.clip(out, 0.0, 1.0)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """A display image as ``(H, W, 3)`` float32 in [0, 1] (grey images are min-max scaled)."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 3:
        return np.clip(a.astype(np.float32, copy=False), 0.0, 1.0)
    if a.ndim != 2:
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {a.shape}")
    a = a.astype(np.float32)
    lo, hi = float(np.min(a)), float(np.max(a))
    g = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return np.repeat(g[..., None], 3, axis=-1)


def draw_outlines(rgb: np.ndarray, labels: np.ndarray, *, color: tuple[float, float, float] = (1.0, 1.0, 1.0),
                  only: int | None = None, thickness: int = 1) -> np.ndarray:
    """A copy of ``rgb`` with the boundaries of ``labels`` (or of label ``only``) painted in ``color``,
    ``thickness`` pixels wide (inside the objects)."""
    from skimage.segmentation import find_boundaries

    lab = np.asarray(labels)
    if only is not None:
        lab = (lab == only).astype(np.uint8)
    edges = find_boundaries(lab, mode="inner")
    if thickness > 1:
        from scipy.ndimage import binary_dilation

        edges = binary_dilation(edges, iterations=thickness - 1) & (lab > 0)
    out = np.array(rgb, dtype=np.float32, copy=True)
    out[edges] = np.asarray(color, dtype=np.float32)
    return out


def crop_around(array: np.ndarray, *, center: tuple[float, float], size: int) -> np.ndarray:
    """A ``size`` x ``size`` window of ``array`` (first two axes) centred on ``center`` = (y, x), zero-padded
    where it leaves the image."""
    h, w = array.shape[:2]
    cy, cx = int(round(center[0])), int(round(center[1]))
    y0, x0 = cy - size // 2, cx - size // 2
    out = np.zeros((size, size, *array.shape[2:]), dtype=array.dtype)
    sy0, sx0 = max(y0, 0), max(x0, 0)
    sy1, sx1 = min(y0 + size, h), min(x0 + size, w)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = array[sy0:sy1, sx0:sx1]
    return out


def downsample(array: np.ndarray, *, max_side: int = 96) -> np.ndarray:
    """Block mean of a 2-D ``array`` by the smallest integer factor that brings its longer side to at most
    ``max_side`` (rows/columns that do not fill a whole block are dropped); float32. For display only."""
    a = np.asarray(array, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"downsample: expected a 2-D array, got shape {a.shape}")
    f = max(1, -(-max(a.shape) // max_side))
    if f == 1:
        return a
    h, w = (a.shape[0] // f) * f, (a.shape[1] // f) * f
    if h == 0 or w == 0:
        return a
    return a[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))
