"""Public segmentation API: label images, per-site segmentation, per-cell tables, QC, store writes."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from ._cellpose import CellposeSegmenter, SegmentationFailure
from ._classical import ClassicalParams, classical_cells, classical_nuclei

if TYPE_CHECKING:  # pragma: no cover
    from ..channels import ChannelMap
    from ..io import SiteImage
    from ..store import ScreenStore

logger = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "CELLS_SCHEMA",
    "Segmentation",
    "SegmentationQC",
    "segment_nuclei",
    "segment_cells",
    "segment_site",
    "segment_sites",
    "pair_cells_nuclei",
    "cells_table",
    "segmentation_qc",
    "write_segmentation",
    "segmenter_from_config",
    "Segmenter",
]

METHODS = ("classical", "cellpose")

#: Columns and dtypes of the per-cell table (store table ``cells``).
CELLS_SCHEMA: dict[str, Any] = {
    "plate": pl.String, "well": pl.String, "site": pl.Int32, "cell_id": pl.Int32, "nucleus_id": pl.Int32,
    "centroid_y": pl.Float64, "centroid_x": pl.Float64,
    "bbox_y0": pl.Int32, "bbox_x0": pl.Int32, "bbox_y1": pl.Int32, "bbox_x1": pl.Int32,
    "cell_area_um2": pl.Float64, "nucleus_area_um2": pl.Float64, "touches_border": pl.Boolean,
    "eccentricity": pl.Float64, "solidity": pl.Float64,
}


@dataclass(frozen=True)
class SegmentationQC:
    """Per-site segmentation quality summary.

    Attributes
    ----------
    n_cells : int
        Cells found.
    n_border : int
        Cells touching the image border.
    border_fraction : float
        ``n_border / n_cells`` (0 for an empty site).
    area_median_um2, area_iqr_um2 : float
        Median and inter-quartile range of cell areas, µm² (NaN for an empty site).
    empty : bool
        No cells found.
    """

    n_cells: int
    n_border: int
    border_fraction: float
    area_median_um2: float
    area_iqr_um2: float
    empty: bool

    def to_dict(self) -> dict:
        """Plain dict (JSON-able)."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class Segmentation:
    """Segmentation of one site.

    Attributes
    ----------
    plate, well, site : str, str, int
        Site key.
    nuclei, cells : ndarray, shape (H, W), int32
        Label images (0 = background) with matching ids: cell k contains nucleus k.
    cells_table : polars.DataFrame
        One row per cell, columns :data:`CELLS_SCHEMA` (centroid and bbox in px, bbox half-open
        ``[y0, y1) x [x0, x1)``, areas in µm²).
    qc : SegmentationQC
    method : str
        ``classical`` or ``cellpose:<model>``.
    pixel_size_um : float
        µm per pixel of the label images.
    """

    plate: str
    well: str
    site: int
    nuclei: np.ndarray = field(repr=False)
    cells: np.ndarray = field(repr=False)
    cells_table: pl.DataFrame = field(repr=False)
    qc: SegmentationQC
    method: str
    pixel_size_um: float

    @property
    def key(self) -> tuple[str, str, int]:
        """``(plate, well, site)``."""
        return (self.plate, self.well, self.site)

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return self.cells_table.height


def _check_pixel_size(pixel_size_um: Any, where: str = "") -> float:
    try:
        p = float(pixel_size_um)
    except (TypeError, ValueError):
        p = float("nan")
    if not (p > 0 and math.isfinite(p)):
        raise ValueError(f"{where}pixel size must be a positive number of µm per pixel, got {pixel_size_um!r}"
                         + ("; set [images].pixel_size_um in the run config" if pixel_size_um is None else ""))
    return p


def _check_method(method: str, model: Any) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown segmentation method {method!r}; expected one of {list(METHODS)}")
    if method == "classical" and model is not None:
        raise ValueError("model= is only used with method='cellpose' (got method='classical')")
    if method == "cellpose" and model is not None and not isinstance(model, CellposeSegmenter):
        raise TypeError(f"model must be a CellposeSegmenter from load_cellpose(), got {type(model).__name__}")


_DEFAULT_CELLPOSE: dict[str, CellposeSegmenter] = {}


