"""Real-pixel plates end to end: Cell Painting plates cut from a real Opera Phenix site (``realplates.py``),
run with the shipped example config (``examples/cellpainting_jump_target1.toml``) as a new user would.

Each documented config path runs every stage and is checked for real outcomes: cell counts against
CellProfiler's segmentation of the same pixels, feature selection shrinking the profiles, the treatments
scored (replicates pooled across plates), what could not be computed named with its counts. The defects of
issue "Real plates end to end" each have a test here that failed before the fix (noted per test).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import realplates as rp

from subcell_screen.config import load_config
from subcell_screen.pipeline import PipelineError, run
from subcell_screen.store import ScreenStore

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

#: 12 wells in row B: 4 DMSO, two compounds x 4 (interleaved over the tiles so that no compound gets the
#: densest tiles).
CP12 = {f"B{c:02d}": pid for c, pid in zip(range(2, 14), ["DMSO", "BRD-K50691590", "BRD-K81418486"] * 4)}
WELL_TILE = {w: t for t, w in enumerate(CP12)}
FEATURE_SELECT = ["variance_threshold", "correlation_threshold", "drop_na_columns", "blocklist"]


def _plate(tmp, *, drop=(), **sections):
    images = tmp / "images"
    rp.write_phenix_plate(images, "BR00143976", WELL_TILE)
    rp.write_layout(tmp / "cp12.csv", CP12)
    rp.write_plates_table(tmp / "plates.csv", {"BR00143976": "cp12"})
    return rp.example_config(tmp, images=images, plates_table=tmp / "plates.csv", drop=drop, **sections)


@pytest.fixture(scope="module")
def cp12(tmp_path_factory):
    """The 12-well plate through every stage with the example's feature selection (+ blocklist)."""
    tmp = tmp_path_factory.mktemp("cp12")
    cfg = load_config(_plate(tmp, embedding=rp.FAST_FEATURES, profiles={"feature_select": FEATURE_SELECT}))
    result = run(cfg, progress=False)
    return cfg, result


def _stage(result, name):
    return next(s for s in result.stages if s.stage == name)


def test_every_stage_finishes_with_feature_selection(cp12):
    # before the fix: "Conversion Error: Cannot cast array of size 99 to array of size 302" in the profile stage
    cfg, result = cp12
    assert [s.stage for s in result.stages] == ["segment", "embed", "profile", "score", "map", "report"]
    assert _stage(result, "segment").ok == 12 and _stage(result, "segment").failed == 0
    assert _stage(result, "embed").ok == 12
    assert all(p.is_file() for p in result.reports)
    assert sorted(p.name for p in result.reports) == ["hit_report.html", "map_report.html", "qc_report.html"]
    with ScreenStore.open(cfg.screen.path, read_only=True) as store:
        sets = store.sql("SELECT * FROM profile_sets ORDER BY profile_set")
        width = dict(zip(sets["profile_set"], sets["n_features"]))
        # profile sets of different widths side by side; selection shrinks the set
        assert set(width) == {"raw", "normalized", "feature_selected", "consensus"}
        assert width["raw"] == width["normalized"] > width["feature_selected"] == width["consensus"] > 10
        assert sets.filter(pl.col("final"))["profile_set"].to_list() == ["feature_selected"]
        for name, n in width.items():
            lengths = store.sql("SELECT DISTINCT len(features) AS n FROM profiles WHERE profile_set = ?", [name])
            assert lengths["n"].to_list() == [n], name
        # consensus: one row per perturbation, medians over its 4 wells
        cons = store.sql("SELECT perturbation_id, n_wells FROM profiles WHERE profile_set = 'consensus' "
                         "ORDER BY perturbation_id")
        assert cons.rows() == [("BRD-K50691590", 4), ("BRD-K81418486", 4), ("DMSO", 4)]
        msgs = store.sql("SELECT message FROM (SELECT unnest(json_extract_string(summary, '$.stages[*].messages[*]'))"
                         " AS message FROM runs)")["message"].to_list()
        kept = [m for m in msgs if m.startswith("feature selection kept")]
        assert kept and f"of {width['raw']} features" in kept[0]


