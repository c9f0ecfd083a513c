"""Per-site payloads between Ray stages, and the per-site Parquet files the workers write.

Output folder (``[ray].output``, default ``<screen>/ray_output``; on a cluster it must be a filesystem that
every node and the driver see)::

    <output>/sites/plate=<plate>/<well>_s<site>.parquet             one row: status, errors, timings, masks,
                                                                     cells table, QC rows, protein readout
    <output>/features/<feature_set>/plate=<plate>/<well>_s<site>.parquet   per-cell features as the store
                                                                     keeps them (the driver moves the file
                                                                     into the store without reading it)
    <output>/_inflight/<stage>/<plate>/<well>_s<site>                 "a worker is on this site" markers

File names depend only on the site, and every file is written to a temporary name and renamed into place,
so a retried task replaces (never duplicates) a site's files and readers never see a partial file.
"""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ..store import decode_array, encode_array, safe_name, write_parquet_atomic

SITES_DIR = "sites"
FEATURES_DIR = "features"
INFLIGHT_DIR = "_inflight"


# -- payloads: what travels between stages in the Ray object store (one pickled dict per site) -------------


def dumps(payload: dict) -> bytes:
    """Serialise a site payload (pickle protocol 5: arrays are copied once, not converted)."""
    return pickle.dumps(payload, protocol=5)


def loads(blob: bytes) -> dict:
    """Inverse of :func:`dumps` (payloads are only ever produced by this package's own stages)."""
    return pickle.loads(blob)


def pack_site(site: Any) -> dict:
    """A :class:`~subcell_screen.io.SiteImage` as plain values (its record holds a mappingproxy)."""
    return {"data": site.data, "channel_names": tuple(site.channel_names), "pixel_size_um": site.pixel_size_um,
            "record": site.record.to_dict()}


def record_from_dict(d: dict) -> Any:
    from ..io import SiteRecord

    return SiteRecord.from_dict(d)


def unpack_site(d: dict) -> Any:
    from ..io import SiteImage

    return SiteImage(data=d["data"], channel_names=tuple(d["channel_names"]), pixel_size_um=d["pixel_size_um"],
                     record=record_from_dict(d["record"]))


@dataclass(frozen=True)
class EncodedSegmentation:
    """A site's segmentation with its label images still compressed (:func:`~subcell_screen.store.encode_array`,
    the store's own encoding), so that stages and the driver that only pass them on never decode them.

    :meth:`decode` gives the :class:`~subcell_screen.segment.Segmentation`.
    """

    plate: str
    well: str
    site: int
    nuclei: bytes = field(repr=False)
    cells: bytes = field(repr=False)
    shape: tuple[int, int]
    cells_table: pl.DataFrame = field(repr=False)
    method: str
    pixel_size_um: float | None

    @property
    def n_cells(self) -> int:
        return self.cells_table.height

    @property
    def qc(self) -> Any:
        from ..segment import segmentation_qc

        return segmentation_qc(self.cells_table)

    def decode(self) -> Any:
        from ..segment import Segmentation

        return Segmentation(plate=self.plate, well=self.well, site=int(self.site), nuclei=decode_array(self.nuclei),
                            cells=decode_array(self.cells), cells_table=self.cells_table, qc=self.qc,
                            method=self.method, pixel_size_um=self.pixel_size_um)


def pack_segmentation(seg: Any) -> EncodedSegmentation:
    """A :class:`~subcell_screen.segment.Segmentation` with compressed label images."""
    return EncodedSegmentation(plate=seg.plate, well=seg.well, site=int(seg.site), nuclei=encode_array(seg.nuclei),
                               cells=encode_array(seg.cells), shape=tuple(seg.nuclei.shape),
                               cells_table=seg.cells_table, method=seg.method, pixel_size_um=seg.pixel_size_um)


def unpack_segmentation(packed: EncodedSegmentation) -> Any:
    return packed.decode()


