"""Errors of the image-input stage.

Every message names the folder, file or site it is about, so that a user can fix the input without reading
our code.
"""

from __future__ import annotations

from pathlib import Path

from .._errors import SubcellScreenError

__all__ = ["ReaderError", "SiteLoadError", "ImageTooLargeError", "NonFiniteSiteError", "MixedDtypeError",
           "PlateUnreadableError"]


class ReaderError(SubcellScreenError, ValueError):
    """No reader (or not the requested one) could turn a source into a site index.

    The message names the folder or file and what each reader looked for.
    """


class SiteLoadError(SubcellScreenError, OSError):
    """One site could not be loaded: a channel file is missing, unreadable, truncated or corrupt, or the
    channels disagree in shape or dtype.

    Attributes
    ----------
    key : tuple of (str, str, int) or None
        ``(plate, well, site)`` of the site.
    path : str or None
        File (or URI) that caused the failure, when one file did.
    reason : str
        The failure without the site/file prefix.
    """

    def __init__(self, reason: str, *, key: tuple[str, str, int] | None = None,
                 path: str | Path | None = None) -> None:
        self.key = key
        self.path = str(path) if path is not None else None
        self.reason = reason
        parts = []
        if key is not None:
            parts.append(f"site {key[0]} {key[1]} s{key[2]}")
        if self.path is not None:
            parts.append(self.path)
        prefix = ": ".join(parts)
        super().__init__(f"{prefix}: {reason}" if prefix else reason)

    def __reduce__(self):  # keep pickling (process pools, Ray) working with keyword-only arguments
        return (_rebuild_site_load_error, (self.reason, self.key, self.path, type(self)))


def _rebuild_site_load_error(reason: str, key, path, cls=None) -> SiteLoadError:
    return (cls or SiteLoadError)(reason, key=key, path=path)


class ImageTooLargeError(SiteLoadError):
    """A channel file declares more pixels than the limit (checked on the header, before any allocation).

    See :data:`subcell_screen.io.MAX_PLANE_PIXELS` and :data:`subcell_screen.io.MAX_FILE_PIXELS`.
    """


class NonFiniteSiteError(SiteLoadError):
    """A site's (floating-point) pixels contain NaN or infinity; it would poison means, medians and the
    plate's illumination functions."""


class MixedDtypeError(SiteLoadError):
    """A site's dtype differs from the one most sites of its plate have; intensity features would be on
    another scale (e.g. float 0..1 against uint16 0..65535), so the site is refused."""


class PlateUnreadableError(SubcellScreenError, RuntimeError):
    """Not a single site of a plate could be loaded (the message names the plate and the first failures).

    Attributes
    ----------
    plates : tuple of str
        The plates without any readable site.
    report : SiteCheckReport or None
        The full check report when raised by ``check_sites``.
    """

    def __init__(self, message: str, *, plates: tuple[str, ...] = (), report=None) -> None:
        self.plates = tuple(plates)
        self.report = report
        super().__init__(message)
