"""The pipeline: the one place that wires the stages together.

::

    plates table + layouts ──► store (plates, wells)
    images ──► engine: select sites ──► illumination ──► per site: load, QC, segment, crops, embed | features
        (local executor, or Ray: subcell_screen.distributed)          ──► store (sites, masks, cells, Parquet)
    per-cell Parquet ──► profiles.build_profile_sets ──► store (raw, normalized, feature_selected, consensus)
    profiles ──► score.score_profiles ──► store (coverage, scores, dose response, relocalization)
    profiles + scores ──► phenomap.run_map_stage ──► store (map_* tables) + map report
    store ──► report.build_reports (QC + hit reports, HTML)

Every stage builds itself from its config section, reads its inputs from the screen store and writes its
outputs there, so each can run alone (:func:`run` with ``stages=``), and a run is resumable: sites whose stage
finished (recorded in ``site_stages``, with their files present) are skipped unless ``force=True``; every write
replaces the rows of its key, so a run killed at any point and restarted ends with exactly the rows of a
clean run.

Featurizer and segmenter are resolved before any work starts (:func:`plan_run`): when SubCell weights or
Cellpose weights are missing, the run stops with the loader's error unless the config allows the classical
fallback; a fallback is announced in the plan's first lines, the log, the run record and the report banner.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from ._errors import PipelineError, StoreError
from .engine import RunPlan, StageResult, feature_set_name

if TYPE_CHECKING:  # pragma: no cover
    from .config import RunConfig
    from .layouts import ScreenDesign
    from .store import ScreenStore

__all__ = ["STAGES", "RunPlan", "StageResult", "RunResult", "plan_run", "run", "PipelineError", "read_profiles",
           "top_hits", "cpu_workers"]

logger = logging.getLogger(__name__)

#: Stages in data-flow order; ``run(stages=...)`` takes any subset.
STAGES: tuple[str, ...] = ("segment", "embed", "profile", "score", "map", "report")


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
    notes: list[str] = []
    models: dict[str, Any] = {}
    device = "cpu"
    if (("embed" in stages and config.embedding.featurizer == "subcell")
            or ("segment" in stages and config.segmentation.method == "cellpose")):
        from .embed import select_device

        device = str(select_device(config.device))

    segmenter, cellpose_model = "classical", None
    if config.segmentation.method == "cellpose":
        segmenter = f"cellpose:{config.segmentation.weights or config.segmentation.model}"
        if "segment" in stages and load_models:
            from .segment import segmenter_from_config

            seg = segmenter_from_config(config.segmentation, device=device)
            if seg.fallback:
                fallbacks.append(seg.fallback)
                segmenter = "classical"
            cellpose_model = seg.model

    featurizer, subcell_model = "classical", None
    if config.embedding.featurizer == "subcell":
        featurizer = f"subcell:{config.embedding.model}"
        if "embed" in stages and load_models:
            from .embed import WeightsError, load_model_from_config, model_provenance

            try:
                subcell_model = load_model_from_config(config.embedding, device=device)
            except WeightsError as exc:
                if not config.embedding.allow_fallback:
                    raise
                fallbacks.append(f"SubCell weights not available ({str(exc).splitlines()[0]}); used classical "
                                 "CellProfiler-style features instead ([embedding].allow_fallback = true)")
                featurizer = "classical"
                logger.warning(fallbacks[-1])
            else:
                weights = model_provenance(subcell_model)
                models["subcell"] = {"name": config.embedding.model, "weights": weights}
                if weights and not weights.get("verified", True):
                    notes.append(f"weights: UNVERIFIED ({', '.join(weights.get('unverified', []))} not matched "
                                 "against a published SHA-256)")
                choice = getattr(subcell_model, "precision_choice", None)
                if choice is not None:
                    models["subcell"]["precision"] = choice.to_dict()
                    notes.append(f"precision:  {choice}")
    return RunPlan(device=device, segmenter=segmenter, featurizer=featurizer,
                   feature_set=feature_set_name(featurizer), fallbacks=tuple(fallbacks), models=models,
                   notes=tuple(notes), cellpose_model=cellpose_model, subcell_model=subcell_model)


def cpu_workers(config: RunConfig, plan: RunPlan) -> int:
    """Processes the local engine uses for the per-site stages (see :func:`subcell_screen.engine.cpu_workers`)."""
    from .engine import cpu_workers as _workers

    return _workers(config, plan)


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
    if unknown or not stages:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}" if unknown else
                         f"no stage given; stages are {list(STAGES)}")
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
        planned = plan.summary()
        run_id = store.start_run(command="run " + ",".join(stages), config=config.to_dict(), models=plan.models,
                                 parameters={"stages": list(stages), "force": force, "engine": engine},
                                 summary=planned)
        status, error = "ok", None

        def summary() -> dict[str, Any]:
            return {**planned, "stages": [s.__dict__ for s in results]}

        try:
            design = _load_design(store, config)
            if "segment" in stages or "embed" in stages:
                if engine == "ray":
                    from .distributed import run_sites_ray

                    results.extend(run_sites_ray(store, config, plan, stages=stages, force=force,
                                                 address=ray_address, run_id=run_id, progress=progress,
                                                 design=design))
                else:
                    from .engine import run_local

                    results.extend(run_local(store, config, plan, design, stages=stages, force=force,
                                             progress=progress, run_id=run_id))
                store.update_run_summary(run_id, summary())
            if "profile" in stages:
                results.append(_run_profile(store, config, plan, progress=progress))
                store.update_run_summary(run_id, summary())
            if "score" in stages:
                results.append(_run_score(store, config, plan, progress=progress))
                store.update_run_summary(run_id, summary())
            if "map" in stages or "report" in stages:
                # the reports show this run as finished: everything they report on is done
                store.finish_run(run_id, status="ok", summary=summary())
            if "map" in stages:
                res, map_report = _run_map(store, config, plan)
                results.append(res)
                reports += map_report
                store.update_run_summary(run_id, summary())
            if "report" in stages:
                res, paths = _run_report(store, config)
                reports = paths + reports
                results.append(res)
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            store.finish_run(run_id, status=status, summary=summary(), error=error)
    return RunResult(run_id=run_id, store_path=Path(config.screen.path), plan=plan, stages=tuple(results),
                     reports=reports)


def _load_design(store: ScreenStore, config: RunConfig) -> ScreenDesign:
    from .layouts import read_plates_table

    design = read_plates_table(config.plates.table, layouts_dir=config.plates.layouts_dir,
                               plate_format=config.plates.plate_format,
                               allow_no_negcon=config.plates.allow_no_negcon)
    store.write_design(design)
    return design


# ----------------------------------------------------------------------------------------------------------
# profiles, scores, reports


def _feature_set_in_store(store: ScreenStore, plan: RunPlan) -> str:
    names = store.sql("SELECT feature_set FROM feature_sets")["feature_set"].to_list()
    if plan.feature_set in names:
        return plan.feature_set
    if len(names) == 1:
        return names[0]
    raise PipelineError(f"feature set {plan.feature_set!r} is not in the store (it has {names or 'none'}); "
                        "run the embed stage first")


def _run_profile(store: ScreenStore, config: RunConfig, plan: RunPlan, *, progress: bool | None) -> StageResult:
    from .profiles import build_profile_sets, well_profiles_from_store

    t0 = time.perf_counter()
    prof = config.profiles
    fs = _feature_set_in_store(store, plan)

    def refuse(damaged: dict) -> PipelineError:
        lines = "\n".join(f"  {k[0]} {k[1]} s{k[2]}: {why}" for k, why in list(damaged.items())[:10])
        return PipelineError(f"{len(damaged)} per-cell file(s) of feature set {fs!r} are damaged or missing:\n"
                             f"{lines}\nRun the embed stage again (`subcell-screen run CONFIG` resumes and "
                             "re-featurizes exactly those sites), then the profile stage.")

    # sites reduced to site profiles when they were featurized need no cells; older ones are reduced from
    # their stored cells, which must then be there: a well never silently loses a site
    need_cells = store.sites_without_profiles(fs)
    missing = store.damaged_cell_feature_files(fs, need_cells, read_footers=False) if need_cells else {}
    if missing:
        raise refuse(missing)
    try:
        wide = well_profiles_from_store(store, feature_set=fs, cell_to_site=prof.cell_to_site,
                                        site_to_well=prof.site_to_well, progress=progress)
    except Exception as exc:
        damaged = store.damaged_cell_feature_files(fs, need_cells) if need_cells else {}
        if not damaged:
            raise
        raise refuse(damaged) from exc
    sets = build_profile_sets(store.attach_cell_counts(wide), section=prof)
    lost = store.damaged_cell_feature_files(fs)  # profiles are whole without them; the cells are not
    if lost:
        files = sorted({why for why in lost.values()})
        sets = replace(sets, messages=sets.messages + (
            f"{len(lost)} site(s) lost their per-cell rows ({'; '.join(files[:3])}); the profiles are complete "
            "(computed from site profiles), per-cell exports and cell galleries are not: `subcell-screen run "
            f"CONFIG` featurizes those sites again, e.g. {', '.join(f'{k[0]} {k[1]} s{k[2]}' for k in list(lost)[:3])}",))
    store.clear_profiles()
    for name, frame in sets.sets().items():
        store.write_profiles(frame, profile_set=name, feature_set=fs, final=name == sets.final_name)
    return StageResult("profile", ok=sets.final.height, seconds=time.perf_counter() - t0, messages=sets.messages)


def read_profiles(store: ScreenStore, *, profile_set: str | None = None) -> pl.DataFrame:
    """Profiles in pycytominer's wide layout; see :meth:`subcell_screen.store.ScreenStore.read_profiles`."""
    return store.read_profiles(profile_set=profile_set)


