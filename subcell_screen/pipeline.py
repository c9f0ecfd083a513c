"""The pipeline: the one place that wires the stages together.

::

    plates table + layouts ──► store (plates, wells)
    images ──► read_plate ──► check_sites ──► illumination (per plate, stored)
        per site: load ──► site QC ──► segment ──► crops ──► SubCell embedding | classical features
    per-cell Parquet ──► well profiles ──► normalise per plate ──► feature select ──► store (profiles)
    profiles ──► activity mAP, hits, dose response, relocalization ──► store (scores, ...)
    store ──► QC + hit reports (HTML)

Every stage reads its inputs from the screen store and writes its outputs there, so each can run alone
(:func:`run` with ``stages=``), and a run is resumable: sites whose stage finished (recorded in
``site_stages``) are skipped unless ``force=True``; every write replaces the rows of its key, so a run killed
at any point and restarted ends with exactly the rows of a clean run.

Featurizer and segmenter are resolved before any work starts (:func:`plan_run`): when SubCell weights or
Cellpose weights are missing, the run stops with the loader's error unless the config allows the classical
fallback; a fallback is announced in the plan's first lines, the log, the run record and the report banner.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ._errors import SubcellScreenError
from .config import RunConfig

__all__ = ["STAGES", "RunPlan", "StageResult", "RunResult", "plan_run", "run", "PipelineError"]

logger = logging.getLogger(__name__)

#: Stages in data-flow order; ``run(stages=...)`` takes any subset.
STAGES: tuple[str, ...] = ("segment", "embed", "profile", "score", "report")


class PipelineError(SubcellScreenError):
    """A stage cannot run (missing inputs, no readable site on a plate, ...)."""


@dataclass(frozen=True)
class RunPlan:
    """What a run will do, resolved before any work starts.

    Attributes
    ----------
    device : str
        Torch device used for SubCell (and Cellpose).
    segmenter : str
        ``classical`` or ``cellpose:<model>``.
    featurizer : str
        ``subcell:<model>`` or ``classical``.
    feature_set : str
        Name of the per-cell feature set in the store.
    fallbacks : tuple of str
        Human-readable notes on every fallback taken (empty when everything ran as configured).
    """

    device: str
    segmenter: str
    featurizer: str
    feature_set: str
    fallbacks: tuple[str, ...] = ()
    models: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _subcell: Any = field(default=None, repr=False, compare=False)
    _cellpose: Any = field(default=None, repr=False, compare=False)

    def lines(self) -> list[str]:
        """The lines the CLI prints first."""
        out = [f"featurizer: {self.featurizer}", f"segmenter:  {self.segmenter}", f"device:     {self.device}"]
        out += [f"WARNING: {f}" for f in self.fallbacks]
        return out


@dataclass(frozen=True)
class StageResult:
    """Outcome of one stage."""

    stage: str
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    cells: int = 0
    seconds: float = 0.0
    messages: tuple[str, ...] = ()

    def line(self) -> str:
        parts = [f"{self.stage:<8} {self.seconds:7.1f} s"]
        if self.ok or self.failed or self.skipped:
            parts.append(f"ok {self.ok}, failed {self.failed}, skipped {self.skipped}")
        if self.cells:
            parts.append(f"{self.cells} cells")
        return "  ".join(parts)


@dataclass(frozen=True)
class RunResult:
    """Outcome of :func:`run`."""

    run_id: str
    store_path: Path
    plan: RunPlan
    stages: tuple[StageResult, ...]
    reports: tuple[Path, ...] = ()

    def summary(self) -> str:
        """Multi-line human summary (stage times, sites ok/failed, cells, failures)."""
        lines = [f"run {self.run_id} -> {self.store_path}"]
        lines += ["  " + s.line() for s in self.stages]
        for s in self.stages:
            for m in s.messages[:10]:
                lines.append(f"  {s.stage}: {m}")
            if len(s.messages) > 10:
                lines.append(f"  {s.stage}: ... {len(s.messages) - 10} more")
        lines += [f"  report: {p}" for p in self.reports]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# planning


def _feature_set_name(featurizer: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", featurizer.replace("subcell:", "subcell_").replace("/", "_"))


def plan_run(config: RunConfig, *, stages: Sequence[str] = STAGES, load_models: bool = True) -> RunPlan:
    """Resolve device, segmenter and featurizer (loading models) before any work starts.

    Parameters
    ----------
    config
        Validated run configuration.
    stages
        Stages that will run; models are only loaded for the stages that need them.
    load_models
        Load the models now (the returned plan then carries them).

    Raises
    ------
    SubcellScreenError
        Missing SubCell or Cellpose weights when the config does not allow the classical fallback (the
        loader's message names the file, where it looked and how to get it).
    """
    fallbacks: list[str] = []
    models: dict[str, Any] = {}
    device = "cpu"
    need_torch = (("embed" in stages and config.embedding.featurizer == "subcell")
                  or ("segment" in stages and config.segmentation.method == "cellpose"))
    if need_torch:
        from .embed import select_device

        device = str(select_device(config.device))

    segmenter = "classical"
    cellpose_model = None
    if config.segmentation.method == "cellpose":
        segmenter = f"cellpose:{config.segmentation.weights or config.segmentation.model}"
        if "segment" in stages and load_models:
            from .segment import CellposeWeightsError

            try:
                cellpose_model = _load_cellpose_model(config, device=device)
            except CellposeWeightsError as exc:
                if not config.segmentation.allow_fallback:
                    raise
                first = str(exc).splitlines()[0]
                fallbacks.append(f"Cellpose weights not available ({first}); segmented with the classical "
                                 "segmenter instead ([segmentation].allow_fallback = true)")
                segmenter = "classical"
                logger.warning(fallbacks[-1])

    featurizer = "classical"
    subcell_model = None
    if config.embedding.featurizer == "subcell":
        featurizer = f"subcell:{config.embedding.model}"
        if "embed" in stages and load_models:
            from .embed import WeightsError

            try:
                subcell_model = _load_subcell_model(config, device=device)
                models["subcell"] = {"name": config.embedding.model,
                                     "files": getattr(subcell_model, "files", None) and
                                     {k: str(v) for k, v in _files_info(subcell_model).items()}}
            except WeightsError as exc:
                if not config.embedding.allow_fallback:
                    raise
                first = str(exc).splitlines()[0]
                fallbacks.append(f"SubCell weights not available ({first}); used classical CellProfiler-style "
                                 "features instead ([embedding].allow_fallback = true)")
                featurizer = "classical"
                logger.warning(fallbacks[-1])
    return RunPlan(device=device, segmenter=segmenter, featurizer=featurizer,
                   feature_set=_feature_set_name(featurizer), fallbacks=tuple(fallbacks), models=models,
                   _subcell=subcell_model, _cellpose=cellpose_model)


def _load_cellpose_model(config: RunConfig, *, device: str) -> Any:
    """The configured Cellpose model (:class:`~subcell_screen.segment.CellposeWeightsError` when missing)."""
    from .segment import load_cellpose

    seg = config.segmentation
    return load_cellpose(str(seg.weights or seg.model), weights_sha256=seg.weights_sha256, device=device,
                         batch_size=seg.batch_size,
                         **({"nucleus_diameter_um": seg.nucleus_diameter_um} if seg.nucleus_diameter_um else {}),
                         **({"cell_diameter_um": seg.cell_diameter_um} if seg.cell_diameter_um else {}))


def _load_subcell_model(config: RunConfig, *, device: str, cache_dir: str | Path | None = None,
                        offline: bool | None = None) -> Any:
    """The configured SubCell model (:class:`~subcell_screen.embed.WeightsError` when missing).

    ``cache_dir``/``offline`` override the config's (a Ray worker gets the folder the driver resolved).
    """
    from .embed import load_model

    emb = config.embedding
    return load_model(emb.model, cache_dir=cache_dir if cache_dir is not None else emb.cache_dir, device=device,
                      precision=emb.precision,
                      offline=offline if offline is not None else (True if emb.offline else None),
                      compile=emb.compile)


def _files_info(model: Any) -> dict[str, Any]:
    files = getattr(model, "files", None)
    if files is None:
        return {}
    if hasattr(files, "to_dict"):
        return files.to_dict()
    if hasattr(files, "__dataclass_fields__"):
        from dataclasses import asdict

        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(files).items()}
    return {"files": str(files)}


# ----------------------------------------------------------------------------------------------------------
# the run


def run(
    config: RunConfig,
    *,
    stages: Sequence[str] = STAGES,
    force: bool = False,
    progress: bool | None = None,
    plan: RunPlan | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    on_plan: Callable[[RunPlan], None] | None = None,
) -> RunResult:
    """Run the stages of a screen.

    Parameters
    ----------
    config
        Validated run configuration (:func:`subcell_screen.config.load_config`).
    stages
        Subset of :data:`STAGES` to run, in data-flow order.
    force
        Recompute sites and tables that are already done.
    progress
        Show progress bars (None: when stderr is a terminal).
    plan
        A plan from :func:`plan_run` (resolved here when None).
    engine
        ``local`` (this process) or ``ray`` (segment + embed on a Ray cluster; see
        :mod:`subcell_screen.distributed`).
    ray_address
        Ray cluster address for ``engine="ray"`` (default: ``[ray].address`` or a local instance).
    on_plan
        Called with the plan before any work (the CLI prints it).

    Returns
    -------
    RunResult
    """
    from .store import ScreenStore

    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    stages = [s for s in STAGES if s in stages]
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    if engine == "ray" and ("segment" in stages or "embed" in stages):
        from .distributed import import_ray

        import_ray()  # before any work: says how to install the extra when it is missing
    if plan is None:
        plan = plan_run(config, stages=stages)
    if on_plan is not None:
        on_plan(plan)
    results: list[StageResult] = []
    reports: tuple[Path, ...] = ()
    with ScreenStore.create(config.screen.path) as store:
        planned = {"featurizer": plan.featurizer, "segmenter": plan.segmenter, "device": plan.device,
                   "feature_set": plan.feature_set, "fallbacks": list(plan.fallbacks)}
        run_id = store.start_run(command="run " + ",".join(stages), config=config.to_dict(), models=plan.models,
                                 parameters={"stages": list(stages), "force": force, "engine": engine},
                                 summary=planned)
        status, error = "ok", None
        try:
            design = _load_design(store, config)
            if "segment" in stages or "embed" in stages:
                if engine == "ray":
                    from .distributed import run_sites_ray

                    results.extend(run_sites_ray(store, config, plan, stages=stages, force=force,
                                                 address=ray_address, run_id=run_id, progress=progress,
                                                 design=design))
                else:
                    results.extend(_run_sites(store, config, plan, design, stages=stages, force=force,
                                              progress=progress, run_id=run_id))
            if "profile" in stages:
                results.append(_run_profile(store, config, plan))
            if "score" in stages:
                results.append(_run_score(store, config, plan))
            if "report" in stages:
                res, reports = _run_report(store, config)
                results.append(res)
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            summary = {**planned, "stages": [s.__dict__ for s in results]}
            store.finish_run(run_id, status=status, summary=summary, error=error)
    return RunResult(run_id=run_id, store_path=Path(config.screen.path), plan=plan, stages=tuple(results),
                     reports=reports)


def _load_design(store: Any, config: RunConfig) -> Any:
    from .layouts import read_plates_table

    design = read_plates_table(config.plates.table, layouts_dir=config.plates.layouts_dir,
                               plate_format=config.plates.plate_format,
                               allow_no_negcon=config.plates.allow_no_negcon)
    store.write_design(design)
    return design


# ----------------------------------------------------------------------------------------------------------
# per-site stages: load -> QC -> segment -> featurize


def site_index(config: RunConfig, design: Any) -> Any:
    """The configured plates' sites, checked against the plates table."""
    from .io import read_plate

    reader = None if config.images.reader == "auto" else config.images.reader
    index = read_plate(config.images.source, reader=reader, channel_names=config.images.channel_names or None,
                       pixel_size_um=config.images.pixel_size_um)
    known = set(design.plates["plate"].to_list())
    wanted = set(config.images.plates) if config.images.plates else None
    found = set(index.plates())
    if wanted is not None:
        missing = sorted(wanted - found)
        if missing:
            raise PipelineError(f"{config.images.source}: no images for plate(s) {missing} listed in "
                                f"[images].plates; plates found: {sorted(found)}")
        index = index.filter(plates=sorted(wanted))
        found = wanted
    unknown = sorted(found - known)
    if unknown:
        raise PipelineError(f"{config.images.source}: plate(s) {unknown} have images but are not in the plates "
                            f"table {config.plates.table}; plates there: {sorted(known)}")
    layout_wells = {(r["plate"], r["well"]) for r in design.wells().select("plate", "well").iter_rows(named=True)}
    stray = sorted({(r.plate, r.well) for r in index} - layout_wells)
    if stray:
        raise PipelineError(f"{config.images.source}: well(s) {stray[:5]}{' ...' if len(stray) > 5 else ''} have "
                            "images but are not in their plate's layout")
    return index


def _site_qc_rows(site: Any) -> pl.DataFrame:
    """Per-channel intensity and focus metrics of one loaded site (for the QC report)."""
    from scipy import ndimage

    rows = []
    data = site.data
    info_max = float(np.iinfo(data.dtype).max) if np.issubdtype(data.dtype, np.integer) else None
    for ch, img in zip(site.channel_names, data):
        img = np.asarray(img)
        sub = img[::2, ::2].astype(np.float32)
        p01, med, p99 = np.percentile(sub, [1, 50, 99])
        sat = float((img >= info_max).mean()) if info_max is not None else 0.0
        scaled = sub / max(float(p99), 1e-12)
        focus = float(ndimage.laplace(scaled).var())
        rows.append({"plate": site.record.plate, "well": site.record.well, "site": site.record.site,
                     "channel": ch, "mean": float(sub.mean()), "median": float(med), "p01": float(p01),
                     "p99": float(p99), "saturated_fraction": sat, "focus": focus})
    return pl.DataFrame(rows, schema_overrides={"site": pl.Int32})


def _protein_readout(site: Any, seg: Any, channel: str) -> pl.DataFrame:
    """Per-cell nuclear / cytoplasmic mean intensity of the protein channel (relocalization readout)."""
    from scipy import ndimage

    img = site.channel(channel).astype(np.float64)
    cells, nuclei = seg.cells, seg.nuclei
    ids = seg.cells_table["cell_id"].to_numpy()
    if ids.size == 0:
        return pl.DataFrame(schema={"plate": pl.String, "well": pl.String, "site": pl.Int32, "cell_id": pl.Int32,
                                    "protein_nuc_cyto_ratio": pl.Float64})
    nuc_mask = nuclei > 0
    cyto = np.where(nuc_mask, 0, cells)
    nuc = np.where(nuc_mask, cells, 0)
    with np.errstate(divide="ignore", invalid="ignore"):  # a cell without nucleus or cytoplasm gives NaN
        nuc_mean = np.asarray(ndimage.mean(img, nuc, ids), dtype=np.float64)
        cyto_mean = np.asarray(ndimage.mean(img, cyto, ids), dtype=np.float64)
        ratio = np.where(cyto_mean > 0, nuc_mean / cyto_mean, np.nan)
    return pl.DataFrame({"plate": site.record.plate, "well": site.record.well, "site": int(site.record.site),
                         "cell_id": ids.astype(np.int32), "protein_nuc_cyto_ratio": ratio},
                        schema_overrides={"site": pl.Int32})


def _segmentation_from_store(store: Any, site: Any) -> Any:
    r = site.record
    return _stored_segmentation(store, r.key, pixel_size_um=site.pixel_size_um)


def _stored_segmentation(store: Any, key: tuple[str, str, int], *, pixel_size_um: float | None) -> Any:
    """The :class:`~subcell_screen.segment.Segmentation` of one site as stored by the segment stage."""
    from .segment import Segmentation, segmentation_qc

    plate, well, site = key
    nuclei, cells = store.read_masks(plate, well, site)
    table = store.sql("SELECT * FROM cells WHERE plate = ? AND well = ? AND site = ? ORDER BY cell_id",
                      [plate, well, site])
    method = store.sql("SELECT method FROM masks WHERE plate = ? AND well = ? AND site = ?",
                       [plate, well, site])["method"][0]
    return Segmentation(plate=plate, well=well, site=site, nuclei=nuclei, cells=cells, cells_table=table,
                        qc=segmentation_qc(table), method=method, pixel_size_um=pixel_size_um)


def _illumination(store: Any, config: RunConfig, index: Any, plates: Iterable[str], *, force: bool,
                  progress: bool | None = None) -> dict:
    from .io import compute_illumination

    out = {}
    for plate in plates:
        stored = {} if force else store.read_illumination(plate)
        if stored:
            out[plate] = stored
            continue
        funcs = compute_illumination(index, plate=plate, progress=progress)
        store.write_illumination(plate, dict(funcs), recipe=dict(funcs.recipe))
        out[plate] = dict(funcs)
    return out


# The per-site stages are split into compute (_SiteProcessor: a loaded site in, an _SiteOutcome out, no store
# access) and record (_record_site: one writer puts an outcome in the store), so that the local engine and the
# Ray engine (subcell_screen.distributed: compute on workers, record on the driver) share both. The Ray driver
# stores error-free sites with distributed._ingest.BatchIngest, which writes these same rows many sites at a time.


@dataclass(frozen=True)
class _SiteSelection:
    """Which sites a run of the per-site stages works on (see :func:`_select_sites`)."""

    index: Any                      # SiteIndex of the configured plates
    report: Any                     # SiteCheckReport of check_sites
    records: tuple[Any, ...]        # sites with work to do (readable, some stage not done or force)
    skipped: int                    # sites with nothing to do
    seg_done: frozenset             # {(plate, well, site)} whose segment stage is done (empty with force)
    emb_done: frozenset
    embed_stage: str                # site_stages name of the embed stage, ``embed:<feature_set>``
    do_seg: bool
    do_emb: bool
    force: bool

    def needs_segment(self, key: tuple) -> bool:
        return self.do_seg and (self.force or key not in self.seg_done)

    def needs_embed(self, key: tuple) -> bool:
        return self.do_emb and (self.force or key not in self.emb_done)


def _select_sites(store: Any, config: RunConfig, plan: RunPlan, design: Any, *, stages: Sequence[str],
                  force: bool, progress: bool | None = None) -> _SiteSelection:
    """Index the images, check every site (recorded in ``sites``) and pick the sites with work to do."""
    from .io import check_sites

    do_seg, do_emb = "segment" in stages, "embed" in stages
    index = site_index(config, design)
    report = check_sites(index, store=store, raise_on_unreadable_plate=False, progress=progress)
    load_failed = {tuple(key) for key, _msg in report.failures}
    embed_stage = f"embed:{plan.feature_set}"
    seg_done = frozenset() if force else frozenset(store.sites_with_stage("segment"))
    emb_done = frozenset() if force else frozenset(store.sites_with_stage(embed_stage))
    records = tuple(r for r in index if r.key not in load_failed and (
        (do_seg and r.key not in seg_done) or (do_emb and r.key not in emb_done)))
    return _SiteSelection(index=index, report=report, records=records, skipped=len(index) - len(records),
                          seg_done=seg_done, emb_done=emb_done, embed_stage=embed_stage, do_seg=do_seg,
                          do_emb=do_emb, force=force)


def _raw_dtype(store: Any, key: tuple[str, str, int]) -> str:
    """The dtype of a site's image files as ``check_sites`` recorded it (``float32`` when unknown)."""
    row = store.sql("SELECT dtype FROM sites WHERE plate = ? AND well = ? AND site = ?", list(key))
    return row["dtype"][0] if row.height and row["dtype"][0] else "float32"


@dataclass(frozen=True)
class _SiteOutcome:
    """What the per-site stages computed for one site; :func:`_record_site` stores it.

    ``segmented``/``featurized`` say whether that stage ran for this site in this run; ``*_error`` is
    ``(exception type name, message)`` of a failed stage.
    """

    key: tuple[str, str, int]
    channel_names: tuple[str, ...] = ()
    load_error: str | None = None
    site_qc: pl.DataFrame | None = field(default=None, repr=False)
    segmented: bool = False
    segmentation: Any = field(default=None, repr=False)
    readouts: pl.DataFrame | None = field(default=None, repr=False)
    seg_error: tuple[str, str] | None = None
    seg_seconds: float = 0.0
    featurized: bool = False
    features: Any = field(default=None, repr=False)
    feat_error: tuple[str, str] | None = None
    feat_seconds: float = 0.0


class _ClassicalFeatures:
    """Classical CellProfiler-style features of one site: :meth:`compute` (pure) and :meth:`write`."""

    kind = "classical"

    def __init__(self, config: RunConfig, *, feature_set: str, channel_map: Any) -> None:
        from .features import ClassicalFeaturizer, FeatureParams

        params = FeatureParams(families=tuple(config.embedding.classical_families),
                               zernike_degree=config.embedding.classical_zernike_degree)
        self.feature_set = feature_set
        self.channel_map = channel_map
        self.featurizer = ClassicalFeaturizer(params=params, feature_set=feature_set)

    def compute(self, site: Any, seg: Any, *, raw_dtype: str | None = None) -> pl.DataFrame:
        """Per-cell table ``plate, well, site, cell_id, features``.

        ``raw_dtype`` is the dtype of the image files: illumination-corrected (float) pixels keep the source's
        units, so they are scaled by the source dtype as CellProfiler does for the raw image (uint16 -> 65535).
        """
        scale = None
        if np.issubdtype(site.data.dtype, np.floating):
            raw = np.dtype(raw_dtype or "float32")
            scale = float(np.iinfo(raw).max) if np.issubdtype(raw, np.integer) else None
        return self.featurizer.featurize_site(site, seg, channel_map=self.channel_map,
                                              **({"intensity_scale": scale} if scale else {}))

    @staticmethod
    def n_cells(table: pl.DataFrame) -> int:
        return table.height

    def write(self, store: Any, key: tuple[str, str, int], channel_names: Sequence[str], table: pl.DataFrame) -> int:
        self.write_many(store, [key], channel_names, [table])
        return table.height

    def write_many(self, store: Any, keys: Sequence[tuple], channel_names: Sequence[str],
                   tables: Sequence[pl.DataFrame]) -> None:
        """:meth:`write` for several sites with the same channels at once (one feature-set registration)."""
        from .features import write_features

        names = self.featurizer.feature_names(self.featurizer.channel_names(list(channel_names), self.channel_map))
        table = tables[0] if len(tables) == 1 else pl.concat(list(tables), how="vertical_relaxed")
        write_features(store, table, feature_set=self.feature_set, feature_names=names,
                       parameters=self.featurizer.parameters(), sites=list(keys))


class _SubcellFeatures:
    """SubCell embeddings of one site: :meth:`crops` + :meth:`embed` (= :meth:`compute`, pure) and :meth:`write`.

    ``model`` is a loaded SubCell model (the Embedder is created on first use, so a writer needs no device);
    ``batch_size`` is images per forward (default ``[embedding].batch_size``). Crops are rescaled on the CPU
    unless the device is CUDA (then the embedder resizes on the device), as in the local engine.
    """

    kind = "subcell"

    def __init__(self, config: RunConfig, *, feature_set: str, channel_map: Any, model: Any, device: str,
                 batch_size: int | None = None) -> None:
        self.emb = config.embedding
        self.feature_set = feature_set
        self.channel_map = channel_map
        self.model = model
        self.device = device
        self.batch_size = int(batch_size or self.emb.batch_size)
        self.rescale = "defer" if str(device).startswith("cuda") else "cpu"
        self._embedder = None

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            from .embed import Embedder

            emb = self.emb
            self._embedder = Embedder(self.model, channel_map=self.channel_map, normalize=emb.normalize,
                                      mask=emb.mask, batch_size=self.batch_size, device=self.device,
                                      precision=emb.precision, compile=emb.compile, num_workers=emb.num_workers)
        return self._embedder

    def crops(self, site: Any, seg: Any) -> Iterable[Any]:
        """Lazy iterator of the site's :class:`~subcell_screen.crops.CropBatch` es."""
        from .crops import iter_crops

        emb = self.emb
        return iter_crops(site, seg, target_pixel_size_um=emb.target_pixel_size_um, crop_size=emb.crop_size,
                          mask=emb.mask, batch_size=emb.batch_size, rescale=self.rescale)

    def embed(self, batches: Iterable[Any]) -> list[Any]:
        """One :class:`~subcell_screen.embed.EmbeddingResult` per crop batch, in order."""
        return list(self.embedder.embed_batches(batches, progress=False))

    def compute(self, site: Any, seg: Any, *, raw_dtype: str | None = None) -> list[Any]:
        return self.embed(self.crops(site, seg))

    @staticmethod
    def n_cells(results: list[Any]) -> int:
        return int(sum(len(r.embedding) for r in results))

    def write(self, store: Any, key: tuple[str, str, int], channel_names: Sequence[str], results: list[Any]) -> int:
        from .embed import write_embeddings

        emb = self.emb
        sha = _files_info(self.model)
        write_embeddings(store, results, feature_set=self.feature_set, dtype=emb.store_dtype,
                         model=emb.model, model_sha256={k: str(v) for k, v in sha.items()},
                         parameters={"crop_size": emb.crop_size, "normalize": emb.normalize, "mask": emb.mask,
                                     "precision": emb.precision, "target_pixel_size_um": emb.target_pixel_size_um},
                         sites=[key])
        return self.n_cells(results)

    def write_many(self, store: Any, keys: Sequence[tuple], channel_names: Sequence[str],
                   outputs: Sequence[list[Any]]) -> None:
        """:meth:`write` for several sites at once; as there, a site without cells gets no file."""
        with_cells = [(key, results) for key, results in zip(keys, outputs) if results]
        if with_cells:
            self.write(store, with_cells[0][0], channel_names, [r for _, results in with_cells for r in results])


#: Featurization errors recorded as a failed site; anything else stops the run.
_FEATURE_ERRORS = (SubcellScreenError, ValueError, RuntimeError, KeyError)


class _SiteProcessor:
    """Compute of the per-site stages for loaded sites: QC rows, segmentation, protein readout, features.

    Never touches the store, so it runs the same in this process or on a Ray worker.

    Parameters
    ----------
    config
        Run configuration.
    segmenter, featurizer, feature_set
        As resolved in the :class:`RunPlan`.
    device
        Torch device of the models.
    cellpose
        Loaded Cellpose model (segmentation is classical when None).
    subcell
        Loaded SubCell model (for ``featurizer="subcell:..."``).
    embed_batch_size
        Images per SubCell forward (default ``[embedding].batch_size``).
    """

    def __init__(self, config: RunConfig, *, segmenter: str, featurizer: str, feature_set: str, device: str,
                 cellpose: Any = None, subcell: Any = None, embed_batch_size: int | None = None) -> None:
        self.config = config
        self.channel_map = config.channel_map()
        self.cellpose = cellpose if segmenter.startswith("cellpose") else None
        self.method = "cellpose" if self.cellpose is not None else "classical"
        if featurizer == "classical":
            self.features: Any = _ClassicalFeatures(config, feature_set=feature_set, channel_map=self.channel_map)
        else:
            self.features = _SubcellFeatures(config, feature_set=feature_set, channel_map=self.channel_map,
                                             model=subcell, device=device, batch_size=embed_batch_size)

    @classmethod
    def from_plan(cls, config: RunConfig, plan: RunPlan) -> _SiteProcessor:
        return cls(config, segmenter=plan.segmenter, featurizer=plan.featurizer, feature_set=plan.feature_set,
                   device=plan.device, cellpose=plan._cellpose, subcell=plan._subcell)

    def segment(self, site: Any) -> tuple[Any, pl.DataFrame | None, tuple[str, str] | None, float]:
        """``(segmentation, protein readout rows, error, seconds)``; a failed site gives ``(None, None, error, s)``."""
        from .segment import segment_site

        t0 = time.perf_counter()
        try:
            seg = segment_site(site, channel_map=self.channel_map, method=self.method, model=self.cellpose,
                               nucleus_diameter_um=self.config.segmentation.nucleus_diameter_um)
        except Exception as exc:  # noqa: BLE001 - one bad site must not stop the plate
            logger.warning("segmentation failed for %s: %s", site.record.key, exc)
            return None, None, (type(exc).__name__, str(exc)), time.perf_counter() - t0
        dt = time.perf_counter() - t0
        protein = self.channel_map.protein_channel
        readouts = _protein_readout(site, seg, protein) if protein else None
        return seg, readouts, None, dt

    def featurize(self, site: Any, seg: Any, *, raw_dtype: str | None = None,
                  compute: Callable[[], Any] | None = None, key: tuple | None = None
                  ) -> tuple[Any, tuple[str, str] | None, float]:
        """``(features, error, seconds)``; ``seg`` may be a callable returning the segmentation (read lazily).

        ``compute`` replaces the featurizer call (the Ray engine embeds crops made in another stage; ``site``
        may then be None and ``key`` names the site in log messages).
        """
        t0 = time.perf_counter()
        try:
            if compute is not None:
                out = compute()
            else:
                if callable(seg):
                    seg = seg()
                out = self.features.compute(site, seg, raw_dtype=raw_dtype)
        except Exception as exc:  # noqa: BLE001
            if not isinstance(exc, _FEATURE_ERRORS):
                raise
            logger.warning("featurization failed for %s: %s", key or site.record.key, exc)
            return None, (type(exc).__name__, str(exc)), time.perf_counter() - t0
        return out, None, time.perf_counter() - t0

    def process(self, site: Any, *, segment: bool, featurize: bool, segmentation: Any = None,
                raw_dtype: str | None = None) -> _SiteOutcome:
        """All per-site stages of one loaded site (``segmentation``: the stored one when not segmenting)."""
        out = _SiteOutcome(key=site.record.key, channel_names=tuple(site.channel_names), site_qc=_site_qc_rows(site))
        seg = segmentation
        if segment:
            seg, readouts, error, dt = self.segment(site)
            out = replace(out, segmented=True, segmentation=seg, readouts=readouts, seg_error=error, seg_seconds=dt)
            if error is not None:
                return out
        if featurize:
            feats, error, dt = self.featurize(site, seg, raw_dtype=raw_dtype)
            out = replace(out, featurized=True, features=feats, feat_error=error, feat_seconds=dt)
        return out


@dataclass
class _SiteTally:
    """Running counts of the segment and embed stages (mutable accumulator of :func:`_record_site`)."""

    seg: dict = field(default_factory=lambda: {"ok": 0, "failed": 0, "cells": 0, "seconds": 0.0, "messages": []})
    emb: dict = field(default_factory=lambda: {"ok": 0, "failed": 0, "cells": 0, "seconds": 0.0, "messages": []})


def _record_site(store: Any, out: _SiteOutcome, *, processor: _SiteProcessor, selection: _SiteSelection,
                 tally: _SiteTally, run_id: str) -> None:
    """Store one site's outcome (the single writer of the per-site stages)."""
    from .segment import write_segmentation

    plate, well, site = out.key
    if out.load_error is not None:
        store.set_site_status(plate, well, site, stage="load", status="failed", error=out.load_error, run_id=run_id)
        res = tally.seg if selection.do_seg else tally.emb
        res["messages"].append(f"{plate} {well} s{site}: {out.load_error}")
        res["failed"] += 1
        return
    store.replace_rows("site_qc", out.site_qc, keys=["plate", "well", "site"])
    if out.segmented:
        if out.seg_error is not None:
            kind, msg = out.seg_error
            store.set_site_status(plate, well, site, stage="segment", status="failed", error=f"{kind}: {msg}",
                                  run_id=run_id)
            tally.seg["failed"] += 1
            tally.seg["messages"].append(f"{plate} {well} s{site}: segmentation: {msg}")
            return
        seg = out.segmentation
        if out.readouts is not None:
            store.replace_rows("cell_readouts", out.readouts, keys={"plate": plate, "well": well, "site": int(site)})
        write_segmentation(store, seg, method=processor.method, run_id=run_id, seconds=out.seg_seconds)
        tally.seg["ok"] += 1
        tally.seg["cells"] += seg.n_cells
        tally.seg["seconds"] += out.seg_seconds
    if out.featurized:
        if out.feat_error is not None:
            kind, msg = out.feat_error
            store.set_site_status(plate, well, site, stage=selection.embed_stage, status="failed",
                                  error=f"{kind}: {msg}", run_id=run_id)
            tally.emb["failed"] += 1
            tally.emb["messages"].append(f"{plate} {well} s{site}: features: {msg}")
            return
        t0 = time.perf_counter()
        n = processor.features.write(store, out.key, out.channel_names, out.features)
        dt = out.feat_seconds + time.perf_counter() - t0
        store.set_site_status(plate, well, site, stage=selection.embed_stage, status="ok", n_cells=n, run_id=run_id,
                              seconds=dt)
        logger.info("embedded %s %s s%d: %d cells in %.2f s", plate, well, site, n, dt)
        tally.emb["ok"] += 1
        tally.emb["cells"] += n
        tally.emb["seconds"] += dt


def _site_stage_results(store: Any, selection: _SiteSelection, tally: _SiteTally, *,
                        total_seconds: float) -> list[StageResult]:
    """StageResults of the per-site stages; raises when a plate has no segmented site."""
    sel = selection
    # plates with no readable site are an error, after every other site was processed and recorded
    if sel.do_seg:
        ok_plates = {k[0] for k in store.sites_with_stage("segment")}
        dead = sorted({r.plate for r in sel.index} - ok_plates)
        if dead:
            raise PipelineError(f"no site of plate(s) {dead} could be segmented; see the failed sites in the "
                                "store (SELECT * FROM sites WHERE status = 'failed')")
    load_msgs = [f"load: {msg}" for _key, msg in sel.report.failures]
    seg, emb = tally.seg, tally.emb
    out = []
    if sel.do_seg:
        out.append(StageResult("segment", seg["ok"], seg["failed"] + len(sel.report.failures), sel.skipped,
                               seg["cells"], seg["seconds"] if sel.do_emb else total_seconds,
                               tuple(load_msgs + seg["messages"])))
    if sel.do_emb:
        out.append(StageResult("embed", emb["ok"], emb["failed"], sel.skipped, emb["cells"],
                               emb["seconds"] if sel.do_seg else total_seconds, tuple(emb["messages"])))
    return out


def cpu_workers(config: RunConfig, plan: RunPlan) -> int:
    """Processes the local engine uses for the per-site stages.

    The all-CPU path (classical segmentation and classical features) runs sites in ``[run] workers`` processes
    (default: the machine's cores, at most 8); a run with a torch model (Cellpose, SubCell) keeps the model
    in this process and works site by site (the GPU does the heavy lifting).
    """
    if plan.segmenter != "classical" or plan.featurizer != "classical":
        return 1
    n = config.workers if config.workers is not None else min(os.cpu_count() or 1, 8)
    return max(1, int(n))


def _run_sites(store: Any, config: RunConfig, plan: RunPlan, design: Any, *, stages: Sequence[str], force: bool,
               progress: bool | None, run_id: str) -> list[StageResult]:
    from tqdm.auto import tqdm

    from .io import SiteLoadError, iter_sites

    t_start = time.perf_counter()
    sel = _select_sites(store, config, plan, design, stages=stages, force=force, progress=progress)
    illum = _illumination(store, config, sel.index, sorted({r.plate for r in sel.records}), force=force,
                          progress=progress) if config.illumination_correction() and sel.records else None
    processor = _SiteProcessor.from_plan(config, plan)
    tally = _SiteTally()
    bar = tqdm(total=len(sel.records), desc="sites", unit="site", disable=_no_progress(progress))
    workers = min(cpu_workers(config, plan), max(1, len(sel.records)))

    def task(record: Any) -> tuple:
        need_seg, need_emb = sel.needs_segment(record.key), sel.needs_embed(record.key)
        raw = _raw_dtype(store, record.key) if need_emb else None
        stored = _stored_segmentation(store, record.key, pixel_size_um=record.pixel_size_um) \
            if need_emb and not need_seg else None
        return record, need_seg, need_emb, stored, raw

    if workers > 1:
        logger.info("per-site stages in %d processes", workers)
        for out in _process_pool_outcomes(config, plan, (task(r) for r in sel.records), illum, workers=workers):
            bar.update(1)
            _record_site(store, out, processor=processor, selection=sel, tally=tally, run_id=run_id)
    else:
        for record, site in iter_sites(sel.records, illumination=illum, raise_on_unreadable_plate=False,
                                       progress=False):
            bar.update(1)
            if isinstance(site, SiteLoadError):
                out = _SiteOutcome(key=record.key, load_error=str(site))
            else:
                _, need_seg, need_emb, stored, raw = task(record)
                if raw is not None and not np.issubdtype(site.data.dtype, np.floating):
                    raw = None
                out = processor.process(site, segment=need_seg, featurize=need_emb, segmentation=stored,
                                        raw_dtype=raw)
            _record_site(store, out, processor=processor, selection=sel, tally=tally, run_id=run_id)
    bar.close()
    return _site_stage_results(store, sel, tally, total_seconds=time.perf_counter() - t_start)


# -- process pool for the all-CPU path: workers load and compute, this process records --------------------

_POOL: dict[str, Any] = {}


def _pool_init(config: RunConfig, feature_set: str, illumination_dir: str | None) -> None:
    import threadpoolctl  # one BLAS thread per worker process: the processes are the parallelism

    threadpoolctl.threadpool_limits(1)
    _POOL["processor"] = _SiteProcessor(config, segmenter="classical", featurizer="classical",
                                        feature_set=feature_set, device="cpu")
    _POOL["illumination_dir"] = illumination_dir
    _POOL["illumination"] = (None, None)


def _pool_illumination(plate: str) -> dict | None:
    """The plate's illumination functions, read once per plate from the run's temp folder."""
    folder = _POOL["illumination_dir"]
    if folder is None:
        return None
    cached_plate, funcs = _POOL["illumination"]
    if cached_plate != plate:
        path = Path(folder) / f"{plate}.npz"
        funcs = dict(np.load(path)) if path.is_file() else None
        _POOL["illumination"] = (plate, funcs)
    return funcs


def _pool_task(record: Any, need_seg: bool, need_emb: bool, stored: Any, raw: str | None) -> _SiteOutcome:
    from .io import SiteLoadError, load_site

    try:
        site = load_site(record, illumination=_pool_illumination(record.plate))
    except SiteLoadError as exc:
        return _SiteOutcome(key=record.key, load_error=str(exc))
    if raw is not None and not np.issubdtype(site.data.dtype, np.floating):
        raw = None
    return _POOL["processor"].process(site, segment=need_seg, featurize=need_emb, segmentation=stored,
                                      raw_dtype=raw)


def _process_pool_outcomes(config: RunConfig, plan: RunPlan, tasks: Iterable[tuple], illumination: dict | None,
                           *, workers: int) -> Iterable[_SiteOutcome]:
    """Outcomes of ``tasks`` computed in ``workers`` spawned processes, in task order, a bounded window ahead."""
    import multiprocessing
    import tempfile
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")  # fork is unsafe with polars' and BLAS' threads
    with tempfile.TemporaryDirectory(prefix="subcell_screen_illum_") as illum_dir, \
            ProcessPoolExecutor(workers, mp_context=ctx, initializer=_pool_init,
                                initargs=(config, plan.feature_set,
                                          illum_dir if illumination else None)) as pool:
        for plate, funcs in (illumination or {}).items():  # workers read one plate's functions at a time
            np.savez(Path(illum_dir) / f"{plate}.npz", **funcs)
        window: deque = deque()
        try:
            for args in tasks:
                window.append(pool.submit(_pool_task, *args))
                if len(window) >= 2 * workers:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        except BaseException:
            for fut in window:
                fut.cancel()
            raise


def _no_progress(progress: bool | None) -> bool | None:
    return None if progress is None else not progress


# ----------------------------------------------------------------------------------------------------------
# profiles


def _run_profile(store: Any, config: RunConfig, plan: RunPlan) -> StageResult:
    from .profiles import NEGCON, feature_select, normalize, well_profiles_from_store

    t0 = time.perf_counter()
    prof = config.profiles
    fs = _feature_set_in_store(store, plan)
    wide = well_profiles_from_store(store, feature_set=fs, cell_to_site=prof.cell_to_site,
                                    site_to_well=prof.site_to_well)
    wide = _attach_counts(store, wide)
    if prof.min_cells_per_well > 1:
        wide = wide.filter(pl.col("Metadata_Count_Cells") >= prof.min_cells_per_well)
    features = [c for c in wide.columns if not c.startswith("Metadata_")]
    messages = []
    normalized = wide
    if prof.normalize != "none":
        controls = NEGCON if prof.controls == "negcon" else None
        kwargs: dict[str, Any] = {}
        if prof.normalize == "mad_robustize":
            kwargs.update(epsilon=prof.epsilon, mad_scale=prof.mad_scale)
        if prof.normalize == "spherize":
            kwargs.update(spherize_method=prof.spherize_method, spherize_epsilon=prof.spherize_epsilon)
        normalized = normalize(wide, method=prof.normalize, controls=controls, features=features, **kwargs)
    if prof.feature_select:
        feats = [c for c in normalized.columns if not c.startswith("Metadata_")]
        normalized = feature_select(normalized, operation=list(prof.feature_select), features=feats)
        messages.append(f"feature selection kept {len([c for c in normalized.columns if not c.startswith('Metadata_')])}"
                        f" of {len(feats)} features")
    if prof.batch_correction == "harmony":
        from .profiles import correct_batch

        batch_col = "Metadata_Batch" if "Metadata_Batch" in normalized.columns else "Metadata_Plate"
        if normalized[batch_col].n_unique() > 1:
            normalized = correct_batch(normalized, batch_col=batch_col, method="harmony",
                                       features=[c for c in normalized.columns if not c.startswith("Metadata_")])
        else:
            messages.append(f"batch correction skipped: one value of {batch_col}")
    for profile_set, frame in (("raw", wide), ("normalized", normalized)):
        _store_profiles(store, frame, profile_set=profile_set, feature_set=fs)
    _create_views(store)
    return StageResult("profile", ok=normalized.height, seconds=time.perf_counter() - t0,
                       messages=tuple(messages))


def _feature_set_in_store(store: Any, plan: RunPlan) -> str:
    names = store.sql("SELECT feature_set FROM feature_sets")["feature_set"].to_list()
    if plan.feature_set in names:
        return plan.feature_set
    if len(names) == 1:
        return names[0]
    raise PipelineError(f"feature set {plan.feature_set!r} is not in the store (it has {names or 'none'}); "
                        "run the embed stage first")


def _attach_counts(store: Any, wide: pl.DataFrame) -> pl.DataFrame:
    counts = store.sql("SELECT plate AS Metadata_Plate, well AS Metadata_Well, count(*)::BIGINT AS "
                       "Metadata_Count_Cells FROM cells GROUP BY ALL")
    if "Metadata_Count_Cells" in wide.columns:
        wide = wide.drop("Metadata_Count_Cells")
    out = wide.join(counts, on=["Metadata_Plate", "Metadata_Well"], how="left").with_columns(
        pl.col("Metadata_Count_Cells").fill_null(0))
    meta = [c for c in out.columns if c.startswith("Metadata_")]
    return out.select(meta + [c for c in out.columns if c not in meta])


def _store_profiles(store: Any, frame: pl.DataFrame, *, profile_set: str, feature_set: str) -> None:
    feats = [c for c in frame.columns if not c.startswith("Metadata_")]
    x = frame.select(feats).to_numpy().astype(np.float32) if feats else np.zeros((frame.height, 0), np.float32)
    n_cells = frame["Metadata_Count_Cells"] if "Metadata_Count_Cells" in frame.columns else \
        pl.Series([None] * frame.height, dtype=pl.Int64)
    rows = pl.DataFrame({
        "profile_set": [profile_set] * frame.height, "feature_set": [feature_set] * frame.height,
        "plate": frame["Metadata_Plate"], "well": frame["Metadata_Well"],
        "n_cells": n_cells.cast(pl.Int32), "features": pl.Series(list(x), dtype=pl.List(pl.Float32)),
    })
    names = pl.DataFrame({"profile_set": [profile_set] * len(feats), "position": list(range(len(feats))),
                          "name": feats}, schema_overrides={"position": pl.Int32, "name": pl.String})
    store.replace_rows("profiles", rows, keys={"profile_set": profile_set})
    store.replace_rows("profile_features", names, keys={"profile_set": profile_set})


def _create_views(store: Any) -> None:
    store.create_view("well_profiles",
                      "SELECT p.feature_set, p.n_cells, w.*, p.features FROM profiles p JOIN wells w "
                      "USING (plate, well) WHERE p.profile_set = 'normalized'")


def read_profiles(store: Any, *, profile_set: str = "normalized") -> pl.DataFrame:
    """Well profiles from the store in pycytominer's wide layout (``Metadata_`` columns + features)."""
    names = store.sql("SELECT name FROM profile_features WHERE profile_set = ? ORDER BY position",
                      [profile_set])["name"].to_list()
    prof = store.sql("SELECT plate, well, n_cells, features FROM profiles WHERE profile_set = ? "
                     "ORDER BY plate, well", [profile_set])
    if prof.height == 0:
        raise PipelineError(f"no {profile_set!r} profiles in the store; run the profile stage first")
    meta = store.wells(metadata=True).rename({"Metadata_Plate": "plate", "Metadata_Well": "well"})
    meta = prof.select("plate", "well", "n_cells").join(meta, on=["plate", "well"], how="left").rename(
        {"plate": "Metadata_Plate", "well": "Metadata_Well", "n_cells": "Metadata_Count_Cells"})
    x = np.asarray(prof["features"].to_list(), dtype=np.float64).reshape(prof.height, len(names))
    return pl.concat([meta, pl.DataFrame(x, schema=names, orient="row")], how="horizontal")


# ----------------------------------------------------------------------------------------------------------
# scoring


def _run_score(store: Any, config: RunConfig, plan: RunPlan) -> StageResult:
    from .score import dose_response, hit_table

    t0 = time.perf_counter()
    sc = config.scoring
    wide = read_profiles(store)
    meta_cols = [c for c in wide.columns if c.startswith("Metadata_")]
    feats = [c for c in wide.columns if c not in meta_cols]
    # empty wells carry no perturbation; keep negcon + treatments + poscons
    wide = wide.filter(pl.col("Metadata_control_type").is_null() | (pl.col("Metadata_control_type") != "empty"))
    x = wide.select(feats).to_numpy()
    ok_rows = np.isfinite(x).all(axis=1)
    messages = []
    if not ok_rows.all():
        bad = wide.filter(~pl.Series(ok_rows)).select("Metadata_Plate", "Metadata_Well").rows()
        messages.append(f"{len(bad)} well(s) with non-finite profiles left out of scoring, e.g. {bad[:3]}")
        wide, x = wide.filter(pl.Series(ok_rows)), x[ok_rows]
    meta = wide.select(meta_cols)
    n_negcon = meta.filter(pl.col("Metadata_control_type") == "negcon").height
    replicated = meta.filter(pl.col("Metadata_control_type").is_null()).group_by("Metadata_perturbation_id").len()
    if n_negcon < 2 or replicated.filter(pl.col("len") >= 2).height == 0:
        # activity mAP ranks a perturbation's replicate wells against negcon wells: nothing to rank here
        msg = (f"scoring skipped: phenotypic activity needs >= 2 negcon wells and a perturbation in >= 2 wells "
               f"(found {n_negcon} negcon wells, at most {int(replicated['len'].max() or 0)} well(s) per "
               "perturbation)")
        logger.warning(msg)
        return StageResult("score", seconds=time.perf_counter() - t0, messages=(msg,))
    # one activity/hit row per perturbation across doses: identity = id (+ concentration for dose series)
    hits = hit_table(meta, x, q_threshold=sc.threshold, min_effect_size=sc.min_effect_size,
                     null_size=sc.null_size, seed=sc.seed)
    names = store.sql("SELECT DISTINCT perturbation_id, perturbation_name, control_type FROM wells")
    names = names.unique("perturbation_id", keep="first")
    hits = hits.join(names, on="perturbation_id", how="left")
    scores = hits.rename({"ci_low": "effect_ci_low", "ci_high": "effect_ci_high"}).select(
        "perturbation_id", "perturbation_name", "control_type", "n_wells", "mean_average_precision", "p_value",
        "corrected_p_value", "effect_size", "effect_ci_low", "effect_ci_high", "cell_count_fraction",
        "cytotoxic", "is_hit", pl.col("rank").cast(pl.Int32))
    store.write_table("perturbation_scores", scores)
    store.create_view("scores", "SELECT * FROM perturbation_scores ORDER BY rank")
    n_tables = 1

    # dose response where a perturbation has several concentrations
    conc = meta.filter(pl.col("Metadata_concentration").is_not_null() & pl.col("Metadata_control_type").is_null())
    multi = conc.group_by("Metadata_perturbation_id").agg(pl.col("Metadata_concentration").n_unique().alias("n"))
    if multi.filter(pl.col("n") >= 3).height:
        dr = dose_response(meta, x, null_size=min(sc.null_size, 2000), seed=sc.seed, min_doses=3)
        unit = store.sql("SELECT perturbation_id, any_value(concentration_unit) AS concentration_unit FROM wells "
                         "GROUP BY ALL")
        fits = dr.fits.join(unit, on="perturbation_id", how="left").with_columns(
            pl.when(pl.col("status") == "ok").then(pl.lit("fit")).otherwise(pl.lit("no fit")).alias("status"))
        store.write_table("dose_response", fits.select(
            "perturbation_id", "status", "reason", "ec50", "ec50_ci_low", "ec50_ci_high", "concentration_unit",
            "hill", "bottom", "top", "n_doses", *[c for c in ("cytotoxic", "activity") if c in fits.columns]))
        store.write_table("dose_points", dr.points)
        n_tables += 2
    # relocalization (HPA-style screens: one protein of interest per well)
    cmap = config.channel_map()
    do_reloc = sc.relocalization if sc.relocalization is not None else cmap.protein_channel is not None
    if do_reloc and meta["Metadata_protein"].drop_nulls().len():
        reloc = _relocalization(store, plan, wide, x, cmap)
        if reloc is not None:
            store.write_table("relocalization_results", reloc.table)
            if reloc.class_shifts.height:
                store.write_table("relocalization_class_shifts", reloc.class_shifts)
            store.create_view("relocalization", "SELECT protein, perturbation_id, readout, from_class, to_class, "
                              "effect_size, p_value, q_value FROM relocalization_results ORDER BY q_value, p_value")
            n_tables += 1
    n_hits = int(scores["is_hit"].sum())
    messages.append(f"{n_hits} hit(s) among {scores.height} perturbations")
    return StageResult("score", ok=n_tables, seconds=time.perf_counter() - t0, messages=tuple(messages))


def _relocalization(store: Any, plan: RunPlan, wide: pl.DataFrame, x: np.ndarray, cmap: Any) -> Any:
    from .score import relocalization

    keys = wide.select("Metadata_Plate", "Metadata_Well")
    wells = wide.select([c for c in wide.columns if c.startswith("Metadata_")])
    ratio_col = None
    if store.has_table("cell_readouts"):
        ratio = store.sql("SELECT plate AS Metadata_Plate, well AS Metadata_Well, "
                          "median(protein_nuc_cyto_ratio) AS protein_nuc_cyto_ratio FROM cell_readouts "
                          "WHERE isfinite(protein_nuc_cyto_ratio) GROUP BY ALL")
        wells = wells.join(ratio, on=["Metadata_Plate", "Metadata_Well"], how="left")
        ratio_col = "protein_nuc_cyto_ratio"
    probabilities = None
    fs = store.feature_set(plan.feature_set) if plan.feature_set in store.sql(
        "SELECT feature_set FROM feature_sets")["feature_set"].to_list() else None
    if fs is not None and fs["kind"] == "subcell":
        probs = _well_mean_probabilities(store, plan.feature_set)
        if probs is not None:
            joined = keys.join(probs, on=["Metadata_Plate", "Metadata_Well"], how="left")
            p = np.asarray(joined["probabilities"].to_list(), dtype=np.float64)
            if p.ndim == 2 and p.shape[1] >= 31:
                probabilities = p[:, :31]
    return relocalization(wells, probabilities=probabilities, embeddings=x, ratio_col=ratio_col)


def _well_mean_probabilities(store: Any, feature_set: str) -> pl.DataFrame | None:
    lf = store.scan_cell_features(feature_set)
    if "probabilities" not in lf.collect_schema().names():
        return None
    df = lf.select("plate", "well", "probabilities").collect()
    if df.height == 0:
        return None
    p = np.asarray(df["probabilities"].to_list(), dtype=np.float64)
    keys = df.select(pl.col("plate").alias("Metadata_Plate"), pl.col("well").alias("Metadata_Well"))
    frame = keys.with_row_index("_i")
    groups = frame.group_by("Metadata_Plate", "Metadata_Well", maintain_order=True).agg(pl.col("_i"))
    means = [p[np.asarray(idx)].mean(axis=0) for idx in groups["_i"].to_list()]
    return groups.select("Metadata_Plate", "Metadata_Well").with_columns(
        pl.Series("probabilities", means, dtype=pl.List(pl.Float64)))


# ----------------------------------------------------------------------------------------------------------
# report


def _run_report(store: Any, config: RunConfig) -> tuple[StageResult, tuple[Path, ...]]:
    from .report import build_reports

    t0 = time.perf_counter()
    out = Path(config.report.out)
    paths = tuple(build_reports(store, out))
    return StageResult("report", ok=len(paths), seconds=time.perf_counter() - t0), paths


def top_hits(store: Any, *, n: int = 10) -> pl.DataFrame:
    """The ranked hit table's first rows (from the store's ``scores`` view)."""
    return store.sql(f"SELECT rank, perturbation_id, perturbation_name, mean_average_precision, corrected_p_value, "
                     f"effect_size, is_hit FROM scores ORDER BY rank LIMIT {int(n)}")

