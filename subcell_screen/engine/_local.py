"""The local executor of the per-site stages: this process, or worker processes on the all-CPU path.

In this process the work overlaps in three lanes: loader threads read and decode the next sites
(:func:`subcell_screen.io.iter_sites`), one compute thread runs a site's segmentation and embedding (the models),
and this thread reads what a site needs from the store and records finished sites; at most a few sites are held
at once. The time inside the models' forward passes is reported per stage (:class:`BusyClock`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._prefetch import BusyClock, prefetch
from ._types import SiteOutcome, StageResult

if TYPE_CHECKING:  # pragma: no cover
    from ..config import RunConfig
    from ..layouts import ScreenDesign
    from ..store import ScreenStore
    from ._types import RunPlan

__all__ = ["run_local", "cpu_workers"]

logger = logging.getLogger(__name__)


def cpu_workers(config: RunConfig, plan: RunPlan) -> int:
    """Processes the local engine uses for the per-site stages.

    The all-CPU path (classical segmentation and classical features) runs sites in ``workers`` processes
    (default: the machine's cores, at most 8); a run with a torch model (Cellpose, SubCell) keeps the model
    in this process and works site by site (the GPU does the heavy lifting): sites load on loader threads, each
    site's compute runs on one compute thread while this thread records the previous site (:func:`prefetch`).
    """
    if plan.segmenter != "classical" or plan.featurizer != "classical":
        return 1
    n = config.workers if config.workers is not None else min(os.cpu_count() or 1, 8)
    return max(1, int(n))


def _task(store: ScreenStore, sel: Any, record: Any) -> tuple:
    from ._unit import stored_segmentation

    need_seg, need_emb = sel.needs_segment(record.key), sel.needs_embed(record.key)
    raw = sel.raw_dtype(record.key) if need_emb else None
    stored = stored_segmentation(store, record.key, pixel_size_um=record.pixel_size_um) \
        if need_emb and not need_seg else None
    return record, need_seg, need_emb, stored, raw


def _process(processor: Any, site: Any, need_seg: bool, need_emb: bool, stored: Any, raw: str | None) -> SiteOutcome:
    if raw is not None and not np.issubdtype(site.data.dtype, np.floating):
        raw = None
    return processor.process(site, segment=need_seg, featurize=need_emb, segmentation=stored, raw_dtype=raw)


def run_local(store: ScreenStore, config: RunConfig, plan: RunPlan, design: ScreenDesign, *,
              stages: Sequence[str], force: bool, progress: bool | None, run_id: str) -> list[StageResult]:
    """The segment and/or embed stages in this process (or its worker processes).

    Returns
    -------
    list of StageResult
        ``segment`` and/or ``embed``.
    """
    from tqdm.auto import tqdm

    from ..io import SiteLoadError, iter_sites
    from ._select import plate_illumination, select_sites
    from ._unit import SiteProcessor
    from ._writer import SiteWriter, stage_results

    t_start = time.perf_counter()
    sel = select_sites(store, config, plan, design, stages=stages, force=force, progress=progress)
    illum, notes = (plate_illumination(store, sel.index, sorted({r.plate for r in sel.records}), force=force,
                                       progress=progress)
                    if config.illumination_correction() and sel.records else (None, []))
    processor = SiteProcessor.from_plan(config, plan)
    clock = BusyClock(plan.device)  # time inside the models' forward passes, per stage
    workers = min(cpu_workers(config, plan), max(1, len(sel.records)))
    bar = tqdm(total=len(sel.records), desc="sites", unit="site", disable=None if progress is None else not progress)
    busy: list[str] = []
    with SiteWriter(store, processor=processor, selection=sel, run_id=run_id) as writer:
        if workers > 1:
            logger.info("per-site stages in %d processes", workers)
            outcomes = _pool_outcomes(config, plan, (_task(store, sel, r) for r in sel.records), illum,
                                      workers=workers)
            for out in outcomes:
                bar.update(1)
                writer.add(out)
        else:
            # sites load on iter_sites' threads; each site's compute (the models) runs on one worker thread
            # while this thread records the previous site and reads what the next one needs from the store
            def tasks() -> Iterator[tuple]:
                for record, site in iter_sites(sel.records, illumination=illum, raise_on_unreadable_plate=False,
                                               progress=False):
                    yield (record, site, None) if isinstance(site, SiteLoadError) else \
                        (record, site, _task(store, sel, record)[1:])

            def compute(task: tuple) -> SiteOutcome:
                record, site, todo = task
                if todo is None:
                    return SiteOutcome(key=record.key, load_error=str(site))
                return _process(processor, site, *todo)

            t_loop = time.perf_counter()
            with clock.timing(_cellpose_network(plan), "forward", "segment"), \
                    clock.timing(plan.subcell_model, "forward_device", "embed"):
                for _, outcome in prefetch(tasks(), compute, depth=2, workers=1, isolate=(), name="subcell-site"):
                    bar.update(1)
                    writer.add(outcome)
            busy = clock.lines(time.perf_counter() - t_loop)
        writer.finish()  # compacts the plates completed (not when the run stopped on an error)
    bar.close()
    for line in busy:
        logger.info("%s", line)
    return stage_results(store, sel, writer.tally, total_seconds=time.perf_counter() - t_start,
                         messages=[*notes, *busy])


def _cellpose_network(plan: RunPlan) -> Any:
    """The torch network inside the plan's Cellpose model (None without one)."""
    return getattr(plan.cellpose_model, "net", None)


# -- process pool for the all-CPU path: workers load and compute, this process records --------------------

_POOL: dict[str, Any] = {}


def _pool_init(config: RunConfig, feature_set: str, illumination_dir: str | None) -> None:
    import threadpoolctl  # one BLAS thread per worker process: the processes are the parallelism

    from ._unit import SiteProcessor

    threadpoolctl.threadpool_limits(1)
    _POOL["processor"] = SiteProcessor(config, featurizer="classical", feature_set=feature_set, device="cpu")
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


def _pool_task(record: Any, need_seg: bool, need_emb: bool, stored: Any, raw: str | None) -> SiteOutcome:
    from ..io import SiteLoadError, load_site

    try:
        site = load_site(record, illumination=_pool_illumination(record.plate))
    except SiteLoadError as exc:
        return SiteOutcome(key=record.key, load_error=str(exc))
    return _process(_POOL["processor"], site, need_seg, need_emb, stored, raw)


def _pool_outcomes(config: RunConfig, plan: RunPlan, tasks: Iterable[tuple], illumination: dict | None,
                   *, workers: int) -> Iterator[SiteOutcome]:
    """Outcomes of ``tasks`` computed in ``workers`` spawned processes, in task order, a bounded window ahead.

    Worker processes die with this one (they watch their parent), so a killed run leaves none behind.
    """
    import multiprocessing
    import tempfile
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")  # fork is unsafe with polars' and BLAS' threads
    with tempfile.TemporaryDirectory(prefix="subcell_screen_illum_") as illum_dir, \
            ProcessPoolExecutor(workers, mp_context=ctx, initializer=_pool_start,
                                initargs=(os.getpid(), config, plan.feature_set,
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


def _pool_start(parent_pid: int, config: RunConfig, feature_set: str, illumination_dir: str | None) -> None:
    _watch_parent(parent_pid)
    _pool_init(config, feature_set, illumination_dir)


def _watch_parent(parent_pid: int) -> None:
    """End this worker process when its parent is gone (``kill -9`` of the run must not leave workers)."""
    import threading

    try:  # Linux: the kernel signals this process when its parent dies
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - elsewhere: poll below
        pass

    def poll() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=poll, daemon=True, name="parent-watch").start()
