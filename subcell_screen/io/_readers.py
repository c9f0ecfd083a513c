"""Readers: turn an acquisition folder (or a LoadData CSV) into a :class:`SiteIndex`.

Readers, in auto-detection priority order (the first that recognises files wins; the others say why they did
not match, or that they were outranked):

``loaddata``
    CellProfiler LoadData CSV: ``FileName_Orig<Channel>`` / ``PathName_Orig<Channel>`` columns plus
    ``Metadata_Plate``, ``Metadata_Well`` and ``Metadata_Site``. The source is the CSV file, or a folder
    holding such CSVs at its top level. Relative ``PathName`` values are relative to the CSV's folder.
``phenix``
    Opera / Operetta Phenix (Harmony) export ``rRRcCCfFFpPP-chNskTfkKflL.tiff`` (JUMP, Cell Painting
    Gallery). Plate = the folder above ``Images/`` (or the images' own folder), with a ``__<timestamp>``
    suffix removed (``BR00117010__2020-11-08T19_57_47-Measurement1`` -> ``BR00117010``). Channel number ->
    name from ``channel_names`` (``{"1": "DNA"}``), else from an ``Index.idx.xml`` / ``Index.xml`` in the
    images' folder or its parent (which also gives the pixel size), else ``ch<N>``.
``ometiff``
    Multi-channel OME-TIFF ``[<plate>_]<well>_[s]<site>.ome.tif[f]`` (or an HCS OME-XML Plate/Well/WellSample);
    channel names and ``PhysicalSizeX`` from the OME-XML; channels are ``<file>#<index>``.
``imagexpress``
    Molecular Devices ImageXpress ``<plate>_<well>[_s<site>]_w<N>[<GUID>].tif`` (thumbnails are ignored);
    channel ``w<N>`` named by ``channel_names`` (``{"1": "DNA"}``), else ``w<N>``.
``hpa``
    Human Protein Atlas ``<plate>_<well>_<site>_{red,yellow,blue,green}.{tif,png,jpg}``; red = microtubules,
    yellow = er, blue = nucleus, green = protein (the ``hpa`` channel-map preset's names).

Pixel size: the ``pixel_size_um`` argument, else the instrument metadata (Harmony index, OME-XML), else the
first image's TIFF tags (MetaMorph spatial calibration, ImageJ micron resolution), else None.

A site that lacks some of its plate's channel files keeps the expected file path for them, so that loading it
fails with a message naming the missing file while the other sites go on.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..channels import HPA_COLORS
from ..layouts import normalize_well, row_letters, well_row_col
from ._errors import ReaderError
from ._load import check_sites, iter_sites, load_site, probe_site
from ._metadata import (
    PLAUSIBLE_PIXEL_SIZE_UM,
    PixelSize,
    find_harmony_index,
    is_plausible_pixel_size,
    pixel_size_from,
    read_harmony_index,
    read_ome_info,
    tiff_pixel_size_um,
)
from ._types import SiteIndex, SiteRecord

logger = logging.getLogger(__name__)

__all__ = ["read_plate", "load_site", "list_readers", "iter_sites", "check_sites", "probe_site",
           "HPA_COLOR_CHANNELS"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")

#: HPA file colour -> channel name (the ``hpa`` channel-map preset's names), in acquisition order: the inverse
#: of :data:`subcell_screen.channels.HPA_COLORS`.
HPA_COLOR_CHANNELS: dict[str, str] = {color: channel for channel, color in HPA_COLORS.items()}

_PHENIX = re.compile(r"^r(?P<row>\d{1,3})c(?P<col>\d{1,3})f(?P<field>\d{1,4})p(?P<plane>\d{1,4})"
                     r"-ch(?P<ch>\d{1,3})sk(?P<sk>\d+)fk(?P<fk>\d+)fl(?P<fl>\d+)\.tiff?$", re.IGNORECASE)
_GUID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
_IXM = re.compile(rf"^(?P<plate>.+?)_(?P<well>[A-Za-z]{{1,2}}\d{{1,3}})(?:_s(?P<site>\d+))?_w(?P<ch>\d+)"
                  rf"(?P<guid>{_GUID})?\.tiff?$")
_HPA = re.compile(r"^(?P<plate>.+)_(?P<well>[A-Za-z]{1,2}\d{1,3})_(?P<site>\d+)_(?P<color>red|yellow|blue|green)"
                  r"\.(?:tiff?|png|jpe?g)$", re.IGNORECASE)
_OME = re.compile(r"^(?:(?P<plate>.+)_)?(?P<well>[A-Za-z]{1,2}\d{1,3})_[sS]?(?P<site>\d+)\.ome\.tiff?$")
_OME_ANY = re.compile(r"\.ome\.tiff?$", re.IGNORECASE)


# ----------------------------------------------------------------------------------------------------------
# the folder tree


@dataclass(frozen=True)
class _Tree:
    """Files a source offers the readers."""

    root: Path
    is_file: bool
    images: tuple[Path, ...]
    csvs: tuple[Path, ...]


def _scan_tree(path: Path) -> _Tree:
    if path.is_file():
        name = path.name.lower()
        is_csv = name.endswith((".csv", ".csv.gz"))
        return _Tree(root=path, is_file=True, images=() if is_csv else (path,), csvs=(path,) if is_csv else ())
    images: list[Path] = []
    csvs: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # symlink loop
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__pycache__")))
        d = Path(dirpath)
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            low = f.lower()
            if low.endswith(IMAGE_SUFFIXES):
                images.append(d / f)
            elif low.endswith((".csv", ".csv.gz")) and d == path:
                csvs.append(d / f)
    return _Tree(root=path, is_file=False, images=tuple(images), csvs=tuple(csvs))


# ----------------------------------------------------------------------------------------------------------
# shared record assembly


@dataclass(frozen=True)
class _Entry:
    plate: str
    well: str
    site: int
    order: tuple  # sort key of the channel within the plate (acquisition order)
    channel: str
    path: str


@dataclass
class _Result:
    """What one reader found: records, how many files it recognised, and why (not)."""

    records: list[SiteRecord] = field(default_factory=list)
    n_files: int = 0
    reason: str = ""
    notes: list[str] = field(default_factory=list)


def _lookup(channel_names: Mapping[str, str] | None, *keys: object) -> str | None:
    if not channel_names:
        return None
    lower = {str(k).strip().lower(): v for k, v in channel_names.items()}
    for k in keys:
        if k is None:
            continue
        v = lower.get(str(k).strip().lower())
        if v is not None:
            return str(v)
    return None


def _well_sort_key(well: str) -> tuple[int, int]:
    try:
        return well_row_col(well)
    except ValueError:
        return (10**6, 0)


def _assemble(entries: list[_Entry], *, reader: str, pixel_size: Mapping[str, PixelSize],
              missing_path: Callable[[str, str, int, str, str], str], source: Path) -> tuple[list[SiteRecord],
                                                                                          list[str]]:
    """Group file entries into site records; sites missing a channel keep its expected path."""
    plate_channels: dict[str, dict[str, tuple]] = {}
    sites: dict[tuple[str, str, int], dict[str, str]] = {}
    for e in entries:
        chans = plate_channels.setdefault(e.plate, {})
        if e.channel in chans and chans[e.channel] != e.order:
            raise ReaderError(f"{source}: plate {e.plate}: channel name {e.channel!r} is given to two different "
                              f"channels ({chans[e.channel]} and {e.order}); give each channel its own name "
                              "(channel_names)")
        chans[e.channel] = e.order
        site = sites.setdefault((e.plate, e.well, e.site), {})
        if e.channel in site and site[e.channel] != e.path:
            raise ReaderError(f"{source}: plate {e.plate} well {e.well} site {e.site} channel {e.channel!r} has "
                              f"two files: {site[e.channel]} and {e.path}. Point the reader at one measurement "
                              "folder (or remove the duplicate).")
        site[e.channel] = e.path
    order = {p: sorted(ch, key=lambda c: ch[c]) for p, ch in plate_channels.items()}
    records = []
    incomplete: dict[str, int] = {}
    for (plate, well, site), paths in sites.items():
        full = {}
        for ch in order[plate]:
            if ch in paths:
                full[ch] = paths[ch]
            else:
                full[ch] = missing_path(plate, well, site, ch, next(iter(paths.values())))
                incomplete[plate] = incomplete.get(plate, 0) + 1
        px = pixel_size.get(plate) or PixelSize(None, "no pixel size in the metadata")
        records.append(SiteRecord(plate=plate, well=well, site=site, channels=full, pixel_size_um=px.value,
                                  reader=reader, pixel_size_source=px.source))
    records.sort(key=lambda r: (r.plate, _well_sort_key(r.well), r.well, r.site))
    notes = [f"plate {p}: {n} channel file(s) missing; those sites will fail to load"
             for p, n in sorted(incomplete.items())]
    channel_sets = {tuple(ch) for ch in order.values()}
    if len(channel_sets) > 1:
        notes.append("plates differ in channels: " + "; ".join(f"{p}: {', '.join(ch)}"
                                                               for p, ch in sorted(order.items())))
    return records, notes


def _examples(paths: tuple[Path, ...] | list[Path], n: int = 3) -> str:
    names = [p.name for p in list(paths)[:n]]
    more = f" and {len(paths) - n} more" if len(paths) > n else ""
    return ", ".join(names) + more


def _no_match(tree: _Tree, pattern: str) -> str:
    if not tree.images:
        return f"looked for {pattern}; found no image files (.tif/.tiff/.png/.jpg)"
    return f"looked for {pattern}; none of the {len(tree.images)} image files fit (e.g. {_examples(tree.images)})"


def _summary(records: list[SiteRecord], n_files: int) -> str:
    plates = sorted({r.plate for r in records})
    wells = len({(r.plate, r.well) for r in records})
    chans = sorted({c for r in records for c in r.channels}, key=lambda c: c)
    p = ", ".join(plates[:3]) + (f" and {len(plates) - 3} more" if len(plates) > 3 else "")
    return (f"matched {n_files} file(s): {len(plates)} plate(s) ({p}), {wells} well(s), {len(records)} site(s), "
            f"channels {', '.join(chans)}")


def _plate_pixel_sizes(records_by_plate: Mapping[str, str], explicit: float | None) -> dict[str, PixelSize]:
    """Plate -> pixel size: explicit, else the first file's TIFF metadata (when plausible)."""
    if explicit is not None:
        return dict.fromkeys(records_by_plate, PixelSize(float(explicit), "config"))
    return {plate: _tiff_pixel_size(path) for plate, path in records_by_plate.items()}