def _run_score(store: ScreenStore, config: RunConfig, plan: RunPlan, *, progress: bool | None) -> StageResult:
    from .score import ScoreTables, score_profiles

    t0 = time.perf_counter()
    final = store.sql("SELECT profile_set FROM profile_sets WHERE final")["profile_set"].to_list()
    if config.profiles.normalize != "none" and final == ["raw"]:
        msg = ("scoring skipped: no normalized profiles (no plate could be normalized against its controls; see "
               "the profile stage's messages); raw profiles are not comparable across features")
        logger.warning(msg)
        store.write_scores(ScoreTables(coverage=pl.DataFrame(schema={"perturbation_id": pl.String})))
        return StageResult("score", seconds=time.perf_counter() - t0, messages=(msg,))
    sc = config.scoring
    reloc = sc.relocalization if sc.relocalization is not None else config.channel_map().protein_channel is not None
    subcell = plan.feature_set in store.sql("SELECT feature_set FROM feature_sets WHERE kind = 'subcell'")[
        "feature_set"].to_list()
    tables = score_profiles(store.read_profiles(), section=sc, relocalization=reloc,
                            ratios=store.well_readouts() if reloc else None,
                            probabilities=store.well_mean_probabilities(plan.feature_set) if reloc and subcell
                            else None, progress=progress)
    store.write_scores(tables)
    if tables.scores is None:
        for m in tables.messages:
            logger.warning(m)
    n = sum(t is not None for t in (tables.scores, tables.dose_response, tables.relocalization))
    return StageResult("score", ok=n, seconds=time.perf_counter() - t0, messages=tables.messages)


