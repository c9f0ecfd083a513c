"""Cell crops at SubCell's pixel scale: segmented sites -> fixed-size per-cell windows.

The value object every featurizer consumes is :class:`CropBatch`. The cropping functions (implemented with
the segmentation stage) iterate over batches so that memory stays bounded: never hold a whole plate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

__all__ = ["CropBatch", "HPA_PIXEL_SIZE_UM"]

#: Pixel size of HPA images, SubCell's native scale (µm/px).
HPA_PIXEL_SIZE_UM = 0.0800885


@dataclass(frozen=True)
class CropBatch:
    """A batch of per-cell crops.

    Attributes
    ----------
    data : ndarray, shape (N, C, H, W), float32
        Crops in the site's channel order and intensity units (not yet min-max normalised). ``H == W ==
        out_size`` when already rescaled (``scale == 1``); otherwise source-resolution windows that the
        featurizer resizes by ``scale`` (e.g. on the GPU) to ``out_size``.
    keys : polars.DataFrame
        One row per crop: ``plate``, ``well``, ``site``, ``cell_id``.
    channel_names : tuple of str
        Name of each of the C channels.
    mask : ndarray, shape (N, 1, H, W), float32, or None
        Cell mask (1 inside the dilated cell, 0 outside), same geometry as ``data``.
    scale : float
        Output pixels per input pixel still to apply (1.0 when ``data`` is at SubCell scale).
    out_size : int
        Side of the final square crop in pixels at SubCell scale.
    """

    data: np.ndarray = field(repr=False)
    keys: pl.DataFrame = field(repr=False)
    channel_names: tuple[str, ...]
    mask: np.ndarray | None = field(default=None, repr=False)
    scale: float = 1.0
    out_size: int = 640

    def __post_init__(self) -> None:
        if self.data.ndim != 4 or self.data.shape[1] != len(self.channel_names):
            raise ValueError(f"crops must be (N, C, H, W) with C = {len(self.channel_names)}, got {self.data.shape}")
        if self.keys.height != self.data.shape[0]:
            raise ValueError(f"{self.keys.height} key rows for {self.data.shape[0]} crops")
        if self.mask is not None and (self.mask.shape[0] != self.data.shape[0] or self.mask.shape[2:] != self.data.shape[2:]):
            raise ValueError(f"mask shape {self.mask.shape} does not match crops {self.data.shape}")

    def __len__(self) -> int:
        return self.data.shape[0]