def _tiff_pixel_size(path: str | Path) -> PixelSize:
    path = str(path)
    if not path.lower().endswith((".tif", ".tiff")):
        return PixelSize(None, f"no pixel size in the metadata ({Path(path).name} is not a TIFF)")
    return pixel_size_from(tiff_pixel_size_um(path), f"TIFF tags of {path}")


def _unique_names(names: Mapping[object, str], where: str) -> None:
    seen: dict[str, object] = {}
    for k, v in names.items():
        if v in seen:
            raise ReaderError(f"{where}: channels {seen[v]} and {k} are both named {v!r}; channel names must be "
                              "unique (check channel_names)")
        seen[v] = k


# ----------------------------------------------------------------------------------------------------------
# Phenix


def phenix_plate_name(folder: Path) -> str:
    """Plate barcode of a Phenix images folder: the folder above ``Images/`` (or the folder itself), with any
    ``__<timestamp>`` suffix removed."""
    d = folder.parent if folder.name.lower() == "images" and folder.parent != folder else folder
    return d.name.split("__", 1)[0] or d.name


def _scan_phenix(tree: _Tree, *, channel_names, pixel_size_um) -> _Result:
    pattern = "rRRcCCfFFpPP-chNsk1fk1fl1.tiff (Opera/Operetta Phenix)"
    by_folder: dict[Path, list[tuple[Path, re.Match]]] = {}
    for p in tree.images:
        m = _PHENIX.match(p.name)
        if m:
            by_folder.setdefault(p.parent, []).append((p, m))
    if not by_folder:
        return _Result(reason=_no_match(tree, pattern))
    res = _Result()
    folder_of_plate: dict[str, Path] = {}
    entries: list[_Entry] = []
    pixel: dict[str, PixelSize] = {}
    for folder, files in sorted(by_folder.items()):
        plate = phenix_plate_name(folder)
        if plate in folder_of_plate:
            raise ReaderError(f"{tree.root}: plate {plate} appears in two folders, {folder_of_plate[plate]} and "
                              f"{folder}. Point read_plate at one measurement (folder), or rename one.")
        folder_of_plate[plate] = folder
        index = None
        index_path = find_harmony_index(folder)
        if index_path is not None:
            try:
                index = read_harmony_index(index_path)
                res.notes.append(f"plate {plate}: channel names / pixel size from {index_path}")
            except ValueError as exc:
                res.notes.append(f"plate {plate}: ignored {exc}")
        planes = {int(m["plane"]) for _, m in files}
        times = {int(m["sk"]) for _, m in files}
        names: dict[int, str] = {}
        for ch in sorted({int(m["ch"]) for _, m in files}):
            xml_name = index.channel_names.get(ch) if index else None
            names[ch] = (_lookup(channel_names, ch, f"ch{ch}", xml_name) or xml_name or f"ch{ch}")
        _unique_names({f"ch{k}": v for k, v in names.items()}, f"{folder}")
        if len(planes) > 1:
            res.notes.append(f"plate {plate}: {len(planes)} z-planes; channels are named <channel>_p<plane>")
        if len(times) > 1:
            res.notes.append(f"plate {plate}: {len(times)} timepoints (sk); channels are named <channel>_t<sk>")
        for p, m in files:
            ch, plane, sk = int(m["ch"]), int(m["plane"]), int(m["sk"])
            name = names[ch] + (f"_p{plane}" if len(planes) > 1 else "") + (f"_t{sk}" if len(times) > 1 else "")
            row, col = int(m["row"]), int(m["col"])
            well = normalize_well(f"{row_letters(row - 1)}{col}")  # Phenix rows are 1-based
            entries.append(_Entry(plate, well, int(m["field"]), (ch, plane, sk), name, os.path.abspath(p)))
        if pixel_size_um is not None:
            pixel[plate] = PixelSize(float(pixel_size_um), "config")
        elif index is not None and index.pixel_size_um is not None:
            pixel[plate] = pixel_size_from(index.pixel_size_um, f"Index.xml {index.path}")
        else:
            pixel[plate] = _tiff_pixel_size(files[0][0])

    order_of = {(e.plate, e.channel): e.order for e in entries}

    def missing(plate, well, site, channel, example):
        # rebuild the expected file name from an existing file of the site and the channel's order key
        order = order_of[(plate, channel)]
        m = _PHENIX.match(Path(example).name)
        ch, plane, sk = order
        return str(Path(example).parent / (f"r{m['row']}c{m['col']}f{m['field']}p{plane:02d}-ch{ch}"
                                           f"sk{sk}fk{m['fk']}fl{m['fl']}{Path(example).suffix}"))

    res.records, notes = _assemble(entries, reader="phenix", pixel_size=pixel, missing_path=missing,
                                   source=tree.root)
    res.notes.extend(notes)
    res.n_files = len(entries)
    res.reason = _summary(res.records, res.n_files)
    return res


