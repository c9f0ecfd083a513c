"""Plate images in: readers that turn an acquisition folder into a site index, and lazy site loading.

Public API
----------
read_plate(path, *, reader=None, ...) -> SiteIndex
load_site(record, ...) -> SiteImage
"""

from __future__ import annotations

from ._types import SiteImage, SiteIndex, SiteRecord

__all__ = ["SiteRecord", "SiteImage", "SiteIndex", "read_plate", "load_site"]


def __getattr__(name: str):  # filled in by the readers module
    if name in ("read_plate", "load_site", "list_readers"):
        from . import _readers

        return getattr(_readers, name)
    raise AttributeError(name)
