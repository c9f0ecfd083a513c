"""Tests for subcell_screen.store: round trips, idempotent replacement, versioning, interrupted writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from subcell_screen import StoreError, StoreVersionError
from subcell_screen.layouts import read_plates_table
from subcell_screen.store import EXAMPLE_QUERIES, SCHEMA_VERSION, ScreenStore, decode_array, encode_array

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path):
    with ScreenStore.create(tmp_path / "screen") as s:
        yield s


def _design(tmp_path):
    (tmp_path / "lay.csv").write_text("well,perturbation_id,control_type,protein\nA01,DMSO,negcon,HDAC8\n"
                                      "A02,vorinostat,,HDAC8\n")
    (tmp_path / "plates.csv").write_text("plate,layout,batch,operator\nP1,lay,b1,ann\nP2,lay,b1,bob\n")
    return read_plates_table(tmp_path / "plates.csv")


def test_create_open_and_version(tmp_path):
    path = tmp_path / "s"
    with pytest.raises(StoreError, match="no screen store here"):
        ScreenStore.open(path)
    with ScreenStore.create(path) as s:
        assert {"runs", "plates", "wells", "sites", "masks", "feature_sets", "illumination"} <= set(s.tables())
    with ScreenStore.open(path, read_only=True) as s:
        assert s.sql("SELECT value FROM meta WHERE key='schema_version'")["value"][0] == str(SCHEMA_VERSION)
        with pytest.raises(StoreError, match="read-only"):
            s.replace_rows("runs", pl.DataFrame({"run_id": ["x"]}), keys=["run_id"])
    with ScreenStore.open(path) as s:
        s.con.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'").fetchall()
    with pytest.raises(StoreVersionError, match="schema version 999.*reads version"):
        ScreenStore.open(path)


def test_design_roundtrip_and_metadata(store, tmp_path):
    design = _design(tmp_path)
    store.write_design(design)
    store.write_design(design)  # idempotent
    wells = store.wells()
    assert wells.height == 4
    assert wells.filter(pl.col("plate") == "P1")["perturbation_id"].to_list() == ["DMSO", "vorinostat"]
    assert wells["protein"].unique().to_list() == ["HDAC8"]
    extra = json.loads(store.sql("SELECT extra FROM plates WHERE plate='P2'")["extra"][0])
    assert extra == {"operator": "bob"}
    meta = store.wells(plate="P1", metadata=True)
    assert {"Metadata_Plate", "Metadata_Well", "Metadata_control_type", "Metadata_Batch"} <= set(meta.columns)


def test_runs_provenance(store):
    run = store.start_run(command="segment", config={"a": 1}, models={"m": "sha"})
    store.finish_run(run, status="ok", summary={"sites": 3})
    row = store.read_table("runs", run_id=run).row(0, named=True)
    assert row["status"] == "ok" and json.loads(row["summary"]) == {"sites": 3}
    assert row["package_version"] and row["finished_at"] >= row["started_at"]


def test_sites_and_stage_status(store):
    sites = pl.DataFrame({"plate": ["P1", "P1"], "well": ["A01", "A02"], "site": [1, 1],
                          "channels": [{"dna": "a.tif"}, {"dna": "b.tif"}], "pixel_size_um": [0.6, 0.6]})
    store.register_sites(sites)
    store.register_sites(sites)
    assert store.sql("SELECT count(*) AS n FROM sites")["n"][0] == 2
    store.set_site_status("P1", "A01", 1, stage="segment", status="ok", n_cells=12)
    store.set_site_status("P1", "A01", 1, stage="segment", status="ok", n_cells=13)
    store.set_site_status("P1", "A02", 1, stage="segment", status="failed", error="b.tif: truncated TIFF")
    assert store.sites_with_stage("segment") == {("P1", "A01", 1)}
    failed = store.sql(EXAMPLE_QUERIES["failed_sites"])
    assert failed.row(0) == ("P1", "A02", 1, "segment: b.tif: truncated TIFF")
    assert store.sql("SELECT n_cells FROM site_stages WHERE well='A01'")["n_cells"].to_list() == [13]
    # re-registering keeps the failure status
    store.register_sites(sites)
    assert store.sql("SELECT status FROM sites WHERE well='A02'")["status"][0] == "failed"


def test_replace_rows_is_idempotent_and_keyed(store):
    cells = pl.DataFrame({"plate": ["P1"] * 3, "well": ["A01"] * 3, "site": [1] * 3, "cell_id": [1, 2, 3],
                          "cell_area_um2": [10.0, 20.0, 30.0]})
    store.replace_rows("cells", cells, keys=["plate", "well", "site"])
    store.replace_rows("cells", cells, keys=["plate", "well", "site"])
    other = cells.with_columns(pl.lit("A02").alias("well"))
    store.replace_rows("cells", other, keys=["plate", "well", "site"])
    assert store.sql("SELECT count(*) n FROM cells")["n"][0] == 6
    store.replace_rows("cells", cells.head(0), keys={"plate": "P1", "well": "A01", "site": 1})
    assert store.sql("SELECT well, count(*) n FROM cells GROUP BY well")["well"].to_list() == ["A02"]
    with pytest.raises(StoreError, match="no column"):
        store.replace_rows("cells", cells.with_columns(pl.lit(1).alias("bogus")), keys=["plate"])
    assert store.sql(EXAMPLE_QUERIES["cells_per_well"], ["P1"]).row(0) == ("A02", 3)


def test_arrays_roundtrip(store):
    rng = np.random.default_rng(0)
    nuclei = rng.integers(0, 50, (64, 80)).astype(np.int32)
    cells = (nuclei * 2).astype(np.int32)
    store.write_masks("P1", "A01", 1, nuclei=nuclei, cells=cells, method="classical")
    n2, c2 = store.read_masks("P1", "A01", 1)
    assert n2.dtype == np.int32 and np.array_equal(n2, nuclei) and np.array_equal(c2, cells)
    with pytest.raises(StoreError, match="no masks stored"):
        store.read_masks("P1", "A01", 2)
    illum = {"DNA": rng.random((8, 8)).astype(np.float32) + 1}
    store.write_illumination("P1", illum, recipe={"smoothing_um": 50})
    assert np.array_equal(store.read_illumination("P1")["DNA"], illum["DNA"])
    assert store.read_illumination("P9") == {}
    a = rng.random((3, 4, 5)).astype(np.float16)
    assert np.array_equal(decode_array(encode_array(a)), a)


def test_cell_features_parquet_roundtrip(store):
    names = [f"feat{i:04d}" for i in range(8)]
    store.register_feature_set("subcell_rybg", kind="subcell", feature_names=names, model="rybg/MAE")
    assert store.feature_set("subcell_rybg")["feature_names"] == names
    with pytest.raises(StoreError, match="unknown feature set"):
        store.feature_set("nope")
    feats = np.arange(24, dtype=np.float32).reshape(3, 8)
    df = pl.DataFrame({"plate": ["P1"] * 3, "well": ["A01"] * 3, "site": [1] * 3, "cell_id": [1, 2, 3]}).with_columns(
        pl.Series("features", feats, dtype=pl.Array(pl.Float32, 8)))
    store.write_cell_features("subcell_rybg", df, plate="P1", well="A01", site=1)
    store.write_cell_features("subcell_rybg", df, plate="P1", well="A01", site=1)  # replaces
    store.write_cell_features("subcell_rybg", df.head(0), plate="P1", well="A02", site=1)  # no cells
    out = store.read_cell_features("subcell_rybg").sort("cell_id")
    assert out.height == 3
    assert np.array_equal(np.stack(out["features"].to_numpy()), feats)
    q = store.sql(f"SELECT count(*) n FROM read_parquet('{store.cells_dir('subcell_rybg')}/**/*.parquet')")
    assert q["n"][0] == 3
    with pytest.raises(StoreError, match="cannot be used in a file name"):
        store.write_cell_features("subcell_rybg", df, plate="P/1", well="A01", site=1)


_WRITER = textwrap.dedent("""
    import sys, polars as pl, numpy as np
    from subcell_screen.store import ScreenStore
    store = ScreenStore.open(sys.argv[1])
    big = pl.DataFrame({"plate": ["P1"] * 200_000, "well": ["A01"] * 200_000, "site": [1] * 200_000,
                        "cell_id": np.arange(200_000), "cell_area_um2": np.ones(200_000)})
    store.con.execute("BEGIN TRANSACTION")
    store.con.execute("DELETE FROM cells WHERE plate = 'P1'")
    store.con.register("b", big.to_arrow())
    for i in range(1000):
        store.con.execute("INSERT INTO cells (plate, well, site, cell_id, cell_area_um2) SELECT * FROM b")
        if i == 0:
            print("writing", flush=True)
    store.con.execute("COMMIT")
