"""The per-site engine: what a site needs, computing it, recording it, for both executors.

::

    select_sites(store, config, plan, design, stages=...)   -> SiteSelection (index, checks, work to do)
    SiteProcessor.from_plan(config, plan).process(site, ...) -> SiteOutcome   (pure compute, no store)
    SiteWriter(store, processor=..., selection=..., run_id=...).add(outcome)  (the single, batched writer)
    stage_results(store, selection, tally, ...)              -> [StageResult]

:func:`run_local` is the local executor (this process, or worker processes on the all-CPU path; with a torch
model, each site's compute runs on one thread overlapped with loading and recording: :func:`prefetch`, and
:class:`BusyClock` times the models' forward passes);
:mod:`subcell_screen.distributed` is the Ray executor and uses the same unit. The orchestrator
(:mod:`subcell_screen.pipeline`) imports executors; executors never import the orchestrator.
"""

from __future__ import annotations

from ._local import cpu_workers, run_local
from ._prefetch import BusyClock, Failed, prefetch
from ._select import (
    SiteSelection,
    channel_rows,
    mapped_channels,
    pixel_size_lines,
    plate_illumination,
    require_pixel_sizes,
    select_sites,
    site_index,
)
from ._types import RunPlan, SiteOutcome, StageResult, StageTally
from ._unit import FEATURE_ERRORS, SiteProcessor, feature_set_name, stored_segmentation
from ._writer import SiteWriter, failure_reasons, stage_results

__all__ = [
    "RunPlan",
    "StageResult",
    "SiteOutcome",
    "StageTally",
    "SiteSelection",
    "select_sites",
    "site_index",
    "mapped_channels",
    "channel_rows",
    "require_pixel_sizes",
    "pixel_size_lines",
    "plate_illumination",
    "SiteProcessor",
    "FEATURE_ERRORS",
    "feature_set_name",
    "stored_segmentation",
    "SiteWriter",
    "stage_results",
    "failure_reasons",
    "run_local",
    "cpu_workers",
    "prefetch",
    "Failed",
    "BusyClock",
]