# ----------------------------------------------------------------------------------------------------------
# ImageXpress


def _scan_imagexpress(tree: _Tree, *, channel_names, pixel_size_um) -> _Result:
    pattern = "<plate>_<well>_s<site>_w<N>[<GUID>].tif (ImageXpress)"
    matched = [(p, m) for p in tree.images if "_thumb" not in p.name.lower() and (m := _IXM.match(p.name))]
    if not matched:
        return _Result(reason=_no_match(tree, pattern))
    res = _Result()
    names: dict[int, str] = {}
    for ch in sorted({int(m["ch"]) for _, m in matched}):
        names[ch] = _lookup(channel_names, ch, f"w{ch}") or f"w{ch}"
    _unique_names({f"w{k}": v for k, v in names.items()}, str(tree.root))
    entries = []
    first: dict[str, str] = {}
    for p, m in matched:
        try:
            well = normalize_well(m["well"])
        except ValueError as exc:
            raise ReaderError(f"{p}: {exc}") from None
        site = int(m["site"]) if m["site"] else 1
        ch = int(m["ch"])
        entries.append(_Entry(m["plate"], well, site, (ch,), names[ch], os.path.abspath(p)))
        first.setdefault(m["plate"], str(p))

    def missing(plate, well, site, channel, example):
        ch = next(k for k, v in names.items() if v == channel)
        return str(Path(example).parent / f"{plate}_{well}_s{site}_w{ch}<GUID>.tif")

    res.records, res.notes = _assemble(entries, reader="imagexpress",
                                       pixel_size=_plate_pixel_sizes(first, pixel_size_um), missing_path=missing,
                                       source=tree.root)
    res.n_files = len(entries)
    res.reason = _summary(res.records, res.n_files)
    return res


