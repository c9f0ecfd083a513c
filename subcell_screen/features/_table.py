"""Per-cell feature tables in the store's shape: keys plus one fixed-width ``features`` array column."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from ._measure import KEY_COLUMNS, KEY_SCHEMA, FeatureParams, feature_names, measure_cells

if TYPE_CHECKING:  # pragma: no cover
    from ..channels import ChannelMap
    from ..store import ScreenStore

__all__ = ["FEATURE_SET", "to_feature_table", "ClassicalFeaturizer", "featurize_site", "write_features"]

logger = logging.getLogger(__name__)

#: Default feature-set name of classical features in the store.
FEATURE_SET = "classical"


def to_feature_table(wide: pl.DataFrame, *, feature_names: Sequence[str] | None = None
                     ) -> tuple[pl.DataFrame, list[str]]:
    """Pack the feature columns of a wide table into one ``features`` column.

    Parameters
    ----------
    wide : polars.DataFrame
        Output of :func:`measure_cells` (key columns plus one numeric column per feature).
    feature_names : sequence of str, optional
        Columns to pack, in this order; default every column that is not a key column.

    Returns
    -------
    table : polars.DataFrame
        The key columns present (``plate``, ``well``, ``site``, ``cell_id``) and ``features``
        (``pl.Array(pl.Float32, D)``; NaN stays NaN).
    names : list of str
        The ``D`` feature names, in array order.
    """
    keys = [k for k in KEY_COLUMNS if k in wide.columns]
    names = [c for c in wide.columns if c not in KEY_COLUMNS] if feature_names is None else list(feature_names)
    missing = [c for c in names if c not in wide.columns]
    if missing:
        raise ValueError(f"feature column(s) {missing[:5]} not in the table ({len(missing)} missing)")
    bad = [c for c in names if not wide.schema[c].is_numeric()]
    if bad:
        raise ValueError(f"feature column(s) {bad[:5]} are not numeric")
    d = len(names)
    values = wide.select(names).to_numpy().astype(np.float32) if wide.height else np.zeros((0, d), np.float32)
    values = values.reshape(wide.height, d)
    table = wide.select(keys).with_columns(pl.Series("features", values, dtype=pl.Array(pl.Float32, d)))
    return table, names


@dataclass(frozen=True)
class ClassicalFeaturizer:
    """Per-site classical featurizer, the offline counterpart of the SubCell embedder.

    Attributes
    ----------
    params : FeatureParams
        What to measure.
    intensity_scale : "dtype", float or mapping
        See :func:`~subcell_screen.features.intensity_scales`.
    feature_set : str
        Store feature-set name.

    Examples
    --------
    >>> featurizer = ClassicalFeaturizer()                                      # doctest: +SKIP
    >>> table = featurizer.featurize_site(site, segmentation)                   # doctest: +SKIP
    >>> write_features(store, table, feature_names=featurizer.feature_names(site.channel_names),
    ...                parameters=featurizer.parameters())                      # doctest: +SKIP
    """

    params: FeatureParams = field(default_factory=FeatureParams)
    intensity_scale: str | float | Mapping[str, float] = "dtype"
    feature_set: str = FEATURE_SET

    def channel_names(self, site_channels: Sequence[str], channel_map: ChannelMap | None = None) -> list[str]:
        """Channels measured for a site: the channel map's channels (in map order) or all of the site's."""
        if channel_map is None:
            return list(site_channels)
        channel_map.resolve(site_channels)  # raises ChannelMapError naming what is missing
        return list(channel_map.channels)

    def feature_names(self, channel_names: Sequence[str]) -> list[str]:
        """Feature names for these channels (:func:`~subcell_screen.features.feature_names`)."""
        return feature_names(channel_names, self.params)

    def parameters(self) -> dict[str, Any]:
        """JSON-able record of the parameters (stored with the feature set)."""
        scale = dict(self.intensity_scale) if isinstance(self.intensity_scale, Mapping) else self.intensity_scale
        return {**self.params.to_dict(), "intensity_scale": scale, "units": "CellProfiler (pixels / scale)"}

    def featurize_site(self, site: Any, segmentation: Any, *, channel_map: ChannelMap | None = None,
                       intensity_scale: str | float | Mapping[str, float] | None = None) -> pl.DataFrame:
        """Per-cell features of one site as ``plate, well, site, cell_id, features``.

        Parameters
        ----------
        site : SiteImage
            Pixels and keys.
        segmentation : Segmentation or (nuclei, cells)
            Label images with shared ids (an object with ``nuclei`` and ``cells`` attributes, optionally
            ``cytoplasm``, or a tuple).
        channel_map : ChannelMap, optional
            Measure the map's channels (resolved by name, case-insensitively or through aliases) and name
            features after them; default all channels of the site.
        intensity_scale : optional
            Overrides the featurizer's ``intensity_scale`` for this site.

        Returns
        -------
        polars.DataFrame
            Keys (``site`` and ``cell_id`` Int32) and ``features`` (``pl.Array(pl.Float32, D)``), one row per
            cell, ordered by ``cell_id``.
        """
        from ..io import SiteImage

        if not isinstance(site, SiteImage):
            raise TypeError(f"featurize_site needs a SiteImage, got {type(site).__name__}; use measure_cells "
                            "for plain arrays")
        nuclei, cells, cytoplasm = _unpack_segmentation(segmentation, site)
        names = self.channel_names(site.channel_names, channel_map)
        if channel_map is not None:
            idx = channel_map.resolve(site.channel_names)
            site = SiteImage(data=site.data[[idx[c] for c in names]], channel_names=tuple(names),
                             pixel_size_um=site.pixel_size_um, record=site.record)
        scale = self.intensity_scale if intensity_scale is None else intensity_scale
        # one site of a stage: the stage shows the bar
        wide = measure_cells(site, nuclei, cells, cytoplasm=cytoplasm, intensity_scale=scale, params=self.params,
                             progress=False)
        table, _ = to_feature_table(wide, feature_names=self.feature_names(names))
        return table


def _unpack_segmentation(segmentation: Any, site: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if isinstance(segmentation, tuple | list):
        if len(segmentation) not in (2, 3):
            raise ValueError("segmentation tuple must be (nuclei, cells) or (nuclei, cells, cytoplasm)")
        nuclei, cells = segmentation[0], segmentation[1]
        cytoplasm = segmentation[2] if len(segmentation) == 3 else None
        return nuclei, cells, cytoplasm
    if not (hasattr(segmentation, "nuclei") and hasattr(segmentation, "cells")):
        raise TypeError(f"segmentation must have nuclei and cells label images, got {type(segmentation).__name__}")
    seg_key = getattr(segmentation, "key", None)
    if seg_key is not None and tuple(seg_key) != tuple(site.record.key):
        raise ValueError(f"segmentation is of site {tuple(seg_key)}, pixels are of site {site.record.key}")
    return segmentation.nuclei, segmentation.cells, getattr(segmentation, "cytoplasm", None)


def featurize_site(site: Any, segmentation: Any, *, channel_map: ChannelMap | None = None,
                   featurizer: ClassicalFeaturizer | None = None) -> pl.DataFrame:
    """``(featurizer or ClassicalFeaturizer()).featurize_site(site, segmentation, channel_map=...)``."""
    return (featurizer or ClassicalFeaturizer()).featurize_site(site, segmentation, channel_map=channel_map)


def register_classical(store: ScreenStore, *, feature_set: str, feature_names: Sequence[str],
                       parameters: Mapping[str, Any] | None = None) -> None:
    """Register a classical feature set.

    Raises
    ------
    ValueError
        A feature set of that name already registered with another kind or other feature names (its files
        would no longer be comparable).
    """
    names = list(feature_names)
    existing = store.sql("SELECT kind, feature_names FROM feature_sets WHERE feature_set = ?", [feature_set])
    if existing.height:
        old_kind, old_names = existing.row(0)
        if old_kind != "classical" or json.loads(old_names) != names:
            raise ValueError(f"feature set {feature_set!r} is already registered as kind {old_kind!r} with "
                             f"{len(json.loads(old_names))} other feature names; use another feature_set name")
    store.register_feature_set(feature_set, kind="classical", feature_names=names, parameters=parameters)


def write_features(store: ScreenStore, table: pl.DataFrame, *, feature_set: str = FEATURE_SET,
                   feature_names: Sequence[str], parameters: Mapping[str, Any] | None = None,
                   sites: Sequence[tuple[str, str, int]] | None = None) -> int:
    """Register a classical feature set and write per-site Parquet files of ``table``.

    Parameters
    ----------
    store : ScreenStore
        Open, writable store.
    table : polars.DataFrame
        ``plate``, ``well``, ``site``, ``cell_id`` and ``features`` (``pl.Array(pl.Float32, D)``), any
        number of sites.
    feature_set : str
        Feature-set name (kind ``classical``).
    feature_names : sequence of str
        The ``D`` names of the ``features`` array.
    parameters : mapping, optional
        Recorded with the feature set (e.g. :meth:`ClassicalFeaturizer.parameters`).
    sites : sequence of (plate, well, site), optional
        Sites to write even if ``table`` has no row for them (an empty file records "no cells").

    Returns
    -------
    int
        Rows written.

    Raises
    ------
    ValueError
        Missing columns, a ``features`` width other than ``len(feature_names)``, or a feature set of that
        name already registered with other feature names (its files would no longer be comparable).
    """
    need = [*KEY_COLUMNS, "features"]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise ValueError(f"feature table lacks column(s) {missing}; it has {table.columns}")
    dtype = table.schema["features"]
    names = list(feature_names)
    if not isinstance(dtype, pl.Array) or dtype.size != len(names):
        raise ValueError(f"'features' must be pl.Array(Float32, {len(names)}) to match {len(names)} feature names, "
                         f"got {dtype}")
    register_classical(store, feature_set=feature_set, feature_names=names, parameters=parameters)
    table = table.select(need).cast({k: v for k, v in KEY_SCHEMA.items()})
    table = table.with_columns(pl.col("features").cast(pl.Array(pl.Float32, len(names))))
    groups = {tuple(k): g for k, g in table.group_by(["plate", "well", "site"], maintain_order=True)}
    for key in sites or ():
        groups.setdefault((str(key[0]), str(key[1]), int(key[2])), table.clear())
    rows = 0
    for (plate, well, site), g in groups.items():
        store.write_cell_features(feature_set, g.sort("cell_id"), plate=plate, well=well, site=int(site))
        rows += g.height
    return rows
