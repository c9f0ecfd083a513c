"""Acquisition metadata: Harmony ``Index.xml`` / ``Index.idx.xml``, OME-XML and TIFF pixel sizes.

Harmony (Opera / Operetta Phenix) index files are ``EvaluationInputData`` documents whose XML namespace
changes with the Harmony version (``http://www.perkinelmer.com/PEHH/HarmonyV5``, ``.../HarmonyV6``, a
``<GUID>/HarmonyV7`` path). Channel descriptions live either in ``Maps/Map/Entry[@ChannelID]``
(``ChannelName``, ``ImageResolutionX Unit="m"``; Harmony 6 and later, not necessarily in the first ``Map``)
or in every ``Images/Image`` record (``ChannelID``, ``ChannelName``, ``ImageResolutionX``; Harmony 5). The
plate barcode is ``Plates/Plate/PlateID``. Namespaces are ignored here.
"""

from __future__ import annotations

import logging
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["HarmonyIndex", "read_harmony_index", "find_harmony_index", "OmeInfo", "read_ome_info",
           "tiff_pixel_size_um", "length_to_um", "PLAUSIBLE_PIXEL_SIZE_UM", "PixelSize", "is_plausible_pixel_size",
           "pixel_size_from"]

HARMONY_INDEX_NAMES = ("Index.idx.xml", "Index.xml")

_UNIT_TO_UM = {"m": 1e6, "mm": 1e3, "cm": 1e4, "µm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0,
               "micrometer": 1.0, "nm": 1e-3, "Å": 1e-4, "\u03bcm": 1.0}


def length_to_um(value: float, unit: str | None, *, default_unit: str = "µm") -> float | None:
    """Convert a length to µm; unknown units give None."""
    unit = (unit or default_unit).strip()
    factor = _UNIT_TO_UM.get(unit) or _UNIT_TO_UM.get(unit.lower())
    if factor is None:
        return None
    return float(value) * factor


#: Pixel sizes (µm/px) credible for cell microscopy: ~0.05 (100x oil, small camera pixels, or SubCell's
#: 0.08 HPA confocal) to ~5 (low-magnification whole-well imaging). Instrument TIFF tags often hold the
#: camera's pixel pitch or a display resolution instead (Phenix exports: 6.45 or 64.5 µm/px); such a value
#: would make every size-dependent step (segmentation diameters, crop scale) wrong by 10-100x.
PLAUSIBLE_PIXEL_SIZE_UM: tuple[float, float] = (0.05, 5.0)


def is_plausible_pixel_size(value: float | None) -> bool:
    """Whether ``value`` (µm/px) is finite and inside :data:`PLAUSIBLE_PIXEL_SIZE_UM`."""
    if value is None:
        return False
    try:
        v = float(value)
    except (TypeError, ValueError):
        return False
    lo, hi = PLAUSIBLE_PIXEL_SIZE_UM
    return math.isfinite(v) and lo <= v <= hi


@dataclass(frozen=True)
class PixelSize:
    """A plate's pixel size and where it came from.

    Attributes
    ----------
    value : float or None
        µm per pixel; None when no metadata gave one, or the value found was not credible.
    source : str
        ``config``, ``Index.xml <path>``, ``OME-XML <file>``, ``TIFF tags <file>``; or, when ``value`` is None,
        why (``no pixel size in the metadata``, or the implausible value and where it was found).
    """

    value: float | None
    source: str


def pixel_size_from(value: float | None, source: str) -> PixelSize:
    """Keep a metadata pixel size only if it is plausible; otherwise warn, naming the value and its source."""
    if value is None:
        return PixelSize(None, f"no pixel size in {source}" if source else "no pixel size in the metadata")
    if is_plausible_pixel_size(value):
        return PixelSize(float(value), source)
    lo, hi = PLAUSIBLE_PIXEL_SIZE_UM
    why = (f"{source}: {float(value):.4g} µm/px, outside the plausible {lo:g}-{hi:g} µm/px for cell "
           "microscopy, not used")
    logger.warning("%s; set [images].pixel_size_um in the run config", why)
    return PixelSize(None, why)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


