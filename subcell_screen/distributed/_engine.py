"""The driver of the Ray engine: site manifest -> Ray Data pipeline -> per-site Parquet -> screen store."""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ._cluster import RayEngineError, _node_max, check_resources, import_ray, ray_session
from ._outputs import dumps, pack_segmentation, read_outcome
from ._stages import (
    CRASH_ENV,
    EmbedSites,
    SegmentSites,
    StageSpec,
    classical_features,
    clear_inflight,
    crop_sites,
    illumination_task,
    load_sites,
    parse_crash_hook,
    write_sites,
)

logger = logging.getLogger(__name__)

# Task stages get an explicit ``max_calls`` (0 = the default, unlimited). Ray Data fuses a task stage into the
# next actor stage when their remote arguments are equal, which would run loading inside the segmentation
# actors on a CPU-only cluster; this keeps every stage a separate operator on any cluster.
_TASK_ARGS: dict[str, Any] = {"max_calls": 0}

#: Crop in CPU tasks even when the embed actors have no GPU (the GPU topology, for tests on CPU machines).
_CROP_TASKS_ON_CPU = False


def output_dir(config: Any) -> Path:
    """``[ray].output``, else ``<screen>/ray_output``."""
    return Path(config.ray.output) if config.ray.output else Path(config.screen.path) / "ray_output"


def _actor_device(config: Any, *, uses_torch: bool) -> str:
    g = config.ray.gpus_per_actor
    if not uses_torch:
        return "cpu"
    if config.device == "cpu" and g > 0:
        raise RayEngineError(f"device = 'cpu' but [ray].gpus_per_actor = {g:g}: set [ray].gpus_per_actor = 0 to run "
                             "the models on CPUs, or device = 'auto' to use the actors' GPUs")
    if config.device.startswith("cuda") and g <= 0:
        raise RayEngineError(f"device = {config.device!r} but [ray].gpus_per_actor = 0, so the Ray actors get no "
                             "GPU; set [ray].gpus_per_actor (e.g. 1) or device = 'auto'")
    return "cuda" if g > 0 else "cpu"


def run_sites_ray(store: Any, config: Any, plan: Any, *, stages: Sequence[str], force: bool = False,
                  address: str | None = None, run_id: str, progress: bool | None = None,
                  design: Any) -> list[Any]:
    """The segment and/or embed stages of :func:`subcell_screen.pipeline.run` on a Ray cluster.

    The driver (this process) indexes and checks the sites and computes illumination functions (as Ray tasks),
    then streams a site manifest through Ray Data::

        from_items(manifest) -> load (CPU tasks) -> segment (actor pool; GPU per actor for Cellpose)
          -> crop (CPU tasks; GPU SubCell only) -> embed (SubCell actor pool) | classical features (CPU tasks)
          -> write per-site Parquet (CPU tasks)

    and, as sites finish, stores each one exactly as the local engine does (it is the store's single writer).

    Parameters
    ----------
    store
        Open, writable :class:`~subcell_screen.store.ScreenStore`.
    config
        Run configuration; ``[ray]`` gives resources, pool sizes, batch sizes and the output folder.
    plan
        The run's :class:`~subcell_screen.pipeline.RunPlan` (segmenter, featurizer and any fallback).
    stages
        Stages of the run (``segment`` and/or ``embed`` are done here).
    force
        Recompute sites whose stages are done.
    address
        Ray cluster address (default ``[ray].address``; neither: a local instance).
    run_id
        Provenance id of the run.
    progress
        Progress bar over stored sites (None: on a terminal).
    design
        The screen design :func:`~subcell_screen.pipeline.run` read.

    Returns
    -------
    list of StageResult
        ``segment`` and/or ``embed``, as the local engine reports them.

    Raises
    ------
    RayEngineError
        Ray is not installed, the cluster lacks requested resources, or sites produced no output.
    """
    from ..engine import SiteProcessor, SiteWriter, select_sites, stage_results

    ray = import_ray()
    t_start = time.perf_counter()
    sel = select_sites(store, config, plan, design, stages=stages, force=force)
    processor = SiteProcessor.from_plan(config, plan)
    writer = SiteWriter(store, processor=processor, selection=sel, run_id=run_id, batch_sites=64, max_wait_s=10.0)
    notes: list[str] = []
    if sel.records:
        with ray_session(config.ray, address=address) as session:
            writer.compactor = RayCompactor(ray)
            notes.extend(_run_pipeline(ray, session, store, config, plan, sel, writer, force=force,
                                       progress=progress))
            writer.finish()
    else:
        writer.finish()  # plates left uncompacted by an interrupted run
    results = stage_results(store, sel, writer.tally, total_seconds=time.perf_counter() - t_start)
    return [replace(r, messages=tuple(notes) + r.messages) for r in results]


