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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ._errors import ConfigError
from .channels import ChannelMap, custom_channel_map, preset

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
    "ReportSection",
    "RaySection",
    "load_config",
    "config_from_dict",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScreenSection(_Section):
    """``[screen]``: where the screen store lives."""

    path: Path = Field(description="Screen folder: screen.duckdb plus Parquet per-cell data.")
    name: str | None = None


class ImagesSection(_Section):
    """``[images]``: where the images are and how to read them."""

    source: Path
    reader: Literal["auto", "phenix", "imagexpress", "loaddata", "hpa", "ometiff"] = "auto"
    pixel_size_um: float | None = Field(default=None, gt=0, description="Overrides file metadata.")
    channel_names: dict[str, str] = Field(
        default_factory=dict,
        description="Instrument channel id -> channel name, e.g. Phenix {'1' = 'DNA', '2' = 'ER'}.")
    illumination_correction: bool | None = Field(
        default=None, description="Default: on for Cell Painting, off otherwise.")
    plates: list[str] | None = Field(default=None, description="Restrict the run to these plates.")


class PlatesSection(_Section):
    """``[plates]``: plates table and layouts."""

    table: Path
    layouts_dir: Path | None = None
    plate_format: Literal[96, 384, 1536] | None = None
    allow_no_negcon: bool = False


class ChannelsSection(_Section):
    """``[channels]``: acquired channels -> SubCell inputs and segmentation channels."""

    preset: Literal["hpa", "hpa-rbg", "hpa-ybg", "hpa-bg", "cellpainting", "custom"] = "hpa"
    channels: list[str] | None = None
    model_channels: Literal["rybg", "rbg", "ybg", "bg"] | None = None
    slots: dict[str, str] | None = None
    passes: dict[str, dict[str, str]] | None = None
    nucleus: str | None = None
    cytoplasm: str | None = None
    protein: str | None = None

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

    method: Literal["classical", "cellpose"] = "classical"
    model: str = Field(default="cpsam", description="Cellpose model name (cpsam, cyto3, nuclei).")
    weights: Path | None = Field(default=None, description="Local Cellpose weights file.")
    weights_sha256: str | None = None
    nucleus_diameter_um: float | None = Field(default=None, gt=0)
    cell_diameter_um: float | None = Field(default=None, gt=0)
    batch_size: int = Field(default=32, gt=0, description="Cellpose batch size, in 256-px tiles.")
    min_nucleus_area_um2: float | None = Field(default=None, ge=0)
    allow_fallback: bool = Field(
        default=False, description="Use the classical segmenter when Cellpose weights are missing.")


class EmbeddingSection(_Section):
    """``[embedding]``: per-cell features."""

    featurizer: Literal["subcell", "classical"] = "subcell"
    model: str = "rybg/MAE-CellS-ProtS-Pool"
    cache_dir: Path | None = None
    offline: bool = False
    precision: Literal["auto", "fp32", "bf16", "bf16-pure"] = Field(default="auto", description=(
        "auto: bf16 on GPUs with bf16 tensor cores (compute capability >= 8.0) and on CPUs with native bf16 "
        "matmul (AMX-BF16, AVX512-BF16, Arm BF16), fp32 elsewhere (CPUs without it emulate bf16 and run it "
        "several times slower than fp32; the run summary records the choice and why); fp32: faithful; bf16: "
        "autocast with an fp32 residual stream; bf16-pure: bf16 weights and residual stream (fastest on GPUs; "
        "cosine to fp32 >= 0.9999 on an H100)."))
    normalize: Literal["joint", "per_channel"] = "per_channel"
    crop_size: int = Field(default=640, gt=0, multiple_of=16)
    target_pixel_size_um: float = Field(default=0.0800885, gt=0)
    mask: bool = False
    batch_size: int = Field(default=128, gt=0)
    num_workers: int = Field(default=2, ge=0)
    compile: bool = False
    store_dtype: Literal["float32", "float16"] = "float32"
    allow_fallback: bool = Field(
        default=False, description="Use classical features when SubCell weights are missing.")
    classical_families: list[Literal["shape", "intensity", "texture", "correlation", "radial"]] = Field(
        default_factory=lambda: ["shape", "intensity", "texture", "correlation", "radial"],
        description="Feature families of the classical featurizer.")
    classical_zernike_degree: int = Field(default=9, ge=-1, le=20,
                                          description="Highest Zernike degree (-1: none).")


