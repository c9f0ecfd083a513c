"""The bad-input catalogue (issue 17): each case is one bad input and the outcome it must get.

Outcomes (``Case.expected``):

``refused``
    A clear error (the exception type in ``Case.error``) that names the file, line, key or column; nothing
    runs, nothing is written, and no code from the input is executed.
``site failed``
    That site fails with its file (or key) named; the rest of the plate finishes, and every other site's
    numbers are exactly those of a run without the bad site.
``marked``
    Accepted, and marked as such where the run's provenance says what it used (unverified weights).

``Case.item`` is the item of issue 17 the case comes from (0: handled before issue 17, kept as a regression
case). Each case's ``check`` builds the input in a temp folder, runs the real code path and asserts the outcome.
The site-level cases share one pipeline run (:func:`plate_runs`): two simulated plates with the bad sites
added next to good ones, against a run of the same plates without them.

Add a case: write ``_case_<name>(tmp_path)`` and a :class:`Case` row in ``CASES``.
"""

from __future__ import annotations

import csv
import re
import shutil
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import tifffile

OUTCOMES = ("refused", "site failed", "marked")


@dataclass(frozen=True)
class Case:
    """One bad input: what it is, which issue item, the expected outcome and the check."""

    id: str
    item: int
    bad_input: str
    expected: str
    error: str
    check: Callable[..., None]


# ------------------------------------------------------------------------------------------------------------
# weights (item 1)