@dataclass(frozen=True)
class HarmonyIndex:
    """What the subcell_screen readers use from a Harmony index file.

    Attributes
    ----------
    path : Path
        The index file.
    channel_names : dict of int to str
        ``ChannelID`` -> ``ChannelName``.
    pixel_size_um : float or None
        ``ImageResolutionX`` in µm/px (first channel that has one).
    plate_id : str or None
        ``Plates/Plate/PlateID``.
    n_images : int
        Number of ``Images/Image`` records.
    """

    path: Path
    channel_names: dict[int, str] = field(default_factory=dict)
    pixel_size_um: float | None = None
    plate_id: str | None = None
    n_images: int = 0


def find_harmony_index(folder: Path) -> Path | None:
    """``Index.idx.xml`` or ``Index.xml`` in ``folder`` or its parent (Harmony export layouts)."""
    for d in (folder, folder.parent):
        for name in HARMONY_INDEX_NAMES:
            p = d / name
            if p.is_file():
                return p
    return None


def read_harmony_index(path: Path) -> HarmonyIndex:
    """Parse channel names, pixel size and plate id from a Harmony index file (streaming, any version).

    Raises
    ------
    ValueError
        If the file is not well-formed XML (the message names the file).
    """
    names: dict[int, str] = {}
    res: dict[int, float] = {}
    plate_id: str | None = None
    n_images = 0
    stack: list[str] = []
    try:
        for event, elem in ET.iterparse(str(path), events=("start", "end")):
            tag = _local(elem.tag)
            if event == "start":
                stack.append(tag)
                continue
            stack.pop()
            parent = stack[-1] if stack else ""
            if tag == "PlateID" and parent == "Plate" and plate_id is None and (elem.text or "").strip():
                plate_id = elem.text.strip()
            elif (tag == "Entry" and parent == "Map") or (tag == "Image" and parent == "Images"):
                if tag == "Image":
                    n_images += 1
                ch = elem.get("ChannelID")
                info: dict[str, tuple[str, str | None]] = {}
                for child in elem:
                    info[_local(child.tag)] = ((child.text or "").strip(), child.get("Unit"))
                if ch is None and "ChannelID" in info:
                    ch = info["ChannelID"][0]
                if ch is not None and ch.strip().isdigit():
                    cid = int(ch)
                    if "ChannelName" in info and info["ChannelName"][0] and cid not in names:
                        names[cid] = info["ChannelName"][0]
                    if "ImageResolutionX" in info and cid not in res:
                        text, unit = info["ImageResolutionX"]
                        try:
                            value = float(text)
                        except ValueError:
                            value = None
                        if value is not None and value > 0:
                            # Harmony writes metres; a unit-less value below 1e-3 can only be metres
                            um = length_to_um(value, unit, default_unit="m" if value < 1e-3 else "µm")
                            if um is not None:
                                res[cid] = um
                if tag == "Image":
                    elem.clear()
    except ET.ParseError as exc:
        raise ValueError(f"{path}: not a readable Harmony index file ({exc})") from None
    pixel = res[min(res)] if res else None
    return HarmonyIndex(path=Path(path), channel_names=dict(sorted(names.items())), pixel_size_um=pixel,
                        plate_id=plate_id, n_images=n_images)


# ----------------------------------------------------------------------------------------------------------
# OME-TIFF


@dataclass(frozen=True)
class OmeInfo:
    """What the readers use from an OME-TIFF's OME-XML (first Image).

    Attributes
    ----------
    channel_names : tuple of str
        ``Channel/@Name`` of the first image (``c0``, ``c1``, ... where missing).
    size_c : int
        ``Pixels/@SizeC``.
    pixel_size_um : float or None
        ``Pixels/@PhysicalSizeX`` converted from ``PhysicalSizeXUnit`` (default µm).
    plate, well, site : str, str, int or None
        From an HCS ``Plate/Well/WellSample`` that references the first image, when present.
    """

    channel_names: tuple[str, ...]
    size_c: int
    pixel_size_um: float | None
    plate: str | None = None
    well: str | None = None
    site: int | None = None


