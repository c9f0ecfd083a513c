"""Real-pixel plates for end-to-end tests: Cell Painting plates cut from a real Opera Phenix site.

The pediatric Cell Painting site in ``tests/data/cellpainting/pediatric_site_full`` + ``pediatric_site_more``
(plate BR00143976, well C03, site 3: Brightfield, ER, AGP, Mito, DNA, RNA; 1080 x 1080 uint16; see
``tests/data/README.md``) is cut into a
3 x 4 grid of 360 x 270 px tiles, and each tile becomes one site of one well of a plate folder in the Opera
Phenix export layout (``<plate>/Images/rRRcCCfFFp01-chNsk1fk1fl1.tiff``). Pixels and the files' resolution tags
are the instrument's (those of the brightfield file, as every channel's are the same), bogus 64.5 µm/px
included. No pixel is simulated.

The run configs are the shipped ``examples/cellpainting_jump_target1.toml`` with the paths pointed at the
plate, and the options a test changes (the segmenter and featurizer that run offline, the feature selection).

CellProfiler's own segmentation of the site (outline overlays beside the images) gives each tile's reference
nucleus count (nuclei whose centre lies in the tile), for count checks on real pixels.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

DATA = Path(__file__).parent / "data"
SITE = DATA / "cellpainting" / "pediatric_site_full"  # DNA, AGP and CellProfiler's outlines
MORE = DATA / "cellpainting" / "pediatric_site_more"  # Brightfield, ER, Mito, RNA (instrument TIFF tags kept)
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cellpainting_jump_target1.toml"

#: Phenix channel number -> dye of the pediatric site (its CellProfiler pipeline's channel map).
CHANNELS = {1: "Brightfield", 2: "ER", 3: "AGP", 4: "Mito", 5: "DNA", 6: "RNA"}
GRID = (3, 4)
TILE = (360, 270)  # rows, cols
PIXEL_SIZE_UM = 0.598  # pediatric atlas, Opera Phenix 20x water (the TIFF tags say 64.5)


def tile_slices(index: int) -> tuple[slice, slice]:
    """Rows and columns of tile ``index`` (0..11, row-major) in the 1080 x 1080 site."""
    r, c = divmod(int(index), GRID[1])
    return slice(r * TILE[0], (r + 1) * TILE[0]), slice(c * TILE[1], (c + 1) * TILE[1])


def _resolution(path: Path) -> dict[str, Any]:
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages.first.tags
        return {"resolution": (tags["XResolution"].value, tags["YResolution"].value),
                "resolutionunit": int(tags["ResolutionUnit"].value)}


_CACHE: dict[int, np.ndarray] = {}


def site_file(ch: int) -> Path:
    """The fixture file of Phenix channel ``ch`` of the site."""
    return (SITE if ch in (3, 5) else MORE) / f"r03c03f03p01-ch{ch}sk1fk1fl1.tiff"


def site_channel(ch: int) -> np.ndarray:
    """One full-site channel (read once per process)."""
    if ch not in _CACHE:
        _CACHE[ch] = tifffile.imread(site_file(ch))
    return _CACHE[ch]


def well_row_col(well: str) -> tuple[int, int]:
    row = 0
    letters = "".join(ch for ch in well if ch.isalpha())
    for ch in letters.upper():
        row = row * 26 + (ord(ch) - 64)
    return row, int(well[len(letters):])


def write_phenix_plate(root: Path, plate: str, tiles: Mapping[str, int | Sequence[int]], *,
                       channels: Sequence[int] = tuple(CHANNELS)) -> Path:
    """Write a Phenix plate folder ``root/<plate>/Images`` whose wells hold the given tiles as sites.

    Parameters
    ----------
    tiles
        Well id -> tile index, or a sequence of tile indices (one site each, fields 1, 2, ...).
    channels
        Phenix channel numbers to write (all six by default).
    """
    images = root / plate / "Images"
    images.mkdir(parents=True, exist_ok=True)
    for well, idx in tiles.items():
        row, col = well_row_col(well)
        for field, t in enumerate([idx] if isinstance(idx, int) else list(idx), start=1):
            rs, cs = tile_slices(t)
            for ch in channels:
                tifffile.imwrite(images / f"r{row:02d}c{col:02d}f{field:02d}p01-ch{ch}sk1fk1fl1.tiff",
                                 site_channel(ch)[rs, cs], compression="zlib", compressionargs={"level": 1},
                                 **_resolution(site_file(1)))
    return images


LAYOUT_COLUMNS = ("well", "perturbation_id", "perturbation_name", "perturbation_type", "control_type",
                  "concentration", "concentration_unit", "target", "moa")

#: Perturbations of the real-pixel layouts (JUMP-Target-1 compounds; the pixels carry no effect of them).
PERTURBATIONS = {
    "DMSO": ("DMSO", "compound", "negcon", "", "", "", ""),
    "BRD-K50691590": ("bortezomib", "compound", "", "5", "uM", "PSMB1|PSMB5", "proteasome inhibitor"),
    "BRD-K60230970": ("MG-132", "compound", "", "5", "uM", "PSMB1|CAPN1", "proteasome inhibitor"),
    "BRD-K81418486": ("vorinostat", "compound", "", "5", "uM", "HDAC1|HDAC8", "HDAC inhibitor"),
    "RGFP966": ("RGFP966", "compound", "poscon", "5", "uM", "HDAC3", "HDAC inhibitor"),
}


def write_layout(path: Path, wells: Mapping[str, str]) -> Path:
    """A standard layout CSV: well -> perturbation id (one of :data:`PERTURBATIONS`)."""
    lines = [",".join(LAYOUT_COLUMNS)]
    for well, pid in wells.items():
        name, ptype, ctrl, conc, unit, target, moa = PERTURBATIONS[pid]
        lines.append(",".join([well, pid, name, ptype, ctrl, conc, unit, target, moa]))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_plates_table(path: Path, plates: Mapping[str, str]) -> Path:
    """Plates table: plate -> layout id (a layout CSV beside the table)."""
    rows = ["plate,layout,batch,cell_line,timepoint"]
    rows += [f"{plate},{layout},realpix,pediatric,48h" for plate, layout in plates.items()]
    path.write_text("\n".join(rows) + "\n")
    return path


# -- run configs ---------------------------------------------------------------------------------------------


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str | Path):
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f'"{k}" = {_toml_value(x)}' for k, x in v.items()) + " }"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def dump_toml(data: Mapping[str, Mapping[str, Any]]) -> str:
    """TOML text of a config dict (top-level scalars first, then one table per section)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, Mapping)]
    for section, values in data.items():
        if isinstance(values, Mapping):
            lines.append(f"\n[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"


#: What a test machine can run offline: the classical segmenter (Cellpose weights cannot be downloaded).
OFFLINE = {"segmentation": {"method": "classical"}}
FAST_FEATURES = {"featurizer": "classical", "classical_families": ["shape", "intensity", "correlation"],
                 "classical_zernike_degree": -1}


def example_config(folder: Path, *, images: Path, plates_table: Path, drop: Sequence[tuple[str, str]] = (),
                   **sections: Mapping[str, Any]) -> Path:
    """The shipped Cell Painting example config, pointed at ``images`` / ``plates_table``.

    ``sections`` update (or add) keys section by section; ``drop`` removes ``(section, key)`` pairs (e.g.
    ``("images", "pixel_size_um")``). Written to ``folder/run.toml``; relative paths stay relative to it.
    """
    data = tomllib.loads(EXAMPLE.read_text())
    data["screen"]["path"] = str(folder / "screen")
    data["report"]["out"] = str(folder / "reports")
    data["images"]["source"] = str(images)
    data["plates"]["table"] = str(plates_table)
    for section, key in drop:
        data[section].pop(key, None)
    for section, values in {**OFFLINE, **sections}.items():
        data.setdefault(section, {}).update(values)
    path = folder / "run.toml"
    path.write_text(dump_toml(data))
    return path


# -- CellProfiler's reference counts -------------------------------------------------------------------------


def cellprofiler_nuclei() -> np.ndarray:
    """CellProfiler's nuclei of the whole site as a label image (outlines filled; border objects are open
    outlines and drop out, as in ``tests/test_segment_accuracy.py``)."""
    from scipy import ndimage as ndi

    outline = tifffile.imread(SITE / "NucleiOutlines_BR00143976_C03_3.tiff").max(axis=-1) > 0
    lab, _ = ndi.label(ndi.binary_fill_holes(outline) & ~outline)
    return np.where(np.bincount(lab.ravel())[lab] >= 50, lab, 0)


def cellprofiler_tile_counts() -> list[int]:
    """CellProfiler nuclei per tile (by centre), tiles 0..11."""
    from scipy import ndimage as ndi

    lab = cellprofiler_nuclei()
    ids = np.unique(lab)[1:]
    centres = np.array(ndi.center_of_mass(lab > 0, lab, ids))
    counts = []
    for t in range(GRID[0] * GRID[1]):
        rs, cs = tile_slices(t)
        inside = ((centres[:, 0] >= rs.start) & (centres[:, 0] < rs.stop) & (centres[:, 1] >= cs.start)
                  & (centres[:, 1] < cs.stop))
        counts.append(int(inside.sum()))
    return counts