def _cellpose_model(model: CellposeSegmenter | None) -> CellposeSegmenter:
    if model is not None:
        return model
    if "cpsam" not in _DEFAULT_CELLPOSE:
        from ._cellpose import load_cellpose

        logger.info("loading the default Cellpose model 'cpsam' (pass model=load_cellpose(...) to choose)")
        _DEFAULT_CELLPOSE["cpsam"] = load_cellpose("cpsam")
    return _DEFAULT_CELLPOSE["cpsam"]


def _params(params: ClassicalParams | None, **overrides: Any) -> ClassicalParams:
    return (params or ClassicalParams()).with_(**overrides)


def segment_nuclei(image: np.ndarray, *, pixel_size_um: float, method: str = "classical",
                   model: CellposeSegmenter | None = None, params: ClassicalParams | None = None,
                   nucleus_diameter_um: float | None = None) -> np.ndarray:
    """Segment nuclei in one nuclear-stain image.

    Parameters
    ----------
    image : ndarray, shape (H, W), any integer or float dtype
        Nuclear stain (DNA / Hoechst / DAPI). Not modified.
    pixel_size_um : float
        µm per pixel.
    method : {"classical", "cellpose"}
        Offline classical segmenter, or Cellpose (``model`` from :func:`load_cellpose`; None loads
        ``cpsam`` from the local cache or raises :class:`CellposeWeightsError`).
    model : CellposeSegmenter, optional
    params : ClassicalParams, optional
        Classical-segmenter parameters.
    nucleus_diameter_um : float, optional
        Typical nucleus diameter for the classical segmenter (overrides ``params``).

    Returns
    -------
    ndarray, shape (H, W), int32
        Labels 1..N (0 = background).
    """
    _check_method(method, model)
    p = _check_pixel_size(pixel_size_um)
    if method == "classical":
        return classical_nuclei(image, pixel_size_um=p, params=_params(params, nucleus_diameter_um=nucleus_diameter_um))
    return _cellpose_model(model).nuclei(image, pixel_size_um=p)