# ----------------------------------------------------------------------------------------------------------
# HPA


def _scan_hpa(tree: _Tree, *, channel_names, pixel_size_um) -> _Result:
    pattern = "<plate>_<well>_<site>_{red,yellow,blue,green}.{tif,png,jpg} (HPA)"
    matched = [(p, m) for p in tree.images if (m := _HPA.match(p.name))]
    if not matched:
        return _Result(reason=_no_match(tree, pattern))
    res = _Result()
    colors = list(HPA_COLOR_CHANNELS)
    names = {c: _lookup(channel_names, c, HPA_COLOR_CHANNELS[c]) or HPA_COLOR_CHANNELS[c] for c in colors}
    _unique_names(names, str(tree.root))
    entries = []
    first: dict[str, str] = {}
    for p, m in matched:
        try:
            well = normalize_well(m["well"])
        except ValueError as exc:
            raise ReaderError(f"{p}: {exc}") from None
        color = m["color"].lower()
        entries.append(_Entry(m["plate"], well, int(m["site"]), (colors.index(color),), names[color],
                              os.path.abspath(p)))
        first.setdefault(m["plate"], str(p))

    def missing(plate, well, site, channel, example):
        color = next(c for c, v in names.items() if v == channel)
        m = _HPA.match(Path(example).name)
        stem = Path(example).name[: m.start("color")]
        return str(Path(example).parent / f"{stem}{color}{Path(example).suffix}")

    res.records, res.notes = _assemble(entries, reader="hpa", pixel_size=_plate_pixel_sizes(first, pixel_size_um),
                                       missing_path=missing, source=tree.root)
    res.n_files = len(entries)
    res.reason = _summary(res.records, res.n_files)
    return res