def test_cell_counts_near_cellprofiler(cp12):
    # nuclei not cut by the tile edges, per tile, against CellProfiler's nuclei of the same pixels
    cfg, _ = cp12
    ref = rp.cellprofiler_nuclei()

    def inner(labels):
        edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        return len(np.setdiff1d(np.unique(labels), np.concatenate([edge, [0]])))

    ours, theirs = [], []
    with ScreenStore.open(cfg.screen.path, read_only=True) as store:
        for well, tile in WELL_TILE.items():
            nuclei, _ = store.read_masks("BR00143976", well, 1)
            assert nuclei.shape == rp.TILE
            ours.append(inner(nuclei))
            theirs.append(inner(ref[rp.tile_slices(tile)]))
        n_cells = store.sql("SELECT count(*) AS n FROM cells")["n"][0]
    assert sum(theirs) == 34
    assert 0.85 <= sum(ours) / sum(theirs) <= 1.2, (ours, theirs)
    assert max(abs(a - b) for a, b in zip(ours, theirs)) <= 2, (ours, theirs)
    assert n_cells == sum(s.cells for s in cp12[1].stages if s.stage == "segment") > 40


def test_treatments_scored_and_reported(cp12):
    cfg, result = cp12
    with ScreenStore.open(cfg.screen.path, read_only=True) as store:
        cov = store.sql("SELECT * FROM scoring_coverage ORDER BY perturbation_id")
        assert cov.select("perturbation_id", "n_wells", "scored").rows() == [
            ("BRD-K50691590", 4, True), ("BRD-K81418486", 4, True), ("DMSO", 4, False)]
        scores = store.sql("SELECT perturbation_id, perturbation_name, n_wells FROM scores ORDER BY perturbation_id")
        assert scores.rows() == [("BRD-K50691590", "bortezomib", 4), ("BRD-K81418486", "vorinostat", 4)]
    html = (cfg.report.out / "hit_report.html").read_text()
    assert 'data-query="scoring_coverage"' in html and "negative control: the reference" in html


def test_pixel_size_shown_with_its_source(cp12):
    cfg, result = cp12
    assert "plate BR00143976: pixel size 0.598 µm/px (config)" in _stage(result, "segment").messages
    with ScreenStore.open(cfg.screen.path, read_only=True) as store:
        px = store.sql("SELECT DISTINCT pixel_size_um, pixel_size_source FROM sites").rows()
    assert px == [(0.598, "config")]
    html = (cfg.report.out / "qc_report.html").read_text()
    assert '<td data-col="pixel_size_source">config</td>' in html


def test_brightfield_never_featurized_or_shown(cp12, tmp_path):
    # before the fix overlays and galleries painted Brightfield (green by file order) and dropped Mito and RNA
    from subcell_screen.report import build_reports
    from subcell_screen.report._images import channel_colors

    cfg, _ = cp12
    with ScreenStore.open(cfg.screen.path, read_only=True) as store:
        ch = store.sql("SELECT channel, used, color FROM channels ORDER BY position")
        assert ch.rows() == [("Brightfield", False, None), ("ER", True, "green"), ("AGP", True, "red"),
                             ("Mito", True, "magenta"), ("DNA", True, "blue"), ("RNA", True, "yellow")]
        colors = channel_colors(store)
        assert list(colors) == ["ER", "AGP", "Mito", "DNA", "RNA"] and colors["DNA"] == (0.0, 0.35, 1.0)
        names = store.feature_set(store.sql("SELECT feature_set FROM feature_sets")["feature_set"][0])["feature_names"]
        assert not [n for n in names if "Brightfield" in n]
        assert {c for c in ("DNA", "ER", "RNA", "AGP", "Mito") if any(n.endswith("_" + c) or f"_{c}_" in n
                                                                       for n in names)} == {"DNA", "ER", "RNA",
                                                                                            "AGP", "Mito"}
        paths = [json.loads(c) for c in store.sql("SELECT channels FROM sites")["channels"]]
        assert all("Brightfield" not in p for p in paths)
        # the reports never read the brightfield files: remove them and rebuild
        for f in (cfg.images.source).rglob("*-ch1sk1fk1fl1.tiff"):
            f.unlink()
        qc, hits = build_reports(store, tmp_path)
    for page in (qc, hits):
        html = page.read_text()
        assert "not readable" not in html and "Overlay skipped" not in html
    assert (tmp_path / "qc_report_segmentation_overlays.png").is_file()
    assert (tmp_path / "hit_report_cell_gallery.png").is_file()


