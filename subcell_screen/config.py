"""Run configuration: one TOML file describes a whole run.

The file is validated once, here, by :func:`load_config`; every later stage receives a frozen
:class:`RunConfig`. Unknown keys, wrong types and impossible values are rejected with a message that names
the key (``[segmentation].method``) and the file. Relative paths are resolved against the config file's
folder. See ``examples/*.toml`` for complete files.

Examples
--------
>>> from subcell_screen.config import config_from_dict
>>> cfg = config_from_dict({"screen": {"path": "screens/demo"}, "images": {"source": "images"},
...                         "plates": {"table": "plates.csv"}, "channels": {"preset": "hpa"}})
>>> cfg.segmentation.method, cfg.embedding.model, cfg.channel_map().embedding_dim
('classical', 'rybg/MAE-CellS-ProtS-Pool', 1536)
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ._errors import ConfigError
from .channels import ChannelMap, custom_channel_map, preset
from .embed.registry import Preprocessing

#: The model cards' preprocessing defaults (every public SubCell card has these).
_CARD_PREPROCESSING = Preprocessing()

__all__ = [
    "RunConfig",
    "ScreenSection",
    "ImagesSection",
    "PlatesSection",
    "ChannelsSection",
    "SegmentationSection",
    "EmbeddingSection",
    "ProfilesSection",
    "ScoringSection",
    "MapSection",
    "ReportSection",
    "RaySection",
    "load_config",
    "config_from_dict",
    "config_reference",
]


class _Section(BaseModel):
    # allow_inf_nan=False: `pixel_size_um = inf` (valid TOML) passes gt=0 and would fail deep in a stage
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _no_duplicates(values: list[str]) -> list[str]:
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise ValueError(f"listed more than once: {twice}")
    return values


class ScreenSection(_Section):
    """``[screen]``: where the screen store lives."""

    path: Path = Field(description="Screen folder: screen.duckdb plus Parquet per-cell data.")
    name: str | None = Field(default=None, description=(
        "Screen name: the title of the reports (default: the screen folder's name)."))


class ImagesSection(_Section):
    """``[images]``: where the images are and how to read them."""

    source: Path = Field(description=(
        "Folder of the images (searched recursively), a LoadData CSV or an OME-TIFF file."))
    reader: Literal["auto", "phenix", "imagexpress", "loaddata", "hpa", "ometiff"] = Field(
        default="auto", description=(
        "Image reader; auto detects it (see `subcell-screen sites FOLDER`)."))
    pixel_size_um: float | None = Field(default=None, gt=0, description=(
        "µm per pixel of the images; overrides file metadata. Must lie in 0.05-5 (plausible for cell "
        "microscopy)."))
    channel_names: dict[str, str] = Field(
        default_factory=dict,
        description="Instrument channel id -> channel name, e.g. Phenix {'1' = 'DNA', '2' = 'ER'}.")
    illumination_correction: bool | None = Field(
        default=None, description="Default: on for Cell Painting, off otherwise.")
    plates: list[str] | None = Field(default=None, description="Restrict the run to these plates.")

    @field_validator("pixel_size_um")
    @classmethod
    def _plausible_pixel_size(cls, v: float | None) -> float | None:
        from .io import PLAUSIBLE_PIXEL_SIZE_UM, is_plausible_pixel_size

        if v is not None and not is_plausible_pixel_size(v):
            lo, hi = PLAUSIBLE_PIXEL_SIZE_UM
            raise ValueError(f"{v} µm/px is outside the plausible {lo:g}-{hi:g} µm/px for cell microscopy")
        return v


class PlatesSection(_Section):
    """``[plates]``: plates table and layouts."""

    table: Path = Field(description=(
        "Plates table (CSV): plate barcode -> layout id, plus batch, cell_line, timepoint."))
    layouts_dir: Path | None = Field(default=None, description=(
        "Extra folder to look for layout files in (the table's own folder first, then the built-in "
        "plate_layouts/)."))
    plate_format: Literal[96, 384, 1536] | None = Field(default=None, description=(
        "Wells per plate; default: the smallest format holding every well of the layouts."))
    allow_no_negcon: bool = Field(default=False, description=(
        "Accept layouts without negative-control wells (normalise with [profiles].controls = \"all\")."))


class ChannelsSection(_Section):
    """``[channels]``: acquired channels -> SubCell inputs and segmentation channels."""

    preset: Literal["hpa", "hpa-rbg", "hpa-ybg", "hpa-bg", "cellpainting", "custom"] = Field(
        default="hpa", description=(
        "Channel map: hpa (microtubules, er, nucleus, protein), its subsets, cellpainting (DNA, ER, RNA, "
        "AGP, Mito), or custom."))
    channels: list[str] | None = Field(default=None, description=(
        "custom: the acquired channel names the map uses."))
    model_channels: Literal["rybg", "rbg", "ybg", "bg"] | None = Field(default=None, description=(
        "custom: SubCell channel set (r microtubules, y ER, b nucleus, g protein)."))
    slots: dict[str, str] | None = Field(default=None, description=(
        "custom, one pass: SubCell letter -> channel, e.g. {b = \"DNA\", g = \"GFP\"}."))
    passes: dict[str, dict[str, str]] | None = Field(default=None, description=(
        "custom, several passes: pass name -> {letter -> channel}; embeddings are concatenated."))
    nucleus: str | None = Field(default=None, description=(
        "Channel nuclei are segmented on (default: the preset's)."))
    cytoplasm: str | None = Field(default=None, description=(
        "Channel cells are grown on from the nuclei (default: the preset's; none: dilated nuclei)."))
    protein: str | None = Field(default=None, description=(
        "Protein-of-interest channel for relocalization readouts (custom maps)."))

    @model_validator(mode="after")
    def _custom_complete(self) -> ChannelsSection:
        if self.preset == "custom":
            missing = [k for k in ("channels", "model_channels", "nucleus") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"preset 'custom' needs {', '.join(missing)}")
            if (self.slots is None) == (self.passes is None):
                raise ValueError("preset 'custom' needs exactly one of 'slots' or 'passes'")
        return self


class SegmentationSection(_Section):
    """``[segmentation]``: how cells are found."""

    method: Literal["classical", "cellpose"] = Field(default="classical", description=(
        "classical (offline, CPU) or cellpose (needs local Cellpose weights)."))
    model: str = Field(default="cpsam", description="Cellpose model name (cpsam, cyto3, nuclei).")
    weights: Path | None = Field(default=None, description="Local Cellpose weights file.")
    weights_sha256: str | None = Field(default=None, description=(
        "Expected SHA-256 of the Cellpose weights file (verified before loading)."))
    nucleus_diameter_um: float | None = Field(default=None, gt=0, description=(
        "Typical nucleus diameter in µm (default: classical 10, Cellpose estimates)."))
    cell_diameter_um: float | None = Field(default=None, gt=0, description=(
        "Typical cell diameter in µm (Cellpose)."))
    batch_size: int = Field(default=32, gt=0, description="Cellpose batch size, in 256-px tiles.")
    min_nucleus_area_um2: float | None = Field(default=None, ge=0, description=(
        "Nuclei smaller than this area (µm²) are discarded (classical)."))
    working_pixel_size_um: float | None = Field(default=None, gt=0, description=(
        "Segment at this pixel size (µm/px), classical or Cellpose: sites with finer pixels are area-averaged "
        "down to it, segmented, and their label images mapped back onto the acquired pixel grid (nearest "
        "neighbour, every object kept), so masks, cell tables and crops keep the acquisition's size. Costs about "
        "(acquired / working)² of the full-resolution work, e.g. 1.3 for 0.65 µm/px Cell Painting. Never "
        "upsamples; nuclei must still span at least 7.5 px at it. Unset: segment as acquired."))
    allow_fallback: bool = Field(
        default=False, description="Use the classical segmenter when Cellpose weights are missing.")

    @field_validator("working_pixel_size_um")
    @classmethod
    def _working_resolution(cls, v: float | None, info: ValidationInfo) -> float | None:
        if v is None:
            return v
        from .segment import MIN_WORKING_NUCLEUS_PX, ClassicalParams

        d_um = info.data.get("nucleus_diameter_um") or ClassicalParams().nucleus_diameter_um
        if d_um / v < MIN_WORKING_NUCLEUS_PX:
            raise ValueError(
                f"nuclei of {d_um:g} µm would span {d_um / v:.1f} px at {v:g} µm/px, fewer than the "
                f"{MIN_WORKING_NUCLEUS_PX:g} px segmentation needs; use at most {d_um / MIN_WORKING_NUCLEUS_PX:.2f} "
                "µm/px (or set nucleus_diameter_um)")
        return v


class EmbeddingSection(_Section):
    """``[embedding]``: per-cell features."""

    featurizer: Literal["subcell", "classical"] = Field(default="subcell", description=(
        "Per-cell features: subcell (SubCell embeddings) or classical (CellProfiler-style)."))
    model: str = Field(default="rybg/MAE-CellS-ProtS-Pool", description=(
        "SubCell model (`subcell-screen models list`); its channel set must match the channel map."))
    cache_dir: Path | None = Field(default=None, description=(
        "Model weights folder (default: $SUBCELL_SCREEN_MODELS or the user cache)."))
    offline: bool = Field(default=False, description=(
        "Never download weights; fail if they are not in the cache."))
    precision: Literal["auto", "fp32", "bf16", "bf16-pure"] = Field(default="auto", description=(
        "auto: bf16 on GPUs with bf16 tensor cores (compute capability >= 8.0) and on CPUs with native bf16 "
        "matmul (AMX-BF16, AVX512-BF16, Arm BF16), fp32 elsewhere (CPUs without it emulate bf16 and run it "
        "several times slower than fp32; the run summary records the choice and why); fp32: faithful; bf16: "
        "autocast with an fp32 residual stream; bf16-pure: bf16 weights and residual stream (fastest on GPUs; "
        "cosine to fp32 >= 0.9999 on an H100)."))
    normalize: Literal["joint", "per_channel"] | None = Field(default=None, description=(
        "Crop min-max normalisation; unset: the model card's (joint, as SubCell was trained). per_channel is "
        "the SubCellPortable 2025 / JUMP recipe. Resolve with subcell_screen.embed.resolve_preprocessing."))
    crop_size: int = Field(default=_CARD_PREPROCESSING.crop_size, gt=0, multiple_of=16, description=(
        "Crop side in pixels at the model's pixel size (default: the model card's)."))
    target_pixel_size_um: float = Field(default=_CARD_PREPROCESSING.pixel_size_um, gt=0, description=(
        "Pixel size crops are rescaled to, µm (default: the model card's, HPA 0.0800885)."))
    mask: bool = Field(default=_CARD_PREPROCESSING.mask, description=(
        "Zero the pixels outside the cell in each crop (default: the model card's)."))
    batch_size: int = Field(default=128, gt=0, description="Crops per forward pass.")
    num_workers: int = Field(default=2, ge=0, description=(
        "CPU threads preparing crop batches while the model runs."))
    compile: bool = Field(default=False, description=(
        "torch.compile the model (faster on GPUs after a warm-up)."))
    store_dtype: Literal["float32", "float16"] = Field(default="float32", description=(
        "Storage type of the kept per-cell features (float16 halves them; site and well profiles are computed "
        "from float32 before)."))
    keep_cells: Literal["all", "sample", "none"] = Field(default="all", description=(
        "Per-cell features kept in the store: all, a sample of cells_per_well per well, or none. Well profiles, "
        "scores and reports are exact either way (cells are reduced to site profiles before anything is "
        "dropped; both cell_to_site choices are kept per site); per-cell exports need kept cells."))
    cells_per_well: int = Field(default=200, gt=0, description=(
        "keep_cells = sample: cells kept per well (a fixed random choice across its sites, the same every run)."))
    allow_fallback: bool = Field(
        default=False, description="Use classical features when SubCell weights are missing.")
    classical_families: list[Literal["shape", "intensity", "texture", "correlation", "radial"]] = Field(
        default_factory=lambda: ["shape", "intensity", "texture", "correlation", "radial"], min_length=1,
        description="Feature families of the classical featurizer (at least one).")
    classical_zernike_degree: int = Field(default=9, ge=-1, le=20,
                                          description="Highest Zernike degree (-1: none).")

    @field_validator("classical_families")
    @classmethod
    def _families(cls, v: list[str]) -> list[str]:
        return _no_duplicates(v)


class ProfilesSection(_Section):
    """``[profiles]``: cells -> wells -> normalised profiles."""

    cell_to_site: Literal["median", "mean"] = Field(default="median", description=(
        "Aggregation of cells into site profiles."))
    site_to_well: Literal["median", "mean"] = Field(default="mean", description=(
        "Aggregation of sites into well profiles."))
    normalize: Literal["standardize", "robustize", "mad_robustize", "spherize", "inverse_normal", "none"] = Field(
        default="mad_robustize", description=(
        "Per-plate normalisation against the controls (pycytominer methods), or none."))
    mad_scale: Literal["normal", "unscaled"] = Field(default="normal", description=(
        "mad_robustize: normal (MAD x 1.4826, pycytominer) or unscaled (the JUMP recipe)."))
    epsilon: float = Field(default=1e-18, ge=0, description=(
        "mad_robustize: added to the MAD (avoids division by zero)."))
    controls: Literal["negcon", "all"] = Field(default="negcon", description=(
        "Wells the normalisation is fitted on: negcon wells of each plate, or all wells."))
    spherize_method: Literal["ZCA", "ZCA-cor", "PCA", "PCA-cor"] = Field(default="ZCA-cor", description=(
        "spherize: whitening variant."))
    spherize_epsilon: float = Field(default=1e-6, ge=0, description=(
        "spherize: regularisation added to the eigenvalues."))
    feature_select: list[str] = Field(default_factory=list, description=(
        "feature_select operations, in order (subcell_screen.profiles.FEATURE_SELECT_OPERATIONS)."))
    batch_correction: Literal["none", "harmony"] = Field(default="none", description=(
        "Batch correction of the final profiles across batches (or plates)."))
    min_cells_per_well: int = Field(default=1, ge=0, description=(
        "Wells with fewer cells are left out of the profiles (named in the stage messages)."))

    @field_validator("feature_select")
    @classmethod
    def _operations(cls, v: list[str]) -> list[str]:
        from .profiles import FEATURE_SELECT_OPERATIONS

        unknown = [op for op in v if op not in FEATURE_SELECT_OPERATIONS]
        if unknown:
            raise ValueError(f"unknown operation(s) {unknown}; choose from {list(FEATURE_SELECT_OPERATIONS)}")
        return _no_duplicates(v)


class ScoringSection(_Section):
    """``[scoring]``: activity, retrieval, hits, dose response, relocalization."""

    null_size: int = Field(default=10000, gt=0, description=(
        "Size of the permutation null of each mAP p-value."))
    seed: int = Field(default=0, description="Seed of the nulls and bootstraps (results are reproducible).")
    threshold: float = Field(default=0.05, gt=0, lt=1, description=(
        "q-value (BH-corrected p) below which a perturbation is called active."))
    distance: Literal["cosine"] = Field(default="cosine", description="Profile similarity for mAP (cosine).")
    min_effect_size: float = Field(default=0.0, ge=0, description=(
        "Minimum effect size (control per-feature sd units) of a hit."))
    moa_column: str | None = Field(default="moa", description=(
        "Layout column with mechanisms of action (for retrieval scores and the map)."))
    relocalization: bool | None = Field(default=None, description=(
        "Default: on when there is a protein channel."))


class MapSection(_Section):
    """``[map]``: the phenotypic map of the perturbations (clusters, layout, enrichment, similar perturbations)."""

    per_dose: bool = Field(default=False, description=(
        "One item per perturbation and concentration (compound identity becomes an annotation); default one per "
        "perturbation."))
    annotations: list[str] | None = Field(default=None, description=(
        "Metadata_ columns tested for enrichment (default: Metadata_moa and Metadata_target when they hold "
        "values)."))
    resolutions: list[float] | None = Field(default=None, description=(
        "Clustering resolutions, larger = finer (default 0.5, 1, 2, 4, 8); clusters are nested across them."))
    n_neighbors: int = Field(default=15, gt=0, description="Neighbours per item in the cosine kNN graph.")
    activity: Literal["auto", "scores", "replicates", "controls", "none"] = Field(default="auto", description=(
        "Which perturbations are clustered (the others share an 'inactive' cluster): the score stage's hits "
        "(auto: when scored with 2+ hits), replicate consistency, distance from the controls, or all."))
    seed: int = Field(default=0, description="Seed of the 2-D layout (the map is reproducible).")
    attention: bool = Field(default=True, description=(
        "Overlay SubCell pooler attention on the example cells (SubCell feature sets; weights from the model "
        "cache)."))


class ReportSection(_Section):
    """``[report]``: where reports go."""

    out: Path = Field(default=Path("reports"), description="Folder of the HTML reports and their figures.")
    sample_sites: int = Field(default=4, ge=0, description=(
        "Sites shown with segmentation outlines in the QC report."))
    gallery_cells: int = Field(default=8, ge=0, description=(
        "Cells per hit (and per control row) in the hit report's galleries."))
    channel_colors: dict[str, str] = Field(default_factory=dict, description=(
        "Channel -> display colour (a name such as blue, green, red, yellow, magenta, cyan, or #rrggbb) for "
        "overlays and galleries; default: the field's convention (Cell Painting: DNA blue, ER green, RNA "
        "yellow, AGP red, Mito magenta; HPA: microtubules red, ER yellow, nucleus blue, protein green)."))

    @field_validator("channel_colors")
    @classmethod
    def _colors(cls, v: dict[str, str]) -> dict[str, str]:
        from .channels import parse_color

        for color in v.values():
            parse_color(color)
        return v


class RaySection(_Section):
    """``[ray]``: scale-out settings (used with ``--engine ray``)."""

    address: str | None = Field(default=None, description=(
        "Ray cluster address (default: a local Ray instance)."))
    num_cpus: int | None = Field(default=None, gt=0, description=(
        "CPUs of the local Ray instance (default: all)."))
    object_store_memory: int | None = Field(default=None, gt=0, description="bytes")
    gpus_per_actor: float = Field(default=0.0, ge=0, description=(
        "GPUs of each segment/embed actor (0: the models run on CPUs)."))
    segment_actors: int = Field(default=1, gt=0, description=(
        "Segmentation actors (each holds a Cellpose model when Cellpose segments)."))
    embed_actors: int = Field(default=1, gt=0, description="Embedding actors (each holds a SubCell model).")
    load_batch_size: int = Field(default=4, gt=0, description="Sites per image-loading task.")
    embed_batch_size: int = Field(default=256, gt=0, description=(
        "Images per SubCell forward in an embed actor."))
    output: Path | None = Field(default=None, description="Shared folder for Parquet outputs.")
    cpus_per_actor: float = Field(default=1.0, gt=0, description="CPUs reserved by each segment/embed actor.")
    site_batch_size: int = Field(default=4, gt=0,
                                 description="Sites per call of the segment, crop, feature and embed stages.")
    max_retries: int = Field(default=3, ge=0,
                             description="Retries of a site whose worker process died before a site is failed.")


class RunConfig(_Section):
    """A whole run. Build with :func:`load_config` or :func:`config_from_dict`."""

    screen: ScreenSection = Field(description="Where the screen store lives.")
    images: ImagesSection = Field(description="Where the images are and how to read them.")
    plates: PlatesSection = Field(description="Plates table and layouts.")
    channels: ChannelsSection = Field(default=ChannelsSection(), description=(
        "Acquired channels -> segmentation and SubCell inputs."))
    segmentation: SegmentationSection = Field(default=SegmentationSection(), description=(
        "How cells are found."))
    embedding: EmbeddingSection = Field(default=EmbeddingSection(), description="Per-cell features.")
    profiles: ProfilesSection = Field(default=ProfilesSection(), description=(
        "Cells -> wells -> normalised, selected profiles."))
    scoring: ScoringSection = Field(default=ScoringSection(), description=(
        "Activity, hits, dose response, relocalization."))
    map: MapSection = Field(default=MapSection(), description="The phenotypic map of the perturbations.")
    report: ReportSection = Field(default=ReportSection(), description="Where reports go and what they show.")
    ray: RaySection = Field(default=RaySection(), description="Scale-out settings (with --engine ray).")
    device: str = Field(default="auto", description=(
        "Torch device: auto (CUDA when present), cpu, cuda or cuda:<index>."))
    workers: int | None = Field(default=None, gt=0, description=(
        "Processes for the all-CPU path (classical segmentation + features); default: the CPU cores, max 8."))
    source_file: Path | None = Field(default=None, exclude=True)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {v!r}")

    def channel_map(self) -> ChannelMap:
        """The validated :class:`~subcell_screen.channels.ChannelMap` this config describes."""
        ch = self.channels
        if ch.preset == "custom":
            cmap = custom_channel_map(channels=ch.channels or [], model_channels=ch.model_channels or "",
                                      passes=ch.passes, slots=ch.slots, nucleus=ch.nucleus or "",
                                      cytoplasm=ch.cytoplasm, protein=ch.protein)
        else:
            cmap = preset(ch.preset)
            if ch.nucleus or ch.cytoplasm:
                cmap = cmap.with_segmentation(nucleus=ch.nucleus, cytoplasm=ch.cytoplasm)
        return cmap

    def illumination_correction(self) -> bool:
        """Whether to correct illumination (default: only for Cell Painting)."""
        if self.images.illumination_correction is not None:
            return self.images.illumination_correction
        return self.channels.preset == "cellpainting"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (paths as strings), for provenance in the store."""
        return self.model_dump(mode="json")

    def to_toml(self) -> str:
        """The config as TOML text (absolute paths; unset keys left out): ``load_config`` reads it back."""

        def value(v: Any) -> str:
            if isinstance(v, bool):
                return "true" if v else "false"
            if isinstance(v, int | float):
                return repr(v)
            if isinstance(v, str):
                return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
            if isinstance(v, dict):
                return "{ " + ", ".join(f"{value(str(k))} = {value(x)}" for k, x in v.items()) + " }"
            if isinstance(v, list):
                return "[" + ", ".join(value(x) for x in v) + "]"
            raise TypeError(f"cannot write {v!r} as TOML")

        data = self.model_dump(mode="json", exclude_none=True)
        lines = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, dict)]
        for section, values in data.items():
            if isinstance(values, dict):
                lines.append(f"\n[{section}]")
                lines += [f"{k} = {value(v)}" for k, v in values.items()]
        return "\n".join(lines) + "\n"


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make the known path keys absolute relative to ``base`` (the config file's folder)."""
    keys = {("screen", "path"), ("images", "source"), ("plates", "table"), ("plates", "layouts_dir"),
            ("segmentation", "weights"), ("embedding", "cache_dir"), ("report", "out"), ("ray", "output")}
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for section, key in keys:
        sec = out.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(key), str):
            p = Path(sec[key]).expanduser()
            sec[key] = str(p if p.is_absolute() else (base / p))
    return out


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid run configuration"]
    for err in exc.errors():
        loc = [str(x) for x in err["loc"]]
        if len(loc) >= 2:
            key = f"[{loc[0]}].{'.'.join(loc[1:])}"
        elif loc:
            key = f"[{loc[0]}]" if err["type"] == "missing" and loc[0] in RunConfig.model_fields else loc[0]
        else:
            key = "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def config_from_dict(data: dict[str, Any], *, base_dir: str | Path | None = None,
                     source: str = "<config>") -> RunConfig:
    """Validate a config given as a dict (the parsed TOML).

    Parameters
    ----------
    data
        Parsed TOML.
    base_dir
        Folder relative paths are resolved against (default: leave them relative).
    source
        Name used in error messages.

    Raises
    ------
    ConfigError
        Naming every offending key.
    """
    if base_dir is not None:
        data = _resolve_paths(data, Path(base_dir))
    try:
        cfg = RunConfig.model_validate(data)
        cmap = cfg.channel_map()
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None
    except ValueError as exc:  # channel map problems
        raise ConfigError(f"{source}: [channels]: {exc}") from None
    try:
        cmap.display_colors(cfg.report.channel_colors)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return cfg


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a TOML run configuration.

    Parameters
    ----------
    path
        The ``.toml`` file.

    Returns
    -------
    RunConfig
        Frozen, validated; relative paths resolved against the file's folder.

    Raises
    ------
    ConfigError
        If the file is missing, is not TOML, or has invalid keys (each named).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    cfg = config_from_dict(data, base_dir=path.resolve().parent, source=str(path))
    return cfg.model_copy(update={"source_file": path.resolve()})


