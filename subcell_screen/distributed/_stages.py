"""The Ray Data stages (run on workers): load, segment, crop, featurize/embed, write.

Every stage maps a batch of rows ``plate, well, site, payload`` (``payload``: one pickled dict per site, see
:mod:`._outputs`) to a batch of the same rows, so that no Arrow schema has to be inferred from per-site data.
The compute is :class:`subcell_screen.engine.SiteProcessor`, the same code the local engine runs.

Worker deaths: Ray retries a task whose worker died and restarts a dead actor (Ray Data's defaults), so a
batch runs again. Each site is bracketed by an "in flight" marker file under the shared output folder; a site
whose marker says that ``[ray].max_retries + 1`` workers died on it is failed (like a corrupt site in the local
engine) instead of being retried forever.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _outputs as out_

logger = logging.getLogger(__name__)

#: Test hook: ``<stage>:<plate>/<well>/<site>[:<marker file>]`` makes the worker process running ``stage`` on
#: that site exit abruptly (``os._exit``) -- once when a marker file is given (created on the first crash),
#: on every attempt otherwise. Read by the driver only.
CRASH_ENV = "SUBCELL_SCREEN_RAY_TEST_CRASH"


@dataclass(frozen=True)
class StageSpec:
    """Everything a stage needs, resolved on the driver (picklable; passed to every task and actor)."""

    config: Any
    segmenter: str
    featurizer: str
    feature_set: str
    device: str
    output: str
    run_token: str
    cache_dir: str | None = None
    offline: bool | None = None
    embed_batch_size: int | None = None
    max_retries: int = 3
    illumination: Mapping[str, Any] = field(default_factory=dict)   # plate -> ObjectRef of channel -> array
    crash: tuple | None = None

    @property
    def feature_kind(self) -> str:
        return "classical" if self.featurizer == "classical" else "subcell"


def parse_crash_hook(value: str | None) -> tuple | None:
    """``"segment:P1/A01/2:/tmp/marker"`` -> ``("segment", ("P1", "A01", 2), "/tmp/marker")``."""
    if not value:
        return None
    stage, _, rest = value.partition(":")
    where, _, marker = rest.partition(":")
    plate, well, site = where.split("/")
    return (stage, (plate, well, int(site)), marker or None)


def _maybe_crash(spec: StageSpec, stage: str, key: tuple) -> None:
    if spec.crash is None or spec.crash[0] != stage or tuple(spec.crash[1]) != tuple(key):
        return
    marker = spec.crash[2]
    if marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
    logger.error("test hook %s: worker process %d exits during %s of %s", CRASH_ENV, os.getpid(), stage, key)
    os._exit(1)


def _guarded(spec: StageSpec, stage: str, key: tuple, work: Callable[[], None],
             give_up: Callable[[str], None]) -> None:
    """Run ``work`` for one site between in-flight markers; ``give_up`` when workers kept dying on it."""
    marker = out_.inflight_file(spec.output, stage, key)
    try:
        deaths = int(marker.read_text() or 0)
    except (FileNotFoundError, ValueError):
        deaths = 0
    if deaths > spec.max_retries:
        logger.error("%s of %s: %d worker process(es) died on this site; giving up", stage, key, deaths)
        give_up(f"{deaths} Ray worker process(es) died while running {stage} on this site "
                f"([ray].max_retries = {spec.max_retries})")
        marker.unlink(missing_ok=True)
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(deaths + 1))
    _maybe_crash(spec, stage, key)
    try:
        work()
    finally:
        marker.unlink(missing_ok=True)


# -- batches ------------------------------------------------------------------------------------------------


def _rows(batch: Any) -> list[tuple[tuple, dict]]:
    cols = batch.to_pydict()
    return [((p, w, int(s)), out_.loads(b)) for p, w, s, b in zip(cols["plate"], cols["well"], cols["site"],
                                                                   cols["payload"])]


def _batch(rows: list[tuple[tuple, dict]]) -> Any:
    import pyarrow as pa

    return pa.table({"plate": pa.array([k[0] for k, _ in rows], pa.string()),
                     "well": pa.array([k[1] for k, _ in rows], pa.string()),
                     "site": pa.array([k[2] for k, _ in rows], pa.int32()),
                     "payload": pa.array([out_.dumps(p) for _, p in rows], pa.large_binary())})


def _alive(p: dict) -> bool:
    return p.get("load_error") is None and p.get("seg_error") is None


def _needs_features(p: dict) -> bool:
    return _alive(p) and p["need_emb"] and p.get("feat_error") is None


_PROCESSORS: dict[str, Any] = {}
_ILLUMINATION: dict[tuple[str, str], Any] = {}


def _processor(spec: StageSpec, *, cellpose: Any = None, subcell: Any = None) -> Any:
    """The :class:`~subcell_screen.engine.SiteProcessor` of this run (cached per worker process when no model
    is given)."""
    from ..engine import SiteProcessor
    from ..segment import Segmenter, segmenter_from_config

    if cellpose is not None or subcell is not None:
        seg = segmenter_from_config(spec.config.segmentation, load=False)
        if cellpose is not None:
            seg = Segmenter(method="cellpose", model=cellpose, params=seg.params)
        return SiteProcessor(spec.config, featurizer=spec.featurizer, feature_set=spec.feature_set,
                             device=spec.device, segmenter=seg, subcell=subcell,
                             embed_batch_size=spec.embed_batch_size)
    if spec.run_token not in _PROCESSORS:
        _PROCESSORS.clear()
        _PROCESSORS[spec.run_token] = SiteProcessor(spec.config, featurizer=spec.featurizer,
                                                    feature_set=spec.feature_set, device=spec.device,
                                                    embed_batch_size=spec.embed_batch_size)
    return _PROCESSORS[spec.run_token]


def _illumination_for(spec: StageSpec, plate: str) -> Any:
    ref = spec.illumination.get(plate)
    if ref is None:
        return None
    cache_key = (spec.run_token, plate)
    if cache_key not in _ILLUMINATION:
        import ray

        while len(_ILLUMINATION) >= 4:
            _ILLUMINATION.pop(next(iter(_ILLUMINATION)))
        _ILLUMINATION[cache_key] = ray.get(ref)
    return _ILLUMINATION[cache_key]


# -- stages -------------------------------------------------------------------------------------------------


def load_sites(batch: Any, *, spec: StageSpec) -> Any:
    """CPU task: read (and illumination-correct) each site; QC rows. A bad site gets ``load_error``."""
    from ..io import SiteLoadError, load_site, site_qc_rows

    rows = _rows(batch)
    for key, p in rows:
        def work(p: dict = p) -> None:
            record = out_.record_from_dict(p["record"])
            try:
                site = load_site(record, illumination=_illumination_for(spec, record.plate))
            except SiteLoadError as exc:
                logger.warning("%s", exc)
                p["load_error"] = str(exc)
                return
            p["site"] = out_.pack_site(site)
            p["channel_names"] = tuple(site.channel_names)
            p["site_qc"] = site_qc_rows(site)

        _guarded(spec, "load", key, work, lambda msg, p=p: p.__setitem__("load_error", msg))
    return _batch(rows)


class SegmentSites:
    """Actor: segments sites (Cellpose loaded once per actor, on its GPU when it has one)."""

    def __init__(self, spec: StageSpec) -> None:
        from ..segment import segmenter_from_config

        self.spec = spec
        cellpose = (segmenter_from_config(spec.config.segmentation, device=spec.device).model
                    if spec.segmenter.startswith("cellpose") else None)
        self.processor = _processor(spec, cellpose=cellpose) if cellpose is not None else _processor(spec)

    def __call__(self, batch: Any) -> Any:
        rows = _rows(batch)
        for key, p in rows:
            if not (_alive(p) and p["need_seg"]):
                continue

            def work(p: dict = p) -> None:
                site = out_.unpack_site(p["site"])
                seg, readouts, error, dt = self.processor.segment(site)
                p.update(segmented=True, seg=out_.pack_segmentation(seg) if seg is not None else None,
                         readouts=readouts, seg_error=error, seg_seconds=dt)
                if not p["need_emb"] or error is not None:
                    p["site"] = None

            _guarded(self.spec, "segment", key, work,
                     lambda msg, p=p: p.update(segmented=True, seg_error=("WorkerDied", msg), site=None))
        return _batch(rows)


def crop_sites(batch: Any, *, spec: StageSpec) -> Any:
    """CPU task (GPU embedding only): cut each site's cell crops at source resolution for on-device resizing."""
    import time

    from ..engine import FEATURE_ERRORS

    processor = _processor(spec)
    rows = _rows(batch)
    for key, p in rows:
        if not _needs_features(p):
            continue

        def work(p: dict = p, key: tuple = key) -> None:
            t0 = time.perf_counter()
            try:
                site = out_.unpack_site(p["site"])
                seg = out_.unpack_segmentation(p["seg"])
                p["crops"] = out_.pack_crops(list(processor.features.crops(site, seg)))
            except FEATURE_ERRORS as exc:
                logger.warning("featurization failed for %s: %s", key, exc)
                p.update(featurized=True, feat_error=(type(exc).__name__, str(exc)))
            p["crop_seconds"] = time.perf_counter() - t0
            p["site"] = None

        _guarded(spec, "crop", key, work,
                 lambda msg, p=p: p.update(featurized=True, feat_error=("WorkerDied", msg), site=None))
    return _batch(rows)


