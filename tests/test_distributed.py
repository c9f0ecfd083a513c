"""The Ray engine (subcell_screen.distributed) against the local engine, on a local Ray instance."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from subcell_screen.config import RaySection, load_config
from subcell_screen.distributed import CRASH_ENV, RAY_INSTALL_HINT, RayEngineError, check_resources
from subcell_screen.pipeline import run
from subcell_screen.simulate import simulate_screen
from subcell_screen.store import ScreenStore

pytestmark = pytest.mark.ray

FAST_CLASSICAL = {"featurizer": "classical", "classical_families": ["shape", "intensity", "correlation"],
                  "classical_zernike_degree": -1}
TINY_SUBCELL = {"featurizer": "subcell", "crop_size": 128, "precision": "fp32", "batch_size": 16,
                "allow_fallback": False}
KEYS = ["plate", "well", "site", "cell_id"]
#: Tables the per-site stages write, compared in full (timestamps and run ids aside).
SITE_TABLES = {"cells": "*", "masks": "*", "segmentation_qc": "*", "site_qc": "*", "cell_readouts": "*",
               "sites": "* EXCLUDE (updated_at)", "feature_sets": "* EXCLUDE (created_at)",
               "site_stages": "* EXCLUDE (updated_at, run_id, seconds)",
               "site_profiles": "* EXCLUDE (median, mean, probabilities)",
               "cell_files": "* EXCLUDE (updated_at, file), file IS NOT NULL AS stored"}


def _config(sim, path: Path, *, embedding: dict, ray: dict | None = None):
    cfg = load_config(sim.config)
    return cfg.model_copy(update={"screen": cfg.screen.model_copy(update={"path": path}),
                                  "embedding": cfg.embedding.model_copy(update=embedding),
                                  "ray": cfg.ray.model_copy(update=ray or {})})


def _tables(path: Path) -> dict[str, pl.DataFrame]:
    with ScreenStore.open(path, read_only=True) as store:
        out = {t: store.sql(f"SELECT {cols} FROM {t} ORDER BY ALL") for t, cols in SITE_TABLES.items()}
        fs = store.sql("SELECT feature_set FROM feature_sets")["feature_set"].to_list()
        assert len(fs) == 1
        out["features"] = store.read_cell_features(fs[0]).sort(KEYS)
        prof = store.sql("SELECT plate, well, site, median, mean, probabilities FROM site_profiles ORDER BY ALL")
        out["site_profile_arrays"] = {c: np.array(prof[c].to_list(), dtype=np.float64)
                                      for c in ("median", "mean") if prof.height}
        from subcell_screen.profiles import well_profiles_from_store

        out["well_profiles"] = well_profiles_from_store(store, feature_set=fs[0], metadata=False).sort(
            "Metadata_Plate", "Metadata_Well")
    return out


def _assert_same_tables(a: dict, b: dict, *, exact_features: bool = True) -> None:
    for name in SITE_TABLES:
        assert a[name].height > 0, name
        assert a[name].equals(b[name]), f"table {name} differs between the engines"
    fa, fb = a["features"], b["features"]
    assert fa.height == fb.height > 0
    assert fa.select(KEYS).equals(fb.select(KEYS))
    for col in [c for c in fa.columns if c not in KEYS]:
        x, y = np.stack(fa[col].to_numpy()), np.stack(fb[col].to_numpy())
        if exact_features:
            np.testing.assert_array_equal(x, y, err_msg=col)
        else:  # torch uses 1 thread in a Ray worker and all cores here: last-bit differences in small GEMMs
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=col)
    # the site profiles computed on the workers, and the well profiles built from them on the driver
    for col, x in a["site_profile_arrays"].items():
        y = b["site_profile_arrays"][col]
        assert x.shape == y.shape and x.shape[0] > 0
        if exact_features:
            np.testing.assert_array_equal(x, y, err_msg=col)
        else:
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=col)
    wa, wb = a["well_profiles"], b["well_profiles"]
    assert wa.height == wb.height > 0 and wa.columns == wb.columns
    if exact_features:
        assert wa.equals(wb)


@pytest.fixture(scope="module")
def ray_local(ray_start_env):
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # num_gpus=0: a CPU-only cluster even on a GPU machine (the GPU path is in test_distributed_gpu.py);
    # ray_start_env keeps Ray's own processes off the network (see tests/conftest.py)
    with ray_start_env():
        ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, object_store_memory=500 * 1024 ** 2,
                 logging_level=logging.WARNING)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """12 sites (4 wells x 3 sites) of a simulated HPA screen, illumination correction on (float pixels)."""
    return simulate_screen(tmp_path_factory.mktemp("sim"), style="hpa", preset="smoke", sites_per_well=3, seed=2)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from subcell_screen.embed.testing import make_tiny_checkpoint

    cache = tmp_path_factory.mktemp("models")
    make_tiny_checkpoint(cache, "rybg/MAE-CellS-ProtS-Pool", width=32, depth=1, heads=2)
    return cache


@pytest.fixture(scope="module")
def local_classical(sim, tmp_path_factory):
    path = tmp_path_factory.mktemp("local") / "screen"
    run(_config(sim, path, embedding=FAST_CLASSICAL), stages=("segment", "embed"), progress=False)
    return _tables(path)


@pytest.fixture(scope="module")
def ray_classical(sim, ray_local, tmp_path_factory):
    path = tmp_path_factory.mktemp("ray") / "screen"
    cfg = _config(sim, path, embedding=FAST_CLASSICAL)
    result = run(cfg, stages=("segment", "embed"), progress=False, engine="ray")
    return cfg, result


def test_classical_same_tables_and_features_as_local(local_classical, ray_classical):
    cfg, result = ray_classical
    seg, emb = result.stages
    assert (seg.stage, seg.ok, seg.failed, seg.skipped) == ("segment", 12, 0, 0)
    assert (emb.stage, emb.ok, emb.failed) == ("embed", 12, 0)
    assert seg.cells == emb.cells == local_classical["cells"].height == local_classical["features"].height
    # load, segmentation and features+write (two CPU tasks, fused) are separate Ray Data operators
    assert any(m.startswith("ray: 12 sites") and "operators load_sites | SegmentSites | "
               "classical_features->write_sites;" in m for m in seg.messages), seg.messages
    _assert_same_tables(local_classical, _tables(cfg.screen.path))


def test_outputs_moved_into_the_store_and_compacted(ray_classical):
    """Workers write one file per site; the driver moves the per-cell files into the store without reading
    them, and a Ray task compacts each finished plate into one file."""
    cfg, result = ray_classical
    out = Path(cfg.screen.path) / "ray_output"
    with ScreenStore.open(cfg.screen.path, read_only=True) as store:
        keys = store.sql("SELECT plate, well, site FROM sites ORDER BY ALL").rows()
        storage = store.cell_storage(result.plan.feature_set)
        files = store.cell_feature_files(result.plan.feature_set)
    expected = {f"plate={p}/{w}_s{s}.parquet" for p, w, s in keys}
    assert {str(p.relative_to(out / "sites")) for p in (out / "sites").rglob("*.parquet")} == expected
    fs_dir = out / "features" / result.plan.feature_set
    assert not list(fs_dir.rglob("*.parquet"))  # moved, not copied: no second copy of the cells
    assert not list(out.rglob("*.tmp")) and not list((out / "_inflight").rglob("*_s*"))
    assert storage["files"].to_list() == [1] and len(files) == 1 and files[0].name.startswith("cells-")
    cells = pl.read_parquet(files[0])
    assert cells.height == result.stages[0].cells and cells.select(KEYS).is_unique().all()


def test_driver_reads_no_cells(sim, tmp_path):
    """A worker's site row carries the site profile: the driver's outcome holds no features, and reading it
    does not open the per-cell file."""
    from subcell_screen.distributed._outputs import read_outcome, write_outcome
    from subcell_screen.engine import SiteProcessor, mapped_channels, site_index
    from subcell_screen.io import iter_sites
    from subcell_screen.layouts import read_plates_table

    cfg = _config(sim, tmp_path / "screen", embedding=FAST_CLASSICAL)
    design = read_plates_table(cfg.plates.table, layouts_dir=cfg.plates.layouts_dir)
    index = mapped_channels(site_index(cfg, design), cfg.channel_map())
    proc = SiteProcessor(cfg, featurizer="classical", feature_set="classical")
    record, site = next(iter(iter_sites(list(index)[:1], progress=False)))
    outcome = proc.process(site, segment=True, featurize=True)
    path = write_outcome(tmp_path / "out", outcome, kind="classical", feature_set="classical",
                         features=proc.features)
    cell_file = Path(read_outcome(path).cell_file)
    cell_file.unlink()  # the driver must not need it to build the outcome
    got = read_outcome(path)
    assert got.features is None and got.n_cells == outcome.n_cells > 0
    np.testing.assert_array_equal(got.site_profile.median, outcome.site_profile.median)
    np.testing.assert_array_equal(got.site_profile.mean, outcome.site_profile.mean)


def test_rerun_skips_finished_sites(ray_classical):
    cfg, _ = ray_classical
    again = run(cfg, stages=("segment", "embed"), progress=False, engine="ray")
    assert [(s.ok, s.skipped) for s in again.stages] == [(0, 12), (0, 12)]


def test_worker_killed_mid_run_loses_and_duplicates_no_cell(sim, ray_local, local_classical, tmp_path, monkeypatch):
    # the segmentation actor dies on B03/s2 and a feature task's worker dies on B04/s1, once each
    plate = "SIMHPA001"
    hooks = [f"segment:{plate}/B03/2:{tmp_path / 'seg.marker'}", f"features:{plate}/B04/1:{tmp_path / 'feat.marker'}"]
    path = tmp_path / "screen"
    cfg = _config(sim, path, embedding=FAST_CLASSICAL)
    monkeypatch.setenv(CRASH_ENV, hooks[0])
    # first run: segment only, with the actor crash; second: embed only, with the task crash
    seg = run(cfg, stages=("segment",), progress=False, engine="ray").stages[0]
    monkeypatch.setenv(CRASH_ENV, hooks[1])
    emb = run(cfg, stages=("embed",), progress=False, engine="ray").stages[0]
    assert (tmp_path / "seg.marker").exists() and (tmp_path / "feat.marker").exists()  # the workers did die
    assert (seg.ok, seg.failed, emb.ok, emb.failed) == (12, 0, 12, 0)
    got = _tables(path)
    assert got["cells"].select(KEYS).is_unique().all() and got["features"].select(KEYS).is_unique().all()
    _assert_same_tables(local_classical, got)


@pytest.fixture(scope="module")
def local_subcell(sim, tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("local_subcell") / "screen"
    run(_config(sim, path, embedding={**TINY_SUBCELL, "cache_dir": tiny_model}), stages=("segment", "embed"),
        progress=False)
    return _tables(path)


@pytest.mark.parametrize("crop_tasks", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["crops-in-actor", "crop-tasks"])
def test_subcell_same_embeddings_as_local(sim, ray_local, tiny_model, local_subcell, tmp_path, monkeypatch,
                                          crop_tasks):
    """CPU actors crop themselves; with a GPU, crops are cut by CPU tasks and shipped (here forced on CPU)."""
    from subcell_screen.distributed import _engine

    monkeypatch.setattr(_engine, "_CROP_TASKS_ON_CPU", crop_tasks)
    emb = {**TINY_SUBCELL, "cache_dir": tiny_model}
    # an embed actor and a segment actor of half a CPU each leave one CPU for the tasks
    cfg = _config(sim, tmp_path / "ray", embedding=emb, ray={"embed_batch_size": 16, "cpus_per_actor": 0.5})
    result = run(cfg, stages=("segment", "embed"), progress=False, engine="ray")
    assert result.plan.featurizer == "subcell:rybg/MAE-CellS-ProtS-Pool"
    assert [(s.ok, s.failed) for s in result.stages] == [(12, 0), (12, 0)]
    # every stage its own Ray Data operator (nothing fused into the actors)
    shape = "load_sites | SegmentSites | " + ("crop_sites | " if crop_tasks else "") + "EmbedSites | write_sites"
    assert any(shape in m for m in result.stages[1].messages), result.stages[1].messages
    a, b = local_subcell, _tables(tmp_path / "ray")
    assert a["features"].columns == b["features"].columns == [*KEYS, "features", "probabilities"]
    _assert_same_tables(a, b, exact_features=False)


def test_gpu_request_on_cluster_without_gpus_fails_fast(sim, ray_local, tiny_model, tmp_path):
    cfg = _config(sim, tmp_path / "screen", embedding={**TINY_SUBCELL, "cache_dir": tiny_model},
                  ray={"gpus_per_actor": 1})
    with pytest.raises(RayEngineError, match=r"\[ray\]\.gpus_per_actor = 1 asks for GPUs.*has none"):
        run(cfg, stages=("segment", "embed"), progress=False, engine="ray")
    with ScreenStore.open(tmp_path / "screen", read_only=True) as store:
        assert store.sql("SELECT count(*) n FROM site_stages WHERE stage <> 'load'")["n"][0] == 0


def test_session_keeps_an_instance_it_did_not_start(ray_local):
    from subcell_screen.distributed import ray_session

    with ray_session(RaySection()) as info:
        assert not info.started and info.resources["CPU"] == 2
    assert ray_local.is_initialized()


def test_local_ray_stays_on_loopback(ray_local):
    """Issue 17 item 13: the test's Ray processes never probe 8.8.8.8 or the cloud metadata service.

    Measured with ``strace -f -e trace=connect,sendto`` over this module: only 127.0.0.1 (and its IPv6-mapped
    form) with ``ray_start_env``; without it, a UDP route probe to 8.8.8.8 (driver and runtime-env agent), an
    HTTP request to 169.254.169.254 and a DNS query for metadata.google.internal (dashboard), and every Ray
    service on the machine's network address.
    """
    node = ray_local._private.worker._global_node
    assert node.node_ip_address == "127.0.0.1"  # not the address that routes to 8.8.8.8
    dashboards = node.all_processes.get("dashboard", [])
    assert dashboards, sorted(node.all_processes)
    for info in dashboards:  # its usage-stats module reads ~/ray_bootstrap_config.yaml instead of the cloud
        env = dict(kv.split(b"=", 1) for kv in Path(f"/proc/{info.process.pid}/environ").read_bytes().split(b"\0")
                   if b"=" in kv)
        assert (Path(env[b"HOME"].decode()) / "ray_bootstrap_config.yaml").is_file()
        assert env[b"RAY_USAGE_STATS_ENABLED"] == b"0"


def test_resource_checks():
    two_cpus = {"CPU": 2.0}
    sec = RaySection(gpus_per_actor=1)
    with pytest.raises(RayEngineError, match=r"gpus_per_actor = 1 asks for GPUs, but the Ray cluster \(x\) has none"):
        check_resources(two_cpus, sec, segment_gpu=False, embed_gpu=True, segment_actors=True, embed_actors=True,
                        where="x")
    with pytest.raises(RayEngineError, match=r"need 3 GPUs.*has 2"):
        check_resources({"CPU": 8.0, "GPU": 2.0}, sec.model_copy(update={"embed_actors": 2}), segment_gpu=True,
                        embed_gpu=True, segment_actors=True, embed_actors=True)
    check_resources({"CPU": 8.0, "GPU": 2.0}, sec, segment_gpu=True, embed_gpu=True, segment_actors=True,
                    embed_actors=True)
    # classical stages never take GPUs: nothing requested, nothing to fail
    check_resources(two_cpus, sec, segment_gpu=False, embed_gpu=False, segment_actors=True, embed_actors=False)
    # two 1-CPU actors on 2 CPUs would starve the load tasks
    with pytest.raises(RayEngineError, match=r"reserve 2 of the Ray cluster's 2 CPUs.*\[ray\]\.cpus_per_actor"):
        check_resources(two_cpus, RaySection(), segment_gpu=False, embed_gpu=False, segment_actors=True,
                        embed_actors=True)
    check_resources(two_cpus, RaySection(cpus_per_actor=0.5), segment_gpu=False, embed_gpu=False,
                    segment_actors=True, embed_actors=True)
    with pytest.raises(RayEngineError, match=r"more than any node"):
        check_resources({"CPU": 16.0, "GPU": 4.0}, RaySection(gpus_per_actor=2), segment_gpu=True, embed_gpu=False,
                        segment_actors=True, embed_actors=False, node_max={"CPU": 8.0, "GPU": 1.0})


def test_without_ray_the_error_says_how_to_install(sim, tmp_path, monkeypatch, capsys):
    from subcell_screen.cli import main

    for mod in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    cfg = _config(sim, tmp_path / "screen", embedding=FAST_CLASSICAL)
    with pytest.raises(RayEngineError, match=re.escape(RAY_INSTALL_HINT)):
        run(cfg, stages=("segment",), progress=False, engine="ray")
    toml = sim.config.read_text().replace('path = "screen"', f'path = "{tmp_path / "cli"}"')
    cfg_path = sim.config.with_name("no_ray.toml")
    cfg_path.write_text(toml)
    assert main(["run", str(cfg_path), "--engine", "ray", "--stages", "segment", "--no-progress"]) == 2
    assert RAY_INSTALL_HINT in capsys.readouterr().err


def test_core_imports_do_not_import_ray():
    code = ("import sys, subcell_screen, subcell_screen.pipeline, subcell_screen.distributed, subcell_screen.cli;"
            "from subcell_screen.cli import _run;"
            "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.slow
def test_site_that_keeps_killing_workers_is_failed_not_retried_forever(sim, ray_local, local_classical, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setenv(CRASH_ENV, "segment:SIMHPA001/B02/3")  # no marker: the worker dies on every attempt
    cfg = _config(sim, tmp_path / "screen", embedding=FAST_CLASSICAL, ray={"max_retries": 1})
    seg, emb = run(cfg, stages=("segment", "embed"), progress=False, engine="ray").stages
    assert (seg.ok, seg.failed, emb.ok) == (11, 1, 11)
    assert any("B02 s3: segmentation: 2 Ray worker process(es) died" in m for m in seg.messages), seg.messages
    got = _tables(tmp_path / "screen")
    keep = pl.col("plate").is_not_null() & ~((pl.col("well") == "B02") & (pl.col("site") == 3))
    for name in ("cells", "features"):
        assert got[name].sort(KEYS).equals(local_classical[name].filter(keep).sort(KEYS)), name


@pytest.mark.slow
def test_force_rerun_replaces_without_duplicates(ray_classical, local_classical):
    cfg, _ = ray_classical
    again = run(cfg, stages=("segment", "embed"), force=True, progress=False, engine="ray")
    assert [(s.ok, s.skipped) for s in again.stages] == [(12, 0), (12, 0)]
    _assert_same_tables(local_classical, _tables(cfg.screen.path))


def test_batched_driver_ingest_writes_what_the_local_writer_writes(sim, tmp_path):
    """The writer many sites per table write (as the Ray driver uses it) against one site per write (as sites
    finish locally), including a site without cells, a failed featurization and a second ingest of the same
    sites (replace, not append)."""
    from dataclasses import replace

    from subcell_screen.engine import SiteProcessor, SiteWriter, plate_illumination, select_sites
    from subcell_screen.io import iter_sites
    from subcell_screen.pipeline import _load_design, plan_run

    cfg = _config(sim, tmp_path / "a", embedding=FAST_CLASSICAL)
    plan = plan_run(cfg, stages=("segment", "embed"))
    outcomes: list = []
    tallies = {}
    for name in ("per_site", "batched"):
        c = cfg.model_copy(update={"screen": cfg.screen.model_copy(update={"path": tmp_path / name})})
        with ScreenStore.create(c.screen.path) as store:
            sel = select_sites(store, c, plan, _load_design(store, c), stages=("segment", "embed"), force=False)
            processor = SiteProcessor.from_plan(c, plan)
            if not outcomes:
                illum, _ = plate_illumination(store, sel.index, sel.index.plates(), force=False)
                for i, (record, site) in enumerate(iter_sites(sel.records, illumination=illum)):
                    if i == 2:  # a blank site: no cells
                        site = replace(site, data=np.zeros_like(site.data))
                    outcomes.append(processor.process(site, segment=True, featurize=True,
                                                      raw_dtype=sel.raw_dtype(record.key)))
                outcomes[5] = replace(outcomes[5], features=None, feat_error=("ValueError", "bad crop"))
                assert outcomes[2].segmentation.n_cells == 0
            if name == "per_site":
                with SiteWriter(store, processor=processor, selection=sel, run_id="r", batch_sites=1) as writer:
                    for o in outcomes:
                        writer.add(o)
                tallies[name] = writer.tally
            else:
                for _ in range(2):
                    with SiteWriter(store, processor=processor, selection=sel, run_id="r", batch_sites=5) as writer:
                        for o in outcomes:
                            writer.add(o)
                    tallies[name] = writer.tally
    a, b = _tables(tmp_path / "per_site"), _tables(tmp_path / "batched")
    _assert_same_tables(a, b)
    assert a["sites"].filter(pl.col("status") == "failed").height == 1
    for part in ("seg", "emb"):
        ta, tb = tallies["per_site"], tallies["batched"]
        assert {k: v for k, v in getattr(ta, part).items() if k != "seconds"} == \
               {k: v for k, v in getattr(tb, part).items() if k != "seconds"}
    assert tallies["batched"].emb["failed"] == 1 and tallies["batched"].seg["ok"] == 12
