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
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
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
            from .segment import CellposeWeightsError, load_cellpose

            try:
                cellpose_model = load_cellpose(
                    str(config.segmentation.weights or config.segmentation.model),
                    weights_sha256=config.segmentation.weights_sha256, device=device,
                    batch_size=config.segmentation.batch_size,
                    **({"nucleus_diameter_um": config.segmentation.nucleus_diameter_um}
                       if config.segmentation.nucleus_diameter_um else {}),
                    **({"cell_diameter_um": config.segmentation.cell_diameter_um}
                       if config.segmentation.cell_diameter_um else {}))
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
            from .embed import WeightsError, load_model

            try:
                subcell_model = load_model(config.embedding.model, cache_dir=config.embedding.cache_dir,
                                           device=device, precision=config.embedding.precision,
                                           offline=True if config.embedding.offline else None,
                                           compile=config.embedding.compile)
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
    if plan is None:
        plan = plan_run(config, stages=stages)
    if on_plan is not None:
        on_plan(plan)
    results: list[StageResult] = []
    reports: tuple[Path, ...] = ()
    with ScreenStore.create(config.screen.path) as store:
        run_id = store.start_run(command="run " + ",".join(stages), config=config.to_dict(), models=plan.models,
                                 parameters={"stages": list(stages), "force": force, "engine": engine})
        status, error = "ok", None
        try:
            design = _load_design(store, config)
            if "segment" in stages or "embed" in stages:
                if engine == "ray":
                    from .distributed import run_sites_ray

                    results.extend(run_sites_ray(store, config, plan, stages=stages, force=force,
                                                 address=ray_address, run_id=run_id, progress=progress))
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
            summary = {"featurizer": plan.featurizer, "segmenter": plan.segmenter, "device": plan.device,
                       "feature_set": plan.feature_set, "fallbacks": list(plan.fallbacks),
                       "stages": [s.__dict__ for s in results]}
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
    nuc_mean = np.asarray(ndimage.mean(img, nuc, ids), dtype=np.float64)
    cyto_mean = np.asarray(ndimage.mean(img, cyto, ids), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(cyto_mean > 0, nuc_mean / cyto_mean, np.nan)
    return pl.DataFrame({"plate": site.record.plate, "well": site.record.well, "site": int(site.record.site),
                         "cell_id": ids.astype(np.int32), "protein_nuc_cyto_ratio": ratio},
                        schema_overrides={"site": pl.Int32})


def _segmentation_from_store(store: Any, site: Any) -> Any:
    from .segment import Segmentation, segmentation_qc

    r = site.record
    nuclei, cells = store.read_masks(r.plate, r.well, r.site)
    table = store.sql("SELECT * FROM cells WHERE plate = ? AND well = ? AND site = ? ORDER BY cell_id",
                      [r.plate, r.well, r.site])
    method = store.sql("SELECT method FROM masks WHERE plate = ? AND well = ? AND site = ?",
                       [r.plate, r.well, r.site])["method"][0]
    return Segmentation(plate=r.plate, well=r.well, site=r.site, nuclei=nuclei, cells=cells, cells_table=table,
                        qc=segmentation_qc(table), method=method, pixel_size_um=site.pixel_size_um)


def _illumination(store: Any, config: RunConfig, index: Any, plates: Iterable[str], *, force: bool) -> dict:
    from .io import compute_illumination

    out = {}
    for plate in plates:
        stored = {} if force else store.read_illumination(plate)
        if stored:
            out[plate] = stored
            continue
        funcs = compute_illumination(index, plate=plate)
        store.write_illumination(plate, dict(funcs), recipe=dict(funcs.recipe))
        out[plate] = dict(funcs)
    return out


def _run_sites(store: Any, config: RunConfig, plan: RunPlan, design: Any, *, stages: Sequence[str], force: bool,
               progress: bool | None, run_id: str) -> list[StageResult]:
    from tqdm.auto import tqdm

    from .io import SiteLoadError, check_sites, iter_sites
    from .segment import segment_site, write_segmentation

    t_start = time.perf_counter()
    do_seg, do_emb = "segment" in stages, "embed" in stages
    channel_map = config.channel_map()
    index = site_index(config, design)
    report = check_sites(index, store=store, raise_on_unreadable_plate=False)
    load_failed = {tuple(key) for key, _msg in report.failures}
    embed_stage = f"embed:{plan.feature_set}"
    seg_done = set() if force else store.sites_with_stage("segment")
    emb_done = set() if force else store.sites_with_stage(embed_stage)
    records = [r for r in index if r.key not in load_failed and (
        (do_seg and r.key not in seg_done) or (do_emb and r.key not in emb_done))]
    skipped = len(index) - len(records)
    illum = _illumination(store, config, index, sorted({r.plate for r in records}), force=force) \
        if config.illumination_correction() and records else None

    featurize = _make_featurizer(store, config, plan, channel_map) if do_emb else None
    seg_res = {"ok": 0, "failed": len(load_failed), "cells": 0, "seconds": 0.0, "messages": []}
    emb_res = {"ok": 0, "failed": 0, "cells": 0, "seconds": 0.0, "messages": []}
    cellpose = plan._cellpose if plan.segmenter.startswith("cellpose") else None
    method = "cellpose" if cellpose is not None else "classical"
    bar = tqdm(total=len(records), desc="sites", unit="site", disable=_no_progress(progress))
    for record, site in iter_sites(records, illumination=illum, raise_on_unreadable_plate=False):
        bar.update(1)
        if isinstance(site, SiteLoadError):
            store.set_site_status(*record.key, stage="load", status="failed", error=str(site), run_id=run_id)
            msg = f"{record.plate} {record.well} s{record.site}: {site}"
            (seg_res if do_seg else emb_res)["messages"].append(msg)
            (seg_res if do_seg else emb_res)["failed"] += 1
            continue
        store.replace_rows("site_qc", _site_qc_rows(site), keys=["plate", "well", "site"])
        seg = None
        if do_seg and (force or record.key not in seg_done):
            t0 = time.perf_counter()
            try:
                seg = segment_site(site, channel_map=channel_map, method=method, model=cellpose,
                                   nucleus_diameter_um=config.segmentation.nucleus_diameter_um)
            except Exception as exc:  # noqa: BLE001 - one bad site must not stop the plate
                logger.warning("segmentation failed for %s: %s", record.key, exc)
                store.set_site_status(*record.key, stage="segment", status="failed",
                                      error=f"{type(exc).__name__}: {exc}", run_id=run_id)
                seg_res["failed"] += 1
                seg_res["messages"].append(f"{record.plate} {record.well} s{record.site}: segmentation: {exc}")
                continue
            dt = time.perf_counter() - t0
            if channel_map.protein_channel:
                store.replace_rows("cell_readouts", _protein_readout(site, seg, channel_map.protein_channel),
                                   keys={"plate": record.plate, "well": record.well, "site": int(record.site)})
            write_segmentation(store, seg, method=method, run_id=run_id, seconds=dt)
            seg_res["ok"] += 1
            seg_res["cells"] += seg.n_cells
            seg_res["seconds"] += dt
        if do_emb and (force or record.key not in emb_done):
            t0 = time.perf_counter()
            try:
                if seg is None:
                    seg = _segmentation_from_store(store, site)
                n = featurize(site, seg)
            except Exception as exc:  # noqa: BLE001
                if not isinstance(exc, SubcellScreenError | ValueError | RuntimeError | KeyError):
                    raise
                logger.warning("featurization failed for %s: %s", record.key, exc)
                store.set_site_status(*record.key, stage=embed_stage, status="failed",
                                      error=f"{type(exc).__name__}: {exc}", run_id=run_id)
                emb_res["failed"] += 1
                emb_res["messages"].append(f"{record.plate} {record.well} s{record.site}: features: {exc}")
                continue
            dt = time.perf_counter() - t0
            store.set_site_status(*record.key, stage=embed_stage, status="ok", n_cells=n, run_id=run_id,
                                  seconds=dt)
            logger.info("embedded %s %s s%d: %d cells in %.2f s", *record.key, n, dt)
            emb_res["ok"] += 1
            emb_res["cells"] += n
            emb_res["seconds"] += dt
    bar.close()
    # plates with no readable site are an error, after every other site was processed and recorded
    ok_plates = {k[0] for k in store.sites_with_stage("segment")} if do_seg else None
    if do_seg:
        dead = sorted({r.plate for r in index} - ok_plates)
        if dead:
            raise PipelineError(f"no site of plate(s) {dead} could be segmented; see the failed sites in the "
                                "store (SELECT * FROM sites WHERE status = 'failed')")
    load_msgs = [f"load: {msg}" for _key, msg in report.failures]
    out = []
    total = time.perf_counter() - t_start
    if do_seg:
        out.append(StageResult("segment", seg_res["ok"], seg_res["failed"], skipped, seg_res["cells"],
                               seg_res["seconds"] if do_emb else total, tuple(load_msgs + seg_res["messages"])))
    if do_emb:
        out.append(StageResult("embed", emb_res["ok"], emb_res["failed"], skipped, emb_res["cells"],
                               emb_res["seconds"] if do_seg else total, tuple(emb_res["messages"])))
    return out


def _no_progress(progress: bool | None) -> bool | None:
    return None if progress is None else not progress


def _make_featurizer(store: Any, config: RunConfig, plan: RunPlan, channel_map: Any) -> Callable[[Any, Any], int]:
    """A function ``(site, segmentation) -> n_cells`` that computes and stores one site's per-cell features."""
    if plan.featurizer == "classical":
        from .features import ClassicalFeaturizer, FeatureParams, write_features

        params = FeatureParams(families=tuple(config.embedding.classical_families),
                               zernike_degree=config.embedding.classical_zernike_degree)
        featurizer = ClassicalFeaturizer(params=params, feature_set=plan.feature_set)
        raw_dtypes: dict[tuple, str] = {}

        def classical(site: Any, seg: Any) -> int:
            scale = None
            if np.issubdtype(site.data.dtype, np.floating):
                # illumination-corrected pixels keep the source's units: scale by the source dtype like
                # CellProfiler does for the raw image (uint16 -> 65535)
                key = site.record.key
                if key not in raw_dtypes:
                    row = store.sql("SELECT dtype FROM sites WHERE plate = ? AND well = ? AND site = ?", list(key))
                    raw_dtypes[key] = row["dtype"][0] if row.height and row["dtype"][0] else "float32"
                raw = np.dtype(raw_dtypes.pop(key))
                scale = float(np.iinfo(raw).max) if np.issubdtype(raw, np.integer) else None
            table = featurizer.featurize_site(site, seg, channel_map=channel_map,
                                              **({"intensity_scale": scale} if scale else {}))
            names = featurizer.feature_names(featurizer.channel_names(site.channel_names, channel_map))
            write_features(store, table, feature_set=plan.feature_set, feature_names=names,
                           parameters=featurizer.parameters(), sites=[site.record.key])
            return table.height

        return classical

    from .crops import iter_crops
    from .embed import Embedder, write_embeddings

    emb = config.embedding
    embedder = Embedder(plan._subcell, channel_map=channel_map, normalize=emb.normalize, mask=emb.mask,
                        batch_size=emb.batch_size, device=plan.device, precision=emb.precision,
                        compile=emb.compile, num_workers=emb.num_workers)
    sha = _files_info(plan._subcell)
    rescale = "defer" if plan.device.startswith("cuda") else "cpu"

    def subcell(site: Any, seg: Any) -> int:
        batches = iter_crops(site, seg, target_pixel_size_um=emb.target_pixel_size_um, crop_size=emb.crop_size,
                             mask=emb.mask, batch_size=emb.batch_size, rescale=rescale)
        results = list(embedder.embed_batches(batches, progress=False))
        write_embeddings(store, results, feature_set=plan.feature_set, dtype=emb.store_dtype,
                         model=emb.model, model_sha256={k: str(v) for k, v in sha.items()},
                         parameters={"crop_size": emb.crop_size, "normalize": emb.normalize, "mask": emb.mask,
                                     "precision": emb.precision, "target_pixel_size_um": emb.target_pixel_size_um},
                         sites=[site.record.key])
        return int(sum(len(r.embedding) for r in results))

    return subcell


# ----------------------------------------------------------------------------------------------------------
# profiles


def _run_profile(store: Any, config: RunConfig, plan: RunPlan) -> StageResult:
    from .profiles import NEGCON, feature_select, from_wide, normalize, well_profiles_from_store

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

        normalized = correct_batch(normalized, by="Metadata_batch" if "Metadata_batch" in normalized.columns
                                   else "Metadata_Plate", method="harmony")
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
    from .score import dose_response, hit_table, relocalization

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

