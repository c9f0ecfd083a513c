"""``measure_cells``: every family, every compartment, one row per cell."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import polars as pl

from ._correlation import correlation_features
from ._intensity import INTENSITY_FEATURES, Channel, intensity_features
from ._objects import Objects, check_labels, compact_labels, cytoplasm_labels
from ._radial import RADIAL_FEATURES, radial_features, radial_geometry
from ._shape import shape_feature_names, shape_features
from ._texture import DIRECTIONS, HARALICK_FEATURES, cooccurring_pairs, quantize, texture_features

__all__ = ["FAMILIES", "COMPARTMENTS", "KEY_COLUMNS", "KEY_SCHEMA", "FeatureParams", "measure_cells",
           "feature_names", "intensity_scales"]

logger = logging.getLogger(__name__)

#: Feature families, in output order within a compartment.
FAMILIES: tuple[str, ...] = ("shape", "intensity", "texture", "correlation", "radial")
#: Compartments, in output order.
COMPARTMENTS: tuple[str, ...] = ("Nuclei", "Cytoplasm", "Cells")
#: Per-cell key columns and their dtypes.
KEY_COLUMNS: tuple[str, ...] = ("plate", "well", "site", "cell_id")
KEY_SCHEMA: dict[str, Any] = {"plate": pl.String, "well": pl.String, "site": pl.Int32, "cell_id": pl.Int32}


@dataclass(frozen=True)
class FeatureParams:
    """What :func:`measure_cells` measures (the parameters recorded with a classical feature set).

    Attributes
    ----------
    families : tuple of str
        Subset of :data:`FAMILIES`: ``shape`` (AreaShape incl. Zernike), ``intensity`` (incl. the
        nuclear/cytoplasmic ratio), ``texture`` (Haralick), ``correlation`` (Pearson between channels),
        ``radial`` (RadialDistribution).
    compartments : tuple of str
        Subset of :data:`COMPARTMENTS` measured by shape, intensity, texture and correlation.
    texture_scales : tuple of int
        Pixel offsets of the Haralick co-occurrence pairs (CellProfiler's default is 3).
    texture_levels : int
        Grey levels of the texture quantisation (CellProfiler's default 256).
    zernike_degree : int
        Highest radial degree of the Zernike shape moments (9 gives CellProfiler's 30); -1 for none.
    radial_bins : int
        Number of scaled radial bins.
    radial_compartments : tuple of str
        Compartments measured by the radial family (default the whole cell).
    radial_center : str
        ``"nucleus"``: rings around the centroid of the cell's nucleus (falling back to the object's own
        centre where that pixel is outside the object or the cell has no nucleus); ``"self"``: around the
        point farthest from the object's edge (CellProfiler's default).
    shrink_nuclei : bool
        Cytoplasm keeps the nucleus outline (CellProfiler IdentifyTertiaryObjects' "shrink smaller object");
        default False: cytoplasm = cell minus nucleus. Ignored when an explicit cytoplasm image is given.
    """

    families: tuple[str, ...] = FAMILIES
    compartments: tuple[str, ...] = COMPARTMENTS
    texture_scales: tuple[int, ...] = (3,)
    texture_levels: int = 256
    zernike_degree: int = 9
    radial_bins: int = 4
    radial_compartments: tuple[str, ...] = ("Cells",)
    radial_center: str = "nucleus"
    shrink_nuclei: bool = False

    def __post_init__(self) -> None:
        for name, allowed in (("families", FAMILIES), ("compartments", COMPARTMENTS),
                              ("radial_compartments", COMPARTMENTS)):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            bad = [v for v in value if v not in allowed]
            if bad:
                raise ValueError(f"unknown {name} {bad}; choose from {list(allowed)}")
            # canonical order, no duplicates
            object.__setattr__(self, name, tuple(v for v in allowed if v in value))
        scales = (self.texture_scales,) if isinstance(self.texture_scales, int) else self.texture_scales
        scales = tuple(int(s) for s in scales)
        if not scales or min(scales) < 1 or len(set(scales)) != len(scales):
            raise ValueError(f"texture_scales must be distinct positive pixel offsets, got {self.texture_scales}")
        object.__setattr__(self, "texture_scales", scales)
        if not 2 <= int(self.texture_levels) <= 256:
            raise ValueError(f"texture_levels must be in 2..256, got {self.texture_levels}")
        if int(self.zernike_degree) < -1:
            raise ValueError(f"zernike_degree must be >= -1 (-1: no Zernike moments), got {self.zernike_degree}")
        if int(self.radial_bins) < 1:
            raise ValueError(f"radial_bins must be >= 1, got {self.radial_bins}")
        if self.radial_center not in ("nucleus", "self"):
            raise ValueError(f"radial_center must be 'nucleus' or 'self', got {self.radial_center!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able parameters."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _check_channel_names(names: Sequence[str]) -> tuple[str, ...]:
    names = tuple(str(n) for n in names)
    if any(not n or any(c.isspace() for c in n) for n in names):
        raise ValueError(f"channel names must be non-empty without whitespace (they go into feature names): "
                         f"{list(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"channel names must be unique: {list(names)}")
    return names


def feature_names(channel_names: Sequence[str], params: FeatureParams | None = None) -> list[str]:
    """Names of the feature columns :func:`measure_cells` returns, in order.

    ``<Compartment>_<Family>_<Feature>[_<Channel>...]`` as CellProfiler names them, e.g.
    ``Nuclei_AreaShape_Area``, ``Cells_Intensity_MeanIntensity_DNA``,
    ``Cytoplasm_Texture_Contrast_DNA_3_00_256``, ``Cells_Correlation_Correlation_DNA_ER``,
    ``Cells_RadialDistribution_FracAtD_DNA_1of4`` and ``Cells_Intensity_NucCytoRatio_DNA``.
    """
    p = params or FeatureParams()
    chans = _check_channel_names(channel_names)
    out: list[str] = []
    for comp in COMPARTMENTS:
        measured = comp in p.compartments
        if measured and "shape" in p.families:
            out += [f"{comp}_AreaShape_{f}" for f in shape_feature_names(p.zernike_degree)]
        if measured and "intensity" in p.families:
            out += [f"{comp}_Intensity_{f}_{ch}" for ch in chans for f in INTENSITY_FEATURES]
        if comp == "Cells" and "intensity" in p.families:
            out += [f"Cells_Intensity_NucCytoRatio_{ch}" for ch in chans]
        if measured and "texture" in p.families:
            out += [f"{comp}_Texture_{f}_{ch}_{s}_{d:02d}_{p.texture_levels}"
                    for ch in chans for s in p.texture_scales for d in range(len(DIRECTIONS))
                    for f in HARALICK_FEATURES]
        if measured and "correlation" in p.families:
            out += [f"{comp}_Correlation_Correlation_{a}_{b}" for i, a in enumerate(chans) for b in chans[i + 1:]]
        if comp in p.radial_compartments and "radial" in p.families:
            out += [f"{comp}_RadialDistribution_{f}_{ch}_{k}of{p.radial_bins}"
                    for ch in chans for f in RADIAL_FEATURES for k in range(1, p.radial_bins + 1)]
    return out


_WARNED: list[bool] = []  # warn once per process about float pixels above 1


def intensity_scales(data: np.ndarray, channel_names: Sequence[str],
                     intensity_scale: str | float | Mapping[str, float] = "dtype") -> list[float]:
    """Divisor per channel that converts pixels to CellProfiler's [0, 1] units.

    ``"dtype"``: the maximum of the integer dtype (uint8 -> 255, uint16 -> 65535), as CellProfiler's
    NamesAndTypes "intensity range from image metadata" does for TIFFs, including 12-bit data stored in
    uint16 (divided by 65535, not 4095); 1 for bool and float data (taken to be in [0, 1] already). A number
    applies to every channel (e.g. 4095 for CellProfiler's manual rescaling of 12-bit data, or 65535 for
    illumination-corrected float32 pixels of 16-bit images); a mapping gives one per channel name.
    """
    names = list(channel_names)
    if isinstance(intensity_scale, Mapping):
        missing = [n for n in names if n not in intensity_scale]
        if missing:
            raise ValueError(f"intensity_scale has no value for channel(s) {missing}; it has "
                             f"{sorted(intensity_scale)}")
        scales = [float(intensity_scale[n]) for n in names]
    elif isinstance(intensity_scale, str):
        if intensity_scale != "dtype":
            raise ValueError(f"intensity_scale must be 'dtype', a number or a channel -> number mapping, got "
                             f"{intensity_scale!r}")
        kind = data.dtype.kind
        if kind in "ui":
            s = float(np.iinfo(data.dtype).max)
        else:
            s = 1.0
            if kind == "f" and data.size and float(np.nanmax(data)) > 1.0 and not _WARNED:
                _WARNED.append(True)
                logger.warning("float pixels above 1 (max %.4g) are measured as they are; texture clips them at "
                               "1. Pass intensity_scale (e.g. 65535 for corrected 16-bit images) to get "
                               "CellProfiler units", float(np.nanmax(data)))
        scales = [s] * len(names)
    else:
        scales = [float(intensity_scale)] * len(names)
    for n, s in zip(names, scales):
        if not np.isfinite(s) or s <= 0:
            raise ValueError(f"intensity scale of channel {n!r} must be a positive number, got {s}")
    return scales


def _unpack_site(site: Any, channel_names: Sequence[str] | None, keys: Mapping[str, Any] | None
                 ) -> tuple[np.ndarray, tuple[str, ...], dict[str, Any] | None]:
    from ..io import SiteImage

    if isinstance(site, SiteImage):
        data = site.data
        names = tuple(site.channel_names)
        rec_keys = {"plate": site.record.plate, "well": site.record.well, "site": int(site.record.site)}
        if keys is not None:
            raise ValueError("keys come from the SiteImage's record; do not pass keys with a SiteImage")
        if channel_names is not None:  # a subset, by name (case-insensitive)
            lower = [c.lower() for c in names]
            idx = []
            for ch in channel_names:
                if ch.lower() not in lower:
                    raise KeyError(f"site {site.record.key} has no channel {ch!r}; channels: {', '.join(names)}")
                idx.append(lower.index(ch.lower()))
            data = data[idx]
            names = tuple(channel_names)
        return data, _check_channel_names(names), rec_keys
    data = np.asarray(site)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ValueError(f"site pixels must be a SiteImage or a (C, H, W) array, got shape {data.shape}")
    if channel_names is None:
        raise ValueError("channel_names are required with a plain array")
    names = _check_channel_names(channel_names)
    if len(names) != data.shape[0]:
        raise ValueError(f"{len(names)} channel names for {data.shape[0]} channels (array shape {data.shape})")
    if keys is not None:
        missing = [k for k in ("plate", "well", "site") if k not in keys]
        if missing:
            raise ValueError(f"keys must give plate, well and site; missing {missing}")
        keys = {"plate": str(keys["plate"]), "well": str(keys["well"]), "site": int(keys["site"])}
    return data, names, keys


def measure_cells(site: Any, nuclei: np.ndarray, cells: np.ndarray, *,
                  channel_names: Sequence[str] | None = None,
                  keys: Mapping[str, Any] | None = None,
                  cytoplasm: np.ndarray | None = None,
                  intensity_scale: str | float | Mapping[str, float] = "dtype",
                  families: Sequence[str] = FAMILIES,
                  compartments: Sequence[str] = COMPARTMENTS,
                  texture_scales: Sequence[int] = (3,),
                  texture_levels: int = 256,
                  zernike_degree: int = 9,
                  radial_bins: int = 4,
                  radial_compartments: Sequence[str] = ("Cells",),
                  radial_center: str = "nucleus",
                  shrink_nuclei: bool = False,
                  params: FeatureParams | None = None,
                  progress: bool | None = None) -> pl.DataFrame:
    """CellProfiler-style features of every cell of one site.

    Parameters
    ----------
    site : SiteImage or ndarray, shape (C, H, W)
        Pixels in their original dtype. With a :class:`~subcell_screen.io.SiteImage` the keys come from
        ``site.record`` and ``channel_names`` optionally selects channels by name; with an array,
        ``channel_names`` names its planes and ``keys`` (``plate``, ``well``, ``site``) are optional.
    nuclei, cells : ndarray of int, shape (H, W)
        Label images with shared ids (cell ``k`` contains nucleus ``k``; 0 = background). Rows are the
        cells; a cell without a nucleus gets NaN ``Nuclei_*`` features (0 for intensity sums) and its
        whole area as cytoplasm; a nucleus without a cell is not measured (no row).
    channel_names : sequence of str, optional
        See ``site``.
    keys : mapping, optional
        ``{"plate": ..., "well": ..., "site": ...}`` for array input.
    cytoplasm : ndarray of int, shape (H, W), optional
        Explicit cytoplasm labels (cell ids); default :func:`cytoplasm_labels` of nuclei and cells.
    intensity_scale : "dtype", float or mapping
        See :func:`intensity_scales`.
    families, compartments, texture_scales, texture_levels, zernike_degree, radial_bins,
    radial_compartments, radial_center, shrink_nuclei
        See :class:`FeatureParams`; ignored when ``params`` is given.
    params : FeatureParams, optional
        All measurement parameters at once.
    progress : bool, optional
        Progress bar over compartments and channels: None (default) when stderr is a terminal, True always,
        False never.

    Returns
    -------
    polars.DataFrame
        One row per cell id of ``cells`` (ascending): ``plate``, ``well``, ``site``, ``cell_id`` (keys only
        when known) and one Float64 column per name of :func:`feature_names`, in that order.
    """
    p = params or FeatureParams(families=tuple(families), compartments=tuple(compartments),
                                texture_scales=tuple(texture_scales), texture_levels=int(texture_levels),
                                zernike_degree=int(zernike_degree), radial_bins=int(radial_bins),
                                radial_compartments=tuple(radial_compartments), radial_center=radial_center,
                                shrink_nuclei=bool(shrink_nuclei))
    data, names, key_values = _unpack_site(site, channel_names, keys)
    h, w = data.shape[1:]
    where = f" (site {key_values['plate']} {key_values['well']} s{key_values['site']})" if key_values else ""
    for label_name, lab in (("nuclei", nuclei), ("cells", cells), ("cytoplasm", cytoplasm)):
        if lab is not None and np.shape(lab) != (h, w):
            raise ValueError(f"{label_name} label image has shape {np.shape(lab)}, pixels are {(h, w)}{where}")
    nuclei = check_labels(nuclei, "nuclei")
    cells = check_labels(cells, "cells")
    cyto = cytoplasm_labels(nuclei, cells, shrink_nuclei=p.shrink_nuclei) if cytoplasm is None else \
        check_labels(cytoplasm, "cytoplasm")

    ids = np.unique(cells)
    ids = ids[ids > 0].astype(np.int64)
    if ids.size and ids[-1] > np.iinfo(np.int32).max:
        raise ValueError(f"cell ids must fit in int32 (cell_id column); the largest is {ids[-1]}{where}")
    n = ids.size
    nuc_ids = np.unique(nuclei)
    orphans = np.setdiff1d(nuc_ids[nuc_ids > 0], ids)
    if orphans.size:
        logger.debug("%d nuclei without a cell are not measured%s", orphans.size, where)
    objs = {
        "Nuclei": Objects("Nuclei", compact_labels(nuclei, ids), n),
        "Cytoplasm": Objects("Cytoplasm", compact_labels(cyto, ids), n),
        "Cells": Objects("Cells", compact_labels(cells, ids), n),
    }
    scales = intensity_scales(data, names, intensity_scale)
    channels = [Channel(ch, data[i], scales[i]) for i, ch in enumerate(names)]

    cols: dict[str, np.ndarray] = {}
    steps = [(comp, fam) for comp in COMPARTMENTS for fam in FAMILIES]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(steps), desc="features", disable=None if progress is None else not progress,
               leave=False)
    quantized: dict[str, np.ndarray] = {}
    means: dict[tuple[str, str], np.ndarray] = {}
    for comp in COMPARTMENTS:
        o = objs[comp]
        measured = comp in p.compartments
        for fam in FAMILIES:
            bar.update(1)
            if fam not in p.families:
                continue
            if fam == "shape" and measured:
                for f, v in shape_features(o, zernike_degree=p.zernike_degree).items():
                    cols[f"{comp}_AreaShape_{f}"] = v
            elif fam == "intensity":
                for ch in channels:
                    if measured:
                        res = intensity_features(o, ch)
                        for f, v in res.items():
                            cols[f"{comp}_Intensity_{f}_{ch.name}"] = v
                        means[comp, ch.name] = res["MeanIntensity"]
                    elif comp in ("Nuclei", "Cytoplasm"):
                        with np.errstate(invalid="ignore", divide="ignore"):
                            means[comp, ch.name] = o.sum_by_label(ch.data.ravel()[o.pix].astype(np.float64)) \
                                / np.maximum(o.area, 1) / ch.scale
                if comp == "Cells":
                    for ch in channels:
                        nuc, cyt = means["Nuclei", ch.name], means["Cytoplasm", ch.name]
                        with np.errstate(invalid="ignore", divide="ignore"):
                            ratio = nuc / cyt
                        ratio[(objs["Nuclei"].area == 0) | (objs["Cytoplasm"].area == 0) | (cyt == 0)] = np.nan
                        cols[f"Cells_Intensity_NucCytoRatio_{ch.name}"] = ratio
            elif fam == "texture" and measured:
                pairs = cooccurring_pairs(o, p.texture_scales)
                for ch in channels:
                    if ch.name not in quantized:
                        quantized[ch.name] = quantize(ch.data.astype(np.float64) / ch.scale, p.texture_levels)
                    res = texture_features(o, quantized[ch.name], scales=p.texture_scales, levels=p.texture_levels,
                                           pairs=pairs)
                    for key, v in res.items():
                        f, rest = key.split("_", 1)
                        cols[f"{comp}_Texture_{f}_{ch.name}_{rest}"] = v
            elif fam == "correlation" and measured:
                vals = {ch.name: ch.data.ravel()[o.pix].astype(np.float64) / ch.scale for ch in channels}
                for f, v in correlation_features(o, vals).items():
                    cols[f"{comp}_Correlation_{f}"] = v
            elif fam == "radial" and comp in p.radial_compartments:
                centres = objs["Nuclei"].centroid if p.radial_center == "nucleus" else None
                geom = radial_geometry(o, bins=p.radial_bins, centres_yx=centres)
                for ch in channels:
                    res = radial_features(geom, ch.data.ravel()[o.pix].astype(np.float64) / ch.scale)
                    for f in RADIAL_FEATURES:
                        for k in range(p.radial_bins):
                            cols[f"{comp}_RadialDistribution_{f}_{ch.name}_{k + 1}of{p.radial_bins}"] = res[f][:, k]
    bar.close()

    order = feature_names(names, p)
    if set(order) != set(cols):  # pragma: no cover - internal consistency
        raise RuntimeError(f"feature name mismatch: {sorted(set(order) ^ set(cols))[:5]}")
    frame = {}
    if key_values is not None:
        frame["plate"] = pl.Series("plate", [key_values["plate"]] * n, dtype=pl.String)
        frame["well"] = pl.Series("well", [key_values["well"]] * n, dtype=pl.String)
        frame["site"] = pl.Series("site", np.full(n, key_values["site"], np.int32), dtype=pl.Int32)
    frame["cell_id"] = pl.Series("cell_id", ids.astype(np.int32), dtype=pl.Int32)
    for name in order:
        frame[name] = pl.Series(name, np.asarray(cols[name], np.float64), dtype=pl.Float64)
    return pl.DataFrame(frame)