# ----------------------------------------------------------------------------------------------------------
# OME-TIFF


def _scan_ometiff(tree: _Tree, *, channel_names, pixel_size_um) -> _Result:
    pattern = "multi-channel [<plate>_]<well>_[s]<site>.ome.tif (OME-TIFF)"
    candidates = [p for p in tree.images if _OME_ANY.search(p.name)]
    if not candidates:
        return _Result(reason=_no_match(tree, pattern))
    res = _Result()
    entries = []
    pixel: dict[str, PixelSize] = {}
    skipped: list[str] = []
    for p in candidates:
        try:
            info = read_ome_info(p)
        except Exception as exc:  # noqa: BLE001 - a bad file is reported, the others are indexed
            skipped.append(f"{p.name} ({exc})")
            continue
        m = _OME.match(p.name)
        if m:
            plate = m["plate"] or (p.parent.name if not tree.is_file else p.parent.name)
            well, site = m["well"], int(m["site"])
        elif info.well is not None:
            plate, well, site = info.plate or p.parent.name, info.well, int(info.site or 1)
        else:
            skipped.append(f"{p.name} (no <well>_<site> in the name and no HCS Plate/Well in the OME-XML)")
            continue
        try:
            well = normalize_well(well)
        except ValueError as exc:
            raise ReaderError(f"{p}: {exc}") from None
        names = [(_lookup(channel_names, i, n) or n) for i, n in enumerate(info.channel_names)]
        _unique_names(dict(enumerate(names)), str(p))
        for i, n in enumerate(names):
            entries.append(_Entry(plate, well, site, (i,), n, f"{os.path.abspath(p)}#{i}"))
        if plate not in pixel:
            pixel[plate] = (PixelSize(float(pixel_size_um), "config") if pixel_size_um is not None
                            else pixel_size_from(info.pixel_size_um, f"OME-XML of {p}"))
    if skipped:
        res.notes.append(f"skipped {len(skipped)} OME-TIFF file(s): {'; '.join(skipped[:3])}")
    if not entries:
        return _Result(reason=f"looked for {pattern}; found {len(candidates)} .ome.tif file(s) but none usable: "
                              f"{'; '.join(skipped[:3])}", notes=res.notes)

    def missing(plate, well, site, channel, example):
        return example  # same file; loading reports the channel it lacks

    res.records, notes = _assemble(entries, reader="ometiff", pixel_size=pixel, missing_path=missing,
                                   source=tree.root)
    res.notes.extend(notes)
    res.n_files = len({e.path.rsplit("#", 1)[0] for e in entries})
    res.reason = _summary(res.records, res.n_files)
    return res


