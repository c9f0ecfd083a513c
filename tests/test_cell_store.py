"""The compacted cell store, site profiles and per-cell storage policies (issue: scale past one machine).

A real run on a simulated screen (2 plates x 4 wells x 3 sites, classical features) is the reference: the
pipeline's well profiles from site profiles must equal the well profiles computed from every stored cell
(the pre-compaction path), compaction must leave one file per plate with the same rows, and every keep
policy must give the same well profiles.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from subcell_screen.config import load_config
from subcell_screen.pipeline import run
from subcell_screen.profiles import aggregate_array, read_site_arrays, site_profiles, well_profiles_from_store
from subcell_screen.simulate import simulate_screen
from subcell_screen.store import ScreenStore, compact_cell_files, sample_order

FAST_CLASSICAL = {"featurizer": "classical", "classical_families": ["shape", "intensity", "correlation"],
                  "classical_zernike_degree": -1}
KEYS = ["plate", "well", "site", "cell_id"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulate_screen(tmp_path_factory.mktemp("sim"), style="hpa", preset="smoke", sites_per_well=3,
                           n_plates=2, seed=5)


def _config(sim, path, **embedding):
    cfg = load_config(sim.config)
    return cfg.model_copy(update={"screen": cfg.screen.model_copy(update={"path": path}),
                                  "embedding": cfg.embedding.model_copy(update={**FAST_CLASSICAL, **embedding})})


def _run(sim, path, **embedding):
    cfg = _config(sim, path, **embedding)
    run(cfg, stages=("segment", "embed"), progress=False)
    return cfg


@pytest.fixture(scope="module")
def screen(sim, tmp_path_factory):
    """A featurized screen (keep all cells), and its per-site files' rows before compaction."""
    path = tmp_path_factory.mktemp("all") / "screen"
    _run(sim, path)
    return path


def _cells(store, fs="classical"):
    return store.read_cell_features(fs).sort(KEYS)


def _well_profiles_from_cells(store, fs="classical", cell_to_site="median", site_to_well="mean"):
    """The pre-site-profile path: every stored cell read back, cells -> sites -> wells."""
    arrays = store.cell_arrays(fs)
    sites = site_profiles(arrays, method=cell_to_site)
    return aggregate_array(sites, by=["plate", "well"], method=site_to_well, count_column="n_sites",
                           sum_columns=["n_cells"]).sort("plate", "well")


def _wide_features(wide):
    return np.stack([wide[c].to_numpy() for c in wide.columns if not c.startswith("Metadata_")], axis=1)


def test_finished_plates_hold_one_file_per_feature_set(screen):
    with ScreenStore.open(screen, read_only=True) as store:
        storage = store.cell_storage("classical")
        assert storage["files"].to_list() == [1, 1]  # 12 sites per plate -> one compacted file each
        m = store.cell_file_table("classical")
        assert m.height == 24 and m["compacted"].all()
        assert m.group_by("plate").agg(pl.col("file").n_unique())["file"].to_list() == [1, 1]
        n_stage = store.sql("SELECT sum(n_cells) FROM site_stages WHERE stage = 'embed:classical'").item()
        cells = _cells(store)
        assert cells.height == n_stage == m["n_rows"].sum() > 100
        assert cells.select(KEYS).is_unique().all()


def test_well_profiles_from_site_profiles_equal_those_from_all_cells(screen):
    with ScreenStore.open(screen, read_only=True) as store:
        for cell_to_site, site_to_well in [("median", "mean"), ("mean", "median"), ("median", "median")]:
            wide = well_profiles_from_store(store, feature_set="classical", cell_to_site=cell_to_site,
                                            site_to_well=site_to_well, metadata=False).sort("Metadata_Plate",
                                                                                          "Metadata_Well")
            ref = _well_profiles_from_cells(store, cell_to_site=cell_to_site, site_to_well=site_to_well)
            x, y = _wide_features(wide), np.stack(ref["features"].to_numpy())
            assert x.shape == y.shape == (8, x.shape[1]) and x.shape[1] > 50
            if cell_to_site == "median" and site_to_well == "median":
                np.testing.assert_array_equal(x, y)  # medians of medians: exact
            else:
                np.testing.assert_allclose(x, y, rtol=1e-13, atol=1e-13, equal_nan=True)
            assert wide["Metadata_Object_Count"].to_list() == ref["n_cells"].to_list()
            assert wide["Metadata_Site_Count"].to_list() == ref["n_sites"].to_list()


