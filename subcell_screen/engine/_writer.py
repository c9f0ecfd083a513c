"""The single writer of the per-site stages: site outcomes -> screen store, many sites per transaction.

Both executors feed it: the local engine as sites finish in this process or its worker processes, the Ray
driver as workers finish them. Sites are written in batches (one ``replace`` per table per batch; a site
without cells or with a failure is part of the batch like any other). Order within a batch: site QC, protein
readouts, masks, cells, segmentation QC, per-cell feature files, then every stage record -- so a process killed
mid-batch leaves those sites' stages not done, a re-run recomputes them, and every write replaces the rows
of its sites (nothing is duplicated or half-written).
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import polars as pl

from ._types import SiteOutcome, StageResult, StageTally

if TYPE_CHECKING:  # pragma: no cover
    from ..store import ScreenStore
    from ._select import SiteSelection
    from ._unit import SiteProcessor

__all__ = ["SiteWriter", "LocalCompactor", "stage_results", "failure_reasons"]

logger = logging.getLogger(__name__)

_KEYS = ["plate", "well", "site"]
_STAGE_SCHEMA = {"plate": pl.String, "well": pl.String, "site": pl.Int32, "stage": pl.String, "status": pl.String,
                 "error": pl.String, "n_cells": pl.Int32, "run_id": pl.String, "seconds": pl.Float64}


def _reason(stage: str, error: str) -> str:
    """A failure message with its site-specific parts (paths, numbers) blanked, for counting reasons."""
    text = re.sub(r"(/|[A-Za-z]:\\)[^\s,;:'\"]+", "<file>", error)
    text = re.sub(r"\b(site|well|plate) \S+", r"\1 <id>", text)
    text = re.sub(r"\d+(\.\d+)?", "<n>", text)
    return f"{stage}: {text[:160]}"


def failure_reasons(tally: StageTally, *, top: int = 3) -> list[str]:
    """The most common failure reasons with their counts (``"12 sites: segment: ValueError: ..."``)."""
    return [f"{n} site(s): {reason}" for reason, n in Counter(tally.errors).most_common(top)]


def _mask_row(seg: Any, method: str) -> dict:
    """One ``masks`` row (label images compressed; a Ray worker's compressed images are used as they are)."""
    from ..store import encode_array

    if hasattr(seg, "decode"):  # EncodedSegmentation
        (height, width), nuclei, cells = seg.shape, seg.nuclei, seg.cells
    else:
        (height, width), nuclei, cells = seg.nuclei.shape, encode_array(seg.nuclei), encode_array(seg.cells)
    return {"plate": seg.plate, "well": seg.well, "site": int(seg.site), "height": int(height), "width": int(width),
            "method": method, "nuclei": nuclei, "cells": cells}


def _concat(frames: list[pl.DataFrame]) -> pl.DataFrame | None:
    frames = [f for f in frames if f is not None]
    if not frames:
        return None
    return frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")


class LocalCompactor:
    """Compacts a plate's per-cell files in this process, right away."""

    def submit(self, store: ScreenStore, job: Any) -> None:
        from ..store import compact_cell_files

        store.commit_compaction(job, compact_cell_files(job))

    def poll(self, store: ScreenStore) -> None:
        """Commit finished compactions (none pending here)."""

    def drain(self, store: ScreenStore) -> None:
        """Wait for and commit every pending compaction (none pending here)."""


class SiteWriter:
    """Stores site outcomes ``batch_sites`` at a time (call :meth:`flush` at the end, or use ``with``).

    Parameters
    ----------
    store
        Open, writable :class:`~subcell_screen.store.ScreenStore`.
    processor
        The run's :class:`~subcell_screen.engine.SiteProcessor` (its featurizer writes the per-cell files).
    selection
        The run's :class:`~subcell_screen.engine.SiteSelection` (the embed stage's name).
    run_id
        Provenance of the stage records.
    batch_sites, max_wait_s
        Write when this many sites are pending, or when the oldest has waited this long (the local engine
        writes each site as it finishes; the Ray driver, fed by many workers, 64 at a time).
    compactor
        Runs the compaction of a plate whose featurization completed (default :class:`LocalCompactor`: in
        this process, one row group in memory at a time; the Ray engine runs them on workers).
    """

    def __init__(self, store: ScreenStore, *, processor: SiteProcessor, selection: SiteSelection, run_id: str,
                 batch_sites: int = 1, max_wait_s: float = 5.0, compactor: Any = None) -> None:
        self.store, self.processor, self.selection, self.run_id = store, processor, selection, run_id
        self.tally = StageTally()
        self.batch_sites = max(1, int(batch_sites))
        self.max_wait_s = max_wait_s
        self.pending: list[SiteOutcome] = []
        self.seconds = 0.0
        self.compact_seconds = 0.0
        self.sites = 0
        self._since = time.monotonic()
        self.compactor = compactor if compactor is not None else LocalCompactor()
        self._remaining: dict[str, int] | None = None
        if selection.do_emb:
            self._remaining = {}
            for r in selection.index:
                if r.key not in selection.check_failed and selection.needs_embed(r.key):
                    self._remaining[r.plate] = self._remaining.get(r.plate, 0) + 1

    def __enter__(self) -> SiteWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()  # finished sites are stored even when the run stops early

    def add(self, outcome: SiteOutcome) -> None:
        """Queue one site's outcome (written with the next batch)."""
        if not self.pending:
            self._since = time.monotonic()
        self.pending.append(outcome)
        if len(self.pending) >= self.batch_sites or time.monotonic() - self._since > self.max_wait_s:
            self.flush()

    def flush(self) -> None:
        """Write every pending outcome."""
        outs, self.pending = self.pending, []
        if outs:
            t0 = time.perf_counter()
            self._write(outs)
            self.seconds += time.perf_counter() - t0
            self.sites += len(outs)

    def _fail(self, stages: list[dict], out: SiteOutcome, stage: str, error: str, label: str,
              shown: str | None = None) -> None:
        plate, well, site = out.key
        stages.append({"plate": plate, "well": well, "site": int(site), "stage": stage, "status": "failed",
                       "error": error, "run_id": self.run_id})
        sel, tally = self.selection, self.tally
        # a site counts as failed for every stage of this run it needed and did not get through
        if sel.needs_segment(out.key) and stage in ("load", "segment"):
            tally.seg["failed"] += 1
        if sel.needs_embed(out.key):
            tally.emb["failed"] += 1
        counter = tally.emb if stage.startswith("embed") or not sel.needs_segment(out.key) else tally.seg
        counter["messages"].append(f"{plate} {well} s{site}: {label}{shown if shown is not None else error}")
        reason = _reason(stage.split(":")[0], error)
        tally.errors[reason] = tally.errors.get(reason, 0) + 1

    def _write(self, outs: Sequence[SiteOutcome]) -> None:
        store, tally, sel = self.store, self.tally, self.selection
        stages: list[dict] = []
        loaded = []
        for o in outs:
            if o.load_error is not None:
                self._fail(stages, o, "load", o.load_error, "")
            else:
                loaded.append(o)
        keys = [o.key for o in loaded]
        if keys:
            store.replace_site_rows("site_qc", _concat([o.site_qc for o in loaded]), sites=keys)
        segmented = [o for o in loaded if o.segmented]
        seg_ok = []
        for o in segmented:
            if o.seg_error is not None:
                kind, msg = o.seg_error
                self._fail(stages, o, "segment", f"{kind}: {msg}", "segmentation: ", msg)
            else:
                seg_ok.append(o)
        if seg_ok:
            seg_keys = [o.key for o in seg_ok]
            method = self.processor.method
            if self.processor.channel_map.protein_channel:
                store.replace_site_rows("cell_readouts", _concat([o.readouts for o in seg_ok]), sites=seg_keys)
            store.replace_site_rows("masks", pl.DataFrame([_mask_row(o.segmentation, method) for o in seg_ok]),
                                    sites=seg_keys)
            store.replace_site_rows("cells", _concat([o.segmentation.cells_table for o in seg_ok]), sites=seg_keys)
            qc = [{**dict(zip(_KEYS, (o.key[0], o.key[1], int(o.key[2])))), "method": method,
                   **o.segmentation.qc.to_dict()} for o in seg_ok]
            store.replace_site_rows("segmentation_qc", pl.DataFrame(qc), sites=seg_keys)
            for o in seg_ok:
                n = o.segmentation.n_cells
                stages.append({"plate": o.key[0], "well": o.key[1], "site": int(o.key[2]), "stage": "segment",
                               "status": "ok", "n_cells": n, "run_id": self.run_id, "seconds": o.seg_seconds})
                tally.seg["ok"] += 1
                tally.seg["cells"] += n
                tally.seg["seconds"] += o.seg_seconds
        feats = []
        for o in loaded:
            if not o.featurized:
                continue
            if o.feat_error is not None:
                kind, msg = o.feat_error
                self._fail(stages, o, sel.embed_stage, f"{kind}: {msg}", "features: ", msg)
            else:
                feats.append(o)
        if feats:
            t0 = time.perf_counter()
            self._store_features(feats)
            share = (time.perf_counter() - t0) / len(feats)
            for o in feats:
                n, s = o.n_cells, o.feat_seconds + share
                stages.append({"plate": o.key[0], "well": o.key[1], "site": int(o.key[2]), "stage": sel.embed_stage,
                               "status": "ok", "n_cells": n, "run_id": self.run_id, "seconds": s})
                tally.emb["ok"] += 1
                tally.emb["cells"] += n
                tally.emb["seconds"] += s
        store.record_site_stages(pl.DataFrame(stages, schema=_STAGE_SCHEMA))
        if feats:  # after the stage records: a logged site is a stored site
            verb = "embedded" if self.processor.features.kind == "subcell" else "featurized"
            for row in stages:
                if row["stage"] == sel.embed_stage and row["status"] == "ok":
                    logger.info("%s %s %s s%d: %d cells in %.2f s", verb, row["plate"], row["well"], row["site"],
                                row["n_cells"], row["seconds"])
        self._plates_progress(outs)

    def _store_features(self, feats: Sequence[SiteOutcome]) -> None:
        """Per-cell files (under the keep policy), the manifest and the site profiles of featurized sites."""
        from ..profiles import profiles_of

        store, features = self.store, self.processor.features
        fs = self.processor.features.feature_set
        local = [o for o in feats if o.features is not None]
        by_channels: dict[tuple, list[SiteOutcome]] = {}
        for o in local:
            by_channels.setdefault(tuple(o.channel_names), []).append(o)
        for channels, group in by_channels.items():
            features.write_many(store, [o.key for o in group], channels, [o.features for o in group])
        remote = [o for o in feats if o.features is None]  # a Ray worker's: its file is moved, never read
        registered: set[str] = set()
        for o in remote:
            token = repr((o.channel_names, sorted((o.feature_meta or {}).items())))
            if token not in registered:
                features.register(store, channel_names=o.channel_names, meta=o.feature_meta or {})
                registered.add(token)
            if o.cell_file is not None:
                store.adopt_cell_file(fs, o.cell_file, plate=o.key[0], well=o.key[1], site=o.key[2],
                                      n_rows=o.n_cells)
        not_kept = [o.key for o in remote if o.cell_file is None]
        if not_kept:
            store.record_cells_not_kept(fs, not_kept, kept=features.keep_cells)
        with_cells = [o for o in feats if o.site_profile is not None]
        store.write_site_profiles(fs, profiles_of([o.key for o in with_cells], [o.site_profile for o in with_cells]),
                                  sites=[o.key for o in feats])

    # -- compaction ----------------------------------------------------------------------------------------

    def _plates_progress(self, outs: Sequence[SiteOutcome]) -> None:
        """Compact each plate whose featurization this run has completed."""
        if self._remaining is None:
            return
        for o in outs:
            plate = o.key[0]
            if plate in self._remaining and self.selection.needs_embed(o.key):
                self._remaining[plate] -= 1
                if self._remaining[plate] <= 0:
                    del self._remaining[plate]
                    self._compact(plate)
        self.compactor.poll(self.store)

    def _compact(self, plate: str) -> None:
        features = self.processor.features
        if features.keep_cells == "none":
            return
        job = self.store.compaction_job(self.processor.features.feature_set, plate, keep=features.keep_cells,
                                        cells_per_well=self.processor.config.embedding.cells_per_well)
        if job is not None:
            t0 = time.perf_counter()
            self.compactor.submit(self.store, job)
            self.compact_seconds += time.perf_counter() - t0

    def finish(self) -> None:
        """Write what is pending, compact every plate still holding per-site files, and wait for the
        compactions (call once, after the last site; not when the run stops on an error)."""
        self.flush()
        if self.selection.do_emb:
            for plate in self.store.plates_to_compact(self.processor.features.feature_set):
                self._compact(plate)
        t0 = time.perf_counter()
        self.compactor.drain(self.store)
        self.compact_seconds += time.perf_counter() - t0


def stage_results(store: ScreenStore, selection: SiteSelection, tally: StageTally, *, total_seconds: float,
                  messages: Sequence[str] = ()) -> list[StageResult]:
    """StageResults of the per-site stages (``ok + failed + skipped`` = the sites of the run).

    Raises
    ------
    PipelineError
        When a plate has no segmented site, after every other site was processed and recorded; the message
        gives the most common failure reasons with their counts.
    """
    from .._errors import PipelineError
    from ._select import pixel_size_lines

    sel = selection
    for _key, msg in sel.report.failures:
        tally.errors[_reason("load", msg)] = tally.errors.get(_reason("load", msg), 0) + 1
    if sel.do_seg:
        ok_plates = {k[0] for k in store.sites_with_stage("segment")}
        dead = sorted({r.plate for r in sel.index} - ok_plates)
        if dead:
            reasons = "\n".join(f"  {r}" for r in failure_reasons(tally)) or "  (no failure recorded)"
            raise PipelineError(f"no site of plate(s) {dead} could be segmented. Most common failure reasons:\n"
                                f"{reasons}\nAll failed sites: SELECT * FROM sites WHERE status = 'failed'")
    n_check = len(sel.report.failures)
    readable = [r.key for r in sel.index if r.key not in sel.check_failed]
    seg_skipped = sum(1 for k in readable if not sel.needs_segment(k))
    emb_skipped = sum(1 for k in readable if not sel.needs_embed(k))
    load_msgs = [f"load: {msg}" for _key, msg in sel.report.failures]
    common = [f"most common failure: {r}" for r in failure_reasons(tally)] if tally.errors else []
    seg, emb = tally.seg, tally.emb
    out = []
    head = pixel_size_lines(sel.index) + list(sel.messages) + list(messages) + common
    if sel.do_seg:
        out.append(StageResult("segment", seg["ok"], seg["failed"] + n_check, seg_skipped, seg["cells"],
                               seg["seconds"] if sel.do_emb else total_seconds,
                               tuple(head + load_msgs + seg["messages"])))
    if sel.do_emb:
        out.append(StageResult("embed", emb["ok"], emb["failed"] + n_check, emb_skipped, emb["cells"],
                               emb["seconds"] if sel.do_seg else total_seconds,
                               tuple(([] if sel.do_seg else head + load_msgs) + emb["messages"])))
    return out