class _Payload:
    """Pickles to a call that writes ``marker`` when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _subcell_payload(tmp_path: Path, *, source: str) -> None:
    import torch

    from subcell_screen.embed import CheckpointError, get_model_card, load_model
    from subcell_screen.embed.weights import _update_record, sha256_file

    card = get_model_card("bg/ViT-ProtS-Pool")
    cache, marker = tmp_path / "cache", tmp_path / "pwned"
    cache.mkdir()
    path = cache / card.encoder_file
    torch.save({"encoder.embeddings.cls_token": _Payload(marker)}, path)
    _update_record(cache, card.encoder_file, sha256=sha256_file(path), size=path.stat().st_size, source=source)
    with pytest.raises(CheckpointError, match=card.encoder_file):
        load_model(card.name, cache_dir=cache, offline=True, device="cpu", classifiers=False)
    assert not marker.exists(), "code in the weights file ran"


def _case_weights_payload_recorded_download(tmp_path: Path) -> None:
    _subcell_payload(tmp_path, source="download")


def _case_weights_payload_recorded_manual(tmp_path: Path) -> None:
    _subcell_payload(tmp_path, source="manual")


def _case_weights_unverified_marked(tmp_path: Path) -> None:
    from subcell_screen.embed import load_model
    from subcell_screen.embed.testing import make_tiny_checkpoint
    from subcell_screen.embed.weights import HASHES_FILE

    cache = tmp_path / "cache"
    tc = make_tiny_checkpoint(cache, "bg/ViT-ProtS-Pool", width=32, depth=1, heads=2)
    (cache / HASHES_FILE).unlink()   # now a hand-copied file: no published, no recorded hash
    model = load_model("bg/ViT-ProtS-Pool", cache_dir=cache, offline=True, device="cpu")
    prov = model.files.provenance()
    assert prov["verified"] is False and prov["unverified"] == [tc.encoder.name, tc.classifiers[0].name]
    assert {f["check"] for f in prov["files"].values()} == {"unverified"}


def _case_weights_truncated(tmp_path: Path) -> None:
    from subcell_screen.embed import CheckpointError, load_model
    from subcell_screen.embed.testing import make_tiny_checkpoint
    from subcell_screen.embed.weights import HASHES_FILE

    cache = tmp_path / "cache"
    tc = make_tiny_checkpoint(cache, "bg/ViT-ProtS-Pool", width=32, depth=1, heads=2)
    (cache / HASHES_FILE).unlink()
    tc.encoder.write_bytes(tc.encoder.read_bytes()[:500])
    with pytest.raises(CheckpointError, match=tc.encoder.name):
        load_model("bg/ViT-ProtS-Pool", cache_dir=cache, offline=True, device="cpu")


def _case_cellpose_weights_payload(tmp_path: Path) -> None:
    import torch

    from subcell_screen.segment._cellpose import CellposeWeightsError, _load_state_dict

    marker, path = tmp_path / "pwned", tmp_path / "cpsam"
    torch.save({"W2": _Payload(marker)}, path)
    with pytest.raises(CellposeWeightsError, match=str(path)):
        _load_state_dict(path)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------------------
# sites in a plate run (items 2-5): one run with the bad sites, one without

FAST_CLASSICAL = {"featurizer": "classical", "classical_families": ["shape", "intensity"],
                  "classical_zernike_degree": -1}
COLORS = ("red", "yellow", "blue", "green")
#: site key -> (case id, what its error must mention)
BAD_SITES = {
    ("SIMHPA001", "B02", 3): ("tiff-declares-60000x60000", "60000x60000"),  # 4 x 7.2 GB if decoded
    ("SIMHPA001", "B03", 3): ("site-of-another-size", "120x120"),
    ("SIMHPA001", "B04", 3): ("float64-site-on-uint16-plate", "float64"),
    ("SIMHPA002", "B05", 3): ("all-nan-site", "NaN"),
    ("SIMHPA002", "B02", 3): ("site-with-inf-pixels", "NaN or infinite"),
}


def _site_files(folder: Path, plate: str, well: str, site: int) -> dict[str, Path]:
    return {c: folder / f"{plate}_{well}_{site}_{c}.tif" for c in COLORS}


def _plant_bad_sites(images: Path, oversized_tiff) -> None:
    def copy(plate, well, src_site, dst_site, transform):
        src, dst = _site_files(images, plate, well, src_site), _site_files(images, plate, well, dst_site)
        for c in COLORS:
            tifffile.imwrite(dst[c], transform(tifffile.imread(src[c])))

    for path in _site_files(images, "SIMHPA001", "B02", 3).values():  # all channels: the site passes the
        oversized_tiff(path)                                             # shape check between its channels
    copy("SIMHPA001", "B03", 1, 3, lambda a: a[:120, :120])
    copy("SIMHPA001", "B04", 1, 3, lambda a: a / 65535.0)
    copy("SIMHPA002", "B05", 1, 3, lambda a: np.full(a.shape, np.nan, np.float32))

    def some_inf(a):
        a = a.copy()
        a[10, 10:20] = np.inf
        return a

    copy("SIMHPA002", "B02", 1, 3, some_inf)


def _two_plate_screen(root: Path):
    from subcell_screen.config import load_config
    from subcell_screen.simulate import simulate_screen

    sim = simulate_screen(root / "sim", style="hpa", preset="smoke", sites_per_well=1, seed=3)
    images = sim.config.parent / "images"
    for p in sorted(images.glob("SIMHPA001_*.tif")):  # a float32 copy of the plate, as another tool exports it
        tifffile.imwrite(images / p.name.replace("SIMHPA001", "SIMHPA002"),
                         tifffile.imread(p).astype(np.float32))
    plates = sim.config.parent / "plates.csv"
    table = pl.read_csv(plates)
    pl.concat([table, table.with_columns(pl.lit("SIMHPA002").alias("plate"))]).write_csv(plates)
    cfg = load_config(sim.config)
    return cfg.model_copy(update={"embedding": cfg.embedding.model_copy(update=FAST_CLASSICAL)})


def _run(cfg, images: Path, screen: Path):
    from subcell_screen.pipeline import run

    cfg = cfg.model_copy(update={"images": cfg.images.model_copy(update={"source": images}),
                                 "screen": cfg.screen.model_copy(update={"path": screen})})
    return run(cfg, stages=("segment", "embed"), progress=False)


@pytest.fixture(scope="module")
def plate_runs(tmp_path_factory, request):
    """Two plates (uint16 SIMHPA001, float32 SIMHPA002, 4 sites each): a clean run, and a run with the five
    :data:`BAD_SITES` added; returns ``(clean store path, bad store path, result of the bad run)``."""
    root = tmp_path_factory.mktemp("catalogue")
    cfg = _two_plate_screen(root)
    assert cfg.illumination_correction()
    clean_images = Path(cfg.images.source)
    bad_images = root / "bad_images"
    shutil.copytree(clean_images, bad_images)
    _plant_bad_sites(bad_images, request.getfixturevalue("oversized_tiff"))
    _run(cfg, clean_images, root / "clean")
    bad = _run(cfg, bad_images, root / "bad")     # must finish: no exception, no aborted plate
    return root / "clean", root / "bad", bad


def _site_tables(screen: Path) -> dict[str, pl.DataFrame]:
    from subcell_screen.store import ScreenStore

    with ScreenStore.open(screen, read_only=True) as store:
        sites = store.sql("SELECT plate, well, site, status, error FROM sites ORDER BY ALL")
        fs = store.sql("SELECT feature_set FROM feature_sets")["feature_set"].to_list()
        assert len(fs) == 1
        feats = store.read_cell_features(fs[0]).sort(["plate", "well", "site", "cell_id"])
        cells = store.sql("SELECT * FROM cells ORDER BY ALL")
        illum = {p: store.read_illumination(p) for p in ("SIMHPA001", "SIMHPA002")}
    return {"sites": sites, "features": feats, "cells": cells, "illumination": illum}


@pytest.fixture(scope="module")
def plate_tables(plate_runs):
    clean, bad, _ = plate_runs
    return _site_tables(clean), _site_tables(bad)


def _check_bad_site(case_id: str, clean: dict, bad: dict) -> None:
    key, (_, mention) = next((k, v) for k, v in BAD_SITES.items() if v[0] == case_id)
    sites = bad["sites"]
    row = sites.filter((pl.col("plate") == key[0]) & (pl.col("well") == key[1]) & (pl.col("site") == key[2]))
    assert row.height == 1 and row["status"][0] == "failed", row
    err = row["error"][0]
    assert mention in err and f"{key[0]}_{key[1]}_{key[2]}_" in err, err
    # the rest of both plates finished
    good = sites.filter([(p, w, int(s)) not in BAD_SITES for p, w, s in sites.select("plate", "well", "site").rows()])
    assert good.height == 8 and set(good["status"]) != {"failed"} and good["error"].is_null().all(), good
    # ... with exactly the numbers of the run without the bad sites: functions, cells, features
    for plate in ("SIMHPA001", "SIMHPA002"):
        assert set(bad["illumination"][plate]) == set(clean["illumination"][plate]) == {
            "microtubules", "er", "nucleus", "protein"}
        for ch, f in clean["illumination"][plate].items():
            assert f.max() > 1.05, (plate, ch)  # correction is on
            np.testing.assert_array_equal(bad["illumination"][plate][ch], f, err_msg=f"{plate} {ch}")
    assert bad["cells"].drop(*[c for c in bad["cells"].columns if c.endswith("_at")]).equals(
        clean["cells"].drop(*[c for c in clean["cells"].columns if c.endswith("_at")]))
    assert bad["features"].equals(clean["features"]) and clean["features"].height > 20


def _site_case(case_id: str) -> Callable[..., None]:
    def check(tmp_path: Path, request: pytest.FixtureRequest) -> None:
        clean, bad = request.getfixturevalue("plate_tables")
        _check_bad_site(case_id, clean, bad)

    check.__name__ = f"_case_{case_id}"
    return check


def _case_oversized_tiff_sites_check(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    from subcell_screen.cli import main

    for f in (1, 2):
        tifffile.imwrite(tmp_path / f"r01c01f0{f}p01-ch1sk1fk1fl1.tiff", np.zeros((8, 8), np.uint16))
    request.getfixturevalue("oversized_tiff")(tmp_path / "r01c01f02p01-ch1sk1fk1fl1.tiff")
    capsys = request.getfixturevalue("capsys")
    assert main(["sites", str(tmp_path), "--check"]) == 0
    out = capsys.readouterr().out
    assert "1 ok, 1 failed" in out and "r01c01f02p01-ch1sk1fk1fl1.tiff" in out and "60000x60000" in out


def _case_png_declares_huge(tmp_path: Path) -> None:
    import struct
    import zlib

    from subcell_screen.io import ImageTooLargeError, load_site, probe_site, read_plate

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0)   # 60000 x 60000, 8-bit grey
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
           + chunk(b"IEND", b""))
    for c in COLORS:
        path = tmp_path / f"P_A01_1_{c}.png"
        path.write_bytes(png)
    rec = read_plate(tmp_path, reader="hpa").records[0]
    for fn in (probe_site, load_site):
        with pytest.raises(ImageTooLargeError, match=r"P_A01_1_red.png"):
            fn(rec)


def _case_truncated_tiff(tmp_path: Path) -> None:
    from subcell_screen.io import check_sites, read_plate

    for f in (1, 2):
        tifffile.imwrite(tmp_path / f"r01c01f0{f}p01-ch1sk1fk1fl1.tiff", np.ones((64, 64), np.uint16))
    p = tmp_path / "r01c01f02p01-ch1sk1fk1fl1.tiff"
    p.write_bytes(p.read_bytes()[:2000])
    report = check_sites(read_plate(tmp_path))
    assert report.n_ok == 1 and report.failures[0][0][2] == 2 and "truncated" in report.failures[0][1]
    assert str(p) in report.failures[0][1]


# ------------------------------------------------------------------------------------------------------------
# config (item 8)


def _config_error(tmp_path: Path, section: str, line: str, key: str, mention: str) -> None:
    from subcell_screen._errors import ConfigError
    from subcell_screen.config import load_config

    sections = {"screen": ['path = "s"'], "images": ['source = "i"'], "plates": ['table = "p.csv"']}
    sections.setdefault(section, []).append(line)
    toml = tmp_path / "run.toml"
    toml.write_text("".join(f"[{name}]\n" + "\n".join(lines) + "\n" for name, lines in sections.items()))
    with pytest.raises(ConfigError) as err:
        load_config(toml)
    msg = str(err.value)
    assert str(toml) in msg and key in msg and mention in msg, msg


def _case_config_feature_select_unknown(tmp_path: Path) -> None:
    _config_error(tmp_path, "profiles", 'feature_select = ["variance_threshold", "corelation_threshold"]',
                  "[profiles].feature_select", "unknown operation(s) ['corelation_threshold']")


def _case_config_classical_families_empty(tmp_path: Path) -> None:
    _config_error(tmp_path, "embedding", "classical_families = []", "[embedding].classical_families",
                  "at least 1 item")


def _case_config_pixel_size_inf(tmp_path: Path) -> None:
    _config_error(tmp_path, "images", "pixel_size_um = inf", "[images].pixel_size_um", "finite number")


def _case_config_epsilon_inf(tmp_path: Path) -> None:
    _config_error(tmp_path, "profiles", "epsilon = inf", "[profiles].epsilon", "finite number")


# ------------------------------------------------------------------------------------------------------------
# portable (item 11)


@pytest.fixture(scope="module")
def portable_model(tmp_path_factory):
    from subcell_screen.embed import load_model
    from subcell_screen.embed.testing import make_tiny_checkpoint

    cache = tmp_path_factory.mktemp("bg")
    make_tiny_checkpoint(cache, "bg/MAE-CellS-ProtS-Pool", width=32, depth=1, heads=2)
    return load_model("bg/MAE-CellS-ProtS-Pool", cache_dir=cache, offline=True, device="cpu")


def _path_list(tmp_path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """``path_list.csv`` for a ``bg`` model; rows are (b_image, g_image, output_prefix)."""
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir(exist_ok=True)
    for name in ("b.tif", "g.tif"):
        tifffile.imwrite(tmp_path / "img" / name, rng.integers(0, 4000, (32, 32), np.uint16))
    path = tmp_path / "path_list.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["r_image", "y_image", "b_image", "g_image", "output_prefix"])
        for b, g, prefix in rows:
            w.writerow(["", "", b, g, prefix])
    return path


def _portable_refused(tmp_path: Path, request, prefix: str, *, line_of_bad: int = 3) -> None:
    from subcell_screen._errors import LayoutError
    from subcell_screen.embed.portable import run_portable

    model = request.getfixturevalue("portable_model")
    csv_path = _path_list(tmp_path, [("img/b.tif", "img/g.tif", "ok/cell0"), ("img/b.tif", "img/g.tif", prefix)])
    out = tmp_path / "work" / "out"
    before = {p for p in tmp_path.rglob("*")}
    with pytest.raises(LayoutError) as err:
        run_portable(csv_path, model_channels="bg", output_dir=out, model=model)
    msg = str(err.value)
    assert str(csv_path) in msg and f"line {line_of_bad}" in msg and "output_prefix" in msg, msg
    assert {p for p in tmp_path.rglob("*")} == before, "something was written"


def _case_portable_prefix_parent(tmp_path: Path, request) -> None:
    _portable_refused(tmp_path, request, "../escaped/cell1")


def _case_portable_prefix_absolute(tmp_path: Path, request) -> None:
    _portable_refused(tmp_path, request, str(tmp_path / "elsewhere" / "cell1"))


def _case_portable_prefix_symlink(tmp_path: Path, request) -> None:
    from subcell_screen._errors import LayoutError
    from subcell_screen.embed.portable import run_portable

    model = request.getfixturevalue("portable_model")
    csv_path = _path_list(tmp_path, [("img/b.tif", "img/g.tif", "link/cell0")])
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "outside").mkdir()
    (out / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(LayoutError, match=r"line 2.*outside the output folder"):
        run_portable(csv_path, model_channels="bg", output_dir=out, model=model)
    assert not list((tmp_path / "outside").iterdir())


def _case_portable_legacy_folder_outside_o(tmp_path: Path, request) -> None:
    from subcell_screen._errors import LayoutError
    from subcell_screen.embed.portable import run_portable

    model = request.getfixturevalue("portable_model")
    path = _path_list(tmp_path, [])

    def write(folder: str) -> None:
        path.write_text("r_image,y_image,b_image,g_image,output_folder,output_prefix\n"
                        f",,img/b.tif,img/g.tif,{folder},cell0\n")

    write(str(tmp_path / "elsewhere"))
    with pytest.raises(LayoutError, match=r"line 2, column 'output_folder'.*is absolute.*relative sub-folder"):
        run_portable(path, model_channels="bg", output_dir=tmp_path / "out", model=model)
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "out").exists()
    write("sub")  # a relative legacy folder goes inside -o
    res = run_portable(path, model_channels="bg", output_dir=tmp_path / "out", model=model)
    assert (tmp_path / "out" / "sub" / "cell0_embedding.npy").is_file()
    assert all(tmp_path / "out" in Path(f).parents for f in res.files)


def _case_portable_url_image(tmp_path: Path, request) -> None:
    from subcell_screen._errors import LayoutError
    from subcell_screen.embed.portable import run_portable

    model = request.getfixturevalue("portable_model")
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_error(404)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/b.tif"
        csv_path = _path_list(tmp_path, [(url, "img/g.tif", "cell0")])
        with pytest.raises(LayoutError, match=r"line 2.*'b_image'.*URL.*allow_remote"):
            run_portable(csv_path, model_channels="bg", output_dir=tmp_path / "out", model=model)
        assert hits == [] and not (tmp_path / "out").exists()
        from subcell_screen.cli import main

        capsys = request.getfixturevalue("capsys")
        assert main(["portable", "--path_list", str(csv_path), "-c", "bg", "-o", str(tmp_path / "out"),
                     "--cache-dir", str(tmp_path / "no-weights")]) != 0
        assert "--allow-remote" in capsys.readouterr().err and hits == []
        # asked for: it is fetched (and the server's 404 is an error naming the URL)
        with pytest.raises(Exception, match="404"):
            run_portable(csv_path, model_channels="bg", output_dir=tmp_path / "out", model=model,
                         allow_remote=True)
        assert hits == ["/b.tif"]
    finally:
        httpd.shutdown()
        httpd.server_close()


# ------------------------------------------------------------------------------------------------------------
# store bookkeeping, whole-plate failures, CLI misuse, damaged databases (items 6, 7, 9, 10, 12)

QUAD = {"B02": "DMSO", "B03": "DMSO", "B04": "BRD-K50691590", "B05": "BRD-K50691590"}


def _real_plate(tmp_path: Path, *, drop=(), **sections):
    """Four wells of real Cell Painting pixels (tests/realplates.py), the example config, classical everything."""
    import realplates as rp

    from subcell_screen.config import load_config

    images = tmp_path / "images"
    rp.write_phenix_plate(images, "P1", {w: i for i, w in enumerate(QUAD)})
    rp.write_layout(tmp_path / "lay.csv", QUAD)
    rp.write_plates_table(tmp_path / "plates.csv", {"P1": "lay"})
    sections = {"embedding": rp.FAST_FEATURES, "profiles": {"feature_select": []}, **sections}
    path = rp.example_config(tmp_path, images=images, plates_table=tmp_path / "plates.csv", drop=drop, **sections)
    return path, load_config(path)


def _per_cell_file(tmp_path: Path, damage: Callable[[Path], None]) -> None:
    from subcell_screen.pipeline import run
    from subcell_screen.store import ScreenStore

    _, cfg = _real_plate(tmp_path)
    run(cfg, stages=("segment", "embed"), progress=False)
    with ScreenStore.open(cfg.screen.path, read_only=True) as store:
        before = store.read_cell_features("classical").sort("well", "cell_id")
        target = store.cell_feature_file("classical", "P1", "B03", 1)
    damage(target)
    # the profiles come from the site profiles: every well is there, and the lost cells are named
    prof = run(cfg, stages=("profile",), progress=False).stages[0]
    assert prof.ok == 4
    assert any(re.search(r"4 site\(s\) lost their per-cell rows \(.*cells-\w+\.parquet is (missing|unreadable)", m)
               and "P1 B03 s1" in m for m in prof.messages), prof.messages
    # resume rebuilds the sites of that file (the plate's compacted file: all 4)
    seg, emb = run(cfg, stages=("segment", "embed"), progress=False).stages
    assert (emb.ok, emb.skipped) == (4, 0) and any("featurized again" in m for m in seg.messages + emb.messages)
    with ScreenStore.open(cfg.screen.path, read_only=True) as store:
        after = store.read_cell_features("classical").sort("well", "cell_id")
        assert store.damaged_cell_feature_files("classical") == {}
    assert after.equals(before)
    prof = run(cfg, stages=("profile",), progress=False).stages[0]
    assert prof.ok == 4 and not any("lost" in m for m in prof.messages)


def _case_cell_file_deleted(tmp_path: Path) -> None:
    _per_cell_file(tmp_path, lambda p: p.unlink())


def _case_cell_file_corrupt(tmp_path: Path) -> None:
    _per_cell_file(tmp_path, lambda p: p.write_bytes(p.read_bytes()[:200]))


def _case_whole_plate_fails(tmp_path: Path, request) -> None:
    from subcell_screen.cli import main

    path, cfg = _real_plate(tmp_path)
    for f in (cfg.images.source / "P1" / "Images").glob("*-ch5sk1fk1fl1.tiff"):  # every DNA file cut short
        f.write_bytes(f.read_bytes()[:300])
    capsys = request.getfixturevalue("capsys")
    assert main(["run", str(path), "--stages", "segment,embed", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no site of plate(s) ['P1'] could be segmented" in err
    assert "Most common failure reasons:" in err and "4 site(s): load:" in err and "<file>" in err


def _case_wrong_channel_preset(tmp_path: Path) -> None:
    from subcell_screen.pipeline import PipelineError, run

    _, cfg = _real_plate(tmp_path, channels={"preset": "hpa"}, drop=[("channels", "nucleus"),
                                                                       ("channels", "cytoplasm")])
    with pytest.raises(PipelineError, match=r"plate P1: channel map 'hpa' needs channel\(s\) 'microtubules'.*"
                                            r"channels found: Brightfield, ER, AGP, Mito, DNA, RNA"):
        run(cfg, progress=False)


def _cli_refused(tmp_path: Path, request, args: list[str], fragment: str) -> None:
    from subcell_screen.cli import main

    path, _ = _real_plate(tmp_path)
    capsys = request.getfixturevalue("capsys")
    rc = main([a.replace("CONFIG", str(path)) for a in args])
    err = capsys.readouterr().err
    assert rc == 2 and fragment in err and "Traceback" not in err, err
    assert not (tmp_path / "screen" / "screen.duckdb").exists()


def _case_cli_unknown_stage(tmp_path: Path, request) -> None:
    _cli_refused(tmp_path, request, ["run", "CONFIG", "--stages", "segment,foo"],
                 "unknown stage(s) foo; choose from segment,embed,profile,score,map,report")


def _case_cli_empty_stages(tmp_path: Path, request) -> None:
    _cli_refused(tmp_path, request, ["run", "CONFIG", "--stages", ""], "no stage given")


def _damaged_db(tmp_path: Path, request, damage: Callable[[bytes], bytes]) -> None:
    from subcell_screen.cli import main
    from subcell_screen.pipeline import run

    path, cfg = _real_plate(tmp_path)
    run(cfg, stages=("segment",), progress=False)
    db = tmp_path / "screen" / "screen.duckdb"
    db.write_bytes(damage(db.read_bytes()))
    capsys = request.getfixturevalue("capsys")
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(db) in err and "damaged" in err and "another process" not in err and "Traceback" not in err, err


def _case_db_truncated(tmp_path: Path, request) -> None:
    _damaged_db(tmp_path, request, lambda b: b[: len(b) // 2])


def _case_db_random_bytes(tmp_path: Path, request) -> None:
    _damaged_db(tmp_path, request, lambda b: np.random.default_rng(0).bytes(len(b)))


def _case_demo_out_not_empty(tmp_path: Path, request) -> None:
    from subcell_screen.cli import main

    out = tmp_path / "mydata"
    out.mkdir()
    (out / "precious.csv").write_text("a,b\n1,2\n")
    capsys = request.getfixturevalue("capsys")
    assert main(["demo", "--out", str(out), "--preset", "smoke", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "is not empty and is not a demo folder" in err and "--out" in err and "overwrite=True" not in err
    assert sorted(p.name for p in out.iterdir()) == ["precious.csv"]


def _case_plate_barcode_unstorable(tmp_path: Path) -> None:
    from subcell_screen import LayoutError
    from subcell_screen.pipeline import run
    from subcell_screen.store import ScreenStore

    _, cfg = _real_plate(tmp_path)
    (tmp_path / "plates.csv").write_text("plate,layout\nP1,lay\nBR:0042/A,lay\n")
    with pytest.raises(LayoutError, match=r"plates\.csv, line 3, column 'plate': plate barcode 'BR:0042/A'"):
        run(cfg, progress=False)
    with ScreenStore.open(cfg.screen.path, read_only=True) as store:  # refused before anything was written
        assert store.sql("SELECT count(*) AS n FROM plates")["n"][0] == 0


def _case_load_failures_counted_once(tmp_path: Path) -> None:
    from subcell_screen.pipeline import run

    _, cfg = _real_plate(tmp_path)
    (cfg.images.source / "P1" / "Images" / "r02c03f01p01-ch5sk1fk1fl1.tiff").unlink()  # B03: its DNA is gone
    seg, emb = run(cfg, stages=("segment", "embed"), progress=False).stages
    assert (seg.ok, seg.failed, seg.skipped) == (3, 1, 0) and (emb.ok, emb.failed, emb.skipped) == (3, 1, 0)
    again = run(cfg, stages=("segment", "embed"), progress=False).stages
    assert [(s.ok, s.failed, s.skipped) for s in again] == [(0, 1, 3), (0, 1, 3)]  # 4 sites, each counted once


# ------------------------------------------------------------------------------------------------------------
# the table

CASES: tuple[Case, ...] = (
    Case("weights-pickle-payload-recorded-at-download", 1,
         "a pickle payload as encoder .pth, its SHA-256 in hashes.json as a first download records it",
         "refused", "CheckpointError", _case_weights_payload_recorded_download),
    Case("weights-pickle-payload-recorded-by-hand", 1,
         "a pickle payload as encoder .pth, recorded by `models verify --record`",
         "refused", "CheckpointError", _case_weights_payload_recorded_manual),
    Case("weights-without-published-hash", 1,
         "hand-copied weight files, no published or recorded SHA-256",
         "marked", "provenance verified=False", _case_weights_unverified_marked),
    Case("weights-truncated", 0, "encoder .pth cut to 500 bytes (hash not known)",
         "refused", "CheckpointError", _case_weights_truncated),
    Case("cellpose-weights-pickle-payload", 1, "a pickle payload as Cellpose weights file",
         "refused", "CellposeWeightsError", _case_cellpose_weights_payload),
    Case("tiff-declares-60000x60000", 2, "a 300-byte TIFF declaring 60000 x 60000 uint16 pixels, in a plate run",
         "site failed", "ImageTooLargeError", _site_case("tiff-declares-60000x60000")),
    Case("tiff-declares-60000x60000-sites-check", 2, "the same file under `subcell-screen sites --check`",
         "site failed", "ImageTooLargeError", _case_oversized_tiff_sites_check),
    Case("png-declares-60000x60000", 0, "a 100-byte PNG declaring 60000 x 60000 pixels (Pillow's bomb check "
         "caught it before, as a plain SiteLoadError)",
         "site failed", "ImageTooLargeError", _case_png_declares_huge),
    Case("site-of-another-size", 3, "one 120x120 site on a 160x160 plate, illumination correction on",
         "site failed", "SiteLoadError", _site_case("site-of-another-size")),
    Case("all-nan-site", 4, "one all-NaN site on a float32 plate, illumination correction on",
         "site failed", "NonFiniteSiteError", _site_case("all-nan-site")),
    Case("site-with-inf-pixels", 4, "one site with 10 infinite pixels on a float32 plate",
         "site failed", "NonFiniteSiteError", _site_case("site-with-inf-pixels")),
    Case("float64-site-on-uint16-plate", 5, "one float64 (0..1) site among uint16 sites",
         "site failed", "MixedDtypeError", _site_case("float64-site-on-uint16-plate")),
    Case("tiff-truncated", 0, "a TIFF cut in the middle of its image data",
         "site failed", "SiteLoadError", _case_truncated_tiff),
    Case("config-feature-select-unknown-operation", 8, 'feature_select = ["corelation_threshold"] (typo)',
         "refused", "ConfigError", _case_config_feature_select_unknown),
    Case("config-classical-families-empty", 8, "classical_families = []",
         "refused", "ConfigError", _case_config_classical_families_empty),
    Case("config-pixel-size-inf", 8, "pixel_size_um = inf", "refused", "ConfigError", _case_config_pixel_size_inf),
    Case("config-epsilon-inf", 8, "[profiles] epsilon = inf", "refused", "ConfigError", _case_config_epsilon_inf),
    Case("portable-output-prefix-parent", 11, "output_prefix = ../escaped/cell1",
         "refused", "LayoutError", _case_portable_prefix_parent),
    Case("portable-output-prefix-absolute", 11, "output_prefix = /abs/path/cell1",
         "refused", "LayoutError", _case_portable_prefix_absolute),
    Case("portable-output-prefix-through-symlink", 11, "output_prefix under a symlink that leaves -o",
         "refused", "LayoutError", _case_portable_prefix_symlink),
    Case("portable-legacy-output-folder-outside-o", 11, "legacy output_folder = /abs/path with -o given",
         "refused", "LayoutError", _case_portable_legacy_folder_outside_o),
    Case("per-cell-file-deleted-after-its-stage", 6, "a plate's per-cell Parquet deleted after embed finished",
         "marked", "-", _case_cell_file_deleted),
    Case("per-cell-file-corrupt", 6, "a plate's per-cell Parquet cut to 200 bytes", "marked", "-",
         _case_cell_file_corrupt),
    Case("whole-plate-fails", 7, "every DNA file of the plate truncated", "refused", "PipelineError",
         _case_whole_plate_fails),
    Case("wrong-channel-preset", 7, "[channels] preset = hpa on Cell Painting images", "refused", "PipelineError",
         _case_wrong_channel_preset),
    Case("cli-unknown-stage", 9, "run --stages segment,foo", "refused", "BadParameter", _case_cli_unknown_stage),
    Case("cli-empty-stages", 9, 'run --stages ""', "refused", "BadParameter", _case_cli_empty_stages),
    Case("screen-db-truncated", 9, "screen.duckdb cut to half its size", "refused", "StoreError",
         _case_db_truncated),
    Case("screen-db-random-bytes", 9, "screen.duckdb overwritten with random bytes", "refused", "StoreError",
         _case_db_random_bytes),
    Case("demo-out-not-empty", 9, "demo --out into a folder of the user's files", "refused", "SubcellScreenError",
         _case_demo_out_not_empty),
    Case("plate-barcode-unstorable", 12, "a plate barcode with ':' and '/'", "refused", "LayoutError",
         _case_plate_barcode_unstorable),
    Case("load-failure-counted-once", 12, "a site whose DNA file is missing, stage summary", "site failed",
         "SiteLoadError", _case_load_failures_counted_once),
    Case("portable-image-url", 11, "an http:// image path without allow_remote",
         "refused", "LayoutError", _case_portable_url_image),
)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    import inspect

    params = inspect.signature(case.check).parameters
    case.check(tmp_path, request) if "request" in params else case.check(tmp_path)


def test_catalogue_is_well_formed() -> None:
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.expected for c in CASES} <= set(OUTCOMES)
    by_item = Counter(c.item for c in CASES)
    assert {1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12} <= set(by_item), by_item
    assert {v[0] for v in BAD_SITES.values()} <= {c.id for c in CASES}


def test_bad_run_finished_and_reported_each_bad_site(plate_runs) -> None:
    _, _, result = plate_runs
    seg, emb = result.stages
    assert seg.ok == emb.ok == 8 and seg.cells == emb.cells > 20
