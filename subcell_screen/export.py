"""Getting results out of a screen store as the tables CellProfiler and pycytominer users load as they are.

Levels (``subcell-screen export CONFIG --level ...``):

``cell``
    One row per cell: ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site``, ``Metadata_ObjectNumber`` (the
    cell id), the layout's ``Metadata_*`` columns, then one named column per feature (CellProfiler names for
    classical features, ``<pass>_feat0000`` for SubCell). pycytominer's ``aggregate`` takes it as it is.
``site``
    One row per site: the median of its cells (the profile stage's cell -> site step).
``well``
    One row per well: a stored profile set (default the one scoring uses); pycytominer's ``normalize`` /
    ``feature_select`` take it as they are.
``consensus``
    One row per perturbation (and concentration): the consensus profile set.
``image``
    CellProfiler's ``Image`` table: ``ImageNumber``, ``Metadata_*``, ``Count_Nuclei``, ``Count_Cells``, the
    files (``FileName_Orig<channel>``, ``PathName_Orig<channel>``) and per-channel intensity and quality
    (``Intensity_MeanIntensity_Orig<channel>``, ...).
``nuclei`` / ``cells``
    CellProfiler-style per-object tables: ``ImageNumber``, ``ObjectNumber``, ``Metadata_*``,
    ``Location_Center_X/Y``, ``AreaShape_*`` (pixels, as CellProfiler), parent/child numbers.

Formats: ``parquet``, ``csv`` (``.csv.gz`` compresses), ``h5ad`` (AnnData: ``obs`` = metadata, ``X`` = features;
feature levels only). Label masks: :func:`export_masks` writes one TIFF per site and compartment.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from ._errors import SubcellScreenError

if TYPE_CHECKING:  # pragma: no cover
    from .store import ScreenStore

__all__ = ["LEVELS", "FORMATS", "export_table", "export", "export_masks"]

logger = logging.getLogger(__name__)

LEVELS: tuple[str, ...] = ("cell", "site", "well", "consensus", "image", "nuclei", "cells")
FORMATS: tuple[str, ...] = ("parquet", "csv", "h5ad")
_FEATURE_LEVELS = ("cell", "site", "well", "consensus")


def _feature_set(store: ScreenStore, feature_set: str | None) -> str:
    names = store.sql("SELECT feature_set FROM feature_sets ORDER BY feature_set")["feature_set"].to_list()
    if feature_set is not None:
        if feature_set not in names:
            raise SubcellScreenError(f"no feature set {feature_set!r} in the store; it has {names or 'none'}")
        return feature_set
    final = store.sql("SELECT any_value(feature_set) AS f FROM profile_sets WHERE final")["f"].to_list()
    if final and final[0]:
        return final[0]
    if len(names) == 1:
        return names[0]
    raise SubcellScreenError(f"the store has feature sets {names or 'none'}: name one (--feature-set)")


def _layout_metadata(store: ScreenStore) -> pl.DataFrame:
    return store.wells(metadata=True)


def _cells(store: ScreenStore, feature_set: str) -> pl.DataFrame:
    from .profiles import to_wide

    names = store.feature_set(feature_set)["feature_names"]
    cells = store.read_cell_features(feature_set, columns=["plate", "well", "site", "cell_id", "features"])
    if cells.height == 0:
        raise SubcellScreenError(f"no per-cell rows of feature set {feature_set!r}; run the embed stage first")
    width = cells.schema["features"].size if isinstance(cells.schema["features"], pl.Array) else len(names)
    cells = cells.with_columns(pl.col("features").cast(pl.Array(pl.Float32, width)))
    wide = to_wide(cells, names)
    wide = wide.rename({"plate": "Metadata_Plate", "well": "Metadata_Well", "site": "Metadata_Site",
                        "cell_id": "Metadata_ObjectNumber"})
    return wide


def _with_layout(store: ScreenStore, frame: pl.DataFrame) -> pl.DataFrame:
    meta = _layout_metadata(store)
    keep = [c for c in meta.columns if c not in frame.columns or c in ("Metadata_Plate", "Metadata_Well")]
    out = frame.join(meta.select(keep), on=["Metadata_Plate", "Metadata_Well"], how="left")
    first = [c for c in out.columns if c.startswith("Metadata_")]
    return out.select(first + [c for c in out.columns if c not in first])


def _image(store: ScreenStore) -> pl.DataFrame:
    sites = store.sql("SELECT plate, well, site, channels, pixel_size_um, height, width, status, error FROM sites "
                      "ORDER BY plate, well, site")
    if sites.height == 0:
        raise SubcellScreenError("no sites in the store; run the segment stage first")
    counts = store.sql("SELECT plate, well, site, count(*)::BIGINT AS Count_Cells, "
                       "count(nucleus_id)::BIGINT AS Count_Nuclei FROM cells GROUP BY ALL")
    rows = []
    for i, r in enumerate(sites.iter_rows(named=True), start=1):
        row = {"ImageNumber": i, "Metadata_Plate": r["plate"], "Metadata_Well": r["well"], "Metadata_Site": r["site"],
               "Metadata_PixelSizeUm": r["pixel_size_um"], "Metadata_Status": r["status"],
               "Metadata_Error": r["error"], "Height": r["height"], "Width": r["width"]}
        for ch, path in json.loads(r["channels"] or "{}").items():
            p = Path(str(path).split("#")[0])
            row[f"FileName_Orig{ch}"] = p.name
            row[f"PathName_Orig{ch}"] = str(p.parent)
        rows.append(row)
    image = pl.DataFrame(rows, infer_schema_length=None).join(
        counts.rename({"plate": "Metadata_Plate", "well": "Metadata_Well", "site": "Metadata_Site"}),
        on=["Metadata_Plate", "Metadata_Well", "Metadata_Site"], how="left").with_columns(
        pl.col("Count_Cells").fill_null(0), pl.col("Count_Nuclei").fill_null(0))
    qc = store.sql("SELECT * FROM site_qc")
    if qc.height:
        names = {"mean": "Intensity_MeanIntensity", "median": "Intensity_MedianIntensity",
                 "p01": "Intensity_Percentile_1", "p99": "Intensity_Percentile_99",
                 "saturated_fraction": "ImageQuality_FractionMaximal", "focus": "ImageQuality_LaplacianVariance"}
        wide = qc.pivot(on="channel", index=["plate", "well", "site"], values=list(names))
        wide = wide.rename({c: next(f"{names[m]}_Orig{c[len(m) + 1:]}" for m in names if c.startswith(m + "_"))
                            for c in wide.columns if c not in ("plate", "well", "site")})
        image = image.join(wide.rename({"plate": "Metadata_Plate", "well": "Metadata_Well",
                                        "site": "Metadata_Site"}),
                           on=["Metadata_Plate", "Metadata_Well", "Metadata_Site"], how="left")
    return _with_layout(store, image)


def _objects(store: ScreenStore, which: str) -> pl.DataFrame:
    image = store.sql("SELECT plate, well, site, pixel_size_um FROM sites ORDER BY plate, well, site").with_row_index(
        "ImageNumber", offset=1)
    cells = store.sql("SELECT * FROM cells ORDER BY plate, well, site, cell_id").join(
        image, on=["plate", "well", "site"], how="left")
    if cells.height == 0:
        raise SubcellScreenError("no segmented cells in the store; run the segment stage first")
    px2 = pl.col("pixel_size_um") ** 2
    keys = [pl.col("ImageNumber").cast(pl.Int64), pl.col("plate").alias("Metadata_Plate"),
            pl.col("well").alias("Metadata_Well"), pl.col("site").alias("Metadata_Site")]
    if which == "cells":
        out = cells.select(
            *keys, pl.col("cell_id").alias("ObjectNumber"),
            pl.col("centroid_x").alias("Location_Center_X"), pl.col("centroid_y").alias("Location_Center_Y"),
            (pl.col("cell_area_um2") / px2).round(0).cast(pl.Int64).alias("AreaShape_Area"),
            pl.col("bbox_x0").alias("AreaShape_BoundingBoxMinimum_X"),
            pl.col("bbox_y0").alias("AreaShape_BoundingBoxMinimum_Y"),
            pl.col("bbox_x1").alias("AreaShape_BoundingBoxMaximum_X"),
            pl.col("bbox_y1").alias("AreaShape_BoundingBoxMaximum_Y"),
            pl.col("eccentricity").alias("AreaShape_Eccentricity"), pl.col("solidity").alias("AreaShape_Solidity"),
            pl.col("cell_area_um2").alias("AreaShape_AreaUm2"),
            pl.col("nucleus_id").is_not_null().cast(pl.Int64).alias("Children_Nuclei_Count"),
            pl.col("touches_border").alias("Metadata_TouchesBorder"))
    else:
        out = cells.filter(pl.col("nucleus_id").is_not_null()).select(
            *keys, pl.col("nucleus_id").alias("ObjectNumber"),
            (pl.col("nucleus_area_um2") / px2).round(0).cast(pl.Int64).alias("AreaShape_Area"),
            pl.col("nucleus_area_um2").alias("AreaShape_AreaUm2"), pl.col("cell_id").alias("Parent_Cells"))
    return _with_layout(store, out)


def export_table(store: ScreenStore, *, level: str, profile_set: str | None = None,
                 feature_set: str | None = None) -> pl.DataFrame:
    """One export level of a screen store as a pycytominer/CellProfiler-style frame (see the module docstring).

    Parameters
    ----------
    store
        An open :class:`~subcell_screen.store.ScreenStore` (read-only is fine).
    level
        One of :data:`LEVELS`.
    profile_set
        ``well`` level: ``raw``, ``normalized``, ``feature_selected`` (default: the set scoring uses).
    feature_set
        ``cell``/``site`` levels: the per-cell feature set (default: the one the profiles came from).

    Returns
    -------
    polars.DataFrame
    """
    if level not in LEVELS:
        raise SubcellScreenError(f"unknown export level {level!r}; levels: {', '.join(LEVELS)}")
    if level == "well":
        return store.read_profiles(profile_set=profile_set)
    if level == "consensus":
        return store.read_profiles(profile_set="consensus")
    if level == "image":
        return _image(store)
    if level in ("nuclei", "cells"):
        return _objects(store, level)
    fs = _feature_set(store, feature_set)
    cells = _cells(store, fs)
    if level == "site":
        from .profiles import aggregate

        feats = [c for c in cells.columns if not c.startswith("Metadata_")]
        counts = cells.group_by("Metadata_Plate", "Metadata_Well", "Metadata_Site").agg(
            pl.len().cast(pl.Int64).alias("Metadata_Count_Cells"))
        site = aggregate(cells.drop("Metadata_ObjectNumber"), by=["Metadata_Plate", "Metadata_Well", "Metadata_Site"],
                         method="median", features=feats)
        cells = site.join(counts, on=["Metadata_Plate", "Metadata_Well", "Metadata_Site"], how="left")
    return _with_layout(store, cells)


def _format(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise SubcellScreenError(f"unknown export format {fmt!r}; formats: {', '.join(FORMATS)}")
        return fmt
    name = path.name.lower()
    for f, suffixes in (("parquet", (".parquet", ".pq")), ("csv", (".csv", ".csv.gz", ".tsv")), ("h5ad", (".h5ad",))):
        if name.endswith(suffixes):
            return f
    raise SubcellScreenError(f"{path}: cannot tell the format from the name; pass --format ({', '.join(FORMATS)})")


def export(store: ScreenStore, path: str | Path, *, level: str, format: str | None = None,
           profile_set: str | None = None, feature_set: str | None = None) -> Path:
    """Write one export level to ``path`` (format from ``format`` or the file name).

    Returns
    -------
    Path
        The file written (atomically: a complete file or none).
    """
    import os
    import uuid

    path = Path(path)
    fmt = _format(path, format)
    if fmt == "h5ad" and level not in _FEATURE_LEVELS:
        raise SubcellScreenError(f"h5ad holds feature matrices: levels {', '.join(_FEATURE_LEVELS)}, not {level!r}")
    table = export_table(store, level=level, profile_set=profile_set, feature_set=feature_set)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if fmt == "parquet":
            table.write_parquet(tmp, compression="zstd")
        elif fmt == "csv":
            sep = "\t" if path.name.lower().endswith(".tsv") else ","
            if path.name.lower().endswith(".gz"):
                import gzip

                with gzip.open(tmp, "wb") as fh:
                    table.write_csv(fh, separator=sep)
            else:
                table.write_csv(tmp, separator=sep)
        else:
            from .embed import write_h5ad

            meta = [c for c in table.columns if c.startswith("Metadata_")]
            feats = [c for c in table.columns if c not in meta]
            obs = table.select(meta).with_columns(pl.all().cast(pl.String))
            write_h5ad(tmp, table.select(feats).to_numpy().astype(np.float32), obs=obs, var_names=feats,
                       uns={"created_by": "subcell_screen export", "level": level})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("exported %s level (%d rows x %d columns) to %s", level, table.height, table.width, path)
    return path


def export_masks(store: ScreenStore, folder: str | Path, *, plates: Sequence[str] | None = None) -> list[Path]:
    """Write each segmented site's label images as ``<plate>_<well>_s<site>_{nuclei,cells}.tiff`` (uint16 when
    the labels fit, else uint32; 0 = background, cell k contains nucleus k).

    Returns
    -------
    list of Path
        Files written.
    """
    import tifffile

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    keys = store.sql("SELECT plate, well, site FROM masks ORDER BY ALL").rows()
    out = []
    for plate, well, site in keys:
        if plates is not None and plate not in plates:
            continue
        nuclei, cells = store.read_masks(plate, well, site)
        for name, labels in (("nuclei", nuclei), ("cells", cells)):
            dtype = np.uint16 if labels.max(initial=0) < 65536 else np.uint32
            path = folder / f"{plate}_{well}_s{site}_{name}.tiff"
            tifffile.imwrite(path, labels.astype(dtype), compression="zlib")
            out.append(path)
    return out
