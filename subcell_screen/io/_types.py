"""Value objects of the image-input stage."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import polars as pl

__all__ = ["SiteRecord", "SiteImage", "SiteIndex"]


@dataclass(frozen=True)
class SiteRecord:
    """One imaged site (field of view) of one well.

    Attributes
    ----------
    plate : str
        Plate barcode.
    well : str
        Normalised well id (``A01``).
    site : int
        Site (field) number as the instrument numbers it (usually from 1).
    channels : Mapping[str, str]
        Channel name -> file path or URI, in acquisition order. A multi-channel file (OME-TIFF) appears
        once per channel with a ``#<index>`` suffix.
    pixel_size_um : float or None
        Pixel size in µm/px (None if unknown or not credible, see :data:`PLAUSIBLE_PIXEL_SIZE_UM`).
    reader : str
        Name of the reader that produced the record.
    pixel_size_source : str or None
        Where ``pixel_size_um`` came from (``config``, ``Index.xml <path>``, ``OME-XML <file>``, ``TIFF tags
        <file>``), or, when it is None, why (no metadata; or the implausible value found and where).
    """

    plate: str
    well: str
    site: int
    channels: Mapping[str, str]
    pixel_size_um: float | None
    reader: str
    pixel_size_source: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", MappingProxyType(dict(self.channels)))

    def __reduce__(self) -> tuple:
        # mappingproxy does not pickle; records travel to worker processes
        return (SiteRecord, (self.plate, self.well, self.site, dict(self.channels), self.pixel_size_um, self.reader,
                             self.pixel_size_source))

    @property
    def key(self) -> tuple[str, str, int]:
        """``(plate, well, site)``."""
        return (self.plate, self.well, self.site)

    @classmethod
    def from_dict(cls, d: dict) -> SiteRecord:
        """Inverse of :meth:`to_dict`."""
        return cls(plate=d["plate"], well=d["well"], site=int(d["site"]), channels=dict(d["channels"]),
                   pixel_size_um=d["pixel_size_um"], reader=d["reader"],
                   pixel_size_source=d.get("pixel_size_source"))

    def to_dict(self) -> dict:
        """JSON-able dict (``subcell-screen sites --json`` prints these)."""
        return {"plate": self.plate, "well": self.well, "site": self.site, "channels": dict(self.channels),
                "pixel_size_um": self.pixel_size_um, "pixel_size_source": self.pixel_size_source,
                "reader": self.reader}


@dataclass(frozen=True)
class SiteImage:
    """Pixels of one site.

    Attributes
    ----------
    data : ndarray, shape (C, H, W)
        Original dtype and bit depth (no rescaling), or float32 after illumination correction.
    channel_names : tuple of str
        Name of each of the C channels.
    pixel_size_um : float or None
        µm per pixel.
    record : SiteRecord
        Where the pixels came from.
    """

    data: np.ndarray = field(repr=False)
    channel_names: tuple[str, ...]
    pixel_size_um: float | None
    record: SiteRecord

    def __post_init__(self) -> None:
        if self.data.ndim != 3 or self.data.shape[0] != len(self.channel_names):
            raise ValueError(f"site data must be (C, H, W) with C = {len(self.channel_names)} channel names, "
                             f"got shape {self.data.shape}")

    def channel(self, name: str) -> np.ndarray:
        """One channel as a 2-D array (case-insensitive name)."""
        lower = [c.lower() for c in self.channel_names]
        try:
            return self.data[lower.index(name.lower())]
        except ValueError:
            raise KeyError(f"site {self.record.key} has no channel {name!r}; channels: "
                           f"{', '.join(self.channel_names)}") from None


@dataclass(frozen=True)
class SiteIndex:
    """All sites a reader found under one source.

    Attributes
    ----------
    records : tuple of SiteRecord
        Sorted by plate, well, site.
    reader : str
        Reader that matched.
    source : str
        Folder or file that was read.
    notes : Mapping[str, str]
        Reader name -> why it did or did not match (auto-detection report).
    """

    records: tuple[SiteRecord, ...]
    reader: str
    source: str
    notes: Mapping[str, str] = field(default_factory=dict)

    def __iter__(self) -> Iterator[SiteRecord]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def plates(self) -> list[str]:
        """Distinct plate barcodes."""
        return sorted({r.plate for r in self.records})

    def filter(self, *, plates: list[str] | None = None) -> SiteIndex:
        """Only the sites of ``plates``."""
        keep = tuple(r for r in self.records if plates is None or r.plate in plates)
        return SiteIndex(records=keep, reader=self.reader, source=self.source, notes=self.notes)

    def to_frame(self) -> pl.DataFrame:
        """One row per site: plate, well, site, channel names, paths, pixel size and its source, reader."""
        return pl.DataFrame(
            {
                "plate": [r.plate for r in self.records],
                "well": [r.well for r in self.records],
                "site": [r.site for r in self.records],
                "channel_names": [list(r.channels) for r in self.records],
                "paths": [list(r.channels.values()) for r in self.records],
                "pixel_size_um": [r.pixel_size_um for r in self.records],
                "pixel_size_source": [r.pixel_size_source for r in self.records],
                "reader": [r.reader for r in self.records],
            },
            schema={"plate": pl.String, "well": pl.String, "site": pl.Int32, "channel_names": pl.List(pl.String),
                    "paths": pl.List(pl.String), "pixel_size_um": pl.Float64, "pixel_size_source": pl.String,
                    "reader": pl.String},
        )
