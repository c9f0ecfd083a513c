"""Plate images in: readers that turn an acquisition folder into a site index, lazy site loading,
illumination correction and per-site failure isolation.

Public API
----------
read_plate(path, *, reader=None, channel_names=None, pixel_size_um=None) -> SiteIndex
    Readers: ``loaddata``, ``phenix``, ``ometiff``, ``imagexpress``, ``hpa`` (see :func:`list_readers`).
load_site(record, *, illumination=None, channels=None) -> SiteImage
probe_site(record) -> ((C, H, W), dtype)
iter_sites(records, *, illumination=None, prefetch=None, workers=None) -> iterator of (record, image or error)
check_sites(index, *, store=None, decode=False) -> SiteCheckReport
compute_illumination(index, *, plate, ...) -> IlluminationFunctions;  apply_illumination(site, functions)
site_qc_rows(site) -> per-channel intensity, saturation and focus of a loaded site
is_plausible_pixel_size(value) -> bool
    Pixel sizes outside :data:`PLAUSIBLE_PIXEL_SIZE_UM` (0.05-5 µm/px) found in metadata are never used; each
    :class:`SiteRecord` says where its pixel size came from (``pixel_size_source``).

Errors: :class:`ReaderError` (no reader matched), :class:`SiteLoadError` (one site failed; subclasses
:class:`ImageTooLargeError`, :class:`NonFiniteSiteError`, :class:`MixedDtypeError` say why),
:class:`PlateUnreadableError` (no site of a plate could be loaded).

Limits: :data:`MAX_PLANE_PIXELS` (2**28 pixels per plane) and :data:`MAX_FILE_PIXELS` (2**30 per file) are
checked on each file's header before pixels are allocated.
"""

from __future__ import annotations

from ._errors import (
    ImageTooLargeError,
    MixedDtypeError,
    NonFiniteSiteError,
    PlateUnreadableError,
    ReaderError,
    SiteLoadError,
)
from ._types import SiteImage, SiteIndex, SiteRecord

__all__ = [
    "SiteRecord",
    "SiteImage",
    "SiteIndex",
    "read_plate",
    "load_site",
    "list_readers",
    "probe_site",
    "iter_sites",
    "check_sites",
    "SiteCheckReport",
    "compute_illumination",
    "apply_illumination",
    "IlluminationFunctions",
    "ReaderError",
    "SiteLoadError",
    "ImageTooLargeError",
    "NonFiniteSiteError",
    "MixedDtypeError",
    "PlateUnreadableError",
    "site_qc_rows",
    "PLAUSIBLE_PIXEL_SIZE_UM",
    "PixelSize",
    "is_plausible_pixel_size",
    "MAX_PLANE_PIXELS",
    "MAX_FILE_PIXELS",
]

_LAZY = {
    "read_plate": "._readers",
    "list_readers": "._readers",
    "load_site": "._load",
    "probe_site": "._load",
    "iter_sites": "._load",
    "check_sites": "._load",
    "SiteCheckReport": "._load",
    "compute_illumination": ".illumination",
    "apply_illumination": ".illumination",
    "IlluminationFunctions": ".illumination",
    "site_qc_rows": "._qc",
    "PLAUSIBLE_PIXEL_SIZE_UM": "._metadata",
    "PixelSize": "._metadata",
    "is_plausible_pixel_size": "._metadata",
    "MAX_PLANE_PIXELS": "._load",
    "MAX_FILE_PIXELS": "._load",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