class EmbedSites:
    """Actor: SubCell embeddings (model loaded once per actor; crops made here when the actor has no GPU)."""

    def __init__(self, spec: StageSpec) -> None:
        from ..embed import load_model_from_config

        self.spec = spec
        model = load_model_from_config(spec.config.embedding, device=spec.device, cache_dir=spec.cache_dir,
                                       offline=spec.offline)
        self.processor = _processor(spec, subcell=model)

    def __call__(self, batch: Any) -> Any:
        rows = _rows(batch)
        features = self.processor.features
        for key, p in rows:
            if not _needs_features(p):
                continue

            def work(p: dict = p, key: tuple = key) -> None:
                if p.get("crops") is not None:
                    crops = p.pop("crops")
                    compute = lambda: features.embed(out_.unpack_crops(crops))  # noqa: E731
                    site = None
                else:
                    site = out_.unpack_site(p["site"])
                    seg = out_.unpack_segmentation(p["seg"])
                    compute = lambda: features.compute(site, seg)  # noqa: E731
                feats, error, dt = self.processor.featurize(site, None, compute=compute, key=key)
                p.update(featurized=True, features=feats, feat_error=error,
                         feat_seconds=dt + p.pop("crop_seconds", 0.0), site=None)

            _guarded(self.spec, "embed", key, work,
                     lambda msg, p=p: p.update(featurized=True, feat_error=("WorkerDied", msg), site=None,
                                               crops=None))
        return _batch(rows)


