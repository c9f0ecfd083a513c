"""Simulated screens on disk: images in real naming schemes, layouts, plates table, run config, answer key.

:func:`simulate_screen` renders every site of a multi-plate screen with :func:`~subcell_screen.simulate.render_site`
and writes it the way instruments and portals do, so that the real readers, segmenters, featurizers and scorers
run on it unchanged:

* HPA style: ``images/<plate>_<well>_<site>_<color>.tif`` with color ``red`` (microtubules), ``yellow`` (ER),
  ``blue`` (nucleus), ``green`` (protein of interest); wells ``A01``, sites from 1.
* Cell Painting style, Opera Phenix export naming:
  ``images/<plate>/Images/r{row:02d}c{col:02d}f{site:02d}p01-ch{N}sk1fk1fl1.tiff`` (1-based row/column),
  ch1 DNA, ch2 ER, ch3 RNA, ch4 AGP, ch5 Mito; the channel map and pixel size are in ``config.toml``.

Beside the images: ``plates.csv`` (plate, layout, batch, cell_line, timepoint), ``layouts/<id>.csv`` in the
standard layout format, ``answer_key.csv`` (planted effects), ``config.toml`` (a complete run configuration),
``simulation.json`` (the parameters) and ``ground_truth/`` (per-site nucleus and cell label TIFFs, per-site
truth Parquet, and screen-wide ``cells.parquet``, ``sites.parquet``, ``wells.parquet``).

Planted biology (see :mod:`~subcell_screen.simulate.effects`): dose-dependent HDAC8 Nucleoplasm -> Cytosol
relocalization under vorinostat, mitotic arrest with microtubule bundling (paclitaxel), cell loss
(staurosporine), larger nuclei (etoposide), null compounds. Nuisance: per-plate intensity drift, a batch effect
across plates, edge wells (dimmer, fewer cells), vignetting, occasional defocused sites and debris.

Examples
--------
>>> import tempfile
>>> from subcell_screen.simulate import simulate_screen
>>> sim = simulate_screen(tempfile.mkdtemp(), style="hpa", preset="smoke", seed=0)
>>> sim.n_sites, sim.answer_key().filter(pl.col("expected_hit")).height > 0
(4, True)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from ..channels import HPA_COLORS  # file colour of each HPA-style channel (re-exported)
from ..layouts import (
    PLATE_FORMATS,
    builtin_layout_path,
    read_layout,
    row_letters,
    validate_layout,
    well_row_col,
    write_layout,
)
from .effects import (
    PROTEIN_LOCALIZATION,
    PlantedEffect,
    answer_key_table,
    hpa_demo_effects,
    jump_target1_effects,
)
from .images import STYLE_CHANNELS, Acquisition, CellPopulation, default_acquisition, render_site

logger = logging.getLogger(__name__)

__all__ = [
    "HPA_COLORS",
    "PHENIX_CHANNEL_NUMBERS",
    "SCREEN_PRESETS",
    "Nuisance",
    "ScreenPreset",
    "SimulatedScreen",
    "hpa_layout",
    "simulate_screen",
    "open_simulated_screen",
]

#: Opera Phenix channel number of each Cell Painting channel in the simulated export.
PHENIX_CHANNEL_NUMBERS: dict[str, int] = {"DNA": 1, "ER": 2, "RNA": 3, "AGP": 4, "Mito": 5}

_UNIT_TO_UM = {"pM": 1e-6, "nM": 1e-3, "uM": 1.0, "mM": 1e3, "M": 1e6}


@dataclass(frozen=True)
class Nuisance:
    """Technical variation planted on top of the biology.

    Attributes
    ----------
    plate_drift : float
        SD of the log intensity gain per plate and channel.
    batch_effect : float
        SD of the log intensity gain per batch and channel (also scales the background).
    n_batches : int
        Plates are assigned to batches round-robin.
    edge_intensity, edge_density : float
        Relative loss of intensity and of cell density in outer-ring wells (evaporation).
    site_jitter : float
        SD of the log intensity gain per site.
    vignetting : float
        Illumination loss at the far corner of every site.
    out_of_focus_fraction : float
        Probability that a site is defocused.
    debris_per_site : float
        Mean number of debris particles per site (Poisson).
    """

    plate_drift: float = 0.08
    batch_effect: float = 0.12
    n_batches: int = 2
    edge_intensity: float = 0.12
    edge_density: float = 0.15
    site_jitter: float = 0.03
    vignetting: float = 0.35
    out_of_focus_fraction: float = 0.02
    debris_per_site: float = 0.3

    @classmethod
    def none(cls) -> Nuisance:
        """No technical variation at all (flat field, no drift, no defocus, no debris)."""
        return cls(plate_drift=0.0, batch_effect=0.0, edge_intensity=0.0, edge_density=0.0, site_jitter=0.0,
                   vignetting=0.0, out_of_focus_fraction=0.0, debris_per_site=0.0)


@dataclass(frozen=True)
class ScreenPreset:
    """Size of a simulated screen.

    Attributes
    ----------
    n_plates, sites_per_well : int
    shape : (int, int)
        Site size, px.
    pixel_size_um : float
    density_per_mm2 : float
        Cell density of untreated, inner wells.
    layout : str
        ``"hpa:<n>"`` for the generated HPA layout on an n-well plate (``hpa:smoke`` for 4 wells), or a
        shipped layout id, optionally ``id:<n>`` to keep the planted-effect wells plus controls and others up
        to n wells.
    """

    n_plates: int
    sites_per_well: int
    shape: tuple[int, int]
    pixel_size_um: float
    density_per_mm2: float
    layout: str


#: (style, name) -> preset. ``smoke``: 4 wells, seconds. ``demo``: the README demo (HPA: 2 plates x 52 wells x
#: 2 sites of 304x304 px at 0.5 µm/px, ~25 cells per untreated site). ``full``: whole 384-well plates.
SCREEN_PRESETS: dict[tuple[str, str], ScreenPreset] = {
    ("hpa", "smoke"): ScreenPreset(1, 1, (160, 160), 0.5, 1100.0, "hpa:smoke"),
    ("hpa", "demo"): ScreenPreset(2, 2, (304, 304), 0.5, 1100.0, "hpa:96"),
    ("hpa", "full"): ScreenPreset(2, 4, (512, 512), 0.5, 1100.0, "hpa:384"),
    ("cellpainting", "smoke"): ScreenPreset(1, 1, (192, 192), 0.598, 700.0, "JUMP-Target-1_compound:smoke"),
    ("cellpainting", "demo"): ScreenPreset(2, 2, (320, 320), 0.598, 700.0, "JUMP-Target-1_compound:48"),
    ("cellpainting", "full"): ScreenPreset(2, 4, (1080, 1080), 0.598, 700.0, "JUMP-Target-1_compound"),
}


# ------------------------------------------------------------------------------------------------------------
# layouts


_HPA_COMPOUNDS = {
    # id: (name, target, moa)
    "vorinostat": ("vorinostat", "HDAC1|HDAC2|HDAC3|HDAC6|HDAC8", "HDAC inhibitor"),
    "paclitaxel": ("paclitaxel", "TUBB", "tubulin stabilizer"),
    "staurosporine": ("staurosporine", "PKC", "protein kinase inhibitor"),
    "etoposide": ("etoposide", "TOP2A", "topoisomerase inhibitor"),
}


def _plate_wells(plate_format: int) -> list[str]:
    n_rows, n_cols = PLATE_FORMATS[plate_format]
    return [row_letters(r) + f"{c + 1:02d}" for r in range(n_rows) for c in range(n_cols)]


def hpa_layout(
    *,
    plate_format: int = 96,
    proteins: Sequence[str] = ("HDAC8",),
    vorinostat_doses_uM: Sequence[float] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0),
    replicates: int = 2,
    n_negcon: int = 12,
    n_null: int = 6,
    smoke: bool = False,
) -> pl.DataFrame:
    """A generated HPA-style layout (standard columns plus ``protein``), validated.

    Per protein: ``n_negcon`` DMSO wells, vorinostat at every dose x ``replicates``, paclitaxel 0.1 µM,
    staurosporine 1 µM and etoposide 10 µM x ``2 * replicates``, and ``n_null`` inactive compounds x
    ``replicates`` (52 wells with the defaults). Positions are a fixed pseudo-random scatter over the plate
    (the same for every call), so neither doses nor controls line up with edges or rows.

    Parameters
    ----------
    plate_format
        96 or 384 (1536 works too).
    proteins
        Protein of interest of each block (names from :data:`~subcell_screen.simulate.PROTEIN_LOCALIZATION`).
    smoke
        A 4-well plate instead: DMSO x 2, vorinostat 10 µM, paclitaxel 0.1 µM (first protein only).

    Raises
    ------
    ValueError
        If the design does not fit the plate, or a protein is unknown.
    """
    for p in proteins:
        if p not in PROTEIN_LOCALIZATION:
            raise ValueError(f"unknown protein {p!r}; known: {', '.join(PROTEIN_LOCALIZATION)}")
    entries: list[tuple[str, str | None, float | None, str]] = []  # (pid, control, conc, protein)
    if smoke:
        p = proteins[0]
        entries = [("DMSO", "negcon", None, p), ("vorinostat", None, 10.0, p), ("paclitaxel", None, 0.1, p),
                   ("DMSO", "negcon", None, p)]
        wells = ["B02", "B03", "B04", "B05"]
    else:
        for p in proteins:
            entries += [("DMSO", "negcon", None, p)] * n_negcon
            entries += [("vorinostat", None, float(d), p) for d in vorinostat_doses_uM for _ in range(replicates)]
            for pid, conc in (("paclitaxel", 0.1), ("staurosporine", 1.0), ("etoposide", 10.0)):
                entries += [(pid, None, conc, p)] * (2 * replicates)
            entries += [(f"inactive-{k + 1:02d}", None, 10.0, p) for k in range(n_null) for _ in range(replicates)]
        all_wells = _plate_wells(plate_format)
        if len(entries) > len(all_wells):
            raise ValueError(f"the HPA design needs {len(entries)} wells but a {plate_format}-well plate has "
                             f"{len(all_wells)}; use fewer proteins, doses or replicates")
        order = np.random.default_rng(20240611).permutation(len(all_wells))[: len(entries)]
        wells = [all_wells[i] for i in sorted(order)]
        # scatter perturbations over the chosen wells with a second fixed permutation
        perm = np.random.default_rng(7).permutation(len(entries))
        entries = [entries[i] for i in perm]
    rows = []
    for well, (pid, control, conc, protein) in zip(wells, entries):
        name, target, moa = _HPA_COMPOUNDS.get(pid, (pid, None, None))
        if pid == "DMSO":
            name, target, moa = "DMSO", None, None
        rows.append({"well": well, "perturbation_id": pid, "perturbation_name": name,
                     "perturbation_type": "compound", "control_type": control,
                     "concentration": None if conc is None else repr(conc),
                     "concentration_unit": None if conc is None else "uM", "target": target, "moa": moa,
                     "inchikey": None, "protein": protein})
    df = pl.DataFrame(rows, schema={k: pl.String for k in rows[0]})
    return validate_layout(df, plate_format=plate_format)


def _subset_layout(layout: pl.DataFrame, effects: Sequence[PlantedEffect], n: int | str) -> pl.DataFrame:
    """Keep the planted wells, then negcon and other wells (in well order) up to ``n`` wells."""
    planted = {e.perturbation_id for e in effects if e.effect != "none"}
    if n == "smoke":  # one negcon well and one well of each planted effect kind (up to 3)
        neg = layout.filter(pl.col("control_type") == "negcon").head(1)
        picked: list[str] = []
        kinds: set[str] = set()
        for e in effects:
            if e.effect != "none" and e.effect not in kinds and len(picked) < 3:
                hit = layout.filter(pl.col("perturbation_id") == e.perturbation_id).head(1)
                if hit.height:
                    picked.append(hit["well"][0])
                    kinds.add(e.effect)
        return layout.filter(pl.col("well").is_in([*neg["well"].to_list(), *picked]))
    n = int(n)
    eff = layout.filter(pl.col("perturbation_id").is_in(sorted(planted)))
    neg = layout.filter(pl.col("control_type") == "negcon")
    rest = layout.filter(~pl.col("perturbation_id").is_in(sorted(planted)) & pl.col("control_type").is_null())
    n_neg = max(min(neg.height, (n - eff.height) // 2), 1)
    keep = pl.concat([eff, neg.head(n_neg), rest.head(max(n - eff.height - n_neg, 0))])
    return layout.filter(pl.col("well").is_in(keep["well"].to_list()))


def _resolve_layout(spec: str | Path | pl.DataFrame, style: str) -> tuple[str, pl.DataFrame, str | int | None]:
    """Layout spec -> (layout id, validated layout, subset size or None)."""
    if isinstance(spec, pl.DataFrame):
        return "layout", validate_layout(spec.with_columns(pl.col(c).cast(pl.String) for c in spec.columns)), None
    spec = str(spec)
    if spec.startswith("hpa:"):
        arg = spec.split(":", 1)[1]
        if arg == "smoke":
            return "HPA-sim-smoke", hpa_layout(plate_format=96, smoke=True), None
        fmt = int(arg)
        proteins = ("HDAC8",) if fmt <= 96 else tuple(list(PROTEIN_LOCALIZATION)[:7])
        return f"HPA-sim-{fmt}", hpa_layout(plate_format=fmt, proteins=proteins), None
    sub: str | int | None = None
    base = spec
    if ":" in spec and not Path(spec).exists():
        base, arg = spec.rsplit(":", 1)
        sub = arg if arg == "smoke" else int(arg)
    path = Path(base)
    if not path.suffix:
        path = builtin_layout_path(base)
    layout = read_layout(path)
    lid = path.stem.removesuffix("_platemap")
    return lid, layout, sub


def _concentration_uM(conc: float | None, unit: str | None) -> float | None:
    if conc is None:
        return None
    f = _UNIT_TO_UM.get(unit or "uM")
    return None if f is None else conc * f


# ------------------------------------------------------------------------------------------------------------
# the result


@dataclass(frozen=True)
class SimulatedScreen:
    """A simulated screen on disk (paths), as returned by :func:`simulate_screen`.

    Attributes
    ----------
    root : Path
        The screen folder.
    images : Path
        Image root (``[images].source`` of the config).
    plates_table : Path
        ``plates.csv``.
    layouts_dir : Path
        Folder of the layout CSVs.
    answer_key_path : Path
        ``answer_key.csv``.
    ground_truth : Path
        Label TIFFs and truth tables.
    config : Path
        ``config.toml``, a complete run configuration (validates with ``load_config``).
    style : str
    plates : tuple of str
    n_sites, n_cells : int
    pixel_size_um : float
    shape : (int, int)
    seed : int
    """

    root: Path
    images: Path
    plates_table: Path
    layouts_dir: Path
    answer_key_path: Path
    ground_truth: Path
    config: Path
    style: str
    plates: tuple[str, ...]
    n_sites: int
    n_cells: int
    pixel_size_um: float
    shape: tuple[int, int]
    seed: int

    def answer_key(self) -> pl.DataFrame:
        """The planted effects (see :func:`~subcell_screen.simulate.effects.answer_key_table`)."""
        return pl.read_csv(self.answer_key_path, schema_overrides={"protein": pl.String, "ec50_uM": pl.Float64,
                                                                   "max_concentration_uM": pl.Float64,
                                                                   "from_class": pl.String, "to_class": pl.String,
                                                                   "hill": pl.Float64, "bottom": pl.Float64,
                                                                   "top": pl.Float64, "direction": pl.String})

    def cells(self) -> pl.DataFrame:
        """Per-cell truth of the whole screen: ``plate``, ``well``, ``site``, ``cell_id`` and the truth columns."""
        return pl.read_parquet(self.ground_truth / "cells.parquet")

    def sites(self) -> pl.DataFrame:
        """Per-site facts: ``plate``, ``well``, ``site``, ``n_cells``, ``out_of_focus``, ``n_debris``, gains."""
        return pl.read_parquet(self.ground_truth / "sites.parquet")

    def wells(self) -> pl.DataFrame:
        """Per-well planted parameters (expected fractions, nucleus scale, density, edge flag)."""
        return pl.read_parquet(self.ground_truth / "wells.parquet")

    def labels(self, plate: str, well: str, site: int) -> tuple[np.ndarray, np.ndarray]:
        """Ground-truth ``(nuclei, cells)`` label images (int32) of one site."""
        import tifffile

        stem = self.ground_truth / plate / f"{plate}_{well}_{site}"
        return (tifffile.imread(f"{stem}_nuclei.tif").astype(np.int32),
                tifffile.imread(f"{stem}_cells.tif").astype(np.int32))

    def image_files(self, plate: str, well: str, site: int) -> dict[str, Path]:
        """Channel name -> image file of one site."""
        if self.style == "hpa":
            return {ch: self.images / f"{plate}_{well}_{site}_{color}.tif" for ch, color in HPA_COLORS.items()}
        r, c = well_row_col(well)
        return {ch: self.images / plate / "Images" / f"r{r + 1:02d}c{c + 1:02d}f{site:02d}p01-ch{n}sk1fk1fl1.tiff"
                for ch, n in PHENIX_CHANNEL_NUMBERS.items()}


def open_simulated_screen(root: str | Path) -> SimulatedScreen:
    """Re-open a screen written by :func:`simulate_screen` (reads ``simulation.json``)."""
    root = Path(root)
    meta_path = root / "simulation.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not a simulated screen (no simulation.json)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    return _screen_object(root, meta)


def _screen_object(root: Path, meta: dict) -> SimulatedScreen:
    return SimulatedScreen(
        root=root, images=root / "images", plates_table=root / "plates.csv", layouts_dir=root / "layouts",
        answer_key_path=root / "answer_key.csv", ground_truth=root / "ground_truth", config=root / "config.toml",
        style=meta["style"], plates=tuple(meta["plates"]), n_sites=int(meta["n_sites"]),
        n_cells=int(meta["n_cells"]), pixel_size_um=float(meta["pixel_size_um"]),
        shape=(int(meta["shape"][0]), int(meta["shape"][1])), seed=int(meta["seed"]),
    )


# ------------------------------------------------------------------------------------------------------------
# rendering tasks


@dataclass(frozen=True)
class _SiteTask:
    plate: str
    well: str
    site: int
    style: str
    population: CellPopulation
    acquisition: Acquisition
    seed: tuple[int, ...]
    image_paths: tuple[str, ...]
    truth_stem: str
    compression: str | None


def _write_tiff(path: str, data: np.ndarray, compression: str | None) -> None:
    import tifffile

    tmp = f"{path}.tmp"
    # zlib level 1: the same size as the default level on noisy images, at half the time
    args = {"level": 1} if compression in ("zlib", "deflate", "adobe_deflate") else None
    tifffile.imwrite(tmp, data, compression=compression, compressionargs=args, metadata=None,
                     photometric="minisblack")
    os.replace(tmp, path)


def _render_task(task: _SiteTask) -> tuple[dict, pl.DataFrame]:
    site = render_site(style=task.style, population=task.population,  # type: ignore[arg-type]
                       acquisition=task.acquisition, seed=np.random.SeedSequence(list(task.seed)))
    for k, path in enumerate(task.image_paths):
        _write_tiff(path, site.image[k], task.compression)
    _write_tiff(f"{task.truth_stem}_nuclei.tif", site.nuclei, "zlib")
    _write_tiff(f"{task.truth_stem}_cells.tif", site.cells, "zlib")
    truth = site.truth.with_columns(pl.lit(task.plate).alias("plate"), pl.lit(task.well).alias("well"),
                                    pl.lit(task.site, dtype=pl.Int64).alias("site"))
    truth = truth.select("plate", "well", "site", *site.truth.columns)
    truth.write_parquet(f"{task.truth_stem}_truth.parquet", statistics=False)
    acq = task.acquisition
    info = {"plate": task.plate, "well": task.well, "site": task.site, "n_cells": site.truth.height,
            "out_of_focus": bool(acq.out_of_focus), "n_debris": int(acq.n_debris),
            "n_relocalized": int(site.truth["relocalized"].sum()),
            "n_mitotic": int((site.truth["phenotype"] == "mitotic").sum())}
    for name, g in zip(STYLE_CHANNELS[task.style], acq.channel_gain or ()):
        info[f"gain_{name}"] = float(g)
    return info, truth


# ------------------------------------------------------------------------------------------------------------
# public entry point


def simulate_screen(
    out_dir: str | Path,
    *,
    style: Literal["hpa", "cellpainting"] = "hpa",
    preset: str = "demo",
    layout: str | Path | pl.DataFrame | None = None,
    effects: Iterable[PlantedEffect] | None = None,
    wells: Sequence[str] | None = None,
    n_plates: int | None = None,
    sites_per_well: int | None = None,
    shape: tuple[int, int] | None = None,
    pixel_size_um: float | None = None,
    density_per_mm2: float | None = None,
    population: CellPopulation | None = None,
    nuisance: Nuisance | None = None,
    compression: str | None = "zlib",
    screen_path: str = "screen",
    report_path: str = "reports",
    seed: int = 0,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool | None = None,
) -> SimulatedScreen:
    """Render a whole simulated screen to ``out_dir``.

    Parameters
    ----------
    out_dir
        Screen folder (created; must be empty or absent unless ``overwrite``).
    style
        ``"hpa"`` (HPA naming, 4 channels, a protein of interest per well) or ``"cellpainting"`` (Phenix naming,
        5 channels).
    preset
        ``"smoke"`` (4 wells, seconds), ``"demo"`` (the README demo) or ``"full"`` (whole 384-well plates);
        see :data:`SCREEN_PRESETS`. Every other argument overrides a part of it.
    layout
        Layout id of a shipped layout (e.g. ``"JUMP-Target-1_compound"``, optionally ``":<n>"`` to keep the
        planted wells plus controls up to n wells), a layout file, a layout table, or ``"hpa:96"`` /
        ``"hpa:384"`` / ``"hpa:smoke"`` for the generated HPA design (:func:`hpa_layout`).
    effects
        Planted effects (default: :func:`~subcell_screen.simulate.effects.hpa_demo_effects` for HPA designs and
        any layout that uses their perturbation ids, :func:`~subcell_screen.simulate.effects.jump_target1_effects`
        for JUMP-Target layouts; every other perturbation is null).
    wells
        Only simulate these wells of the layout.
    n_plates, sites_per_well, shape, pixel_size_um, density_per_mm2
        Screen size (plates share one layout), site size (px) and scale (µm/px), cell density (cells/mm²).
    population
        Base cell population (sizes, basal mitotic fraction); density and localization are set per well.
    nuisance
        Technical variation (default :class:`Nuisance()`; :meth:`Nuisance.none` for none).
    compression
        TIFF compression of the images (``"zlib"``, ``"zstd"``, ``"lzw"`` or None).
    screen_path, report_path
        ``[screen].path`` and ``[report].out`` written into ``config.toml`` (relative to ``out_dir`` unless
        absolute), e.g. ``screen_path=".."`` to put ``screen.duckdb`` beside the simulated-data folder.
    seed
        Same seed -> identical bytes on disk.
    workers
        Processes rendering sites in parallel (1: in this process).
    overwrite
        Replace an existing screen folder.
    progress
        Show a progress bar (None: when interactive).

    Returns
    -------
    SimulatedScreen
    """
    if style not in STYLE_CHANNELS:
        raise ValueError(f"unknown style {style!r}; expected 'hpa' or 'cellpainting'")
    if (style, preset) not in SCREEN_PRESETS:
        known = sorted({name for st, name in SCREEN_PRESETS if st == style})
        raise ValueError(f"unknown preset {preset!r} for style {style!r}; known: {', '.join(known)}")
    pre = SCREEN_PRESETS[(style, preset)]
    n_plates = pre.n_plates if n_plates is None else int(n_plates)
    sites_per_well = pre.sites_per_well if sites_per_well is None else int(sites_per_well)
    shape = pre.shape if shape is None else (int(shape[0]), int(shape[1]))
    pixel_size_um = pre.pixel_size_um if pixel_size_um is None else float(pixel_size_um)
    density = pre.density_per_mm2 if density_per_mm2 is None else float(density_per_mm2)
    nuisance = nuisance if nuisance is not None else Nuisance()
    if n_plates < 1 or sites_per_well < 1:
        raise ValueError("n_plates and sites_per_well must be >= 1")

    layout_id, lay, subset = _resolve_layout(layout if layout is not None else pre.layout, style)
    if effects is None:
        pids = set(lay["perturbation_id"].to_list())
        eff_list = [e for e in hpa_demo_effects() if e.perturbation_id in pids]
        if layout_id.startswith("JUMP-Target-1"):
            eff_list += list(jump_target1_effects(lay))
    else:
        eff_list = list(effects)
    if style == "cellpainting":
        bad = [e.perturbation_id for e in eff_list if e.effect == "relocalization"]
        if bad:
            logger.info("cell painting has no protein channel: relocalization of %s is not rendered", bad)
    if subset is not None:
        lay = _subset_layout(lay, eff_list, subset)
        layout_id = f"{layout_id}_{'smoke' if subset == 'smoke' else f'{subset}wells'}"
    if wells is not None:
        wanted = {w.upper() for w in wells}
        unknown = wanted - set(lay["well"].to_list())
        if unknown:
            raise ValueError(f"wells {sorted(unknown)} are not in layout {layout_id!r}")
        lay = lay.filter(pl.col("well").is_in(sorted(wanted)))
    if style == "hpa" and "protein" not in lay.columns:
        lay = lay.with_columns(pl.lit("HDAC8").alias("protein"))
        logger.info("layout %s has no protein column: every well stains HDAC8", layout_id)
    plate_format = next(f for f, (r, c) in sorted(PLATE_FORMATS.items())
                        if all(well_row_col(w)[0] < r and well_row_col(w)[1] < c for w in lay["well"]))
    eff_by_pid: dict[str, list[PlantedEffect]] = {}
    for e in eff_list:
        eff_by_pid.setdefault(e.perturbation_id, []).append(e)

    root = Path(out_dir)
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{root} is not empty; pass overwrite=True to replace it")
        for name in ("images", "layouts", "ground_truth"):
            shutil.rmtree(root / name, ignore_errors=True)
        for name in ("plates.csv", "answer_key.csv", "config.toml", "simulation.json"):
            (root / name).unlink(missing_ok=True)
    images = root / "images"
    (root / "layouts").mkdir(parents=True, exist_ok=True)
    images.mkdir(parents=True, exist_ok=True)
    gt = root / "ground_truth"

    # plates, batches and their nuisance
    tag = "HPA" if style == "hpa" else "CP"
    plate_names = [f"SIM{tag}{p + 1:03d}" for p in range(n_plates)]
    n_batches = max(1, min(nuisance.n_batches, n_plates))
    batch_of = [p % n_batches for p in range(n_plates)]
    channels = STYLE_CHANNELS[style]
    nch = len(channels)
    batch_gain = [np.exp(np.random.default_rng([seed, 20_000, b]).normal(0, nuisance.batch_effect, nch + 1))
                  for b in range(n_batches)]
    batch_vig = [np.random.default_rng([seed, 21_000, b]).uniform(0.35, 0.65, 2) for b in range(n_batches)]
    plate_gain = [np.exp(np.random.default_rng([seed, 10_000, p]).normal(0, nuisance.plate_drift, nch))
                  for p in range(n_plates)]
    base_pop = population if population is not None else CellPopulation()
    base_pop = replace(base_pop, density_per_mm2=density)
    base_acq = default_acquisition(style, shape=shape, pixel_size_um=pixel_size_um, vignetting=nuisance.vignetting)
    n_rows, n_cols = PLATE_FORMATS[plate_format]

    plates_rows = []
    well_rows = []
    tasks: list[_SiteTask] = []
    for p, plate in enumerate(plate_names):
        b = batch_of[p]
        plates_rows.append({"plate": plate, "layout": layout_id, "batch": f"batch{b + 1}",
                            "cell_line": "U2OS", "timepoint": "24h"})
        (gt / plate).mkdir(parents=True, exist_ok=True)
        if style == "cellpainting":
            (images / plate / "Images").mkdir(parents=True, exist_ok=True)
        for rec in lay.iter_rows(named=True):
            well = rec["well"]
            r, c = well_row_col(well)
            edge = r in (0, n_rows - 1) or c in (0, n_cols - 1)
            conc = _concentration_uM(rec["concentration"], rec["concentration_unit"])
            protein = rec.get("protein") if style == "hpa" else None
            pop = base_pop
            if style == "hpa":
                base_loc = PROTEIN_LOCALIZATION.get(str(protein).upper(), None) if protein else None
                if base_loc is None:
                    raise ValueError(f"layout {layout_id!r}, well {well}: protein {protein!r} has no known "
                                     f"localization; known: {', '.join(PROTEIN_LOCALIZATION)}")
                pop = replace(pop, localization=base_loc, relocalize_to=base_loc)
            if rec["control_type"] == "empty":
                pop = replace(pop, density_per_mm2=1e-6)
            for e in eff_by_pid.get(rec["perturbation_id"], []):
                pop = e.apply(pop, concentration_uM=conc, protein=protein)
            if edge:
                pop = replace(pop, density_per_mm2=pop.density_per_mm2 * (1 - nuisance.edge_density))
            well_rows.append({
                "plate": plate, "well": well, "perturbation_id": rec["perturbation_id"],
                "control_type": rec["control_type"], "concentration_uM": conc, "protein": protein,
                "edge": edge, "localization": pop.localization if style == "hpa" else None,
                "relocalize_to": pop.relocalize_to if style == "hpa" else None,
                "expected_relocalized_fraction": pop.relocalized_fraction if style == "hpa" else 0.0,
                "expected_mitotic_fraction": pop.mitotic_fraction,
                "expected_bundled_fraction": pop.bundled_fraction,
                "expected_apoptotic_fraction": pop.apoptotic_fraction,
                "nucleus_scale": pop.nucleus_scale, "density_per_mm2": pop.density_per_mm2,
            })
            for s in range(1, sites_per_well + 1):
                site_seed = (seed, p, r, c, s)
                srng = np.random.default_rng([seed, 30_000, p, r, c, s])
                gain = plate_gain[p] * batch_gain[b][:nch] * np.exp(srng.normal(0, nuisance.site_jitter, nch))
                if edge:
                    gain = gain * (1 - nuisance.edge_intensity)
                acq = replace(
                    base_acq,
                    channel_gain=tuple(float(g) for g in gain),
                    background=tuple(float(x) * float(batch_gain[b][nch]) for x in
                                     (base_acq.background or ())) or None,
                    vignetting_center=(float(batch_vig[b][0]), float(batch_vig[b][1])),
                    out_of_focus=bool(srng.random() < nuisance.out_of_focus_fraction),
                    n_debris=int(srng.poisson(nuisance.debris_per_site)),
                )
                if style == "hpa":
                    paths = tuple(str(images / f"{plate}_{well}_{s}_{HPA_COLORS[ch]}.tif") for ch in channels)
                else:
                    paths = tuple(str(images / plate / "Images" /
                                      f"r{r + 1:02d}c{c + 1:02d}f{s:02d}p01-ch{PHENIX_CHANNEL_NUMBERS[ch]}sk1fk1fl1.tiff")
                                  for ch in channels)
                tasks.append(_SiteTask(plate=plate, well=well, site=s, style=style, population=pop,
                                       acquisition=acq, seed=site_seed, image_paths=paths,
                                       truth_stem=str(gt / plate / f"{plate}_{well}_{s}"), compression=compression))

    results = _run_tasks(tasks, workers=workers, progress=progress)
    site_rows = [r[0] for r in results]
    cells = pl.concat([r[1] for r in results], how="vertical") if results else pl.DataFrame()
    cells.write_parquet(gt / "cells.parquet", statistics=False)
    pl.DataFrame(site_rows).write_parquet(gt / "sites.parquet", statistics=False)
    pl.DataFrame(well_rows, schema_overrides={"concentration_uM": pl.Float64, "protein": pl.String,
                                              "control_type": pl.String, "localization": pl.String,
                                              "relocalize_to": pl.String}).write_parquet(
        gt / "wells.parquet", statistics=False)

    write_layout(lay, root / "layouts" / f"{layout_id}.csv")
    pl.DataFrame(plates_rows).write_csv(root / "plates.csv")
    answer_key_table(lay, eff_list if style == "hpa" else [e for e in eff_list if e.effect != "relocalization"]
                     ).write_csv(root / "answer_key.csv")
    (root / "config.toml").write_text(
        _config_toml(style=style, pixel_size_um=pixel_size_um, plate_format=plate_format, population=base_pop,
                     seed=seed, preset=preset, screen_path=screen_path, report_path=report_path),
        encoding="utf-8")
    meta = {"style": style, "preset": preset, "seed": seed, "plates": plate_names, "layout": layout_id,
            "n_sites": len(tasks), "n_cells": int(cells.height), "pixel_size_um": pixel_size_um,
            "shape": list(shape), "sites_per_well": sites_per_well, "plate_format": plate_format,
            "channels": list(channels), "nuisance": asdict(nuisance), "population": asdict(base_pop),
            "effects": [e.to_dict() for e in eff_list], "compression": compression}
    (root / "simulation.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("simulated %s screen: %d plates, %d sites, %d cells -> %s", style, n_plates, len(tasks),
                cells.height, root)
    return _screen_object(root, meta)


def _run_tasks(tasks: list[_SiteTask], *, workers: int, progress: bool | None) -> list[tuple[dict, pl.DataFrame]]:
    from tqdm.auto import tqdm

    disable = (not progress) if progress is not None else None
    bar = tqdm(total=len(tasks), desc="simulate sites", unit="site", disable=disable)
    try:
        if workers <= 1 or len(tasks) < 4:
            out = []
            for t in tasks:
                out.append(_render_task(t))
                bar.update(1)
            return out
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
            out = []
            for res in ex.map(_render_task, tasks, chunksize=max(1, len(tasks) // (workers * 8))):
                out.append(res)
                bar.update(1)
            return out
    finally:
        bar.close()


def _toml_str(s: str) -> str:
    return json.dumps(str(s), ensure_ascii=False)


def _config_toml(*, style: str, pixel_size_um: float, plate_format: int, population: CellPopulation, seed: int,
                 preset: str, screen_path: str, report_path: str) -> str:
    if style == "hpa":
        names = ", ".join(f"{_toml_str(color)} = {_toml_str(ch)}" for ch, color in HPA_COLORS.items())
        reader, chan, model, reloc = "hpa", "hpa", "rybg/MAE-CellS-ProtS-Pool", "true"
    else:
        names = ", ".join(f"{_toml_str(str(n))} = {_toml_str(ch)}" for ch, n in PHENIX_CHANNEL_NUMBERS.items())
        reader, chan, model, reloc = "phenix", "cellpainting", "ybg/MAE-CellS-ProtS-Pool", "false"
    nuc_um = population.nucleus_diameter_um
    cell_um = min(population.cell_diameter_um, 2.2 * nuc_um)
    lines = [
        f"# Simulated {style} screen written by subcell_screen.simulate (preset {preset!r}, seed {seed}).",
        "# Planted effects: answer_key.csv; ground truth: ground_truth/. Paths are relative to this file.",
        "",
        "[screen]",
        f"path = {_toml_str(screen_path)}",
        f"name = {_toml_str(f'simulated {style} screen ({preset}, seed {seed})')}",
        "",
        "[images]",
        'source = "images"',
        f'reader = "{reader}"',
        f"pixel_size_um = {pixel_size_um!r}",
        f"channel_names = {{ {names} }}",
        "illumination_correction = true",
        "",
        "[plates]",
        'table = "plates.csv"',
        'layouts_dir = "layouts"',
        f"plate_format = {plate_format}",
        "",
        "[channels]",
        f'preset = "{chan}"',
        "",
        "[segmentation]",
        'method = "classical"',
        f"nucleus_diameter_um = {nuc_um!r}",
        f"cell_diameter_um = {cell_um!r}",
        f"min_nucleus_area_um2 = {round(0.1 * np.pi * (nuc_um / 2) ** 2, 1)!r}",
        "allow_fallback = true",
        "",
        "[embedding]",
        'featurizer = "subcell"',
        f'model = "{model}"',
        "allow_fallback = true",
        "",
        "[profiles]",
        'normalize = "mad_robustize"',
        'controls = "negcon"',
        "",
        "[scoring]",
        f"seed = {seed}",
        f"relocalization = {reloc}",
        "",
        "[report]",
        f"out = {_toml_str(report_path)}",
        "",
    ]
    return "\n".join(lines)
