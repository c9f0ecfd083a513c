"""The map stage on screen stores: store tables (types, SQL), map_report.html (numbers equal SQL, sections,
"not computed"), SubCell attention overlays and localization with a tiny SubCell model, the `map` and
`similar` commands, and a real headless-Chromium rendering."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from subcell_screen.phenomap import MAP_TABLES, run_map_stage
from subcell_screen.store import ScreenStore

# ------------------------------------------------------------------------------------------------------
# a profiles-only store: simulated well profiles with scores (no images)


def _profiles_store(root: Path) -> dict:
    from subcell_screen.profiles import NEGCON, normalize
    from subcell_screen.simulate import simulate_well_profiles

    sim = simulate_well_profiles(n_plates=2, n_features=24, effect_size=8.0, seed=11)
    prof = normalize(sim.profiles, method="mad_robustize", controls=NEGCON)
    feats = sim.feature_names
    plates = sorted(set(prof["Metadata_Plate"].to_list()))
    with ScreenStore.create(root) as store:
        store.replace_rows("plates", pl.DataFrame({"plate": plates, "layout": ["sim"] * 2, "plate_format": [384] * 2},
                                                  schema_overrides={"plate_format": pl.Int32}), keys=["plate"])
        wells = prof.select(
            pl.col("Metadata_Plate").alias("plate"), pl.col("Metadata_Well").alias("well"),
            pl.col("Metadata_perturbation_id").alias("perturbation_id"),
            pl.col("Metadata_perturbation_id").alias("perturbation_name"),
            pl.col("Metadata_control_type").alias("control_type"),
            pl.col("Metadata_concentration").alias("concentration"), pl.col("Metadata_moa").alias("moa"),
            pl.lit("{}").alias("extra"))
        store.replace_rows("wells", wells, keys=["plate", "well"])
        store.write_profiles(prof.with_columns(pl.lit(300).alias("Metadata_Count_Cells")).select(
            "Metadata_Plate", "Metadata_Well", "Metadata_Count_Cells", *feats), profile_set="normalized",
            feature_set="classical", final=True)
        store.register_feature_set("classical", kind="classical", feature_names=feats)
        key = sim.answer_key
        hits = key.filter(pl.col("is_active"))["perturbation_id"].to_list()
        scores = key.filter(pl.col("kind") != "negcon").select(
            "perturbation_id", pl.col("perturbation_id").is_in(hits).alias("is_hit")).with_row_index("rank", 1)
        store.write_table("perturbation_scores", scores.with_columns(pl.col("rank").cast(pl.Int32)))
        run = store.start_run(command="run", config={})
        store.finish_run(run, status="ok", summary={"featurizer": "classical", "segmenter": "classical"})
    return {"store": root, "answer": key, "hits": hits}


@pytest.fixture(scope="module")
def profiles_screen(tmp_path_factory):
    root = tmp_path_factory.mktemp("map_profiles")
    info = _profiles_store(root / "screen")
    with ScreenStore.open(info["store"]) as store:
        info["result"] = run_map_stage(store, out_dir=root / "reports")
    return info


def _num(text: str) -> float:
    return float(text.replace(",", ""))


def test_map_tables_have_the_declared_columns_and_types(profiles_screen):
    with ScreenStore.open(profiles_screen["store"], read_only=True) as store:
        for table, cols in MAP_TABLES.items():
            if table == "map_cluster_localization":  # classical features: no class probabilities
                assert store.sql(f"SELECT count(*) AS n FROM {table}")["n"].item() == 0
                continue
            described = store.sql(f"DESCRIBE {table}").select("column_name", "column_type").rows()
            assert described == list(cols.items()), table
        # reachable with SQL like the rest: clusters joined with wells and scores
        n = store.sql("SELECT count(*) AS n FROM map_items")["n"].item()
        k = store.sql("SELECT count(DISTINCT resolution) AS k FROM map_clusters")["k"].item()
        assert store.sql("SELECT count(*) AS n FROM map_clusters")["n"].item() == n * k
        joined = store.sql("SELECT i.item, w.moa, s.is_hit, i.active FROM map_items i JOIN wells w USING "
                           "(perturbation_id) JOIN scores s USING (perturbation_id) GROUP BY ALL")
        # activity came from the score stage: the map's active items are exactly the hits
        assert (joined["is_hit"] == joined["active"]).all()
        assert sorted(joined.filter(pl.col("active"))["item"].unique().to_list()) == sorted(profiles_screen["hits"])
        info = dict(store.sql("SELECT key, value FROM map_info").iter_rows())
        assert json.loads(info["activity_source"]) == "scores" and json.loads(info["by"]) == ["Metadata_perturbation_id"]
        # each planted MoA is the label of some cluster
        labels = store.sql("SELECT DISTINCT label FROM map_cluster_summary WHERE label IS NOT NULL")["label"]
        for moa in {f"moa_{i}" for i in range(6)}:
            assert any(moa in lab.split("; ") for lab in labels.to_list()), moa


def test_map_report_numbers_equal_sql(profiles_screen):
    from subcell_screen.report import run_query

    path = profiles_screen["result"].report
    html = path.read_text()
    assert path.name == "map_report.html" and "<title>Phenotypic map" in html
    for section in ("Map summary", "Map", "Cluster tree", "Clusters and enriched terms", "Similar perturbations",
                    "Example cells", "Localization per cluster", "Runs"):
        assert f">{section}</h2>" in html, section
    with ScreenStore.open(profiles_screen["store"], read_only=True) as store:
        overview = run_query(store, "map_overview", q_threshold=0.05).row(0, named=True)
        sig = run_query(store, "map_enrichment_significant", q_threshold=0.05, top=None)
        hits = store.sql("SELECT count(*) AS n FROM map_items i JOIN scores s USING (perturbation_id) WHERE s.is_hit")
    for col in ("n_items", "n_active", "n_enriched_terms"):
        m = re.search(rf'data-query="map_overview" data-col="{col}">([^<]+)<', html)
        assert m and _num(m.group(1)) == overview[col], col
    m = re.search(r'<table class="data" data-query="map_enrichment_significant" data-rows="(\d+)"', html)
    assert m and int(m.group(1)) == min(sig.height, 200)
    assert 'data-query="map_points_hits"' in html and f"hit ({hits['n'].item()})" not in html  # legend is in the PNG
    assert 'data-query="map_hit_neighbours"' in html
    # no images and no SubCell: those sections say why
    assert "Example cells: not computed (tables cells, sites are empty" in html
    assert "Mean SubCell localization per cluster: not computed (table map_cluster_localization is empty" in html
    for png in ("map_report_map.png", "map_report_dendrogram.png"):
        assert (path.parent / png).read_bytes()[:4] == b"\x89PNG"


def test_map_report_without_map_tables_says_not_computed(tmp_path):
    from subcell_screen.report.map_report import build_map_report

    with ScreenStore.create(tmp_path / "bare"):
        pass
    html = build_map_report(tmp_path / "bare", tmp_path / "out").read_text()
    assert "Phenotypic map: not computed (tables map_info, map_items are empty" in html
    assert "run `subcell-screen map CONFIG`" in html


# ------------------------------------------------------------------------------------------------------
# a real pipeline run with a tiny SubCell model: images, cells, per-cell probabilities


@pytest.fixture(scope="module")
def subcell_screen_run(tmp_path_factory):
    from subcell_screen.config import load_config
    from subcell_screen.embed.testing import make_tiny_checkpoint
    from subcell_screen.pipeline import run
    from subcell_screen.simulate import simulate_screen

    tmp = tmp_path_factory.mktemp("map_subcell")
    sim = simulate_screen(tmp / "sim", style="hpa", preset="smoke", sites_per_well=3, seed=2)
    cache = tmp / "models"
    make_tiny_checkpoint(cache, "rybg/MAE-CellS-ProtS-Pool", width=32, depth=1, heads=2)
    toml = sim.config.read_text()
    toml = toml.replace('path = "screen"', f'path = "{tmp / "screen"}"').replace(
        'out = "reports"', f'out = "{tmp / "reports"}"').replace(
        'model = "rybg/MAE-CellS-ProtS-Pool"\n',
        f'model = "rybg/MAE-CellS-ProtS-Pool"\ncache_dir = "{cache}"\ncrop_size = 128\nprecision = "fp32"\n'
        "batch_size = 16\n", 1)
    cfg_path = sim.config.with_name("map.toml")
    cfg_path.write_text(toml)
    cfg = load_config(cfg_path)
    assert cfg.embedding.featurizer == "subcell" and cfg.embedding.crop_size == 128
    run(cfg, stages=("segment", "embed", "profile"), progress=False)
    # `subcell-screen map CONFIG` (loads the tiny model from the cache for the attention overlays)
    import contextlib
    import io

    from subcell_screen.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["map", str(cfg_path)])
    return {"config": cfg_path, "cfg": cfg, "tmp": tmp, "cache": cache, "rc": rc, "out": out.getvalue()}


def test_cli_map_with_subcell_attention_and_localization(subcell_screen_run):
    cfg = subcell_screen_run["cfg"]
    assert subcell_screen_run["rc"] == 0
    out = subcell_screen_run["out"]
    assert "attention overlays from rybg/MAE-CellS-ProtS-Pool" in out and "report: " in out
    html = (Path(cfg.report.out) / "map_report.html").read_text()
    assert 'data-file="map_report_cluster_gallery.png"' in html
    assert "with the pooler&#x27;s attention overlaid" in html or "with the pooler's attention overlaid" in html
    assert "pooler attention overlays: not computed" not in html
    assert 'data-file="map_report_localization.png"' in html
    # mean localization per cluster = mean over the cluster's items of (mean over wells of per-cell means)
    with ScreenStore.open(cfg.screen.path, read_only=True) as store:
        fs = store.sql("SELECT feature_set FROM feature_sets")["feature_set"].item()
        cells = store.read_cell_features(fs, columns=["plate", "well", "probabilities"])
        wells = store.sql("SELECT plate, well, perturbation_id FROM wells")
        loc = store.sql("SELECT * FROM map_cluster_localization")
        clusters = store.sql("SELECT c.item, c.resolution, c.cluster FROM map_clusters c")
    p = np.stack(cells["probabilities"].to_numpy())
    per_well = (cells.select("plate", "well").with_columns(pl.Series("p", list(p)))
                .group_by("plate", "well").agg(pl.col("p")))
    well_mean = {(a, b): np.mean(np.stack(v), axis=0) for a, b, v in per_well.iter_rows()}
    item_of = {(a, b): c for a, b, c in wells.iter_rows()}
    item_mean: dict[str, list] = {}
    for k, v in well_mean.items():
        item_mean.setdefault(item_of[k], []).append(v)
    for (res, cl), grp in clusters.group_by(["resolution", "cluster"]):
        members = [i for i in grp["item"].to_list() if i in item_mean]
        if not members:
            continue
        ref = np.mean([np.mean(item_mean[i], axis=0) for i in members], axis=0)
        got = loc.filter((pl.col("resolution") == res) & (pl.col("cluster") == cl)).sort("class_index")
        np.testing.assert_allclose(got["mean_probability"].to_numpy(), ref, rtol=1e-5)
        assert got["class_name"][0] == "Actin filaments" and got.height == 31


def test_attention_maps_use_the_embed_stage_crops(subcell_screen_run):
    from subcell_screen.embed import load_model
    from subcell_screen.report import run_query
    from subcell_screen.report.map_report import attention_maps

    cfg = subcell_screen_run["cfg"]
    model = load_model(cfg.embedding.model, cache_dir=subcell_screen_run["cache"], offline=True, device="cpu",
                       precision="fp32")
    with ScreenStore.open(cfg.screen.path, read_only=True) as store:
        cells = run_query(store, "map_gallery_cells", resolution=0.5, cluster=0, n=4, per_site=2)
        assert cells.height == 4
        att = attention_maps(store, cells.to_dicts(), model=model, channel_map=cfg.channel_map(), crop_size=128,
                             normalize=cfg.embedding.normalize)
        fs = store.sql("SELECT feature_set FROM feature_sets")["feature_set"].item()
        stored = store.read_cell_features(fs)
    assert [a.key for a in att] == [(r["plate"], r["well"], r["site"], r["cell_id"]) for r in cells.to_dicts()]
    for a in att:
        row = stored.filter((pl.col("plate") == a.key[0]) & (pl.col("well") == a.key[1]) & (pl.col("site") == a.key[2])
                            & (pl.col("cell_id") == a.key[3]))
        # the same crop through the same model: the embedding the embed stage stored for this cell
        np.testing.assert_allclose(a.embedding, np.asarray(row["features"].item()), rtol=1e-4, atol=1e-5)
        assert a.attention.shape == (128 // 16, 128 // 16) and a.crop.shape == (128, 128, 3)
        assert 0 < a.attention.sum() <= 1.0 + 1e-6 and a.attention.std() > 0  # softmax mass on patches


def test_map_report_without_model_omits_attention(subcell_screen_run, tmp_path):
    cfg = subcell_screen_run["cfg"]
    copy = tmp_path / "screen"
    shutil.copytree(cfg.screen.path, copy)
    with ScreenStore.open(copy) as store:
        result = run_map_stage(store, out_dir=tmp_path / "reports", model=None)
    html = result.report.read_text()
    assert "SubCell pooler attention overlays: not computed (no SubCell model was loaded" in html
    assert 'data-file="map_report_cluster_gallery.png"' in html  # the cells are still shown
    assert 'data-file="map_report_localization.png"' in html
    assert any("localization" in m for m in result.messages)


def test_cli_similar(subcell_screen_run, capsys):
    from subcell_screen.cli import main

    assert main(["similar", str(subcell_screen_run["config"]), "vorinostat", "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "paclitaxel" in out and "similarity" in out
    assert main(["similar", str(subcell_screen_run["config"]), "no-such-compound"]) != 0
    assert "no item matches 'no-such-compound'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------
# real browser


@pytest.mark.browser
def test_map_report_renders_in_headless_chromium(profiles_screen, subcell_screen_run, tmp_path, monkeypatch):
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
                   None)
    driver_path = shutil.which("chromedriver")
    if not (browser and driver_path):
        pytest.skip("no chromium + chromedriver on PATH (Debian packages 'chromium' and 'chromium-driver')")
    pytest.importorskip("selenium", reason="selenium (dev extra) is not installed")
    monkeypatch.setenv("SE_OFFLINE", "true")  # never let Selenium Manager look for drivers online
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # the SubCell map (gallery with attention, localization) and the profiles-only map (hits)
    pages = [Path(subcell_screen_run["cfg"].report.out) / "map_report.html", profiles_screen["result"].report]
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    try:
        for i, path in enumerate(pages):
            driver.get(path.resolve().as_uri())
            state = driver.execute_script(
                "return {ready: document.readyState, title: document.title,"
                " imgs: Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight]),"
                " tables: document.querySelectorAll('table.data').length,"
                " sections: Array.from(document.querySelectorAll('main h2')).map(h => h.textContent)}")
            assert state["ready"] == "complete" and state["title"].startswith("Phenotypic map")
            assert len(state["imgs"]) >= (4 if i == 0 else 2)
            assert all(c and w > 0 and h > 0 for c, w, h in state["imgs"]), state["imgs"]
            assert state["tables"] >= 4 and "Map" in state["sections"]
            errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
            assert not errors, errors
            shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
            assert base64.b64decode(shot["data"])[:4] == b"\x89PNG"
    finally:
        driver.quit()
