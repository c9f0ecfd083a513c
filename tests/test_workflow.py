"""The scientist's workflow on real pixels: `init` a plate folder, know every option (`config`), `run`, then `export`
tables that pycytominer and CellProfiler users load as they are (issue "The scientist's workflow")."""

from __future__ import annotations

import json
import sys

import numpy as np
import polars as pl
import realplates as rp

from subcell_screen.cli import main
from subcell_screen.config import config_reference, load_config
from subcell_screen.store import ScreenStore

LAYOUT = {"B02": "DMSO", "B03": "BRD-K50691590", "B04": "DMSO", "B05": "BRD-K50691590", "B06": "DMSO",
          "B07": "BRD-K81418486", "B08": "DMSO", "B09": "BRD-K81418486"}
NAMES = "1=Brightfield,2=ER,3=AGP,4=Mito,5=DNA,6=RNA"


def _folder(tmp_path):
    images = tmp_path / "BR00143976_images"
    rp.write_phenix_plate(images, "BR00143976", {w: i for i, w in enumerate(LAYOUT)})
    rp.write_layout(tmp_path / "layout.csv", LAYOUT)
    return images


def test_init_writes_a_commented_config_with_loud_todos(tmp_path, capsys):
    images = _folder(tmp_path)
    assert main(["init", str(images), "--out", str(tmp_path / "screen.toml")]) == 0
    out = capsys.readouterr().out
    assert "3 TODO(s) to fill in" in out
    text = (tmp_path / "screen.toml").read_text()
    # the channel numbers say nothing about the dyes; the TIFF tags' 64.5 µm/px is not credible; no layout given
    assert "# TODO pixel_size_um = ...   # µm per pixel; NOT SET: TIFF tags of" in text and "64.5 µm/px" in text
    assert '"5" = "TODO-ch5"' in text and "TODO-layout" in (tmp_path / "screen_plates.csv").read_text()
    cfg = load_config(tmp_path / "screen.toml")  # valid as written: the TODOs are comments or placeholders
    assert cfg.images.reader == "phenix" and cfg.images.pixel_size_um is None
    assert main(["init", str(images), "--out", str(tmp_path / "screen.toml")]) == 1  # never overwrites silently
    assert "exists; pass --overwrite" in capsys.readouterr().err