class RayCompactor:
    """Compacts finished plates on Ray workers (the driver reads no cells); commits each as it finishes.

    A compaction that fails leaves the plate's per-site files and manifest as they were (a warning says so);
    the next run compacts it.
    """

    def __init__(self, ray: Any) -> None:
        from ..store import compact_cell_files

        self.ray = ray
        self.pending: dict[Any, Any] = {}
        self._task = ray.remote(num_cpus=1, max_retries=2)(compact_cell_files)

    def submit(self, store: Any, job: Any) -> None:
        self.pending[self._task.remote(job)] = job

    def poll(self, store: Any, *, wait: bool = False) -> None:
        if not self.pending:
            return
        ready, _ = self.ray.wait(list(self.pending), num_returns=len(self.pending), timeout=None if wait else 0)
        for ref in ready:
            job = self.pending.pop(ref)
            try:
                rows = self.ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - the per-site files stay valid
                logger.warning("compaction of plate %s (%s) failed; its per-site files are kept and the next run "
                               "compacts it: %s", job.plate, job.feature_set, exc)
                continue
            store.commit_compaction(job, rows)

    def drain(self, store: Any) -> None:
        self.poll(store, wait=True)


def _run_pipeline(ray: Any, session: Any, store: Any, config: Any, plan: Any, sel: Any, writer: Any, *,
                  force: bool, progress: bool | None) -> list[str]:
    from ..engine import FEATURE_ERRORS, stored_segmentation

    rc = config.ray
    keys = [r.key for r in sel.records]
    any_seg = any(sel.needs_segment(k) for k in keys)
    any_emb = any(sel.needs_embed(k) for k in keys)
    cellpose = plan.segmenter.startswith("cellpose")
    subcell = plan.featurizer != "classical"
    check_resources(session.resources, rc, segment_gpu=cellpose, embed_gpu=subcell, segment_actors=any_seg,
                    embed_actors=any_emb and subcell,
                    node_max={"CPU": _node_max(ray, "CPU"), "GPU": _node_max(ray, "GPU")},
                    where=session.describe())
    device = _actor_device(config, uses_torch=(any_seg and cellpose) or (any_emb and subcell))
    output = output_dir(config)
    output.mkdir(parents=True, exist_ok=True)
    clear_inflight(output)

    # illumination functions: per plate, computed as Ray tasks when not stored yet, stored by the driver
    illum_refs: dict[str, Any] = {}
    notes: list[str] = []
    if config.illumination_correction():
        plates = sorted({r.plate for r in sel.records})
        stored = {} if force else {p: store.read_illumination(p) for p in plates}
        todo = [p for p in plates if not stored.get(p)]
        if todo:
            task = ray.remote(num_cpus=1)(illumination_task)
            refs = {p: task.remote([r for r in sel.index if r.plate == p], p) for p in todo}
            for p, ref in refs.items():
                funcs, recipe = ray.get(ref)
                store.write_illumination(p, funcs, recipe=recipe)
                stored[p] = funcs
                if recipe.get("n_excluded"):
                    notes.append(f"plate {p}: {recipe['n_excluded']} site(s) left out of the illumination "
                                 f"functions, e.g. {list(recipe.get('excluded_sites') or [])[:3]}")
        illum_refs = {p: ray.put(stored[p]) for p in plates}

    from ..embed.weights import is_offline, resolve_cache_dir

    spec = StageSpec(
        config=config, segmenter=plan.segmenter, featurizer=plan.featurizer, feature_set=plan.feature_set,
        device=device, output=str(output), run_token=uuid.uuid4().hex,
        cache_dir=str(resolve_cache_dir(config.embedding.cache_dir)) if subcell else None,
        offline=is_offline(True if config.embedding.offline else None) if subcell else None,
        embed_batch_size=rc.embed_batch_size, max_retries=rc.max_retries, illumination=illum_refs,
        crash=parse_crash_hook(os.environ.get(CRASH_ENV)))

    # the manifest: one small row per site (paths, not pixels)
    manifest = []
    for record in sel.records:
        key = record.key
        payload: dict[str, Any] = {"record": record.to_dict(), "need_seg": sel.needs_segment(key),
                                   "need_emb": sel.needs_embed(key), "raw_dtype": sel.raw_dtype(key)}
        if payload["need_emb"] and not payload["need_seg"]:
            try:
                seg = stored_segmentation(store, key, pixel_size_um=record.pixel_size_um)
                payload["seg"] = pack_segmentation(seg)
            except FEATURE_ERRORS as exc:
                logger.warning("featurization failed for %s: %s", key, exc)
                payload.update(featurized=True, feat_error=(type(exc).__name__, str(exc)))
        manifest.append({"plate": key[0], "well": key[1], "site": int(key[2]), "payload": dumps(payload)})

    ds, shape = _dataset(ray, manifest, spec, config, any_seg=any_seg, any_emb=any_emb, subcell=subcell,
                  segment_gpus=rc.gpus_per_actor if cellpose else 0.0,
                  embed_gpus=rc.gpus_per_actor if subcell else 0.0)

    from tqdm.auto import tqdm

    ctx = ray.data.DataContext.get_current()
    saved = ctx.enable_progress_bars
    ctx.enable_progress_bars = bool(progress)
    data_logger = logging.getLogger("ray.data")  # Ray Data logs progress at INFO when stdout is no terminal
    saved_level = data_logger.level
    if not progress:
        data_logger.setLevel(logging.WARNING)
    bar = tqdm(total=len(manifest), desc="sites (ray)", unit="site",
               disable=None if progress is None else not progress)
    seen: set[tuple] = set()
    t0 = time.perf_counter()
    read_seconds = 0.0
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            cols = batch.to_pydict()
            for plate, well, site, path in zip(cols["plate"], cols["well"], cols["site"], cols["path"]):
                key = (plate, well, int(site))
                if key in seen:  # a re-executed task: its files were replaced, the site is already taken
                    continue
                seen.add(key)
                t_read = time.perf_counter()
                outcome = read_outcome(path, output=output, decode=False)
                read_seconds += time.perf_counter() - t_read
                writer.add(outcome)
                bar.update(1)
    finally:
        try:
            writer.flush()  # finished sites are stored even when the run stops early
        finally:
            bar.close()
            ctx.enable_progress_bars = saved
            data_logger.setLevel(saved_level)
    wall = time.perf_counter() - t0
    shape = _executed_operators(ds) or shape
    lost = sorted(set(keys) - seen)
    if lost:
        raise RayEngineError(f"{len(lost)} site(s) produced no output on Ray, e.g. {lost[:3]}; "
                             "re-run to compute them (finished sites are kept)")
    for res in (writer.tally.seg, writer.tally.emb):
        res["messages"].sort()
    note = (f"ray: {len(keys)} sites in {wall:.1f} s ({len(keys) / max(wall, 1e-9):.2f} sites/s) on "
            f"{session.describe()}; operators {shape}; actors on {device}; driver ingest "
            f"{1000 * (writer.seconds + read_seconds) / max(len(keys), 1):.0f} "
            f"ms/site; outputs in {output}")
    logger.info(note)
    return [note, *notes]