""")

_PARQUET_WRITER = textwrap.dedent("""
    import sys, polars as pl, numpy as np
    from subcell_screen.store import ScreenStore
    store = ScreenStore.open(sys.argv[1])
    n = 400_000
    df = pl.DataFrame({"plate": ["P1"] * n, "well": ["A01"] * n, "site": [1] * n, "cell_id": np.arange(n)}).with_columns(
        pl.Series("features", np.random.default_rng(0).random((n, 64), dtype=np.float32), dtype=pl.Array(pl.Float32, 64)))
    print("writing", flush=True)
    for _ in range(100):
        store.write_cell_features("fs", df, plate="P1", well="A01", site=1)
""")


def _run_and_kill(script: str, store_path: Path, delay: float) -> None:
    proc = subprocess.Popen([sys.executable, "-c", script, str(store_path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_killed_transaction_leaves_previous_state(tmp_path):
    path = tmp_path / "s"
    with ScreenStore.create(path) as s:
        s.replace_rows("cells", pl.DataFrame({"plate": ["P1"] * 5, "well": ["A01"] * 5, "site": [1] * 5,
                                              "cell_id": list(range(5)), "cell_area_um2": [1.0] * 5}),
                       keys=["plate", "well", "site"])
    _run_and_kill(_WRITER, path, delay=0.5)
    with ScreenStore.open(path) as s:
        assert s.sql("SELECT count(*) n FROM cells")["n"][0] == 5
        assert s.sql("SELECT count(*) n FROM runs")["n"][0] == 0  # still a working store


def test_killed_parquet_write_leaves_no_partial_file(tmp_path):
    path = tmp_path / "s"
    ScreenStore.create(path).close()
    _run_and_kill(_PARQUET_WRITER, path, delay=1.5)
    with ScreenStore.open(path) as s:  # opening cleans temp files
        folder = s.cells_dir("fs", "P1")
        assert not [p for p in folder.iterdir() if p.name.startswith(".")]
        files = s.cell_feature_files("fs")
        if files:  # a complete earlier write may exist; it must be whole
            assert pl.read_parquet(files[0]).height == 400_000


def test_site_status_follows_its_stages(store):
    store.register_sites(pl.DataFrame({"plate": ["P1"], "well": ["A01"], "site": [1]}))
    status = lambda: store.sql("SELECT status, error FROM sites").row(0)  # noqa: E731
    assert status() == ("pending", None)
    store.set_site_status("P1", "A01", 1, stage="segment", status="ok")
    assert status() == ("ok", None)
    store.set_site_status("P1", "A01", 1, stage="embed:x", status="failed", error="boom")
    assert status() == ("failed", "embed:x: boom")
    store.set_site_status("P1", "A01", 1, stage="segment", status="ok")  # another stage cannot clear it
    assert status()[0] == "failed"
    store.set_site_status("P1", "A01", 1, stage="embed:x", status="ok")  # the failed stage succeeds on re-run
    assert status() == ("ok", None)


def test_every_table_is_declared_and_writes_are_typed(store):
    """The store owns its schema: tables exist from the start, writes are cast to the declared types, an
    undeclared table or column is refused (no table is shaped by its first writer)."""
    from subcell_screen.store import TABLES, VIEWS

    assert set(TABLES) | set(VIEWS) <= set(store.tables())
    for name, decl in TABLES.items():
        cols = store.sql(f"SELECT column_name, data_type FROM information_schema.columns WHERE table_name = '{name}' "
                         "ORDER BY ordinal_position").rows()
        assert cols == [(c, t) for c, t in decl.columns], name
    # ints written as floats, a fixed-size array as a list: cast to the declaration
    store.replace_rows("site_qc", pl.DataFrame({"plate": ["P"], "well": ["A01"], "site": [1.0], "channel": ["DNA"],
                                                "mean": [1]}), keys=["plate", "well", "site"])
    assert store.sql("SELECT typeof(site) t, typeof(mean) m FROM site_qc").row(0) == ("INTEGER", "DOUBLE")
    with pytest.raises(StoreError, match="declares no table 'my_table'"):
        store.write_table("my_table", pl.DataFrame({"a": [1]}))
    with pytest.raises(StoreError, match=r"column .site.: cannot store String values as INTEGER"):
        store.replace_rows("site_qc", pl.DataFrame({"plate": ["P"], "well": ["A01"], "site": ["one"]}),
                           keys=["plate"])