def test_bogus_tiff_pixel_size_is_never_used(tmp_path, capsys):
    # before the fix the 64.5 µm/px of the Phenix TIFF tags was used silently (904 "cells" instead of ~42)
    from subcell_screen.cli import main

    cfg = load_config(_plate(tmp_path, drop=[("images", "pixel_size_um")], embedding=rp.FAST_FEATURES))
    with pytest.raises(PipelineError) as err:
        run(cfg, progress=False)
    msg = str(err.value)
    assert "plate BR00143976" in msg and "64.5 µm/px" in msg and "[images].pixel_size_um" in msg
    assert "r02c02f01p01-ch" in msg  # the file whose tags were read
    with ScreenStore.open(cfg.screen.path, read_only=True) as store:
        assert store.sql("SELECT count(*) AS n FROM masks")["n"][0] == 0  # nothing was segmented
    assert main(["sites", str(cfg.images.source)]) == 0
    out = capsys.readouterr().out
    assert "pixel size unknown µm/px" in out and "pixel size: NOT SET" in out and "64.5 µm/px" in out
    assert "set [images].pixel_size_um" in out
    # the plausibility range applies to the config too
    text = (tmp_path / "run.toml").read_text().replace("[images]\n", "[images]\npixel_size_um = 6.45\n", 1)
    (tmp_path / "bad.toml").write_text(text)
    from subcell_screen import ConfigError

    with pytest.raises(ConfigError, match=r"\[images\]\.pixel_size_um.*outside the plausible 0.05-5"):
        load_config(tmp_path / "bad.toml")


def test_plate_with_one_imaged_well_goes_on_to_the_report(tmp_path):
    # before the fix: "variance_threshold: no feature has variance > 1e-06" ended the run in the profile stage
    images = tmp_path / "images"
    rp.write_phenix_plate(images, "P1", {"B02": 3})
    rp.write_layout(tmp_path / "cp12.csv", CP12)
    rp.write_plates_table(tmp_path / "plates.csv", {"P1": "cp12"})
    cfg = load_config(rp.example_config(tmp_path, images=images, plates_table=tmp_path / "plates.csv",
                                        embedding=rp.FAST_FEATURES))
    result = run(cfg, progress=False)
    assert [s.stage for s in result.stages] == ["segment", "embed", "profile", "score", "map", "report"]
    prof = _stage(result, "profile").messages
    assert any("plate P1: 1 negative-control well(s) with profiles among its 1 well(s)" in m for m in prof)
    score = " ".join(_stage(result, "score").messages)
    assert "scoring skipped: no normalized profiles" in score
    with ScreenStore.open(cfg.screen.path, read_only=True) as store:
        assert store.sql("SELECT profile_set, n_rows FROM profile_sets ORDER BY ALL").rows() == [
            ("consensus", 1), ("raw", 1)]
    html = (cfg.report.out / "hit_report.html").read_text()
    assert "scoring skipped: no normalized profiles" in html