def test_rerun_site_after_compaction_replaces_its_rows(sim, screen, tmp_path):
    import shutil

    path = tmp_path / "screen"
    shutil.copytree(screen, path)
    with ScreenStore.open(path, read_only=True) as store:
        before = _cells(store)
        plate, well, site = store.cell_file_table("classical").row(0)[:3]
    # featurize one site again (forced): its rows go to a staging file, the compacted file still holds the old
    cfg = _config(sim, path)
    with ScreenStore.open(path) as store:
        store.set_site_status(plate, well, site, stage="embed:classical", status="pending")
    run(cfg, stages=("embed",), progress=False)
    with ScreenStore.open(path, read_only=True) as store:
        after = _cells(store)
        assert after.equals(before)  # same cells, once each
        assert store.cell_storage("classical")["files"].to_list() == [1, 1]  # compacted again


def test_interrupted_compaction_leaves_the_old_rows_and_is_cleaned_up(sim, tmp_path, monkeypatch):
    path = tmp_path / "screen"
    cfg = _config(sim, path)
    # featurize without compacting: what a run killed before its plates completed leaves
    from subcell_screen.engine import SiteWriter

    with monkeypatch.context() as m:
        m.setattr(SiteWriter, "_compact", lambda self, plate: None)
        m.setattr(SiteWriter, "finish", lambda self: self.flush())
        run(cfg, stages=("segment", "embed"), progress=False)
    with ScreenStore.open(path) as store:
        assert store.cell_storage("classical")["files"].to_list() == [12, 12]
        before = _cells(store)
        # a compaction killed after writing its file, before the manifest transaction
        job = store.compaction_job("classical", "SIMHPA001")
        rows = compact_cell_files(job)
        assert sum(rows.values()) == before.filter(pl.col("plate") == "SIMHPA001").height
        assert (path / job.target).is_file()
        assert _cells(store).equals(before)  # the orphan is not read: no duplicate
        # a compaction killed while writing: a temp file, removed when the store is next opened for writing
        tmp = path / job.target
        (tmp.parent / f".{tmp.name}.dead.tmp").write_bytes(b"partial")
    with ScreenStore.open(path) as store:
        assert not list(path.rglob("*.tmp"))
        assert _cells(store).equals(before)
    # the next run compacts what was left and deletes the orphan
    run(cfg, stages=("embed",), progress=False)
    with ScreenStore.open(path, read_only=True) as store:
        assert store.cell_storage("classical")["files"].to_list() == [1, 1]
        assert _cells(store).equals(before)


@pytest.mark.parametrize("keep", ["sample", "none"])
def test_keep_policies_give_the_same_well_profiles(sim, screen, tmp_path, keep):
    path = tmp_path / "screen"
    _run(sim, path, keep_cells=keep, cells_per_well=7)
    with ScreenStore.open(screen, read_only=True) as ref_store, ScreenStore.open(path, read_only=True) as store:
        ref = well_profiles_from_store(ref_store, feature_set="classical", metadata=False)
        got = well_profiles_from_store(store, feature_set="classical", metadata=False)
        assert got.equals(ref)
        if keep == "none":
            assert store.cell_storage("classical")["files"].sum() == 0
            with pytest.raises(Exception, match="were not kept"):
                store.read_cell_features("classical")
        else:
            cells = _cells(store)
            per_well = cells.group_by("plate", "well").len()
            assert per_well["len"].max() == 7 and per_well.height == 8
            full = _cells(ref_store)
            # the sample: each well's 7 cells with the smallest hash, drawn across its sites
            for (plate, well), g in full.group_by("plate", "well"):
                order = sample_order(plate, well, g["site"].to_numpy(), g["cell_id"].to_numpy())
                want = g.with_columns(pl.Series("_o", order)).sort("_o").head(7).select(KEYS).sort(KEYS)
                got_w = cells.filter((pl.col("plate") == plate) & (pl.col("well") == well)).select(KEYS).sort(KEYS)
                assert got_w.equals(want)
                assert got_w["site"].n_unique() > 1 or g["site"].n_unique() == 1
            kept = cells.join(full, on=KEYS, how="inner", suffix="_full")
            assert np.array_equal(np.stack(kept["features"].to_numpy()), np.stack(kept["features_full"].to_numpy()),
                                  equal_nan=True)