def test_init_then_run_then_export(tmp_path, capsys):
    import pycytominer

    images = _folder(tmp_path)
    cfg_path = tmp_path / "screen.toml"
    assert main(["init", str(images), "--out", str(cfg_path), "--channel-names", NAMES, "--pixel-size", "0.598",
                 "--layout", str(tmp_path / "layout.csv")]) == 0
    out = capsys.readouterr().out
    assert "next: check the file" in out and "Brightfield -> Brightfield" in out and "preset: cellpainting" in out
    text = cfg_path.read_text()
    assert "pixel_size_um = 0.598" in text and 'preset = "cellpainting"' in text
    # the user's edit: fast classical features for this test (SubCell weights are not cached here)
    text = text.replace('featurizer = "subcell"', 'featurizer = "classical"\nclassical_families = ["shape", '
                        '"intensity"]\nclassical_zernike_degree = -1').replace(
        'feature_select = ["variance_threshold", "correlation_threshold", "drop_na_columns"]', "feature_select = []")
    cfg_path.write_text(text)
    assert main(["run", str(cfg_path), "--stages", "segment,embed,profile", "--no-progress"]) == 0
    capsys.readouterr()
    cfg = load_config(cfg_path)
    exports = tmp_path / "export"
    for level, name in (("cell", "cells.parquet"), ("site", "sites.parquet"), ("image", "Image.csv"),
                        ("cells", "Cells.csv"), ("nuclei", "Nuclei.csv"), ("well", "wells_raw.csv.gz"),
                        ("well", "wells.h5ad")):
        args = ["export", str(cfg_path), "--level", level, "--out", str(exports / name)]
        if name == "wells_raw.csv.gz":
            args += ["--profile-set", "raw", "--masks", str(exports / "masks")]
        assert main(args) == 0, capsys.readouterr().err
    with ScreenStore.open(cfg.screen.path, read_only=True) as store:
        n_cells = store.sql("SELECT count(*) AS n FROM cells")["n"][0]
        normalized = store.read_profiles(profile_set="normalized").sort("Metadata_Well")
        nuclei, cells = store.read_masks("BR00143976", "B03", 1)
    # cells: one row per cell, pycytominer's aggregate of it is our site level
    cell = pl.read_parquet(exports / "cells.parquet")
    assert cell.height == n_cells and {"Metadata_ObjectNumber", "Metadata_perturbation_id"} <= set(cell.columns)
    feats = [c for c in cell.columns if not c.startswith("Metadata_")]
    assert feats and all(f.startswith(("Cells_", "Nuclei_", "Cytoplasm_")) for f in feats)
    site = pl.read_parquet(exports / "sites.parquet").sort("Metadata_Well")
    pyc = pycytominer.aggregate(cell.to_pandas(), strata=["Metadata_Plate", "Metadata_Well", "Metadata_Site"],
                                features="infer", operation="median").sort_values("Metadata_Well")
    np.testing.assert_allclose(pyc[feats].to_numpy(), site.select(feats).to_numpy(), rtol=1e-6, atol=1e-9)
    # wells (raw) as CSV: pycytominer normalises them exactly as the profile stage did
    raw = pl.read_csv(exports / "wells_raw.csv.gz", infer_schema_length=None).sort("Metadata_Well")
    wf = [c for c in raw.columns if not c.startswith("Metadata_")]
    norm = pycytominer.normalize(raw.to_pandas(), features="infer", method="mad_robustize",
                                 samples="Metadata_control_type == 'negcon'").sort_values("Metadata_Well")
    np.testing.assert_allclose(norm[wf].to_numpy(), normalized.select(wf).to_numpy(), rtol=1e-4, atol=1e-4)
    # CellProfiler-style image and object tables
    image = pl.read_csv(exports / "Image.csv")
    assert image["Count_Cells"].sum() == n_cells and image.height == len(LAYOUT)
    assert {"ImageNumber", "FileName_OrigDNA", "PathName_OrigDNA", "Intensity_MeanIntensity_OrigDNA"} <= set(
        image.columns) and "FileName_OrigBrightfield" not in image.columns
    obj = pl.read_csv(exports / "Cells.csv")
    assert obj.height == n_cells and {"ImageNumber", "ObjectNumber", "Location_Center_X", "AreaShape_Area"} <= set(
        obj.columns)
    b03 = obj.filter(pl.col("Metadata_Well") == "B03")
    area = np.bincount(cells.ravel())
    assert dict(zip(b03["ObjectNumber"], b03["AreaShape_Area"])) == {i: int(area[i]) for i in b03["ObjectNumber"]}
    assert pl.read_csv(exports / "Nuclei.csv")["Parent_Cells"].null_count() == 0
    # label masks on request; AnnData for notebook users
    import tifffile

    assert np.array_equal(tifffile.imread(exports / "masks" / "BR00143976_B03_s1_cells.tiff"), cells)
    assert np.array_equal(tifffile.imread(exports / "masks" / "BR00143976_B03_s1_nuclei.tiff"), nuclei)
    import anndata

    ad = anndata.read_h5ad(exports / "wells.h5ad")
    assert ad.shape == (len(LAYOUT), normalized.width - len([c for c in normalized.columns
                                                             if c.startswith("Metadata_")]))


def test_config_reference_is_complete_and_in_sync(repo_dir, capsys):
    from pydantic import BaseModel

    from subcell_screen import config as c

    for name in c.__all__:
        model = getattr(c, name)
        if isinstance(model, type) and issubclass(model, BaseModel):
            for key, info in model.model_fields.items():
                assert info.description or info.exclude, f"{name}.{key} has no description"
    doc = (repo_dir / "docs" / "config-reference.md").read_text()
    assert doc == config_reference(), "docs/config-reference.md is stale: regenerate it with " \
        "`subcell-screen config --markdown > docs/config-reference.md`"
    for key in ("featurizer", "nucleus_diameter_um", "preset", "min_nucleus_area_um2", "channel_colors"):
        assert f"| `{key}` |" in doc, key
    assert main(["config", "embedding"]) == 0
    out = capsys.readouterr().out
    assert "featurizer = \"subcell\"" in out and "one of 'subcell', 'classical'" in out and "precision" in out
    assert main(["config", "bogus"]) == 2 and "unknown config section 'bogus'" in capsys.readouterr().err


def test_no_progress_means_no_bar_anywhere(tmp_path, monkeypatch, capsys):
    import io

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    images = _folder(tmp_path)
    cfg_path = tmp_path / "screen.toml"
    assert main(["init", str(images), "--out", str(cfg_path), "--channel-names", NAMES, "--pixel-size", "0.598",
                 "--layout", str(tmp_path / "layout.csv")]) == 0
    cfg_path.write_text(cfg_path.read_text().replace('featurizer = "subcell"', 'featurizer = "classical"\n'
                                                     'classical_families = ["shape"]\nclassical_zernike_degree = -1'))
    capsys.readouterr()
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    assert main(["run", str(cfg_path), "--no-progress"]) == 0
    assert "it/s]" not in err.getvalue() and "%|" not in err.getvalue(), err.getvalue()[-2000:]
    # and per-site lines only with -v
    assert "featurized BR00143976" not in err.getvalue()
    json.dumps({})
