"""A commented run config for a plate folder: what ``subcell-screen init`` writes.

The folder is read as ``subcell-screen sites`` reads it (reader detection, plates, wells, channels, pixel size
and where it came from). Channel names are matched to roles (Cell Painting dyes, HPA colours, brightfield);
what cannot be known from the files (channel numbers without names, a pixel size the metadata does not give
credibly, the layout of each plate) is written as a loud ``TODO`` for the user to fill in. The user edits the
file and runs it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Starter", "write_starter", "ROLE_SYNONYMS", "propose_roles"]

logger = logging.getLogger(__name__)

#: Role -> lower-case words that name it in channel names (instrument, LoadData or OME names).
ROLE_SYNONYMS: Mapping[str, tuple[str, ...]] = {
    "DNA": ("dna", "hoechst", "dapi", "nucleus", "nuclei", "draq5"),
    "ER": ("er", "concanavalin", "cona", "endoplasmic"),
    "RNA": ("rna", "syto", "syto14", "nucleoli"),
    "AGP": ("agp", "actin", "phalloidin", "wga", "golgi", "membrane"),
    "Mito": ("mito", "mitotracker", "mitochondria"),
    "Brightfield": ("brightfield", "bf", "phase", "dpc", "transmitted", "brightfieldlow", "brightfieldhigh"),
    "microtubules": ("microtubules", "tubulin", "red"),
    "protein": ("protein", "gfp", "antibody", "green", "poi"),
}
_HPA_ER = ("er", "yellow")


def _words(name: str) -> set[str]:
    text = re.sub(r"([a-z])([A-Z])", r"\1 \2", name)
    text = re.sub(r"^orig", "", text, flags=re.I)
    return {w for w in re.split(r"[^a-z0-9]+", text.lower()) if w} | {re.sub(r"[^a-z0-9]", "", name.lower())}


def propose_roles(channels: list[str]) -> dict[str, str]:
    """Channel name -> proposed role (``DNA``, ``ER``, ``RNA``, ``AGP``, ``Mito``, ``Brightfield``,
    ``microtubules``, ``protein``, or ``?`` when the name says nothing)."""
    hpa = any(_words(c) & {"microtubules", "tubulin", "red", "protein", "green", "yellow"} for c in channels)
    out = {}
    for ch in channels:
        words = _words(ch)
        role = "?"
        for r, syn in ROLE_SYNONYMS.items():
            if words & set(syn):
                role = r
                break
        if hpa:
            role = {"DNA": "nucleus"}.get(role, role)
            if words & set(_HPA_ER):
                role = "er"
        out[ch] = role
    return out


@dataclass(frozen=True)
class Starter:
    """What :func:`write_starter` wrote and found.

    Attributes
    ----------
    config : Path
        The run config.
    plates_table : Path
        The plates table beside it.
    preset : str
        Channel-map preset proposed.
    roles : dict
        Channel name -> proposed role.
    pixel_size_um : float or None
        Pixel size found (None: not credible in the metadata; a TODO in the config).
    todos : tuple of str
        What the user must fill in before running.
    """

    config: Path
    plates_table: Path
    preset: str
    roles: dict = field(default_factory=dict)
    pixel_size_um: float | None = None
    todos: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        """What the CLI prints."""
        out = [f"wrote {self.config}", f"wrote {self.plates_table}",
               "channels: " + ", ".join(f"{c} -> {r}" for c, r in self.roles.items()),
               f"preset: {self.preset}",
               "pixel size: " + (f"{self.pixel_size_um:g} µm/px" if self.pixel_size_um else "TODO")]
        if self.todos:
            out.append(f"{len(self.todos)} TODO(s) to fill in before `subcell-screen run {self.config}`:")
            out += [f"  - {t}" for t in self.todos]
        else:
            out.append(f"next: check the file, then `subcell-screen run {self.config}`")
        return out


def _toml_str(value: object) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_starter(folder: str | Path, *, layout: str | Path | None = None, out: str | Path | None = None,
                  channel_names: Mapping[str, str] | str | None = None, pixel_size_um: float | None = None,
                  reader: str | None = None, overwrite: bool = False) -> Starter:
    """Write a commented run config (and a plates table) for the plates in ``folder``.

    Parameters
    ----------
    folder
        The acquisition folder (as for ``subcell-screen sites``).
    layout
        A layout file (or built-in layout id) for every plate; default a TODO in the plates table.
    out
        The config file to write (default ``./<folder name>.toml``); the plates table goes beside it as
        ``<stem>_plates.csv``.
    channel_names, pixel_size_um, reader
        As for :func:`subcell_screen.io.read_plate` (instrument channel id -> name; µm per pixel; reader).
    overwrite
        Replace existing files (default: refuse).

    Returns
    -------
    Starter

    Raises
    ------
    ReaderError
        No reader recognises the folder.
    FileExistsError
        The config or plates table exists and ``overwrite`` is False.
    """
    from .channels import CELLPAINTING_COLORS
    from .io import read_plate

    folder = Path(folder)
    index = read_plate(folder, reader=reader, channel_names=channel_names, pixel_size_um=pixel_size_um)
    config = Path(out) if out is not None else Path.cwd() / f"{folder.resolve().name}.toml"
    table = config.with_name(f"{config.stem}_plates.csv")
    for path in (config, table):
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it, or --out another file")
    channels = list(dict.fromkeys(c for r in index for c in r.channels))
    roles = propose_roles(channels)
    role_of = {r: c for c, r in roles.items() if r != "?"}
    todos: list[str] = []
    cp_roles = [r for r in CELLPAINTING_COLORS if r in role_of]
    hpa_roles = [r for r in ("microtubules", "er", "nucleus", "protein") if r in role_of]
    if len(cp_roles) == 5 or (len(cp_roles) >= len(hpa_roles) and cp_roles):
        preset = "cellpainting"
        missing = [r for r in CELLPAINTING_COLORS if r not in role_of]
    elif hpa_roles:
        preset = "hpa"
        missing = [r for r in ("microtubules", "er", "nucleus", "protein") if r not in role_of]
        if missing == ["microtubules"]:
            preset, missing = "hpa-ybg", []
        elif missing == ["er"]:
            preset, missing = "hpa-rbg", []
    else:
        preset, missing = "cellpainting", list(CELLPAINTING_COLORS)
    needs_names = missing and any(r == "?" for r in roles.values())
    if needs_names:
        todos.append("[images].channel_names: the channel names say nothing about the dyes; map each instrument "
                     f"channel to a dye ({', '.join(missing)})")
    elif missing:
        todos.append(f"[channels]: no channel found for {', '.join(missing)} (preset {preset}); rename channels in "
                     "[images].channel_names or use preset = \"custom\"")
    first = index.records[0]
    px, px_source = first.pixel_size_um, first.pixel_size_source
    if px is None:
        todos.append(f"[images].pixel_size_um: {px_source or 'no pixel size in the metadata'}")
    plates = index.plates()
    layout_id = None
    if layout is not None:
        layout_id = str(Path(layout).resolve()) if Path(layout).exists() else str(layout)
    else:
        todos.append(f"{table.name}: the layout of each plate (a layout CSV, or a built-in id such as "
                     "JUMP-Target-1_compound; check it with `subcell-screen layout check`)")
    table.write_text("plate,layout,batch,cell_line,timepoint\n"
                     + "".join(f"{p},{layout_id or 'TODO-layout'},,,\n" for p in plates))

    lines = [f"# Run config for {folder.resolve()} (written by `subcell-screen init`; every key: "
             "`subcell-screen config`).",
             f"# Reader: {index.reader}; {len(plates)} plate(s), {len({(r.plate, r.well) for r in index})} well(s), "
             f"{len(index)} site(s).",
             "# Run it with: subcell-screen run " + str(config.name)]
    if todos:
        lines.append("# TODO before running:")
        lines += [f"#   - {t}" for t in todos]
    lines += ["", "[screen]", f"path = {_toml_str(config.with_name(config.stem + '_screen').name)}",
              f"name = {_toml_str(folder.resolve().name)}", "", "[images]",
              f"source = {_toml_str(folder.resolve())}", f"reader = {_toml_str(index.reader)}"]
    if px is not None:
        given = "given to `subcell-screen init --pixel-size`" if pixel_size_um is not None else px_source
        lines.append(f"pixel_size_um = {px:g}    # from {given}")
    else:
        lines.append(f"# TODO pixel_size_um = ...   # µm per pixel; NOT SET: {px_source} (e.g. 0.598 for JUMP's 20x "
                     "water objective, 2x2 binning, Opera Phenix)")
    ids = _channel_ids(index, channels)
    if needs_names:
        entries = ", ".join(f'"{i}" = "TODO-{c}"' for i, c in ids.items())
        lines.append(f"channel_names = {{ {entries} }}    # TODO: the dye of each instrument channel "
                     f"({', '.join(missing)})")
    elif channel_names:
        lines.append(f"channel_names = {{ {', '.join(f'{_toml_str(k)} = {_toml_str(v)}' for k, v in ids.items())} }}")
    lines.append("# channels found and their proposed roles: "
                 + ", ".join(f"{c} = {r}" for c, r in roles.items()))
    lines += ["", "[plates]", f"table = {_toml_str(table.name)}", "", "[channels]",
              f"preset = {_toml_str(preset)}"]
    if preset == "cellpainting":
        lines += ['nucleus = "DNA"', 'cytoplasm = "AGP"']
    lines += ["", "[segmentation]", 'method = "classical"    # offline; "cellpose" with local Cellpose weights '
              "(`subcell-screen models`)", "", "[embedding]",
              'featurizer = "subcell"', f"model = {_toml_str(_model_for(preset))}",
              'precision = "auto"', "allow_fallback = true    # classical features (announced) when the SubCell "
              "weights are not in the model cache", "", "[profiles]", 'normalize = "mad_robustize"',
              'feature_select = ["variance_threshold", "correlation_threshold", "drop_na_columns"]', "",
              "[report]", f"out = {_toml_str(config.with_name(config.stem + '_reports').name)}", ""]
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("\n".join(lines))
    return Starter(config=config, plates_table=table, preset=preset, roles=roles, pixel_size_um=px,
                   todos=tuple(todos))


def _model_for(preset: str) -> str:
    return {"cellpainting": "ybg/MAE-CellS-ProtS-Pool", "hpa-rbg": "rbg/MAE-CellS-ProtS-Pool",
            "hpa-ybg": "ybg/MAE-CellS-ProtS-Pool", "hpa-bg": "bg/ViT-ProtS-Pool"}.get(preset, "rybg/MAE-CellS-ProtS-Pool")


def _channel_ids(index: object, channels: list[str]) -> dict[str, str]:
    """Instrument channel id (Phenix chN / ImageXpress wN number) -> channel name, where the files say it."""
    out: dict[str, str] = {}
    rec = index.records[0]
    for name in channels:
        path = Path(str(rec.channels.get(name, "")).split("#")[0]).name
        m = re.search(r"-ch(\d+)", path) or re.search(r"_w(\d+)", path)
        out[m.group(1) if m else name] = name
    return out