# ----------------------------------------------------------------------------------------------------------
# CellProfiler LoadData CSV

_FILENAME = re.compile(r"^FileName_(?P<ch>.+)$")


def _loaddata_columns(columns: list[str], *, strict: bool) -> dict[str, tuple[str, str | None]]:
    """Channel -> (FileName column, PathName column or None)."""
    out = {}
    names = [c for c in columns if _FILENAME.match(c)]
    orig = [c for c in names if c[len("FileName_"):].startswith("Orig")]
    use = orig if orig or strict else [c for c in names if not c[len("FileName_"):].startswith("Illum")]
    for c in use:
        ch = c[len("FileName_"):]
        path_col = f"PathName_{ch}"
        out[ch] = (c, path_col if path_col in columns else None)
    return out


def _join_path(folder: str | None, name: str, base: Path) -> str:
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", name):
        return name
    if folder is None or folder == "":
        return os.path.abspath(base / name)
    if folder.startswith("file://"):
        folder = folder[len("file://"):]
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", folder):
        return folder.rstrip("/") + "/" + name
    p = Path(folder)
    return os.path.abspath((p if p.is_absolute() else base / p) / name)


def _scan_loaddata(tree: _Tree, *, channel_names, pixel_size_um) -> _Result:
    import polars as pl

    pattern = "a LoadData CSV with FileName_Orig<Channel>, PathName_Orig<Channel>, Metadata_Plate/Well/Site"
    if not tree.csvs:
        where = "the source is not a .csv file" if tree.is_file else "no .csv file at the folder's top level"
        return _Result(reason=f"looked for {pattern}; {where}")
    res = _Result()
    entries = []
    first: dict[str, str] = {}
    rejected = []
    n_rows = 0
    for csv in tree.csvs:
        try:
            head = pl.read_csv(csv, n_rows=0, infer_schema=False)
        except Exception as exc:  # noqa: BLE001
            rejected.append(f"{csv.name}: unreadable ({exc})")
            continue
        chans = _loaddata_columns(head.columns, strict=not tree.is_file)
        if not chans:
            rejected.append(f"{csv.name}: no FileName_Orig<Channel> columns")
            continue
        cols = head.columns
        site_col = next((c for c in ("Metadata_Site", "Metadata_Field", "Metadata_FieldID", "Metadata_SiteID")
                         if c in cols), None)
        if "Metadata_Well" not in cols and not {"Metadata_Row", "Metadata_Col"} <= set(cols):
            rejected.append(f"{csv.name}: no Metadata_Well (or Metadata_Row + Metadata_Col) column")
            continue
        if site_col is None:
            rejected.append(f"{csv.name}: no Metadata_Site (or Metadata_Field) column")
            continue
        df = pl.read_csv(csv, infer_schema=False)
        n_rows += df.height
        names = {}
        for ch in chans:
            short = ch[len("Orig"):] if ch.startswith("Orig") and len(ch) > 4 else ch
            names[ch] = _lookup(channel_names, ch, short) or short
        _unique_names(names, str(csv))
        if "Metadata_Plate" not in cols:
            res.notes.append(f"{csv.name}: no Metadata_Plate column; plate = {csv.name.split('.')[0]!r}")
        base = csv.parent
        order = list(chans)
        for i, row in enumerate(df.iter_rows(named=True)):
            line = i + 2
            plate = row.get("Metadata_Plate") or csv.name.split(".")[0]
            try:
                if "Metadata_Well" in cols and row.get("Metadata_Well"):
                    well = normalize_well(row["Metadata_Well"])
                else:
                    r, c = row.get("Metadata_Row"), row.get("Metadata_Col")
                    r_letters = r if r and not r.isdigit() else row_letters(int(r) - 1)
                    well = normalize_well(f"{r_letters}{int(c)}")
            except (ValueError, TypeError) as exc:
                raise ReaderError(f"{csv}, line {line}: bad well ({exc})") from None
            try:
                site = int(float(row[site_col]))
            except (TypeError, ValueError):
                raise ReaderError(f"{csv}, line {line}, column {site_col!r}: site {row[site_col]!r} is not a "
                                  "number") from None
            for ch in order:
                fcol, pcol = chans[ch]
                fname = row.get(fcol)
                if not fname:
                    raise ReaderError(f"{csv}, line {line}, column {fcol!r}: empty file name")
                path = _join_path(row.get(pcol) if pcol else None, fname, base)
                entries.append(_Entry(str(plate), well, site, (order.index(ch),), names[ch], path))
                first.setdefault(str(plate), path)
    if not entries:
        return _Result(reason=f"looked for {pattern}; " + "; ".join(rejected or ["the CSV has no rows"]))
    if rejected:
        res.notes.append("ignored CSV(s): " + "; ".join(rejected))

    def missing(plate, well, site, channel, example):  # pragma: no cover - every row names every channel
        return example

    res.records, notes = _assemble(entries, reader="loaddata",
                                   pixel_size=_plate_pixel_sizes(first, pixel_size_um), missing_path=missing,
                                   source=tree.root)
    res.notes.extend(notes)
    res.n_files = n_rows
    res.reason = _summary(res.records, len(entries)).replace("file(s)", "file name(s)", 1)
    return res