def pack_crops(batches: list) -> list[dict]:
    return [{"data": b.data, "keys": b.keys, "channel_names": tuple(b.channel_names), "mask": b.mask,
             "scale": b.scale, "out_size": b.out_size} for b in batches]


def unpack_crops(items: list[dict]) -> list:
    from ..crops import CropBatch

    return [CropBatch(**item) for item in items]


# -- files ---------------------------------------------------------------------------------------------------


def site_file(output: str | Path, key: tuple[str, str, int]) -> Path:
    plate, well, site = key
    return Path(output) / SITES_DIR / f"plate={safe_name(plate)}" / f"{safe_name(well)}_s{int(site)}.parquet"


def features_file(output: str | Path, feature_set: str, key: tuple[str, str, int]) -> Path:
    plate, well, site = key
    return (Path(output) / FEATURES_DIR / safe_name(feature_set) / f"plate={safe_name(plate)}"
            / f"{safe_name(well)}_s{int(site)}.parquet")


def inflight_file(output: str | Path, stage: str, key: tuple[str, str, int]) -> Path:
    plate, well, site = key
    return Path(output) / INFLIGHT_DIR / stage / safe_name(plate) / f"{safe_name(well)}_s{int(site)}"


def _atomic_parquet(df: pl.DataFrame, path: Path) -> None:
    write_parquet_atomic(df, path)


def _ipc(df: pl.DataFrame | None) -> bytes | None:
    if df is None:
        return None
    buf = io.BytesIO()
    df.write_ipc(buf, compression="zstd")
    return buf.getvalue()


def _from_ipc(blob: bytes | None) -> pl.DataFrame | None:
    return None if blob is None else pl.read_ipc(io.BytesIO(blob))


def write_outcome(output: str | Path, out: Any, *, kind: str, feature_set: str, features: Any = None) -> Path:
    """Write one site's :class:`~subcell_screen.engine.SiteOutcome` (site row + per-cell features).

    ``features`` is the run's featurizer (:class:`~subcell_screen.features.ClassicalSiteFeatures` or
    :class:`~subcell_screen.embed.SubcellSiteFeatures`): the per-cell file holds what the store keeps
    (``keep_cells``, ``store_dtype``), and the site row carries the site profile and what registering the
    feature set needs, so the driver never reads the cells. Returns the path of the site file; the driver
    reads it with :func:`read_outcome`.
    """
    seg = out.segmentation
    meta: dict = {}
    profile = out.site_profile
    cell_file = None
    if out.featurized and out.feat_error is None and features is not None:
        meta = features.describe(out.features)
        if profile is None:
            profile = features.site_profile(out.features)
        path = features_file(output, feature_set, out.key)
        frame = features.cell_frame(out.features) if features.keep_cells != "none" else None
        if frame is not None and frame.height:
            _atomic_parquet(frame, path)
            cell_file = str(path)
        else:
            path.unlink(missing_ok=True)
    plate, well, site = out.key
    have_seg = out.segmented and seg is not None
    if have_seg and not isinstance(seg, EncodedSegmentation):
        seg = pack_segmentation(seg)
    row = {
        "plate": [plate], "well": [well], "site": [int(site)], "channel_names": [list(out.channel_names)],
        "load_error": [out.load_error], "site_qc": [_ipc(out.site_qc)],
        "segmented": [out.segmented], "seg_error_type": [out.seg_error[0] if out.seg_error else None],
        "seg_error": [out.seg_error[1] if out.seg_error else None], "seg_seconds": [float(out.seg_seconds)],
        "method": [seg.method if have_seg else None], "pixel_size_um": [seg.pixel_size_um if have_seg else None],
        "nuclei": [seg.nuclei if have_seg else None], "cells": [seg.cells if have_seg else None],
        "height": [seg.shape[0] if have_seg else None], "width": [seg.shape[1] if have_seg else None],
        "cells_table": [_ipc(seg.cells_table) if have_seg else None], "readouts": [_ipc(out.readouts)],
        "featurized": [out.featurized], "feat_error_type": [out.feat_error[0] if out.feat_error else None],
        "feat_error": [out.feat_error[1] if out.feat_error else None], "feat_seconds": [float(out.feat_seconds)],
        "feature_kind": [kind], "feature_set": [feature_set], "feature_meta": [json.dumps(meta)],
        "cell_file": [cell_file], "n_cells": [profile.n_cells if profile is not None else 0],
        "profile_median": [profile.median if profile is not None else None],
        "profile_mean": [profile.mean if profile is not None else None],
        "profile_probabilities": [profile.probabilities if profile is not None else None],
    }
    schema = {"site": pl.Int32, "load_error": pl.String, "site_qc": pl.Binary, "seg_error_type": pl.String,
              "seg_error": pl.String, "method": pl.String, "pixel_size_um": pl.Float64, "nuclei": pl.Binary,
              "cells": pl.Binary, "height": pl.Int32, "width": pl.Int32, "cells_table": pl.Binary, "readouts": pl.Binary, "feat_error_type": pl.String,
              "feat_error": pl.String, "channel_names": pl.List(pl.String), "cell_file": pl.String,
              "n_cells": pl.Int64, "profile_median": pl.List(pl.Float64), "profile_mean": pl.List(pl.Float64),
              "profile_probabilities": pl.List(pl.Float64)}
    path = site_file(output, out.key)
    _atomic_parquet(pl.DataFrame(row, schema_overrides=schema), path)
    return path