def test_one_well_per_plate_replicate_plates_and_poscons(tmp_path):
    # JUMP-Target style: one well per perturbation per plate; replicates are the replicate plates
    lay = {"A01": "DMSO", "A02": "BRD-K50691590", "A03": "BRD-K81418486", "A04": "RGFP966", "A05": "DMSO",
           "A06": "BRD-K60230970"}
    images = tmp_path / "images"
    rp.write_phenix_plate(images, "R1", {w: i for i, w in enumerate(lay)})
    rp.write_phenix_plate(images, "R2", {w: i + 6 for i, w in enumerate(lay)})
    rp.write_layout(tmp_path / "lay.csv", lay)
    rp.write_plates_table(tmp_path / "plates.csv", {"R1": "lay", "R2": "lay"})
    cfg = load_config(rp.example_config(tmp_path, images=images, plates_table=tmp_path / "plates.csv",
                                        embedding=rp.FAST_FEATURES))
    result = run(cfg, progress=False)
    assert _stage(result, "segment").ok == 12
    assert "4 perturbation(s) scored against 4 negative-control wells" in _stage(result, "score").messages
    with ScreenStore.open(cfg.screen.path, read_only=True) as store:
        scores = store.sql("SELECT perturbation_id, control_type, n_wells FROM scores ORDER BY perturbation_id")
        cov = store.sql("SELECT perturbation_id, n_plates FROM scoring_coverage WHERE scored ORDER BY ALL")
    assert scores.rows() == [("BRD-K50691590", None, 2), ("BRD-K60230970", None, 2), ("BRD-K81418486", None, 2),
                             ("RGFP966", "poscon", 2)]
    assert set(cov["n_plates"]) == {2}


def test_subcell_embeddings_on_real_pixels(tmp_path):
    # the SubCell path (tiny random weights in the public layout) on the real plate: 3 ybg passes per cell
    from subcell_screen.embed.testing import make_tiny_checkpoint

    cache = tmp_path / "models"
    make_tiny_checkpoint(cache, "ybg/MAE-CellS-ProtS-Pool", width=32, depth=1, heads=2)
    emb = {"featurizer": "subcell", "cache_dir": str(cache), "crop_size": 128, "precision": "fp32",
           "batch_size": 32, "offline": True}
    cfg = load_config(_plate(tmp_path, embedding=emb, profiles={"feature_select": FEATURE_SELECT}))
    result = run(cfg, progress=False)
    assert result.plan.featurizer == "subcell:ybg/MAE-CellS-ProtS-Pool"
    with ScreenStore.open(cfg.screen.path, read_only=True) as store:
        fs = store.feature_set(result.plan.feature_set)
        cells = store.read_cell_features(result.plan.feature_set)
        n_cells = store.sql("SELECT count(*) AS n FROM cells")["n"][0]
        sets = dict(store.sql("SELECT profile_set, n_features FROM profile_sets").rows())
    assert fs["kind"] == "subcell" and fs["feature_names"][0].startswith("Mito_")
    # provenance: the precision chosen and why, and weights without a published hash marked unverified
    params = json.loads(fs["parameters"]) if isinstance(fs["parameters"], str) else fs["parameters"]
    assert params["precision"] == "fp32" and params["precision_choice"]["requested"] == "fp32"
    weights = result.plan.models["subcell"]["weights"]
    assert weights["verified"] is False and weights["unverified"]
    assert any(line.startswith("weights: UNVERIFIED") for line in result.plan.lines())
    with ScreenStore.open(cfg.screen.path, read_only=True) as store:
        run_row = store.sql("SELECT models, summary FROM runs").row(0, named=True)
    assert '"verified": false' in run_row["models"] and "UNVERIFIED" in run_row["summary"]
    assert cells.height == n_cells > 40
    assert sets["raw"] == fs["n_features"] and sets["feature_selected"] < sets["raw"]