def classical_features(batch: Any, *, spec: StageSpec) -> Any:
    """CPU task: classical per-cell features."""
    processor = _processor(spec)
    rows = _rows(batch)
    for key, p in rows:
        if not _needs_features(p):
            continue

        def work(p: dict = p, key: tuple = key) -> None:
            site = out_.unpack_site(p["site"])
            seg = out_.unpack_segmentation(p["seg"])
            feats, error, dt = processor.featurize(site, seg, raw_dtype=p.get("raw_dtype"), key=key)
            p.update(featurized=True, features=feats, feat_error=error, feat_seconds=dt, site=None)

        _guarded(spec, "features", key, work,
                 lambda msg, p=p: p.update(featurized=True, feat_error=("WorkerDied", msg), site=None))
    return _batch(rows)


def write_sites(batch: Any, *, spec: StageSpec) -> Any:
    """CPU task: write each site's outcome to the output folder; returns ``plate, well, site, path`` rows."""
    import pyarrow as pa

    from ..engine import SiteOutcome

    features = _processor(spec).features
    keys, paths = [], []
    for key, p in _rows(batch):
        seg = p.get("seg")
        outcome = SiteOutcome(
            key=key, channel_names=tuple(p.get("channel_names") or ()), load_error=p.get("load_error"),
            site_qc=p.get("site_qc"), segmented=bool(p.get("segmented")),
            segmentation=seg if p.get("segmented") else None,  # still compressed: written as is
            readouts=p.get("readouts"), seg_error=p.get("seg_error"), seg_seconds=float(p.get("seg_seconds", 0.0)),
            featurized=bool(p.get("featurized")), features=p.get("features"), feat_error=p.get("feat_error"),
            feat_seconds=float(p.get("feat_seconds", 0.0)))
        path = out_.write_outcome(spec.output, outcome, kind=spec.feature_kind, feature_set=spec.feature_set,
                                  features=features)
        keys.append(key)
        paths.append(str(path))
    return pa.table({"plate": pa.array([k[0] for k in keys], pa.string()),
                     "well": pa.array([k[1] for k in keys], pa.string()),
                     "site": pa.array([k[2] for k in keys], pa.int32()),
                     "path": pa.array(paths, pa.string())})


def illumination_task(records: list, plate: str) -> tuple[dict, dict]:
    """Illumination functions of one plate (as the local engine computes them)."""
    from ..io import compute_illumination

    funcs = compute_illumination(records, plate=plate)
    return dict(funcs), dict(funcs.recipe)


def clear_inflight(output: str | Path) -> None:
    """Remove stale in-flight markers (from a run whose driver died)."""
    import shutil

    shutil.rmtree(Path(output) / out_.INFLIGHT_DIR, ignore_errors=True)