# ----------------------------------------------------------------------------------------------------------
# reference (generated from the models above; docs/config-reference.md is this text)


def _type_text(annotation: Any) -> str:
    import types
    import typing

    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) if isinstance(a, str) else str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        text = " or ".join(_type_text(a) for a in inner)
        return f"{text} (optional)" if len(inner) < len(args) else text
    if origin in (list, tuple):
        return f"list of {_type_text(args[0])}" if args else "list"
    if origin is dict:
        return f"table of {_type_text(args[0])} -> {_type_text(args[1])}" if args else "table"
    if annotation is Path:
        return "path"
    return {str: "string", int: "integer", float: "number", bool: "true/false"}.get(annotation, str(annotation))


def _default_text(info: Any) -> str:
    from pydantic_core import PydanticUndefined

    if info.is_required():
        return "(required)"
    if info.default_factory is not None:
        value = info.default_factory()
    else:
        value = info.default
    if value is PydanticUndefined:
        return "(required)"
    if isinstance(value, BaseModel):
        return ""
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return f'"{value}"'
    return str(value).replace("'", '"')


def config_reference(*, section: str | None = None, markdown: bool = True) -> str:
    """Every key of a run config: type, default, allowed values and one line of meaning.

    Generated from the config models, so it is always complete; ``docs/config-reference.md`` is its Markdown
    and ``subcell-screen config`` prints it.

    Parameters
    ----------
    section
        Only this section (``images``, ``embedding``, ...; ``top`` for the top-level keys).
    markdown
        Markdown tables (else plain text for a terminal).

    Raises
    ------
    ConfigError
        For an unknown section, listing the sections.
    """
    sections = {name: info.annotation for name, info in RunConfig.model_fields.items()
                if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)}
    top = {name: info for name, info in RunConfig.model_fields.items()
           if name not in sections and not info.exclude}
    if section is not None and section not in sections and section != "top":
        raise ConfigError(f"unknown config section {section!r}; sections: top, {', '.join(sections)}")
    parts: list[str] = []
    if markdown and section is None:
        parts.append("# Run configuration reference\n\nGenerated from `subcell_screen/config.py` "
                     "(`subcell-screen config` prints it; a test keeps this file in sync). A run config is a TOML "
                     "file; relative paths are relative to the file's folder; unknown keys are refused.\n")

    def emit(title: str, doc: str, fields: dict[str, Any]) -> None:
        if markdown:
            parts.append(f"## {title}\n\n{doc}\n\n| key | type | default | meaning |\n|---|---|---|---|")
            for name, info in fields.items():
                parts.append(f"| `{name}` | {_type_text(info.annotation)} | {_default_text(info)} | "
                             f"{(info.description or '').replace('|', '/')} |")
            parts.append("")
        else:
            parts.append(f"{title}  {doc}")
            for name, info in fields.items():
                default = _default_text(info)
                parts.append(f"  {name} = {default or '...'}    ({_type_text(info.annotation)})")
                parts.append(f"      {info.description or ''}")
            parts.append("")

    if section in (None, "top"):
        emit("top-level keys", "Keys outside any section.", top)
    for name, model in sections.items():
        if section in (None, name):
            import re

            doc = re.sub(r"^``\[\w+\]``:\s*", "", (model.__doc__ or "").strip().splitlines()[0])
            emit(f"[{name}]", doc[:1].upper() + doc[1:], dict(model.model_fields))
    return "\n".join(parts).rstrip() + "\n"