def _run_map(store: ScreenStore, config: RunConfig, plan: RunPlan) -> tuple[StageResult, tuple[Path, ...]]:
    from .phenomap import attention_model, run_map_stage

    t0 = time.perf_counter()
    sec = config.map
    model, note = None, "attention overlays off ([map].attention = false)"
    if sec.attention:
        if plan.subcell_model is not None:
            model, note = plan.subcell_model, f"attention overlays from {plan.featurizer}"
        else:
            model, note = attention_model(store, embedding=config.embedding, device=plan.device)
    try:
        res = run_map_stage(store, out_dir=Path(config.report.out), per_dose=sec.per_dose,
                            annotations=sec.annotations, resolutions=sec.resolutions, n_neighbors=sec.n_neighbors,
                            seed=sec.seed, activity=sec.activity, model=model, channel_map=config.channel_map())
    except (PipelineError, StoreError, ValueError) as exc:  # e.g. too few perturbations or no profiles
        msg = f"map not computed: {exc}"
        logger.warning(msg)
        return StageResult("map", seconds=time.perf_counter() - t0, messages=(msg,)), ()
    return (StageResult("map", ok=res.map.n_items, seconds=time.perf_counter() - t0,
                        messages=(*res.messages, note)), (res.report,) if res.report else ())


def _run_report(store: ScreenStore, config: RunConfig) -> tuple[StageResult, tuple[Path, ...]]:
    from .report import build_reports

    t0 = time.perf_counter()
    paths = tuple(build_reports(store, Path(config.report.out)))
    return StageResult("report", ok=len(paths), seconds=time.perf_counter() - t0), paths


def top_hits(store: ScreenStore, *, n: int = 10) -> pl.DataFrame:
    """The ranked hit table's first rows (from the store's ``scores`` view)."""
    return store.sql(f"SELECT rank, perturbation_id, perturbation_name, mean_average_precision, corrected_p_value, "
                     f"effect_size, is_hit FROM scores ORDER BY rank LIMIT {int(n)}")