def test_float16_cells_keep_float32_exact_profiles(sim, screen, tmp_path):
    path = tmp_path / "screen"
    _run(sim, path, store_dtype="float16")
    with ScreenStore.open(screen, read_only=True) as ref_store, ScreenStore.open(path, read_only=True) as store:
        assert well_profiles_from_store(store, feature_set="classical", metadata=False).equals(
            well_profiles_from_store(ref_store, feature_set="classical", metadata=False))
        cells = store.read_cell_features("classical")
        assert cells.schema["features"].inner == pl.Float16
        ref_cells = ref_store.read_cell_features("classical")
        x16, x32 = np.stack(cells.sort(KEYS)["features"].to_numpy()), np.stack(ref_cells.sort(KEYS)["features"].to_numpy())
        np.testing.assert_array_equal(x16, x32.astype(np.float16))


def test_store_from_an_older_version_is_upgraded_and_profiled_from_its_cells(screen, tmp_path):
    """A v2 store (one file per site, no manifest, no site profiles) opens, and its profiles are the same."""
    import shutil

    path = tmp_path / "screen"
    shutil.copytree(screen, path)
    with ScreenStore.open(path) as store:
        ref = well_profiles_from_store(store, feature_set="classical", metadata=False)
        cells = _cells(store)
        # rewrite as version 2 laid it out: one file per site
        for (plate, well, site), g in cells.group_by(["plate", "well", "site"]):
            g.write_parquet(store.staging_file("classical", plate, well, site))
        for f in path.glob("cells/classical/plate=*/cells-*.parquet"):
            f.unlink()
        store.con.execute("DROP TABLE cell_files; DROP TABLE site_profiles; "
                          "UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    from subcell_screen import StoreVersionError

    with pytest.raises(StoreVersionError, match="open it once for writing"):
        ScreenStore.open(path, read_only=True)
    with ScreenStore.open(path) as store:
        assert store.cell_file_table("classical").height == 24
        assert len(store.sites_without_profiles("classical")) == 24
        got = well_profiles_from_store(store, feature_set="classical", metadata=False)
        assert got.equals(ref)
        assert store.sites_without_profiles("classical") == []  # computed once, stored
        assert _cells(store).equals(cells)


def test_read_site_arrays_of_a_compacted_plate(screen):
    with ScreenStore.open(screen, read_only=True) as store:
        arrays = store.cell_arrays("classical", plate="SIMHPA001")
        files = store.cell_feature_files("classical", plate="SIMHPA001")
        assert len(files) == 1
        direct = read_site_arrays(files)
        assert arrays.sites.equals(direct.sites) and np.array_equal(arrays.x, direct.x, equal_nan=True)
        assert arrays.sites.height == 12


def test_site_restaged_after_compaction_is_read_from_its_new_file_only(screen, tmp_path):
    import shutil

    path = tmp_path / "screen"
    shutil.copytree(screen, path)
    with ScreenStore.open(path) as store:
        before = _cells(store)
        key = ("SIMHPA001", *store.cell_file_table("classical", plate="SIMHPA001").row(3)[1:3])
        at = (pl.col("plate") == key[0]) & (pl.col("well") == key[1]) & (pl.col("site") == key[2])
        old = before.filter(at)
        new = old.head(2).with_columns(pl.col("features").arr.eval(pl.element() + 1.0))
        store.write_cell_features("classical", new, plate=key[0], well=key[1], site=key[2])
        after = _cells(store)
        assert after.height == before.height - old.height + 2
        got = after.filter(at)
        assert got.select(KEYS).equals(new.select(KEYS))
        arrays = store.cell_arrays("classical", plate="SIMHPA001")
        assert arrays.sites.height == 12 and arrays.x.shape[0] == after.filter(pl.col("plate") == "SIMHPA001").height
        row = arrays.sites.with_row_index().filter((pl.col("well") == key[1]) & (pl.col("site") == key[2]))
        assert row["n_cells"].to_list() == [2]
        # the next compaction drops the stale rows: one file again, same rows
        store.compact_cells("classical")
        assert store.cell_storage("classical")["files"].to_list() == [1, 1]
        assert _cells(store).equals(after)