class ProfilesSection(_Section):
    """``[profiles]``: cells -> wells -> normalised profiles."""

    cell_to_site: Literal["median", "mean"] = "median"
    site_to_well: Literal["median", "mean"] = "mean"
    normalize: Literal["standardize", "robustize", "mad_robustize", "spherize", "inverse_normal", "none"] = (
        "mad_robustize")
    mad_scale: Literal["normal", "unscaled"] = "normal"
    epsilon: float = Field(default=1e-18, ge=0)
    controls: Literal["negcon", "all"] = "negcon"
    spherize_method: Literal["ZCA", "ZCA-cor", "PCA", "PCA-cor"] = "ZCA-cor"
    spherize_epsilon: float = Field(default=1e-6, ge=0)
    feature_select: list[str] = Field(default_factory=list)
    batch_correction: Literal["none", "harmony"] = "none"
    min_cells_per_well: int = Field(default=1, ge=0)


class ScoringSection(_Section):
    """``[scoring]``: activity, retrieval, hits, dose response, relocalization."""

    null_size: int = Field(default=10000, gt=0)
    seed: int = 0
    threshold: float = Field(default=0.05, gt=0, lt=1)
    distance: Literal["cosine"] = "cosine"
    min_effect_size: float = Field(default=0.0, ge=0)
    moa_column: str | None = "moa"
    relocalization: bool | None = Field(default=None, description="Default: on when there is a protein channel.")


class ReportSection(_Section):
    """``[report]``: where reports go."""

    out: Path = Path("reports")
    sample_sites: int = Field(default=4, ge=0)
    gallery_cells: int = Field(default=8, ge=0)


class RaySection(_Section):
    """``[ray]``: scale-out settings (used with ``--engine ray``)."""

    address: str | None = None
    num_cpus: int | None = Field(default=None, gt=0)
    object_store_memory: int | None = Field(default=None, gt=0, description="bytes")
    gpus_per_actor: float = Field(default=0.0, ge=0)
    segment_actors: int = Field(default=1, gt=0)
    embed_actors: int = Field(default=1, gt=0)
    load_batch_size: int = Field(default=4, gt=0)
    embed_batch_size: int = Field(default=256, gt=0, description="Images per SubCell forward in an embed actor.")
    output: Path | None = Field(default=None, description="Shared folder for Parquet outputs.")
    cpus_per_actor: float = Field(default=1.0, gt=0, description="CPUs reserved by each segment/embed actor.")
    site_batch_size: int = Field(default=4, gt=0,
                                 description="Sites per call of the segment, crop, feature and embed stages.")
    max_retries: int = Field(default=3, ge=0,
                             description="Retries of a site whose worker process died before a site is failed.")


class RunConfig(_Section):
    """A whole run. Build with :func:`load_config` or :func:`config_from_dict`."""

    screen: ScreenSection
    images: ImagesSection
    plates: PlatesSection
    channels: ChannelsSection = ChannelsSection()
    segmentation: SegmentationSection = SegmentationSection()
    embedding: EmbeddingSection = EmbeddingSection()
    profiles: ProfilesSection = ProfilesSection()
    scoring: ScoringSection = ScoringSection()
    report: ReportSection = ReportSection()
    ray: RaySection = RaySection()
    device: str = "auto"
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
        cfg.channel_map()
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None
    except ValueError as exc:  # channel map problems
        raise ConfigError(f"{source}: [channels]: {exc}") from None
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