def test_profile_sets_of_any_width_live_side_by_side(tmp_path):
    # the store owns the width: SubCell Cell Painting (4608), HPA (1536) and selected sets in one table
    rng = np.random.default_rng(0)
    with ScreenStore.create(tmp_path / "s") as store:
        for name, d in (("raw", 4608), ("normalized", 1536), ("feature_selected", 343)):
            wide = pl.DataFrame({"Metadata_Plate": ["P"] * 3, "Metadata_Well": ["A01", "A02", "A03"],
                                 "Metadata_Count_Cells": [5, 6, 7]}).hstack(
                pl.DataFrame(rng.normal(size=(3, d)), schema=[f"f{i}" for i in range(d)]))
            store.write_profiles(wide, profile_set=name, feature_set="subcell", final=name == "feature_selected")
        # replacing a set with another width leaves the others alone
        store.write_profiles(wide.select(wide.columns[:13]), profile_set="normalized", feature_set="subcell")
        meta = store.read_profiles(profile_set="raw").select(pl.selectors.starts_with("Metadata_")).width
        assert store.read_profiles(profile_set="raw").width == meta + 4608
        assert store.read_profiles(profile_set="normalized").width == meta + 10
        assert store.read_profiles().width == meta + 343  # the final set


def test_every_segmentation_key_applies_to_the_run(tmp_path):
    # [segmentation].min_nucleus_area_um2 was accepted and ignored by `subcell-screen run` (only
    # segment.segmenter_from_config applied it): the run now builds its segmenter from the section
    counts = {}
    for name, area in (("default", None), ("large_nuclei_only", 120.0)):
        images = tmp_path / name / "images"
        rp.write_phenix_plate(images, "P1", {"B02": 0, "B03": 1, "B04": 2, "B05": 3})
        rp.write_layout(tmp_path / name / "lay.csv", {"B02": "DMSO", "B03": "DMSO", "B04": "BRD-K50691590",
                                                     "B05": "BRD-K50691590"})
        rp.write_plates_table(tmp_path / name / "plates.csv", {"P1": "lay"})
        seg = {"method": "classical"} if area is None else {"method": "classical", "min_nucleus_area_um2": area}
        cfg = load_config(rp.example_config(tmp_path / name, images=images, plates_table=tmp_path / name /
                                            "plates.csv", segmentation=seg, embedding=rp.FAST_FEATURES))
        run(cfg, stages=("segment",), progress=False)
        with ScreenStore.open(cfg.screen.path, read_only=True) as store:
            counts[name] = store.sql("SELECT count(*) AS n, min(nucleus_area_um2) AS a FROM cells").row(0)
    (n0, a0), (n1, a1) = counts["default"], counts["large_nuclei_only"]
    assert n0 > n1 > 0 and a0 < 120.0 <= a1, counts


_RUNNER = """
import sys
from subcell_screen.cli import main
sys.exit(main(["-v", "run", sys.argv[1], "--stages", "segment,embed", "--no-progress"]))
"""


def _children(pid: int) -> set[int]:
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads child processes from /proc (Linux)")
def test_kill_9_leaves_no_worker_processes_and_the_run_is_marked_interrupted(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    cfg_path = _plate(tmp_path, embedding=rp.FAST_FEATURES)
    cfg_path.write_text("workers = 2\n" + cfg_path.read_text())
    proc = subprocess.Popen([sys.executable, "-c", _RUNNER, str(cfg_path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    workers: set[int] = set()
    for line in proc.stderr:
        workers |= _children(proc.pid)
        if "featurized " in line:
            break
    workers = {w for w in workers | _children(proc.pid) if _alive(w)}
    assert len(workers) >= 2, workers  # the process pool (and its resource tracker) are running
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.2)
    assert not [w for w in workers if _alive(w)], "worker processes outlived the killed run"
    with ScreenStore.open(tmp_path / "screen") as store:  # opening for writing finds the dead run
        status, error = store.sql("SELECT status, error FROM runs").row(0)
    assert status == "interrupted" and "stopped without recording its end" in error