def segment_cells(nuclei_image: np.ndarray, cyto_image: np.ndarray | None, *, pixel_size_um: float,
                  method: str = "classical", model: CellposeSegmenter | None = None,
                  params: ClassicalParams | None = None, nucleus_diameter_um: float | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Segment nuclei and the cells around them.

    Parameters
    ----------
    nuclei_image : ndarray, shape (H, W)
        Nuclear stain.
    cyto_image : ndarray, shape (H, W), or None
        Cytoplasm / cell-body stain (Cell Painting AGP or RNA; HPA microtubules or ER). The classical method
        also takes a (C, H, W) stack of several such stains (e.g. ER, RNA, AGP and Mito), averaged in units of
        each one's threshold. None: cells are the nuclei grown by a fixed distance
        (``ClassicalParams.cell_expansion_um``, 6 µm), bounded by the nuclear channel's foreground when it
        carries cytoplasmic signal.
    pixel_size_um : float
        µm per pixel.
    method, model, params, nucleus_diameter_um
        As in :func:`segment_nuclei`.

    Returns
    -------
    nuclei, cells : ndarray, shape (H, W), int32
        Label images with matching ids: cell k contains nucleus k. Ids are 1..N.
    """
    _check_method(method, model)
    p = _check_pixel_size(pixel_size_um)
    if method == "classical":
        prm = _params(params, nucleus_diameter_um=nucleus_diameter_um)
        nuclei = classical_nuclei(nuclei_image, pixel_size_um=p, params=prm)
        cells = classical_cells(nuclei, cyto_image, pixel_size_um=p, params=prm, nuclei_image=nuclei_image)
        return nuclei, cells
    return _cellpose_model(model).segment(nuclei_image, cyto_image, pixel_size_um=p)


def pair_cells_nuclei(nuclei: np.ndarray, cells: np.ndarray, *, min_overlap: float = 0.5
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Give independently segmented nuclei and cells matching ids.

    A nucleus belongs to the cell that holds the largest part of it, if that part is at least
    ``min_overlap`` of the nucleus. Cells holding no nucleus are dropped; a nucleus that belongs to no cell
    becomes its own cell (its pixels not claimed by another cell). Several nuclei in one cell are merged
    into that cell's nucleus. Nuclei are clipped to their cell.

    Parameters
    ----------
    nuclei, cells : ndarray, shape (H, W), int
        Label images (ids arbitrary).
    min_overlap : float
        Fraction of a nucleus that must lie in a cell for it to belong there.

    Returns
    -------
    nuclei, cells : ndarray, shape (H, W), int32
        Ids 1..N in raster order of each cell's first pixel; cell k contains nucleus k.
    """
    nuclei = np.asarray(nuclei)
    cells = np.asarray(cells)
    if nuclei.shape != cells.shape:
        raise ValueError(f"nucleus labels {nuclei.shape} and cell labels {cells.shape} differ in shape")
    nuc = nuclei.astype(np.int64).ravel()
    cel = cells.astype(np.int64).ravel()
    n_max = int(nuc.max(initial=0))
    nuc_area = np.bincount(nuc, minlength=n_max + 1)
    inside = nuc > 0
    pairs, counts = np.unique(cel[inside] * (n_max + 1) + nuc[inside], return_counts=True)
    pc, pn = pairs // (n_max + 1), pairs % (n_max + 1)
    owner = np.zeros(n_max + 1, np.int64)  # nucleus -> cell (0: none)
    best = np.zeros(n_max + 1, np.int64)
    for c, n, k in zip(pc, pn, counts):
        if c > 0 and k > best[n]:
            best[n], owner[n] = k, c
    owner[best < min_overlap * nuc_area] = 0
    kept_cells = np.unique(owner[owner > 0])
    c_max = int(cel.max(initial=0))
    keep = np.zeros(c_max + 1, bool)
    keep[kept_cells] = True
    cells_out = np.where(keep[cel], cel, 0)
    # nucleus pixel keeps its cell's id when it lies in its owner cell
    nuc_out = np.where(inside & (owner[nuc] == cel) & (owner[nuc] > 0), cel, 0)
    orphans = np.flatnonzero((owner == 0) & (nuc_area > 0))
    orphans = orphans[orphans > 0]
    if orphans.size:
        is_orphan = np.zeros(n_max + 1, bool)
        is_orphan[orphans] = True
        free = is_orphan[nuc] & (cells_out == 0)
        new_ids = nuc + c_max  # distinct from every cell id
        cells_out = np.where(free, new_ids, cells_out)
        nuc_out = np.where(free, new_ids, nuc_out)
    cells_out = cells_out.reshape(cells.shape)
    nuc_out = nuc_out.reshape(cells.shape)
    # renumber by cells, apply the same map to nuclei
    ids, first = np.unique(cells_out.ravel(), return_index=True)
    sel = ids != 0
    order = ids[sel][np.argsort(first[sel])]
    lut = np.zeros(int(cells_out.max(initial=0)) + 1, np.int32)
    lut[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return lut[nuc_out], lut[cells_out]


def cells_table(nuclei: np.ndarray, cells: np.ndarray, *, pixel_size_um: float, plate: str = "",
                well: str = "", site: int = 0) -> pl.DataFrame:
    """One row per cell: ids, centroid, bbox, areas, border contact and shape.

    Parameters
    ----------
    nuclei, cells : ndarray, shape (H, W), int
        Label images with matching ids.
    pixel_size_um : float
        µm per pixel.
    plate, well, site
        Key columns.

    Returns
    -------
    polars.DataFrame
        Columns :data:`CELLS_SCHEMA`, sorted by ``cell_id``. ``nucleus_id`` equals ``cell_id`` when the cell
        has a nucleus, else is null; centroid in px (row, column); bbox half-open; ``touches_border`` when
        the cell reaches the first or last row or column.
    """
    from skimage.measure import regionprops_table

    cells = np.asarray(cells)
    p = _check_pixel_size(pixel_size_um)
    if cells.max(initial=0) == 0:
        return pl.DataFrame(schema=CELLS_SCHEMA)
    props = regionprops_table(cells.astype(np.int32, copy=False),
                              properties=("label", "centroid", "bbox", "area", "eccentricity", "solidity"))
    ids = props["label"].astype(np.int32)
    nuc_area = np.bincount(np.asarray(nuclei).ravel().astype(np.int64), minlength=int(ids.max()) + 1)[ids]
    h, w = cells.shape
    y0, x0, y1, x1 = (props[f"bbox-{i}"].astype(np.int32) for i in range(4))
    n = len(ids)
    df = pl.DataFrame({
        "plate": [plate] * n, "well": [well] * n, "site": np.full(n, int(site), np.int32), "cell_id": ids,
        "nucleus_id": pl.Series(np.where(nuc_area > 0, ids, 0), dtype=pl.Int32),
        "centroid_y": props["centroid-0"], "centroid_x": props["centroid-1"],
        "bbox_y0": y0, "bbox_x0": x0, "bbox_y1": y1, "bbox_x1": x1,
        "cell_area_um2": props["area"] * p * p, "nucleus_area_um2": nuc_area * p * p,
        "touches_border": (y0 == 0) | (x0 == 0) | (y1 == h) | (x1 == w),
        "eccentricity": props["eccentricity"], "solidity": props["solidity"],
    }, schema=CELLS_SCHEMA)
    return df.with_columns(pl.when(pl.col("nucleus_id") > 0).then(pl.col("nucleus_id")).alias("nucleus_id"))


def segmentation_qc(table: pl.DataFrame) -> SegmentationQC:
    """QC summary of one site's per-cell table."""
    n = table.height
    if n == 0:
        return SegmentationQC(0, 0, 0.0, float("nan"), float("nan"), True)
    area = table["cell_area_um2"].to_numpy()
    q1, med, q3 = np.percentile(area, [25, 50, 75])
    n_border = int(table["touches_border"].sum())
    return SegmentationQC(n, n_border, n_border / n, float(med), float(q3 - q1), False)


def _make_segmentation(site: SiteImage, nuclei: np.ndarray, cells: np.ndarray, *, pixel_size_um: float,
                       method: str) -> Segmentation:
    rec = site.record
    table = cells_table(nuclei, cells, pixel_size_um=pixel_size_um, plate=rec.plate, well=rec.well,
                        site=rec.site)
    return Segmentation(plate=rec.plate, well=rec.well, site=int(rec.site), nuclei=nuclei.astype(np.int32),
                        cells=cells.astype(np.int32), cells_table=table, qc=segmentation_qc(table),
                        method=method, pixel_size_um=pixel_size_um)


def _site_inputs(site: SiteImage, channel_map: ChannelMap, pixel_size_um: float | None
                 ) -> tuple[np.ndarray, np.ndarray | None, float]:
    rec = site.record
    where = f"site {rec.plate}/{rec.well}/s{rec.site}: "
    p = _check_pixel_size(pixel_size_um if pixel_size_um is not None else site.pixel_size_um, where)
    i_nuc, i_cyto = channel_map.segmentation_indices(site.channel_names)
    return site.data[i_nuc], (site.data[i_cyto] if i_cyto is not None else None), p


def _method_name(method: str, model: CellposeSegmenter | None) -> str:
    return "classical" if method == "classical" else f"cellpose:{model.name if model else 'cpsam'}"


def segment_site(site: SiteImage, *, channel_map: ChannelMap, method: str = "classical",
                 model: CellposeSegmenter | None = None, params: ClassicalParams | None = None,
                 nucleus_diameter_um: float | None = None, pixel_size_um: float | None = None) -> Segmentation:
    """Segment one site with the channels the channel map names for segmentation.

    Parameters
    ----------
    site : SiteImage
        Pixels (C, H, W) and channel names; ``site.pixel_size_um`` is used unless ``pixel_size_um`` is given.
    channel_map : ChannelMap
        ``channel_map.segmentation_indices(site.channel_names)`` picks the nucleus and cytoplasm channels.
    method, model, params, nucleus_diameter_um
        As in :func:`segment_cells`.
    pixel_size_um : float, optional
        Overrides the site's pixel size.

    Returns
    -------
    Segmentation

    Raises
    ------
    ValueError
        Unknown pixel size (the message names the site), bad method.
    ChannelMapError
        The site lacks the segmentation channels.
    """
    _check_method(method, model)
    nuc, cyto, p = _site_inputs(site, channel_map, pixel_size_um)
    if method == "cellpose":
        model = _cellpose_model(model)
    nuclei, cells = segment_cells(nuc, cyto, pixel_size_um=p, method=method, model=model, params=params,
                                  nucleus_diameter_um=nucleus_diameter_um)
    return _make_segmentation(site, nuclei, cells, pixel_size_um=p, method=_method_name(method, model))


def segment_sites(sites: Iterable[SiteImage], *, channel_map: ChannelMap, method: str = "classical",
                  model: CellposeSegmenter | None = None, params: ClassicalParams | None = None,
                  nucleus_diameter_um: float | None = None, pixel_size_um: float | None = None,
                  chunk_size: int = 8, progress: bool | None = None
                  ) -> Iterator[Segmentation | SegmentationFailure]:
    """Segment many sites lazily; a failing site yields a :class:`SegmentationFailure` and the rest go on.

    With Cellpose, ``chunk_size`` sites at a time go through :meth:`CellposeSegmenter.segment_many`, so
    same-size sites share GPU batches and masks are built on CPU threads while the GPU runs. At most
    ``chunk_size`` sites are held in memory.

    Yields
    ------
    Segmentation or SegmentationFailure
        In input order.
    """
    from tqdm.auto import tqdm

    _check_method(method, model)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if method == "cellpose":
        model = _cellpose_model(model)
    name = _method_name(method, model)
    bar = tqdm(desc=f"segment ({name})", unit="site", disable=(not progress) if progress is not None else None,
               leave=False)

    def failure(i: int, site: Any, exc: BaseException | str) -> SegmentationFailure:
        rec = getattr(site, "record", None)
        msg = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        logger.warning("segmentation failed for site %s: %s", getattr(rec, "key", i), msg)
        return SegmentationFailure(i, msg, getattr(rec, "plate", None), getattr(rec, "well", None),
                                   getattr(rec, "site", None))

    try:
        if method == "classical":
            for i, site in enumerate(sites):
                try:
                    yield segment_site(site, channel_map=channel_map, method="classical", params=params,
                                       nucleus_diameter_um=nucleus_diameter_um, pixel_size_um=pixel_size_um)
                except Exception as exc:  # noqa: BLE001 - recorded, the rest continue
                    yield failure(i, site, exc)
                bar.update(1)
            return
        assert model is not None
        chunk: list[tuple[int, Any]] = []
        it = enumerate(sites)
        while True:
            chunk.clear()
            for item in it:
                chunk.append(item)
                if len(chunk) == chunk_size:
                    break
            if not chunk:
                return
            inputs, pix, ok = [], [], []
            out: dict[int, Any] = {}
            for i, site in chunk:
                try:
                    nuc, cyto, p = _site_inputs(site, channel_map, pixel_size_um)
                    inputs.append((nuc, cyto))
                    pix.append(p)
                    ok.append((i, site, p))
                except Exception as exc:  # noqa: BLE001
                    out[i] = failure(i, site, exc)
            results = model.segment_many(inputs, pixel_size_um=pix, on_error="record") if inputs else []
            for (i, site, p), res in zip(ok, results):
                if isinstance(res, SegmentationFailure):
                    out[i] = failure(i, site, res.error)
                    continue
                try:
                    out[i] = _make_segmentation(site, res[0], res[1], pixel_size_um=p, method=name)
                except Exception as exc:  # noqa: BLE001
                    out[i] = failure(i, site, exc)
            for i, _ in chunk:
                yield out[i]
                bar.update(1)
            if len(chunk) < chunk_size:
                return
    finally:
        bar.close()


def write_segmentation(store: ScreenStore, segmentation: Segmentation | SegmentationFailure, *,
                       method: str | None = None, run_id: str | None = None, seconds: float | None = None) -> None:
    """Store one site's segmentation (or its failure) in a screen store.

    Writes the label images (``store.write_masks``), replaces the site's rows of the ``cells`` table and of
    ``segmentation_qc``, and records the ``segment`` stage of the site (``ok`` with the cell count, or
    ``failed`` with the error).

    Parameters
    ----------
    store : ScreenStore
        Open, writable store.
    segmentation : Segmentation or SegmentationFailure
    method : str, optional
        Method recorded with the masks (default: ``segmentation.method``).
    run_id, seconds
        Provenance of the stage record.
    """
    if isinstance(segmentation, SegmentationFailure):
        if segmentation.plate is None:
            raise ValueError("a SegmentationFailure without a site key cannot be recorded")
        store.set_site_status(segmentation.plate, segmentation.well, int(segmentation.site), stage="segment",
                              status="failed", error=segmentation.error, run_id=run_id, seconds=seconds)
        return
    seg = segmentation
    t0 = time.perf_counter()
    keys = {"plate": seg.plate, "well": seg.well, "site": int(seg.site)}
    store.write_masks(seg.plate, seg.well, seg.site, nuclei=seg.nuclei, cells=seg.cells,
                      method=method or seg.method)
    store.replace_rows("cells", seg.cells_table, keys=keys)
    qc = pl.DataFrame({**{k: [v] for k, v in keys.items()}, "method": [method or seg.method],
                       **{k: [v] for k, v in seg.qc.to_dict().items()}},
                      schema_overrides={"site": pl.Int32, "n_cells": pl.Int32, "n_border": pl.Int32})
    store.replace_rows("segmentation_qc", qc, keys=keys)
    store.set_site_status(seg.plate, seg.well, seg.site, stage="segment", status="ok", n_cells=seg.n_cells,
                          run_id=run_id, seconds=seconds)
    logger.debug("stored segmentation of %s in %.2fs", seg.key, time.perf_counter() - t0)



@dataclass(frozen=True)
class Segmenter:
    """A configured segmenter: what :func:`segmenter_from_config` builds from ``[segmentation]``.

    Attributes
    ----------
    method : str
        ``classical`` or ``cellpose``.
    model : CellposeSegmenter or None
        The loaded Cellpose model (``cellpose`` only).
    params : ClassicalParams
        Classical parameters (nucleus diameter, minimum nucleus area, ...): every key of the section applies.
    fallback : str or None
        Why the classical segmenter runs although Cellpose was configured (``allow_fallback = true``).
    """

    method: str
    model: Any = field(default=None, repr=False, compare=False)
    params: ClassicalParams = field(default_factory=ClassicalParams)
    fallback: str | None = None

    @property
    def name(self) -> str:
        """``classical`` or ``cellpose:<model>`` (provenance)."""
        return self.method if self.model is None else f"cellpose:{getattr(self.model, 'name', 'cellpose')}"

    def segment(self, site: SiteImage, *, channel_map: ChannelMap) -> Segmentation:
        """:func:`segment_site` with this segmenter."""
        return segment_site(site, channel_map=channel_map, method=self.method, model=self.model,
                            params=self.params)


def segmenter_from_config(section: Any, *, device: str = "auto", load: bool = True) -> Segmenter:
    """The segmenter a ``[segmentation]`` section describes: every key applies, in one place.

    Parameters
    ----------
    section : subcell_screen.config.SegmentationSection
        ``method``, ``model``, ``weights``, ``weights_sha256``, ``nucleus_diameter_um``, ``cell_diameter_um``,
        ``batch_size``, ``min_nucleus_area_um2``, ``working_pixel_size_um``, ``allow_fallback``.
    device : str
        Device for Cellpose.
    load : bool
        Load the Cellpose model (False: only the classical parameters, e.g. for planning).

    Returns
    -------
    Segmenter

    Raises
    ------
    CellposeWeightsError
        ``method = "cellpose"`` without local weights, unless ``allow_fallback = true``: then the classical
        segmenter is returned with :attr:`Segmenter.fallback` saying why (an explicit, configured fallback).
    """
    from ._cellpose import CellposeWeightsError, load_cellpose

    # the working pixel size is carried by both the classical parameters and the Cellpose model, so that every
    # executor that pairs a loaded Cellpose model with these parameters applies it
    working = getattr(section, "working_pixel_size_um", None)
    params = ClassicalParams().with_(nucleus_diameter_um=section.nucleus_diameter_um,
                                     min_nucleus_area_um2=section.min_nucleus_area_um2,
                                     working_pixel_size_um=working)
    if section.method == "classical" or not load:
        return Segmenter(method="classical", params=params)
    kwargs: dict[str, Any] = {"weights_sha256": section.weights_sha256, "device": device,
                              "batch_size": section.batch_size, "working_pixel_size_um": working}
    if section.nucleus_diameter_um:
        kwargs["nucleus_diameter_um"] = section.nucleus_diameter_um
    if section.cell_diameter_um:
        kwargs["cell_diameter_um"] = section.cell_diameter_um
    try:
        model = load_cellpose(section.weights if section.weights is not None else section.model, **kwargs)
    except CellposeWeightsError as exc:
        if not section.allow_fallback:
            raise
        first = str(exc).splitlines()[0]
        why = (f"Cellpose weights not available ({first}); segmented with the classical segmenter instead "
               "([segmentation].allow_fallback = true)")
        logger.warning(why)
        return Segmenter(method="classical", params=params, fallback=why)
    return Segmenter(method="cellpose", model=model, params=params)