# ----------------------------------------------------------------------------------------------------------
# registry and auto-detection


@dataclass(frozen=True)
class _Reader:
    name: str
    looks_for: str
    scan: Callable[..., _Result]


_READERS: dict[str, _Reader] = {
    "loaddata": _Reader("loaddata", "CellProfiler LoadData CSV (FileName_Orig<Channel>, PathName_Orig<Channel>, "
                                    "Metadata_Plate/Well/Site)", _scan_loaddata),
    "phenix": _Reader("phenix", "Opera/Operetta Phenix rRRcCCfFFpPP-chNsk1fk1fl1.tiff (+ Index.xml)",
                      _scan_phenix),
    "ometiff": _Reader("ometiff", "multi-channel OME-TIFF [<plate>_]<well>_<site>.ome.tif", _scan_ometiff),
    "imagexpress": _Reader("imagexpress", "ImageXpress <plate>_<well>_s<site>_w<N>[<GUID>].tif",
                           _scan_imagexpress),
    "hpa": _Reader("hpa", "HPA <plate>_<well>_<site>_{red,yellow,blue,green}.{tif,png,jpg}", _scan_hpa),
}


def list_readers() -> dict[str, str]:
    """Reader name -> what it looks for, in auto-detection priority order."""
    return {name: r.looks_for for name, r in _READERS.items()}