def read_outcome(path: str | Path, *, output: str | Path | None = None, decode: bool = True) -> Any:
    """The :class:`~subcell_screen.engine.SiteOutcome` written by :func:`write_outcome`.

    With ``decode=False`` its segmentation is an :class:`EncodedSegmentation` (label images not decompressed).
    """
    from ..engine import SiteOutcome

    path = Path(path)
    output = Path(output) if output is not None else path.parents[2]
    r = pl.read_parquet(path).row(0, named=True)
    key = (r["plate"], r["well"], int(r["site"]))
    seg = None
    if r["nuclei"] is not None:
        seg = EncodedSegmentation(plate=key[0], well=key[1], site=key[2], nuclei=r["nuclei"], cells=r["cells"],
                                  shape=(int(r["height"]), int(r["width"])), cells_table=_from_ipc(r["cells_table"]),
                                  method=r["method"], pixel_size_um=r["pixel_size_um"])
        if decode:
            seg = seg.decode()
    profile = None
    if r["featurized"] and r["feat_error"] is None and r["profile_median"] is not None:
        from ..profiles import SiteProfile

        probs = r["profile_probabilities"]
        profile = SiteProfile(n_cells=int(r["n_cells"]), median=np.asarray(r["profile_median"], dtype=np.float64),
                              mean=np.asarray(r["profile_mean"], dtype=np.float64),
                              probabilities=None if probs is None else np.asarray(probs, dtype=np.float64))
    return SiteOutcome(
        key=key, channel_names=tuple(r["channel_names"] or ()), load_error=r["load_error"],
        site_qc=_from_ipc(r["site_qc"]), segmented=bool(r["segmented"]), segmentation=seg,
        readouts=_from_ipc(r["readouts"]),
        seg_error=(r["seg_error_type"], r["seg_error"]) if r["seg_error"] is not None else None,
        seg_seconds=float(r["seg_seconds"]), featurized=bool(r["featurized"]), features=None,
        feat_error=(r["feat_error_type"], r["feat_error"]) if r["feat_error"] is not None else None,
        feat_seconds=float(r["feat_seconds"]), site_profile=profile, cell_file=r["cell_file"],
        feature_meta=json.loads(r["feature_meta"]) if r["feature_meta"] else None)
