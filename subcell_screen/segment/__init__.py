"""Segmentation: nuclei and cells per site, with Cellpose (GPU, local weights) or an offline classical
segmenter; per-cell tables, QC and store writes. Crops at SubCell scale are in :mod:`subcell_screen.crops`.

Public API
----------
segment_nuclei(image, *, pixel_size_um, method="classical"|"cellpose", model=None) -> int32 labels
segment_cells(nuclei_image, cyto_image, *, pixel_size_um, method=..., model=None) -> (nuclei, cells)
segment_site(site, *, channel_map, method="classical", model=None) -> Segmentation
segment_sites(sites, *, channel_map, method=..., model=None) -> iterator of Segmentation | SegmentationFailure
load_cellpose(model="cpsam" | path, *, weights_sha256=None, device="auto", batch_size=32) -> CellposeSegmenter
write_segmentation(store, segmentation, *, method=None)
segmenter_from_config(config.segmentation, device=...) -> Segmenter (method, Cellpose model, classical params;
    ``.segment(site, channel_map=...)``): every ``[segmentation]`` key applies
match_labels(pred, true, *, iou_threshold=0.5) -> MatchResult   (accuracy against ground truth)
working_shape / downscale_image / upscale_labels: segmenting at a working pixel size
    (``[segmentation].working_pixel_size_um``, ``ClassicalParams.working_pixel_size_um``,
    ``load_cellpose(..., working_pixel_size_um=)``): area-averaged down, labels back by nearest neighbour

The method is always explicit: a missing Cellpose model raises :class:`CellposeWeightsError` (naming the
file, where it was looked for and how to get it) and never falls back to the classical segmenter.
Cellpose, torch and scikit-image are imported only when a function needs them.
"""

from __future__ import annotations

from ._api import (
                   CELLS_SCHEMA,
                   METHODS,
                   Segmentation,
                   SegmentationQC,
                   Segmenter,
                   cells_table,
                   pair_cells_nuclei,
                   segment_cells,
                   segment_nuclei,
                   segment_site,
                   segment_sites,
                   segmentation_qc,
                   segmenter_from_config,
                   write_segmentation,
)
from ._cellpose import (
                   CELLPOSE3_MODELS,
                   CELLPOSE4_MODELS,
                   CellposeSegmenter,
                   CellposeWeightsError,
                   SegmentationFailure,
                   cellpose_models_dir,
                   load_cellpose,
                   resolve_cellpose_weights,
)
from ._classical import ClassicalParams, classical_cells, classical_nuclei, expand_nuclei
from ._resample import (
    MIN_WORKING_NUCLEUS_PX,
    downscale_image,
    downscale_labels,
    upscale_labels,
    working_pixel_size,
    working_shape,
)
from .metrics import MatchResult, iou_matrix, match_labels

__all__ = [
    "METHODS",
    "CELLS_SCHEMA",
    "Segmentation",
    "SegmentationQC",
    "SegmentationFailure",
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
    "ClassicalParams",
    "classical_nuclei",
    "classical_cells",
    "expand_nuclei",
    "MIN_WORKING_NUCLEUS_PX",
    "working_shape",
    "working_pixel_size",
    "downscale_image",
    "upscale_labels",
    "downscale_labels",
    "CellposeSegmenter",
    "CellposeWeightsError",
    "load_cellpose",
    "cellpose_models_dir",
    "resolve_cellpose_weights",
    "CELLPOSE4_MODELS",
    "CELLPOSE3_MODELS",
    "MatchResult",
    "match_labels",
    "iou_matrix",
]