def _parse_channel_names(channel_names: Mapping[str, str] | str | None) -> dict[str, str] | None:
    if channel_names is None:
        return None
    if isinstance(channel_names, str):  # "1=DNA,2=ER"
        out = {}
        for part in channel_names.split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise ReaderError(f"channel_names: {part.strip()!r} is not <id>=<name> (e.g. 1=DNA,2=ER)")
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
        return out
    return {str(k): str(v) for k, v in channel_names.items()}


def read_plate(path: str | os.PathLike, *, reader: str | None = None,
               channel_names: Mapping[str, str] | str | None = None,
               pixel_size_um: float | None = None) -> SiteIndex:
    """Index the sites of an acquisition folder (or LoadData CSV).

    Nothing is decoded: the index lists, per site, the file (or ``file#channel``) of each channel.

    Parameters
    ----------
    path
        Folder (searched recursively; may hold several plates) or a LoadData CSV / single OME-TIFF file.
    reader
        ``"phenix"``, ``"imagexpress"``, ``"loaddata"``, ``"hpa"`` or ``"ometiff"``; ``None`` or ``"auto"``
        detects it (see :func:`list_readers`). An explicit reader always wins.
    channel_names
        Instrument channel id -> channel name, e.g. ``{"1": "DNA", "2": "ER"}`` (Phenix ``chN`` /
        ImageXpress ``wN``; LoadData ``OrigDNA``; OME-TIFF index or name; HPA colour), or the string form
        ``"1=DNA,2=ER"``. Overrides names from the instrument metadata.
    pixel_size_um
        µm per pixel; overrides the metadata.

    Returns
    -------
    SiteIndex
        Records sorted by plate, well, site; ``notes`` says which reader matched and why the others did not.

    Raises
    ------
    ReaderError
        If the path does not exist, the reader name is unknown, or no reader matches (the message names the
        folder and what each reader looked for).
    """
    src = Path(path)
    if not src.exists():
        raise ReaderError(f"{src}: no such file or folder")
    names = _parse_channel_names(channel_names)
    if pixel_size_um is not None and not pixel_size_um > 0:
        raise ReaderError(f"pixel_size_um must be > 0, got {pixel_size_um}")
    if pixel_size_um is not None and not is_plausible_pixel_size(pixel_size_um):
        lo, hi = PLAUSIBLE_PIXEL_SIZE_UM
        raise ReaderError(f"pixel_size_um = {pixel_size_um} µm/px is outside the plausible {lo:g}-{hi:g} µm/px "
                          "for cell microscopy")
    if reader not in (None, "auto") and reader not in _READERS:
        raise ReaderError(f"unknown reader {reader!r}; known: {', '.join(_READERS)} (or 'auto')")
    tree = _scan_tree(src)
    explicit = reader not in (None, "auto")
    candidates = [reader] if explicit else list(_READERS)
    results = {n: _READERS[n].scan(tree, channel_names=names, pixel_size_um=pixel_size_um) for n in candidates}
    winner = next((n for n in candidates if results[n].records), None)
    if winner is None:
        lines = "\n".join(f"  {n}: {results[n].reason}" for n in candidates)
        what = f"reader {reader!r} found no sites" if explicit else "no reader matched"
        raise ReaderError(f"{src}: {what}.\n{lines}")
    notes: dict[str, str] = {}
    for n in candidates:
        r = results[n]
        if n == winner:
            how = "chosen explicitly" if explicit else "detected"
            notes[n] = f"{how}: {r.reason}" + "".join(f"; {x}" for x in r.notes)
        elif r.records:
            notes[n] = (f"also {r.reason}, but {winner} takes precedence (pass reader={n!r} to use it)")
        else:
            notes[n] = r.reason
    if not explicit:
        logger.debug("%s: reader %s (%s)", src, winner, results[winner].reason)
    return SiteIndex(records=tuple(results[winner].records), reader=winner, source=str(src), notes=notes)
