"""Classical features as a per-site featurizer of the engine, built from the ``[embedding]`` config section."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

if TYPE_CHECKING:  # pragma: no cover
    from ..channels import ChannelMap
    from ..config import EmbeddingSection
    from ..io import SiteImage
    from ..segment import Segmentation

__all__ = ["ClassicalSiteFeatures", "protein_readout", "READOUT_SCHEMA"]

#: Columns of the per-cell ``cell_readouts`` rows.
READOUT_SCHEMA: dict[str, Any] = {"plate": pl.String, "well": pl.String, "site": pl.Int32, "cell_id": pl.Int32,
                                  "protein_nuc_cyto_ratio": pl.Float64}


class ClassicalSiteFeatures:
    """CellProfiler-style features of one site at a time (:meth:`compute` is pure; :meth:`write_many` stores).

    Parameters
    ----------
    feature_set
        Store feature-set name.
    channel_map
        The run's channel map: its channels are measured and name the features.
    families, zernike_degree
        As in :class:`~subcell_screen.features.FeatureParams`.
    keep_cells, store_dtype
        Per-cell storage policy and dtype (``[embedding].keep_cells``, ``[embedding].store_dtype``).
    """

    kind = "classical"

    def __init__(self, *, feature_set: str, channel_map: ChannelMap, families: Sequence[str] | None = None,
                 zernike_degree: int | None = None, keep_cells: str = "all", store_dtype: str = "float32") -> None:
        from ._measure import FeatureParams
        from ._table import ClassicalFeaturizer

        kwargs: dict[str, Any] = {}
        if families is not None:
            kwargs["families"] = tuple(families)
        if zernike_degree is not None:
            kwargs["zernike_degree"] = zernike_degree
        self.feature_set = feature_set
        self.channel_map = channel_map
        self.keep_cells = keep_cells
        self.store_dtype = store_dtype
        self.featurizer = ClassicalFeaturizer(params=FeatureParams(**kwargs), feature_set=feature_set)

    @classmethod
    def from_config(cls, section: EmbeddingSection, *, feature_set: str, channel_map: ChannelMap
                    ) -> ClassicalSiteFeatures:
        """Built from ``[embedding]`` (``classical_families``, ``classical_zernike_degree``, ``keep_cells``,
        ``store_dtype``)."""
        return cls(feature_set=feature_set, channel_map=channel_map, families=section.classical_families,
                   zernike_degree=section.classical_zernike_degree, keep_cells=section.keep_cells,
                   store_dtype=section.store_dtype)

    def compute(self, site: SiteImage, seg: Segmentation, *, raw_dtype: str | None = None) -> pl.DataFrame:
        """Per-cell table ``plate, well, site, cell_id, features``.

        ``raw_dtype`` is the dtype of the image files: illumination-corrected (float) pixels keep the source's
        units, so they are scaled by the source dtype as CellProfiler does for the raw image (uint16 -> 65535).
        """
        scale = None
        if np.issubdtype(site.data.dtype, np.floating):
            raw = np.dtype(raw_dtype or "float32")
            scale = float(np.iinfo(raw).max) if np.issubdtype(raw, np.integer) else None
        return self.featurizer.featurize_site(site, seg, channel_map=self.channel_map,
                                              **({"intensity_scale": scale} if scale else {}))

    @staticmethod
    def n_cells(table: pl.DataFrame) -> int:
        """Cells in one site's output."""
        return table.height

    def site_profile(self, table: pl.DataFrame) -> Any:
        """The :class:`~subcell_screen.profiles.SiteProfile` of one site's table (None without cells)."""
        from ..profiles import site_profile

        if table is None or table.height == 0:
            return None
        return site_profile(table["features"].to_numpy())

    def describe(self, table: pl.DataFrame) -> dict[str, Any]:
        """What the store needs to register the feature set without the cells (nothing: channel names)."""
        return {}

    def register(self, store: Any, *, channel_names: Sequence[str], meta: Any = None) -> None:
        """Register the feature set of sites with these channels (``meta``: unused, see :meth:`describe`)."""
        from ._table import register_classical

        names = self.featurizer.feature_names(self.featurizer.channel_names(list(channel_names), self.channel_map))
        register_classical(store, feature_set=self.feature_set, feature_names=names,
                           parameters=self.featurizer.parameters())

    def cell_frame(self, table: pl.DataFrame) -> pl.DataFrame | None:
        """One site's per-cell frame as stored (``store_dtype``), or None without cells."""
        from ._measure import KEY_COLUMNS, KEY_SCHEMA

        if table is None or table.height == 0:
            return None
        width = table.schema["features"].size
        dtype = pl.Float16 if self.store_dtype == "float16" else pl.Float32
        return (table.select([*KEY_COLUMNS, "features"]).cast(dict(KEY_SCHEMA))
                .with_columns(pl.col("features").cast(pl.Array(dtype, width))).sort("cell_id"))

    def write_many(self, store: Any, keys: Sequence[tuple[str, str, int]], channel_names: Sequence[str],
                   tables: Sequence[pl.DataFrame]) -> None:
        """Store several sites' outputs (same channels): one feature-set registration, one staging file per
        site with cells (``keep_cells``), a manifest row for every site."""
        self.register(store, channel_names=channel_names)
        store.write_site_cells(self.feature_set, keys, [self.cell_frame(t) for t in tables], keep=self.keep_cells)


def protein_readout(site: SiteImage, seg: Segmentation, channel: str) -> pl.DataFrame:
    """Per-cell nuclear / cytoplasmic mean intensity of the protein channel (the relocalization readout).

    This is the classical featurizer's ``Cells_Intensity_NucCytoRatio_<channel>`` (same compartments, same
    NaN rules: a cell without nucleus or cytoplasm, or with a zero cytoplasm mean, gives NaN), measured on the
    protein channel alone.

    Returns
    -------
    polars.DataFrame
        ``plate, well, site, cell_id, protein_nuc_cyto_ratio`` (:data:`READOUT_SCHEMA`), one row per cell.
    """
    from ._measure import measure_cells

    ids = seg.cells_table["cell_id"].to_numpy()
    if ids.size == 0:
        return pl.DataFrame(schema=READOUT_SCHEMA)
    name = next((c for c in site.channel_names if c.lower() == channel.lower()), channel)
    table = measure_cells(site, seg.nuclei, seg.cells, channel_names=[name], families=("intensity",),
                          intensity_scale=1.0)
    by_id = dict(zip(table["cell_id"].to_list(), table[f"Cells_Intensity_NucCytoRatio_{name}"].to_list()))
    values = np.array([np.nan if by_id.get(int(i)) is None else by_id[int(i)] for i in ids], dtype=np.float64)
    r = site.record
    return pl.DataFrame({"plate": r.plate, "well": r.well, "site": int(r.site), "cell_id": ids.astype(np.int32),
                         "protein_nuc_cyto_ratio": values}, schema_overrides={"site": pl.Int32})