def _executed_operators(ds: Any) -> str | None:
    """The operators Ray Data ran, fused ones joined by ``->`` (``load_sites | SegmentSites | ...``)."""
    import re

    try:
        names = [m.group(1) for m in re.finditer(r"^Operator \d+ (.+?): ", ds.stats(), flags=re.M)]
    except Exception:  # noqa: BLE001 - statistics are informative only
        return None
    names = [re.sub(r"MapBatches\((\w+)\)", r"\1", n) for n in names if not n.startswith(("FromItems", "Input"))]
    return " | ".join(names) or None


def _dataset(ray: Any, manifest: list[dict], spec: StageSpec, config: Any, *, any_seg: bool, any_emb: bool,
             subcell: bool, segment_gpus: float, embed_gpus: float) -> tuple[Any, str]:
    """The Ray Data pipeline (lazy; every batch size an explicit int, actor pools of fixed size) and its shape."""
    rc = config.ray
    shape = ["load"]
    ActorPool = ray.data.ActorPoolStrategy  # noqa: N806
    n = len(manifest)
    ds = ray.data.from_items(manifest, override_num_blocks=max(1, min(n, math.ceil(n / rc.load_batch_size))))
    ds = ds.map_batches(load_sites, fn_kwargs={"spec": spec}, batch_size=rc.load_batch_size, batch_format="pyarrow",
                        num_cpus=1, **_TASK_ARGS)
    if any_seg:
        ds = ds.map_batches(SegmentSites, fn_constructor_kwargs={"spec": spec}, batch_size=rc.site_batch_size,
                            batch_format="pyarrow", compute=ActorPool(size=rc.segment_actors),
                            num_cpus=rc.cpus_per_actor, num_gpus=segment_gpus)
        shape.append(f"segment[{rc.segment_actors} actor(s)]")
    if any_emb:
        if subcell:
            if embed_gpus > 0 or _CROP_TASKS_ON_CPU:  # crops at source resolution on CPUs; the GPU resizes them
                ds = ds.map_batches(crop_sites, fn_kwargs={"spec": spec}, batch_size=rc.site_batch_size,
                                    batch_format="pyarrow", num_cpus=1, **_TASK_ARGS)
                shape.append("crop")
            ds = ds.map_batches(EmbedSites, fn_constructor_kwargs={"spec": spec}, batch_size=rc.site_batch_size,
                                batch_format="pyarrow", compute=ActorPool(size=rc.embed_actors),
                                num_cpus=rc.cpus_per_actor, num_gpus=embed_gpus)
            shape.append(f"embed[{rc.embed_actors} actor(s)]")
        else:
            ds = ds.map_batches(classical_features, fn_kwargs={"spec": spec}, batch_size=rc.site_batch_size,
                                batch_format="pyarrow", num_cpus=1, **_TASK_ARGS)
            shape.append("features")
    shape.append("write")
    return ds.map_batches(write_sites, fn_kwargs={"spec": spec}, batch_size=rc.site_batch_size,
                          batch_format="pyarrow", num_cpus=1, **_TASK_ARGS), " -> ".join(shape)
