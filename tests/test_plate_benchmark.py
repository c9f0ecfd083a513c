"""The plate benchmark (``benchmarks/plate_run.py``) at the smallest size on the CPU: it builds a simulated Cell
Painting plate on disk, runs every stage to a finished report through the Cellpose path (the blob-flow head; no
ViT on a CPU) at a working pixel size with a tiny SubCell model, and reports what it measured. Run here so that
the GPU session's one script does not fail on something a CPU could have caught."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("cellpose")
pytest.importorskip("torch")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "plate_run.py"


@pytest.fixture(scope="module")
def plate_run(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("plate_run", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path_factory.mktemp("plate")
    args = ["--out", str(out / "run"), "--wells", "4", "--sites", "1", "--size", "192", "--cellpose", "blob",
            "--working-pixel-size", "1.0", "--subcell", "tiny", "--crop-size", "64", "--embed-batch-size", "16",
            "--device", "cpu", "--sim-workers", "1", "--mask-workers", "1", "--json", str(out / "plate.json")]
    result = mod.main(args)
    return result, out


def test_the_plate_runs_to_a_finished_report(plate_run, capsys):
    result, out = plate_run
    assert result["kind"] == "CPU smoke run (not a GPU result)"
    assert result["plate"]["sites"] == 4 and result["plate"]["size_px"] == 192
    st = result["stages"]
    assert list(st) == ["segment", "embed", "profile", "score", "map", "report"]
    assert (st["segment"]["ok"], st["segment"]["failed"], st["embed"]["ok"], st["embed"]["failed"]) == (4, 0, 4, 0)
    cells = result["rates"]["cells_embedded"]
    assert cells == st["embed"]["cells"] == st["segment"]["cells"] > 0
    assert result["rates"]["sites_per_s"] == pytest.approx(4 / result["seconds"]["per_site_stages"])
    assert result["rates"]["cells_per_s"] == pytest.approx(cells / result["seconds"]["per_site_stages"])
    s = result["seconds"]
    assert s["run_total"] == pytest.approx(s["models"] + s["per_site_stages"] + s["table_stages"], rel=1e-6)
    reports = sorted(p.name for p in (out / "run" / "reports").glob("*.html"))
    assert reports and any("qc" in name for name in reports)
    assert json.loads((out / "plate.json").read_text())["stages"] == st


def test_what_was_not_measured_is_said(plate_run):
    result, _ = plate_run
    assert result["gpu_utilization"] is None and result["device"]["gpu"] is None
    assert "projection_not_measured" not in result  # 192² sites and tiny models say nothing about a plate
    assert result["models"]["segmenter"] == "cellpose:cpsam (blob)"


def test_model_forward_time_is_recorded_by_the_benchmark_and_the_run(plate_run):
    result, _ = plate_run
    fwd = result["model_forward"]
    assert set(fwd) == {"segment", "embed"}
    # one Cellpose forward per tile batch and pass (nuclei, cells) per site; SubCell at least once per site
    assert fwd["segment"]["calls"] >= 8 and fwd["embed"]["calls"] >= 4
    for f in fwd.values():
        assert 0 < f["fraction_of_per_site_wall"] < 1 and f["timer"] == "host clock"
    # the run itself reports the same in its stage messages
    lines = result["messages"]
    assert any(m.startswith("segment model forward passes:") for m in lines)
    assert any(m.startswith("embed model forward passes:") for m in lines)


def test_masks_are_stored_at_the_acquired_size(plate_run):
    from subcell_screen.store import ScreenStore

    _, out = plate_run
    with ScreenStore.open(out / "run" / "screen", read_only=True) as store:
        sites = store.sql("SELECT plate, well, site FROM masks ORDER BY well, site")
        assert sites.height == 4
        nuclei, cells = store.read_masks(*sites.row(0))
        assert nuclei.shape == cells.shape == (192, 192)  # segmented at 125² (1.0 µm/px), stored at 192²
