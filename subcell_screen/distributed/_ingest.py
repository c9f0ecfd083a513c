"""Driver-side ingest: finished sites -> screen store, many sites per table write.

The local engine stores a site with about eight small DuckDB transactions (site QC, readout, masks, cells,
segmentation QC, two stage records, feature-set registration), 10-20 ms each: fine beside its own compute, but
a single driver fed by many workers would spend its time committing. :class:`BatchIngest` writes the same
rows for a batch of sites with one ``replace_rows`` per table. Rows are built exactly as
:func:`subcell_screen.segment.write_segmentation`, :meth:`ScreenStore.write_masks` and
:meth:`ScreenStore.set_site_status` build them (the engine tests compare every table with the local engine's);
sites with a failure, and sites without cells (whose rows must be deleted by an explicit key), go through the
local engine's per-site writer.

Order within a batch: site QC, readouts, masks, cells, segmentation QC, ``segment`` stage records, per-cell
features, ``embed`` stage records -- a driver killed mid-batch leaves those sites' later stages not done, so
a re-run recomputes them, and every write replaces the rows of its sites.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import polars as pl

from ..store import _now, encode_array

logger = logging.getLogger(__name__)

_KEYS = ["plate", "well", "site"]


def _stage_rows(outs: Sequence[Any], *, stage: str, n_cells: Sequence[int], seconds: Sequence[float],
                run_id: str) -> pl.DataFrame:
    """``site_stages`` rows of finished sites (as :meth:`ScreenStore.set_site_status` builds them)."""
    now = _now()
    return pl.DataFrame({"plate": [o.key[0] for o in outs], "well": [o.key[1] for o in outs],
                         "site": [int(o.key[2]) for o in outs], "stage": [stage] * len(outs),
                         "status": ["ok"] * len(outs), "error": [None] * len(outs), "n_cells": list(n_cells),
                         "run_id": [run_id] * len(outs), "seconds": list(seconds), "updated_at": [now] * len(outs)},
                        schema_overrides={"n_cells": pl.Int32, "site": pl.Int32, "error": pl.String,
                                          "run_id": pl.String, "seconds": pl.Float64})


def _set_stage_ok(store: Any, rows: pl.DataFrame) -> None:
    """Record ``ok`` stage rows and, as :meth:`ScreenStore.set_site_status` does, mark those sites ``ok``
    unless another of their stages failed."""
    store.replace_rows("site_stages", rows, keys=[*_KEYS, "stage"])
    store.con.register("_ok_sites", rows.select(_KEYS).unique().to_arrow())
    try:
        store.con.execute(
            "UPDATE sites SET status = 'ok', error = NULL, updated_at = ? FROM _ok_sites k WHERE "
            "sites.plate = k.plate AND sites.well = k.well AND sites.site = k.site AND NOT EXISTS (SELECT 1 FROM "
            "site_stages s WHERE s.plate = sites.plate AND s.well = sites.well AND s.site = sites.site AND "
            "s.status = 'failed')", [_now()])
    finally:
        store.con.unregister("_ok_sites")


def _mask_row(seg: Any, method: str) -> pl.DataFrame:
    """One ``masks`` row (as :meth:`ScreenStore.write_masks` builds it; compressed images are used as they are)."""
    from ._outputs import EncodedSegmentation

    if isinstance(seg, EncodedSegmentation):
        (height, width), nuclei, cells = seg.shape, seg.nuclei, seg.cells
    else:
        (height, width), nuclei, cells = seg.nuclei.shape, encode_array(seg.nuclei), encode_array(seg.cells)
    return pl.DataFrame({"plate": [seg.plate], "well": [seg.well], "site": [int(seg.site)], "height": [height],
                         "width": [width], "method": [method], "nuclei": [nuclei], "cells": [cells]},
                        schema_overrides={"site": pl.Int32, "height": pl.Int32, "width": pl.Int32})


def _qc_row(seg: Any, method: str) -> pl.DataFrame:
    """One ``segmentation_qc`` row (as :func:`~subcell_screen.segment.write_segmentation` builds it)."""
    keys = {"plate": seg.plate, "well": seg.well, "site": int(seg.site)}
    return pl.DataFrame({**{k: [v] for k, v in keys.items()}, "method": [method],
                         **{k: [v] for k, v in seg.qc.to_dict().items()}},
                        schema_overrides={"site": pl.Int32, "n_cells": pl.Int32, "n_border": pl.Int32})


def _concat(frames: list[pl.DataFrame]) -> pl.DataFrame:
    return frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical_relaxed")


class BatchIngest:
    """Collects site outcomes and stores them ``batch_sites`` at a time (call :meth:`flush` at the end).

    Parameters
    ----------
    store, processor, selection, tally, run_id
        As for :func:`subcell_screen.pipeline._record_site`.
    batch_sites
        Sites per batch of table writes.
    max_wait_s
        Also write when the oldest pending site has waited this long (the store stays current).
    """

    def __init__(self, store: Any, *, processor: Any, selection: Any, tally: Any, run_id: str,
                 batch_sites: int = 64, max_wait_s: float = 10.0) -> None:
        self.store, self.processor, self.selection, self.tally = store, processor, selection, tally
        self.run_id = run_id
        self.batch_sites = max(1, int(batch_sites))
        self.max_wait_s = max_wait_s
        self.pending: list[Any] = []
        self.seconds = 0.0
        self.sites = 0
        self._since = time.monotonic()

    def add(self, outcome: Any) -> None:
        if not self.pending:
            self._since = time.monotonic()
        self.pending.append(outcome)
        if len(self.pending) >= self.batch_sites or time.monotonic() - self._since > self.max_wait_s:
            self.flush()

    def flush(self) -> None:
        from ..pipeline import _record_site

        outs, self.pending = self.pending, []
        if not outs:
            return
        t0 = time.perf_counter()
        bulk = []
        for o in outs:
            if self._simple(o):
                bulk.append(o)
            else:
                if hasattr(o.segmentation, "decode"):  # the per-site writer takes label images
                    o = replace(o, segmentation=o.segmentation.decode())
                _record_site(self.store, o, processor=self.processor, selection=self.selection, tally=self.tally,
                             run_id=self.run_id)
        if bulk:
            self._bulk(bulk)
        self.seconds += time.perf_counter() - t0
        self.sites += len(outs)

    @staticmethod
    def _simple(o: Any) -> bool:
        """No failure, and every row set non-empty (so that ``replace_rows`` by key columns replaces it)."""
        if o.load_error is not None or o.seg_error is not None or o.feat_error is not None:
            return False
        if o.segmented and (o.segmentation.n_cells == 0 or (o.readouts is not None and o.readouts.height == 0)):
            return False
        return o.site_qc is not None and o.site_qc.height > 0

    def _bulk(self, outs: list[Any]) -> None:
        store, tally, method = self.store, self.tally, self.processor.method
        store.replace_rows("site_qc", _concat([o.site_qc for o in outs]), keys=_KEYS)
        segs = [o for o in outs if o.segmented]
        if segs:
            readouts = [o.readouts for o in segs if o.readouts is not None]
            if readouts:
                store.replace_rows("cell_readouts", _concat(readouts), keys=_KEYS)
            store.replace_rows("masks", _concat([_mask_row(o.segmentation, method) for o in segs]), keys=_KEYS)
            store.replace_rows("cells", _concat([o.segmentation.cells_table for o in segs]), keys=_KEYS)
            store.replace_rows("segmentation_qc", _concat([_qc_row(o.segmentation, method) for o in segs]),
                               keys=_KEYS)
            _set_stage_ok(store, _stage_rows(segs, stage="segment", n_cells=[o.segmentation.n_cells for o in segs],
                                             seconds=[o.seg_seconds for o in segs], run_id=self.run_id))
            for o in segs:
                tally.seg["ok"] += 1
                tally.seg["cells"] += o.segmentation.n_cells
                tally.seg["seconds"] += o.seg_seconds
        feats = [o for o in outs if o.featurized]
        if feats:
            features = self.processor.features
            t0 = time.perf_counter()
            by_channels: dict[tuple, list[Any]] = {}
            for o in feats:
                by_channels.setdefault(tuple(o.channel_names), []).append(o)
            for channels, group in by_channels.items():
                features.write_many(store, [o.key for o in group], channels, [o.features for o in group])
            share = (time.perf_counter() - t0) / len(feats)
            n = [features.n_cells(o.features) for o in feats]
            seconds = [o.feat_seconds + share for o in feats]
            _set_stage_ok(store, _stage_rows(feats, stage=self.selection.embed_stage, n_cells=n, seconds=seconds,
                                             run_id=self.run_id))
            for o, k, s in zip(feats, n, seconds):
                logger.info("embedded %s %s s%d: %d cells in %.2f s", *o.key, k, s)
                tally.emb["ok"] += 1
                tally.emb["cells"] += k
                tally.emb["seconds"] += s
