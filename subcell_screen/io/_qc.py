"""Image QC of a loaded site: per-channel intensity, saturation and focus (the ``site_qc`` rows)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import polars as pl

if TYPE_CHECKING:  # pragma: no cover
    from ._types import SiteImage

__all__ = ["site_qc_rows"]


def site_qc_rows(site: SiteImage) -> pl.DataFrame:
    """Per-channel intensity and focus metrics of one loaded site.

    Statistics are computed on every second pixel in each direction (a quarter of the pixels).

    Returns
    -------
    polars.DataFrame
        One row per channel: ``plate, well, site, channel, mean, median, p01, p99`` (intensity in the pixel
        values' units), ``saturated_fraction`` (pixels at the dtype's maximum; 0 for float images) and ``focus``
        (variance of the Laplacian of the image scaled by its 99th percentile: higher is sharper).
    """
    from scipy import ndimage

    rows = []
    data = site.data
    info_max = float(np.iinfo(data.dtype).max) if np.issubdtype(data.dtype, np.integer) else None
    for ch, img in zip(site.channel_names, data):
        img = np.asarray(img)
        sub = img[::2, ::2].astype(np.float32)
        p01, med, p99 = np.percentile(sub, [1, 50, 99])
        sat = float((img >= info_max).mean()) if info_max is not None else 0.0
        scaled = sub / max(float(p99), 1e-12)
        focus = float(ndimage.laplace(scaled).var())
        rows.append({"plate": site.record.plate, "well": site.record.well, "site": site.record.site,
                     "channel": ch, "mean": float(sub.mean()), "median": float(med), "p01": float(p01),
                     "p99": float(p99), "saturated_fraction": sat, "focus": focus})
    return pl.DataFrame(rows, schema_overrides={"site": pl.Int32})