def read_ome_info(path: Path) -> OmeInfo:
    """Read channel names, pixel size and HCS position from an OME-TIFF (metadata only, no pixels).

    Raises
    ------
    ValueError
        If the file has no (parsable) OME-XML.
    """
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:
        xml = tif.ome_metadata
    if not xml:
        raise ValueError(f"{path}: no OME-XML in the first page's ImageDescription")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise ValueError(f"{path}: OME-XML is not well-formed ({exc})") from None
    image = next((e for e in root if _local(e.tag) == "Image"), None)
    if image is None:
        raise ValueError(f"{path}: OME-XML has no Image element")
    pixels = next((e for e in image if _local(e.tag) == "Pixels"), None)
    if pixels is None:
        raise ValueError(f"{path}: OME-XML Image has no Pixels element")
    size_c = int(pixels.get("SizeC", "1"))
    chans = [e for e in pixels if _local(e.tag) == "Channel"]
    names: list[str] = []
    for ch in chans:
        spp = int(ch.get("SamplesPerPixel", "1") or 1)
        name = ch.get("Name") or f"c{len(names)}"
        if spp > 1:  # an RGB channel holds several planes
            names.extend(f"{name}_{j}" for j in range(spp))
        else:
            names.append(name)
    while len(names) < size_c:
        names.append(f"c{len(names)}")
    pixel = None
    if pixels.get("PhysicalSizeX"):
        try:
            pixel = length_to_um(float(pixels.get("PhysicalSizeX")), pixels.get("PhysicalSizeXUnit"))
        except ValueError:
            pixel = None
    plate = well = None
    site = None
    image_id = image.get("ID")
    for pl_elem in (e for e in root if _local(e.tag) == "Plate"):
        for w in (e for e in pl_elem if _local(e.tag) == "Well"):
            for ws in (e for e in w if _local(e.tag) == "WellSample"):
                ref = next((e for e in ws if _local(e.tag) == "ImageRef"), None)
                if ref is not None and ref.get("ID") == image_id:
                    from ..layouts import normalize_well, row_letters

                    row, col = int(w.get("Row", "0")), int(w.get("Column", "0"))
                    plate = pl_elem.get("Name") or pl_elem.get("ID")
                    well = normalize_well(f"{row_letters(row)}{col + 1}")  # OME Row/Column are 0-based
                    site = int(ws.get("Index", "0")) + 1
    return OmeInfo(channel_names=tuple(names[:size_c]), size_c=size_c, pixel_size_um=pixel, plate=plate,
                   well=well, site=site)


# ----------------------------------------------------------------------------------------------------------
# plain TIFF pixel sizes

_MM_PROP = re.compile(r'<prop\s+id="spatial-calibration-(x|units)"\s+type="\w+"\s+value="([^"]*)"', re.I)


def tiff_pixel_size_um(path: str | Path) -> float | None:
    """Pixel size in µm/px from a TIFF's metadata, or None.

    Looks at, in order: OME-XML ``PhysicalSizeX``; MetaMorph / ImageXpress ``spatial-calibration-x`` (with
    ``spatial-calibration-units``); ImageJ ``unit=micron`` with ``XResolution``; ``ResolutionUnit``
    centimetre with ``XResolution``. Inch-based resolutions (72 dpi defaults) are ignored. Never raises.
    """
    try:
        import tifffile

        with tifffile.TiffFile(str(path)) as tif:
            page = tif.pages.first
            if tif.is_ome and tif.ome_metadata:
                m = re.search(r'PhysicalSizeX="([^"]+)"', tif.ome_metadata)
                if m:
                    u = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
                    return length_to_um(float(m.group(1)), u.group(1) if u else None)
            desc = page.description or ""
            props = dict((k.lower(), v) for k, v in _MM_PROP.findall(desc))
            if "x" in props:
                value = float(props["x"])
                unit = props.get("units") or "um"
                if value > 0 and unit.lower() not in ("pixel", "pixels", "px"):
                    return length_to_um(value, unit, default_unit="um")
            xres = page.tags.get("XResolution")
            if xres is None:
                return None
            num, den = xres.value if isinstance(xres.value, tuple) else (xres.value, 1)
            if not num or not den:
                return None
            per_unit = num / den  # pixels per unit
            if tif.is_imagej:
                meta = tif.imagej_metadata or {}
                unit = str(meta.get("unit", "")).replace("\\u00B5", "µ")
                if unit and unit.lower() not in ("pixel", "pixels", "inch"):
                    return length_to_um(1.0 / per_unit, unit)
                return None
            unit_tag = page.tags.get("ResolutionUnit")
            if unit_tag is not None and int(unit_tag.value) == 3 and per_unit > 1:  # centimetre
                um = 1e4 / per_unit
                return um if 1e-3 < um < 1e3 else None
    except Exception as exc:  # noqa: BLE001 - metadata is optional; the loader reports unreadable files
        logger.debug("no pixel size from %s: %s", path, exc)
    return None
