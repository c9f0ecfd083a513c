"""Value objects of the per-site engine: what a run will do, what a site produced, what a stage reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

__all__ = ["RunPlan", "StageResult", "SiteOutcome", "StageTally"]


@dataclass(frozen=True)
class RunPlan:
    """What a run will do, resolved before any work starts (:func:`subcell_screen.pipeline.plan_run`).

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
    models : dict
        Provenance of the loaded models (weight files, verification, precision), for the run record.
    notes : tuple of str
        Other choices made for the run that the user should see (e.g. the embedding precision and why).
    cellpose_model, subcell_model
        The loaded models (None when not needed, or not loaded).
    """

    device: str
    segmenter: str
    featurizer: str
    feature_set: str
    fallbacks: tuple[str, ...] = ()
    models: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    notes: tuple[str, ...] = ()
    cellpose_model: Any = field(default=None, repr=False, compare=False)
    subcell_model: Any = field(default=None, repr=False, compare=False)

    def lines(self) -> list[str]:
        """The lines the CLI prints first."""
        out = [f"featurizer: {self.featurizer}", f"segmenter:  {self.segmenter}", f"device:     {self.device}"]
        out += list(self.notes)
        out += [f"WARNING: {f}" for f in self.fallbacks]
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-able summary for the run record."""
        return {"featurizer": self.featurizer, "segmenter": self.segmenter, "device": self.device,
                "feature_set": self.feature_set, "fallbacks": list(self.fallbacks), "notes": list(self.notes)}


@dataclass(frozen=True)
class StageResult:
    """Outcome of one stage (per-site stages: ``ok + failed + skipped`` = the sites of the run)."""

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
class SiteOutcome:
    """What the per-site stages computed for one site; :class:`~subcell_screen.engine.SiteWriter` stores it.

    ``segmented``/``featurized`` say whether that stage ran for this site in this run; ``*_error`` is
    ``(exception type name, message)`` of a failed stage. ``segmentation`` is a
    :class:`~subcell_screen.segment.Segmentation` (or its compressed form from a Ray worker). ``features`` is
    the featurizer's output in memory; a Ray worker's outcome has none, but the per-cell file it wrote
    (``cell_file``, absent when no cell is kept) and ``feature_meta`` (what registering the feature set
    needs). ``site_profile`` is the :class:`~subcell_screen.profiles.SiteProfile` (None: no cells).
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
    site_profile: Any = field(default=None, repr=False)
    cell_file: str | None = None
    feature_meta: dict | None = field(default=None, repr=False)

    @property
    def n_cells(self) -> int:
        """Cells featurized (from the site profile: a Ray worker's outcome carries no cells)."""
        return 0 if self.site_profile is None else int(self.site_profile.n_cells)


@dataclass
class StageTally:
    """Running counts of the segment and embed stages (the writer's mutable accumulator)."""

    seg: dict = field(default_factory=lambda: {"ok": 0, "failed": 0, "cells": 0, "seconds": 0.0, "messages": []})
    emb: dict = field(default_factory=lambda: {"ok": 0, "failed": 0, "cells": 0, "seconds": 0.0, "messages": []})
    errors: dict = field(default_factory=dict)  # "<stage>: <error type>" -> count
