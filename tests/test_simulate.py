"""Tests for the image-level simulator (subcell_screen.simulate.images / effects / screen)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import tifffile
from scipy import ndimage as ndi

from subcell_screen.config import load_config
from subcell_screen.layouts import read_layout, read_plates_table
from subcell_screen.simulate import (
    HPA_COLORS,
    LOCALIZATIONS,
    PHENIX_CHANNEL_NUMBERS,
    Acquisition,
    CellPopulation,
    Nuisance,
    PlantedEffect,
    default_acquisition,
    four_parameter_logistic,
    hpa_demo_effects,
    hpa_layout,
    open_simulated_screen,
    render_site,
    simulate_screen,
)

HPA_NAME = re.compile(r"^(?P<plate>[A-Za-z0-9-]+)_(?P<well>[A-P]\d{2})_(?P<site>\d+)_(?P<color>red|yellow|blue|green)\.tif$")
PHENIX_NAME = re.compile(r"^r(?P<row>\d{2})c(?P<col>\d{2})f(?P<field>\d{2})p01-ch(?P<ch>\d)sk1fk1fl1\.tiff$")


@pytest.fixture(scope="module")
def hpa_smoke(tmp_path_factory: pytest.TempPathFactory):
    return simulate_screen(tmp_path_factory.mktemp("hpa_smoke"), style="hpa", preset="smoke", seed=0)


@pytest.fixture(scope="module")
def cp_smoke(tmp_path_factory: pytest.TempPathFactory):
    return simulate_screen(tmp_path_factory.mktemp("cp_smoke"), style="cellpainting", preset="smoke", seed=0)


@pytest.fixture(scope="module")
def dose_screen(tmp_path_factory: pytest.TempPathFactory):
    """Every well of the demo design (one plate, one small site per well), no nuisance."""
    return simulate_screen(tmp_path_factory.mktemp("dose"), style="hpa", preset="demo", n_plates=1,
                           sites_per_well=1, shape=(192, 192), nuisance=Nuisance.none(), seed=1)


# ------------------------------------------------------------------------------------------------------------
# render_site


@pytest.mark.parametrize("style", ["hpa", "cellpainting"])
def test_labels_match_rendered_cells(style: str):
    pop = CellPopulation(mitotic_fraction=0.2, bundled_fraction=0.5, apoptotic_fraction=0.1)
    site, clean = render_site(style=style, shape=(200, 232), seed=4, population=pop, return_clean=True)
    cells, nuclei, truth = site.cells, site.nuclei, site.truth
    assert site.image.dtype == np.uint16 and site.image.shape == (len(site.channel_names), 200, 232)
    assert cells.dtype == np.int32 and nuclei.dtype == np.int32
    n = truth.height
    assert n >= 15
    # ids 1..n, the same in both label images and the truth table
    assert truth["cell_id"].to_list() == list(range(1, n + 1))
    assert set(np.unique(cells)) == set(range(n + 1)) and set(np.unique(nuclei)) == set(range(n + 1))
    # every nucleus lies inside its own cell; every cell is one connected piece holding one nucleus
    assert np.array_equal(cells[nuclei > 0], nuclei[nuclei > 0])
    for i in range(1, n + 1):
        assert ndi.label(cells == i)[1] == 1
    # truth areas are the label areas
    assert np.array_equal(truth["cell_area_px"].to_numpy(), np.bincount(cells.ravel())[1:])
    assert np.array_equal(truth["nucleus_area_px"].to_numpy(), np.bincount(nuclei.ravel())[1:])
    assert np.allclose(truth["nucleus_area_um2"].to_numpy(), truth["nucleus_area_px"].to_numpy() * site.pixel_size_um ** 2)
    # no stain is rendered outside the labelled cells
    assert float(np.abs(clean[:, cells == 0]).max()) == 0.0
    # and inside, every cell carries signal in every channel
    for k in range(clean.shape[0]):
        per_cell = np.bincount(cells.ravel(), weights=clean[k].ravel())[1:]
        assert (per_cell > 0).all(), site.channel_names[k]
    # the raw image: nuclei are bright in the DNA channel, background sits at the camera offset
    dna = site.image[site.channel_names.index("nucleus" if style == "hpa" else "DNA")].astype(float)
    assert np.median(dna[nuclei > 0]) > 2.5 * np.median(dna[cells == 0])
    assert set(truth["phenotype"]) <= {"interphase", "mitotic", "apoptotic"}


def test_render_site_deterministic_and_seed_dependent():
    a = render_site(style="hpa", shape=(96, 96), seed=11)
    b = render_site(style="hpa", shape=(96, 96), seed=11)
    c = render_site(style="hpa", shape=(96, 96), seed=12)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.cells, b.cells) and a.truth.equals(b.truth)
    assert not np.array_equal(a.image, c.image)


def test_localization_classes_put_the_protein_where_they_say():
    nuclear = {"Nucleoplasm", "Nucleoli", "Nuclear speckles"}
    for loc in LOCALIZATIONS:
        site = render_site(style="hpa", shape=(128, 128), seed=2, n_cells=5,
                           population=CellPopulation(localization=loc, mitotic_fraction=0.0))
        frac = float(site.truth["protein_nuclear_fraction"].median())
        assert set(site.truth["localization"]) == {loc}
        if loc in nuclear:
            assert frac > 0.8, loc
        elif loc != "Nuclear membrane":
            assert frac < 0.3, loc
    with pytest.raises(ValueError, match="unknown localization"):
        CellPopulation(localization="Ribosomes")


def test_relocalized_cells_follow_the_requested_fraction():
    # 40 % relocalized, pooled over sites: binomial, within 4 sd
    n_tot = n_rel = 0
    ratios = {True: [], False: []}
    for s in range(6):
        site = render_site(style="hpa", shape=(256, 256), seed=100 + s,
                           population=CellPopulation(relocalized_fraction=0.4, mitotic_fraction=0.0))
        t = site.truth
        n_tot += t.height
        n_rel += int(t["relocalized"].sum())
        for rel, frac in zip(t["relocalized"], t["protein_nuclear_fraction"]):
            ratios[rel].append(frac)
        assert set(t.filter(pl.col("relocalized"))["localization"]) <= {"Cytosol"}
        assert set(t.filter(~pl.col("relocalized"))["localization"]) <= {"Nucleoplasm"}
    assert n_tot > 80
    assert abs(n_rel / n_tot - 0.4) < 4 * np.sqrt(0.4 * 0.6 / n_tot)
    # relocalized cells really have their protein out of the nucleus
    assert np.median(ratios[False]) > 0.7 > 0.3 > np.median(ratios[True])


def test_acquisition_artefacts():
    pop = CellPopulation(density_per_mm2=1.0)  # an empty field: background, offset, vignetting, noise only
    flat = render_site(style="hpa", shape=(128, 128), seed=0, population=pop,
                       acquisition=default_acquisition("hpa", shape=(128, 128), vignetting=0.0))
    vig = render_site(style="hpa", shape=(128, 128), seed=0, population=pop,
                      acquisition=default_acquisition("hpa", shape=(128, 128), vignetting=0.4,
                                                      vignetting_center=(0.5, 0.5)))
    assert flat.truth.height == 0
    x = vig.image[2].astype(float)
    centre, corner = x[54:74, 54:74].mean(), x[:12, :12].mean()
    assert corner < centre - 5  # the corners are darker
    # flat field: camera offset + background, with shot and read noise (Poisson: variance ~ background)
    acq = default_acquisition("hpa")
    y = flat.image[2].astype(float)
    level = acq.offset[2] + acq.background[2]
    assert abs(np.median(y) - level) < 0.1 * acq.background[2] + 2
    assert 0.7 * np.sqrt(acq.background[2]) < y.std() < 1.5 * np.sqrt(acq.background[2] + acq.read_noise_adu ** 2) + 2
    # a defocused site is blurrier (less high-frequency energy) than a sharp one
    sharp = render_site(style="hpa", shape=(128, 128), seed=5)
    blurred = render_site(style="hpa", shape=(128, 128), seed=5,
                          acquisition=Acquisition(shape=(128, 128), out_of_focus=True))
    hf = lambda im: float(np.abs(np.diff(im[2].astype(float), axis=1)).mean())  # noqa: E731
    assert hf(blurred.image) < 0.7 * hf(sharp.image)
    # debris adds bright unlabelled objects
    dirty = render_site(style="hpa", shape=(128, 128), seed=0, population=pop,
                        acquisition=default_acquisition("hpa", shape=(128, 128), n_debris=3))
    assert dirty.image[2].max() > flat.image[2].max() + 300 and dirty.cells.max() == 0


# ------------------------------------------------------------------------------------------------------------
# simulate_screen: files, layouts, config, answer key


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_identical_bytes(tmp_path: Path):
    kw = dict(style="hpa", preset="smoke", shape=(96, 96))
    a = simulate_screen(tmp_path / "a", seed=5, **kw)
    b = simulate_screen(tmp_path / "b", seed=5, **kw)
    c = simulate_screen(tmp_path / "c", seed=6, **kw)
    ha, hb, hc = _hashes(a.root), _hashes(b.root), _hashes(c.root)
    assert len(ha) > 20 and ha == hb
    images = [k for k in ha if k.startswith("images/")]
    assert len(images) == 16 and all(ha[k] != hc[k] for k in images)
    cp1 = simulate_screen(tmp_path / "cp1", style="cellpainting", preset="smoke", shape=(64, 64), seed=2)
    cp2 = simulate_screen(tmp_path / "cp2", style="cellpainting", preset="smoke", shape=(64, 64), seed=2,
                          workers=2)
    assert _hashes(cp1.root) == _hashes(cp2.root)  # parallel rendering gives the same bytes
    with pytest.raises(FileExistsError):
        simulate_screen(tmp_path / "a", seed=5, **kw)


def test_hpa_files_parse_by_name_pattern(hpa_smoke):
    files = sorted(p.name for p in hpa_smoke.images.iterdir())
    parsed = [HPA_NAME.match(f) for f in files]
    assert all(parsed) and len(files) == 4 * 4
    layout = read_layout(next(hpa_smoke.layouts_dir.glob("*.csv")))
    sites = {(m["plate"], m["well"], int(m["site"])) for m in parsed}
    assert sites == {("SIMHPA001", w, 1) for w in layout["well"]}
    assert {m["color"] for m in parsed} == set(HPA_COLORS.values())
    img = tifffile.imread(hpa_smoke.images / files[0])
    assert img.dtype == np.uint16 and img.shape == (160, 160)
    # the files hold the rendered channels: blue (nucleus) is brightest inside truth nuclei
    plate, well = "SIMHPA001", layout["well"][0]
    nuc, cells = hpa_smoke.labels(plate, well, 1)
    paths = hpa_smoke.image_files(plate, well, 1)
    blue = tifffile.imread(paths["nucleus"]).astype(float)
    assert blue[nuc > 0].mean() > 2 * blue[cells == 0].mean()
    truth = pl.read_parquet(hpa_smoke.ground_truth / plate / f"{plate}_{well}_1_truth.parquet")
    assert truth.height == cells.max() and truth["plate"].unique().to_list() == [plate]


def test_phenix_files_parse_by_name_pattern(cp_smoke):
    plate_dir = cp_smoke.images / "SIMCP001" / "Images"
    files = sorted(p.name for p in plate_dir.iterdir())
    parsed = [PHENIX_NAME.match(f) for f in files]
    assert all(parsed) and len(files) == 4 * 5
    assert {int(m["ch"]) for m in parsed} == set(PHENIX_CHANNEL_NUMBERS.values())
    layout = read_layout(next(cp_smoke.layouts_dir.glob("*.csv")))
    wells = {f"{chr(64 + int(m['row']))}{int(m['col']):02d}" for m in parsed}
    assert wells == set(layout["well"])
    dna = tifffile.imread(plate_dir / files[0])
    assert dna.dtype == np.uint16 and dna.shape == (192, 192)


def test_project_readers_parse_the_files(hpa_smoke, cp_smoke):
    io = pytest.importorskip("subcell_screen.io")
    read_plate = getattr(io, "read_plate", None)
    if read_plate is None:
        pytest.skip("subcell_screen.io.read_plate is not available")
    for sim, channels in ((hpa_smoke, {"microtubules", "er", "nucleus", "protein"}),
                          (cp_smoke, {"DNA", "ER", "RNA", "AGP", "Mito"})):
        cfg = load_config(sim.config)
        index = read_plate(cfg.images.source, reader=cfg.images.reader, channel_names=cfg.images.channel_names,
                           pixel_size_um=cfg.images.pixel_size_um)
        assert len(index) == sim.n_sites
        wells = set(sim.wells()["well"])
        for rec in index:
            assert rec.plate in sim.plates and rec.well in wells and rec.site == 1
            assert set(rec.channels) == channels and rec.pixel_size_um == pytest.approx(sim.pixel_size_um)
            assert Path(rec.channels[sorted(channels)[0]]) == sim.image_files(rec.plate, rec.well, 1)[
                sorted(channels)[0]]


def test_config_validates(hpa_smoke, cp_smoke):
    cfg = load_config(hpa_smoke.config)
    assert cfg.images.reader == "hpa" and cfg.images.source == hpa_smoke.images
    assert cfg.images.pixel_size_um == pytest.approx(hpa_smoke.pixel_size_um)
    assert cfg.segmentation.method == "classical"
    assert cfg.embedding.featurizer == "subcell" and cfg.embedding.allow_fallback
    assert cfg.channel_map().channels == ("microtubules", "er", "nucleus", "protein")
    assert cfg.plates.table == hpa_smoke.plates_table and cfg.scoring.relocalization is True
    assert cfg.screen.path == hpa_smoke.root / "screen" and cfg.report.out == hpa_smoke.root / "reports"
    cp = load_config(cp_smoke.config)
    assert cp.images.reader == "phenix" and cp.images.pixel_size_um == pytest.approx(0.598)
    assert cp.images.channel_names == {"1": "DNA", "2": "ER", "3": "RNA", "4": "AGP", "5": "Mito"}
    assert cp.channel_map().name == "cellpainting" and cp.plates.plate_format == 384


def test_layouts_and_plates_table_validate(hpa_smoke, cp_smoke, dose_screen):
    design = read_plates_table(hpa_smoke.plates_table, layouts_dir=hpa_smoke.layouts_dir)
    assert design.plates.columns[:5] == ["plate", "layout", "batch", "cell_line", "timepoint"]
    wells = design.wells()
    assert wells.height == 4 and set(wells["protein"]) == {"HDAC8"}
    demo = read_plates_table(dose_screen.plates_table, layouts_dir=dose_screen.layouts_dir)
    lay = demo.layout_of("SIMHPA001")
    assert lay.height == 52 and (lay["control_type"] == "negcon").sum() == 12
    assert lay.filter(pl.col("perturbation_id") == "vorinostat")["concentration"].n_unique() == 8
    cp = read_plates_table(cp_smoke.plates_table, layouts_dir=cp_smoke.layouts_dir, plate_format=384)
    names = set(cp.wells()["perturbation_name"])
    assert "DMSO" in names and {"CYT-997", "ganetespib"} <= names
    big = hpa_layout(plate_format=384, proteins=("HDAC8", "TOMM20", "FBL", "CALR", "SON", "ATP1A1", "GAPDH"))
    assert big.height == 7 * 52 and big["well"].n_unique() == big.height
    with pytest.raises(ValueError, match="needs 104 wells"):
        hpa_layout(plate_format=96, proteins=("HDAC8", "TOMM20"))


def test_answer_key_consistent(dose_screen, cp_smoke):
    key = dose_screen.answer_key()
    planted = {e.perturbation_id: e for e in hpa_demo_effects()}
    hits = key.filter(pl.col("expected_hit"))
    assert set(hits["perturbation_id"]) == set(planted)
    row = key.filter(pl.col("perturbation_id") == "vorinostat").row(0, named=True)
    assert row["protein"] == "HDAC8" and row["direction"] == "Nucleoplasm->Cytosol"
    assert row["ec50_uM"] == pytest.approx(1.0) and row["max_concentration_uM"] == pytest.approx(30.0)
    nulls = key.filter(pl.col("effect") == "none")
    assert nulls.height == 6 and not nulls["expected_hit"].any()
    layout_ids = set(read_layout(next(dose_screen.layouts_dir.glob("*.csv")))["perturbation_id"])
    assert set(key["perturbation_id"]) == layout_ids - {"DMSO"}
    # per-well expectations follow the 4-parameter logistic of the answer key
    w = dose_screen.wells().filter(pl.col("perturbation_id") == "vorinostat")
    expected = four_parameter_logistic(np.log10(w["concentration_uM"].to_numpy()), bottom=0.03, top=0.9,
                                       log10_ec50=0.0, hill=1.5)
    assert np.allclose(w["expected_relocalized_fraction"].to_numpy(), expected)
    cp_key = cp_smoke.answer_key()
    assert set(cp_key["effect"]) == {"mitotic_arrest", "cell_loss", "nuclear_size"}
    assert (cp_key["protein"].is_null()).all()


def test_planted_fractions_match_requested(dose_screen):
    cells = dose_screen.cells()
    wells = dose_screen.wells()
    per_well = cells.group_by("plate", "well").agg(
        pl.len().alias("n"), pl.col("relocalized").sum().alias("n_rel"),
        (pl.col("phenotype") == "mitotic").sum().alias("n_mit"),
        pl.col("nucleus_area_um2").filter(pl.col("phenotype") == "interphase").median().alias("nuc_area"),
    ).join(wells, on=["plate", "well"])
    # relocalization: observed vs expected counts, pooled over the dose series (binomial z-score)
    vor = per_well.filter(pl.col("perturbation_id") == "vorinostat")
    p = vor["expected_relocalized_fraction"].to_numpy()
    n = vor["n"].to_numpy()
    z = (vor["n_rel"].sum() - (n * p).sum()) / np.sqrt((n * p * (1 - p)).sum())
    assert abs(z) < 4
    # dose response: low doses ~3 %, high doses ~90 %
    by_dose = vor.group_by("concentration_uM").agg((pl.col("n_rel").sum() / pl.col("n").sum()).alias("f")).sort(
        "concentration_uM")
    f = by_dose["f"].to_numpy()
    assert f[:2].max() < 0.2 and f[-2:].min() > 0.7
    # mitotic arrest under paclitaxel, none extra under DMSO
    def frac(pid: str, col: str) -> float:
        sub = per_well.filter(pl.col("perturbation_id") == pid)
        return float(sub[col].sum() / sub["n"].sum())
    assert frac("paclitaxel", "n_mit") > 0.4 and frac("DMSO", "n_mit") < 0.1
    # cell loss and nuclear size
    mean_n = per_well.group_by("perturbation_id").agg(pl.col("n").mean(), pl.col("nuc_area").median())
    get = dict(zip(mean_n["perturbation_id"], mean_n["n"]))
    area = dict(zip(mean_n["perturbation_id"], mean_n["nuc_area"]))
    assert get["staurosporine"] < 0.45 * get["DMSO"]
    assert 1.4 < area["etoposide"] / area["DMSO"] < 2.1
    null_n = per_well.filter(pl.col("perturbation_id").str.starts_with("inactive"))["n"].mean()
    assert abs(null_n - get["DMSO"]) < 5 * np.sqrt((null_n + get["DMSO"]) / 12)  # Poisson; nulls keep the cells


def test_relocalization_detectable_by_nuclear_cytoplasmic_ratio(dose_screen):
    """The raw protein-channel nuclear/cytoplasmic intensity ratio separates vorinostat from DMSO."""
    wells = dose_screen.wells()

    def log_ratio(well: str) -> float:
        nuc, cells = dose_screen.labels("SIMHPA001", well, 1)
        prot = tifffile.imread(dose_screen.image_files("SIMHPA001", well, 1)["protein"]).astype(float)
        cyto = np.where((cells > 0) & (nuc == 0), cells, 0)
        n = cells.max() + 1
        mn = np.bincount(nuc.ravel(), prot.ravel(), n)[1:] / np.maximum(np.bincount(nuc.ravel(), minlength=n)[1:], 1)
        mc = np.bincount(cyto.ravel(), prot.ravel(), n)[1:] / np.maximum(np.bincount(cyto.ravel(), minlength=n)[1:], 1)
        return float(np.median(np.log(mn / mc)))

    def wells_of(pid: str, conc: float | None = None) -> list[str]:
        sel = wells.filter(pl.col("perturbation_id") == pid)
        if conc is not None:
            sel = sel.filter(pl.col("concentration_uM") == conc)
        return sel["well"].to_list()

    dmso = [log_ratio(w) for w in wells_of("DMSO")]
    high = [log_ratio(w) for w in wells_of("vorinostat", 30.0) + wells_of("vorinostat", 10.0)]
    taxol = [log_ratio(w) for w in wells_of("paclitaxel")]
    assert min(dmso) > 0.8 and max(high) < 0.2
    assert np.mean(dmso) - np.mean(high) > 1.0
    assert np.mean(taxol) > np.mean(high) + 0.6  # mitotic arrest is not a relocalization


def test_nuisance_is_planted(tmp_path: Path):
    wells_all = hpa_layout()["well"].to_list()
    edge = [w for w in wells_all if w[0] in "AH" or w[1:] in ("01", "12")][:4]
    inner = [w for w in wells_all if w not in edge and w[0] not in "AH" and w[1:] not in ("01", "12")][:4]
    sim = simulate_screen(tmp_path / "n", style="hpa", preset="demo", n_plates=2, sites_per_well=1,
                          shape=(64, 64), wells=edge + inner, layout="hpa:96", seed=3,
                          nuisance=Nuisance(plate_drift=0.1, batch_effect=0.2, out_of_focus_fraction=0.0))
    sites = sim.sites()
    wells = sim.wells()
    g = sites.join(wells, on=["plate", "well"]).group_by("plate", "edge").agg(pl.col("gain_nucleus").mean())
    plates = sim.plates
    gains = {(r["plate"], r["edge"]): r["gain_nucleus"] for r in g.iter_rows(named=True)}
    assert abs(gains[(plates[0], False)] - gains[(plates[1], False)]) > 0.01  # plate/batch drift
    for p in plates:
        assert gains[(p, True)] < gains[(p, False)]  # edge wells are dimmer
    design = read_plates_table(sim.plates_table, layouts_dir=sim.layouts_dir)
    assert design.plates["batch"].to_list() == ["batch1", "batch2"]
    reopened = open_simulated_screen(sim.root)
    assert reopened == sim


def test_custom_effects_and_errors(tmp_path: Path):
    eff = [PlantedEffect("inactive-01", "relocalization", protein="HDAC8", from_class="nucleoplasm",
                         to_class="mitochondria", ec50_uM=0.5, top=1.0)]
    sim = simulate_screen(tmp_path / "c", style="hpa", preset="demo", n_plates=1, sites_per_well=1,
                          shape=(96, 96), effects=eff, nuisance=Nuisance.none(), seed=0, screen_path="..")
    assert load_config(sim.config).screen.path.resolve() == tmp_path.resolve()
    key = sim.answer_key()
    assert key.filter(pl.col("expected_hit"))["perturbation_id"].to_list() == ["inactive-01"]
    moved = sim.cells().join(sim.wells(), on=["plate", "well"]).filter(pl.col("perturbation_id") == "inactive-01")
    assert set(moved.filter(pl.col("relocalized"))["localization"]) == {"Mitochondria"}
    vor = sim.wells().filter(pl.col("perturbation_id") == "vorinostat")
    assert (vor["expected_relocalized_fraction"] == 0).all()  # not planted in this screen
    with pytest.raises(ValueError, match="unknown style"):
        simulate_screen(tmp_path / "x", style="confocal")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown preset"):
        simulate_screen(tmp_path / "y", preset="huge")
    with pytest.raises(ValueError, match="needs protein"):
        PlantedEffect("x", "relocalization")


# ------------------------------------------------------------------------------------------------------------
# realism (ranges, not exact values); the full comparison is benchmarks/simulation_realism.py


def test_realism_against_bbbc039_hoechst(data_dir: Path):
    from PIL import Image

    img_dir = data_dir / "bbbc039" / "images"
    refs = sorted(img_dir.glob("*.tif"))[:3]  # the 4th field holds mostly debris-sized objects
    px = 0.65  # ImageXpress 20x, approximate
    ref_p = np.array([np.percentile(tifffile.imread(f), [5, 50, 99]) for f in refs])
    areas, density = [], []
    for f in refs:
        m = np.asarray(Image.open(data_dir / "bbbc039" / "masks" / f"{f.stem}.png"))[..., 0]
        n_obj = 0
        for k in range(1, 4):
            lab, n = ndi.label(m == k)
            a = np.bincount(lab.ravel())[1:]
            areas.extend(a * px * px)
            n_obj += n
        density.append(n_obj / (m.size * px * px / 1e6))
    site = render_site(style="hpa", shape=(520, 696), pixel_size_um=px, seed=0)
    dna = site.image[2]
    sim_p = np.percentile(dna, [5, 50, 99])
    # background, median and bright-nucleus levels within a factor ~2 of the real Hoechst fields
    assert 0.6 < sim_p[0] / ref_p[:, 0].mean() < 1.5
    assert 0.6 < sim_p[1] / ref_p[:, 1].mean() < 2.0
    assert 0.5 < sim_p[2] / ref_p[:, 2].mean() < 2.0
    sim_area = site.truth.filter(pl.col("phenotype") == "interphase")["nucleus_area_um2"].median()
    assert 0.4 < sim_area / np.median(areas) < 1.6
    sim_density = site.truth.height / (520 * 696 * px * px / 1e6)
    assert 0.5 * min(density) < sim_density < 2.0 * max(density)
