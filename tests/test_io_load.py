"""Site loading: failure isolation (each failure with its message), prefetching iteration, site checks."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import tifffile

from subcell_screen import ScreenStore
from subcell_screen._errors import SubcellScreenError
from subcell_screen.io import (
    PlateUnreadableError,
    SiteLoadError,
    check_sites,
    iter_sites,
    load_site,
    probe_site,
    read_plate,
)

NAMES = "1=DNA,2=ER"


def _arr(seed: int, shape=(24, 32), dtype=np.uint16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4096, size=shape).astype(dtype)


def _plate(folder: Path, *, n_fields: int = 4, compression="lzw", shape=(24, 32)) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for f in range(1, n_fields + 1):
        for ch in (1, 2):
            a = _arr(f * 10 + ch, shape)
            tifffile.imwrite(folder / f"r01c01f{f:02d}p01-ch{ch}sk1fk1fl1.tiff", a, compression=compression)
            out[(f, ch)] = a
    return out


def _file(folder: Path, field: int, ch: int) -> Path:
    return folder / f"r01c01f{field:02d}p01-ch{ch}sk1fk1fl1.tiff"


def test_load_keeps_dtype_and_values(tmp_path):
    arrays = _plate(tmp_path / "P1")
    index = read_plate(tmp_path, channel_names=NAMES)
    site = load_site(index.records[2])
    assert site.data.dtype == np.uint16 and site.data.shape == (2, 24, 32)
    np.testing.assert_array_equal(site.data, np.stack([arrays[(3, 1)], arrays[(3, 2)]]))
    assert site.record is index.records[2]
    assert probe_site(index.records[2]) == ((2, 24, 32), np.dtype(np.uint16))
    only = load_site(index.records[2], channels=["er"])
    assert only.channel_names == ("ER",)
    np.testing.assert_array_equal(only.data[0], arrays[(3, 2)])
    with pytest.raises(SiteLoadError, match=r"no channel 'Mito'; the site has DNA, ER"):
        load_site(index.records[0], channels=["Mito"])


def test_inconsistent_shapes(tmp_path):
    _plate(tmp_path / "P1", n_fields=1)
    tifffile.imwrite(_file(tmp_path / "P1", 1, 2), _arr(1, (24, 30)))
    rec = read_plate(tmp_path, channel_names=NAMES).records[0]
    with pytest.raises(SiteLoadError) as err:
        load_site(rec)
    msg = str(err.value)
    assert str(_file(tmp_path / "P1", 1, 2)) in msg and str(_file(tmp_path / "P1", 1, 1)) in msg
    assert "channel 'ER' is 24x30 but channel 'DNA'" in msg and "must have one shape" in msg
    with pytest.raises(SiteLoadError, match="must have one shape"):
        probe_site(rec)


def test_inconsistent_dtypes(tmp_path):
    _plate(tmp_path / "P1", n_fields=1)
    tifffile.imwrite(_file(tmp_path / "P1", 1, 2), _arr(1).astype(np.uint8))
    rec = read_plate(tmp_path, channel_names=NAMES).records[0]
    with pytest.raises(SiteLoadError, match=r"ch2sk1fk1fl1.tiff: channel 'ER' is uint8 but channel 'DNA' .* is "
                                            r"uint16; all channels of a site must have one dtype"):
        load_site(rec)


@pytest.mark.parametrize("compression", [None, "lzw", "zstd"])
def test_truncated_tiff(tmp_path, compression):
    _plate(tmp_path / "P1", n_fields=1, compression=compression)
    bad = _file(tmp_path / "P1", 1, 1)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) * 2 // 3])
    rec = read_plate(tmp_path, channel_names=NAMES).records[0]
    with pytest.raises(SiteLoadError) as err:
        load_site(rec)
    assert f"{bad}: truncated TIFF: image data ends at byte" in str(err.value)
    with pytest.raises(SiteLoadError, match="truncated TIFF"):
        probe_site(rec)


def test_corrupt_compressed_data_found_on_decode(tmp_path):
    _plate(tmp_path / "P1", n_fields=1, compression="zstd", shape=(64, 64))
    bad = _file(tmp_path / "P1", 1, 2)
    with tifffile.TiffFile(bad) as tif:
        off, n = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    raw = bytearray(bad.read_bytes())
    raw[off + n // 3: off + n // 3 + 64] = bytes(range(64))  # same length, garbage inside the zstd frame
    bad.write_bytes(bytes(raw))
    rec = read_plate(tmp_path, channel_names=NAMES).records[0]
    assert probe_site(rec)[0] == (2, 64, 64)  # the header is intact
    with pytest.raises(SiteLoadError, match=rf"{bad.name}: cannot decode image data \("):
        load_site(rec)


def test_not_a_tiff_and_unreadable_paths(tmp_path):
    _plate(tmp_path / "P1", n_fields=3)
    _file(tmp_path / "P1", 1, 1).write_text("this is not an image")
    f2 = _file(tmp_path / "P1", 2, 2)
    f2.unlink()
    f2.mkdir()  # a folder where a file should be
    index = read_plate(tmp_path, channel_names=NAMES)
    with pytest.raises(SiteLoadError, match=r"ch1sk1fk1fl1.tiff: cannot read image \(TiffFileError"):
        load_site(index.records[0])
    with pytest.raises(SiteLoadError, match=r"r01c01f02p01-ch2sk1fk1fl1.tiff: not a file"):
        load_site(index.records[1])
    if os.geteuid() != 0:  # root reads anything
        f3 = _file(tmp_path / "P1", 3, 1)
        f3.chmod(0)
        try:
            with pytest.raises(SiteLoadError, match="permission denied"):
                load_site(index.records[2])
        finally:
            f3.chmod(0o644)


def test_site_load_error_is_a_package_error_and_pickles():
    err = SiteLoadError("channel file not found", key=("P1", "A01", 2), path="/x/y.tif")
    assert isinstance(err, SubcellScreenError)
    assert str(err) == "site P1 A01 s2: /x/y.tif: channel file not found"
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and back.key == ("P1", "A01", 2) and back.path == "/x/y.tif"


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_iter_sites_isolates_failures_in_order(tmp_path, workers):
    arrays = _plate(tmp_path / "P1", n_fields=6)
    _file(tmp_path / "P1", 2, 1).unlink()
    _file(tmp_path / "P1", 5, 2).write_bytes(b"II*\x00garbage")
    index = read_plate(tmp_path, channel_names=NAMES)
    out = list(iter_sites(index, prefetch=2, workers=workers))
    assert [r.site for r, _ in out] == [1, 2, 3, 4, 5, 6]
    failed = [r.site for r, x in out if isinstance(x, SiteLoadError)]
    assert failed == [2, 5]
    assert "channel file not found" in str(out[1][1]) and "r01c01f02p01-ch1" in str(out[1][1])
    for rec, img in out:
        if rec.site not in failed:
            np.testing.assert_array_equal(img.data, np.stack([arrays[(rec.site, 1)], arrays[(rec.site, 2)]]))


def test_iter_sites_raises_for_a_plate_without_readable_site(tmp_path):
    _plate(tmp_path / "GOOD", n_fields=2)
    _plate(tmp_path / "DEAD", n_fields=2)
    _file(tmp_path / "DEAD", 1, 2).unlink()
    _file(tmp_path / "DEAD", 2, 1).write_text("not a tiff")
    index = read_plate(tmp_path, channel_names=NAMES)
    seen = []
    with pytest.raises(PlateUnreadableError) as err:
        for rec, img in iter_sites(index, workers=2):
            seen.append((rec.plate, isinstance(img, SiteLoadError)))
    assert seen == [("DEAD", True), ("DEAD", True), ("GOOD", False), ("GOOD", False)]  # all yielded first
    assert err.value.plates == ("DEAD",)
    assert "plate DEAD: none of its 2 site(s) could be loaded; first error:" in str(err.value)
    assert "r01c01f01p01-ch2sk1fk1fl1.tiff: channel file not found" in str(err.value)
    # opting out
    assert len(list(iter_sites(index, workers=2, raise_on_unreadable_plate=False))) == 4


def test_iter_sites_stops_cleanly_when_consumer_breaks(tmp_path):
    _plate(tmp_path / "P1", n_fields=6)
    index = read_plate(tmp_path, channel_names=NAMES)
    gen = iter_sites(index, prefetch=3, workers=2)
    first = next(gen)
    gen.close()
    assert first[0].site == 1


def test_check_sites_records_failures_in_store(tmp_path):
    _plate(tmp_path / "img" / "P1", n_fields=3)
    _plate(tmp_path / "img" / "P2", n_fields=1)
    _file(tmp_path / "img" / "P1", 2, 2).unlink()
    index = read_plate(tmp_path / "img", channel_names=NAMES)
    with ScreenStore.create(tmp_path / "screen") as store:
        report = check_sites(index, store=store)
        assert (report.n_ok, report.n_failed, report.n_sites) == (3, 1, 4)
        assert report.plates == {"P1": (2, 1), "P2": (1, 0)}
        assert report.shapes == {(2, 24, 32): 3} and report.dtypes == {"uint16": 3}
        assert report.failures[0][0] == ("P1", "A01", 2)
        assert "channel file not found" in report.failures[0][1]
        text = report.summary()
        assert "4 site(s): 3 ok, 1 failed" in text and "FAILED site P1 A01 s2" in text

        sites = store.sql("SELECT plate, well, site, status, error, height, width, dtype, reader FROM sites "
                          "ORDER BY plate, site")
        assert sites["status"].to_list() == ["pending", "failed", "pending", "pending"]
        err = sites.filter(pl.col("status") == "failed")["error"][0]
        assert err.startswith("load: site P1 A01 s2: ") and "r01c01f02p01-ch2sk1fk1fl1.tiff" in err
        assert sites["height"].to_list() == [24, None, 24, 24] and sites["dtype"][0] == "uint16"
        assert set(sites["reader"]) == {"phenix"}
        stages = store.sql("SELECT site, status FROM site_stages WHERE stage = 'load' AND plate = 'P1' "
                           "ORDER BY site")
        assert stages["status"].to_list() == ["ok", "failed", "ok"]

        # the file comes back: the load failure is cleared, other statuses are kept
        store.set_site_status("P1", "A01", 1, stage="segment", status="ok")
        store.con.execute("UPDATE sites SET status = 'done' WHERE plate = 'P1' AND site = 1")
        _plate(tmp_path / "img" / "P1", n_fields=3)
        report2 = check_sites(index, store=store, decode=True)
        assert report2.n_failed == 0
        sites = store.sql("SELECT site, status, error FROM sites WHERE plate = 'P1' ORDER BY site")
        assert sites["status"].to_list() == ["done", "pending", "pending"]
        assert sites["error"].to_list() == [None, None, None]


def test_check_sites_plate_without_readable_site_is_an_error_after_recording(tmp_path):
    _plate(tmp_path / "img" / "P1", n_fields=2, compression="zstd")
    for f in (1, 2):
        p = _file(tmp_path / "img" / "P1", f, 1)
        p.write_bytes(p.read_bytes()[:40])
    index = read_plate(tmp_path / "img", channel_names=NAMES)
    with ScreenStore.create(tmp_path / "screen") as store:
        with pytest.raises(PlateUnreadableError, match=r"plate P1: none of its 2 site\(s\) could be loaded") as e:
            check_sites(index, store=store)
        assert e.value.report.n_failed == 2
        assert store.sql("SELECT count(*) AS n FROM sites WHERE status = 'failed'")["n"][0] == 2


def test_site_record_pickles():
    import pickle

    from subcell_screen.io import SiteRecord

    rec = SiteRecord(plate="P", well="A01", site=1, channels={"DNA": "a.tif", "ER": "b.tif"}, pixel_size_um=0.6,
                     reader="phenix")
    back = pickle.loads(pickle.dumps(rec))
    assert back == rec and list(back.channels) == ["DNA", "ER"]


# -- issue 17 item 2: declared pixel counts are limited before anything is allocated --------------------------

def test_oversized_declared_tiff_fails_its_site_before_allocating(tmp_path, oversized_tiff):
    from subcell_screen.io import MAX_PLANE_PIXELS, ImageTooLargeError

    _plate(tmp_path / "P1", n_fields=3)
    bomb = oversized_tiff(_file(tmp_path / "P1", 2, 1))
    assert bomb.stat().st_size < 2000
    index = read_plate(tmp_path, channel_names=NAMES)
    rec = index.records[1]
    with pytest.raises(ImageTooLargeError) as err:
        probe_site(rec)       # header only: what `sites --check` runs
    msg = str(err.value)
    assert str(bomb) in msg and "60000x60000" in msg and f"{MAX_PLANE_PIXELS:,}" in msg
    assert isinstance(err.value, SiteLoadError) and err.value.key == ("P1", "A01", 2)
    assert err.value.path == str(bomb)
    with pytest.raises(ImageTooLargeError, match="60000x60000"):
        load_site(rec)
    report = check_sites(index)
    assert (report.n_ok, report.n_failed) == (2, 1) and report.failures[0][0] == ("P1", "A01", 2)
    got = [(r.site, type(res).__name__) for r, res in iter_sites(index, workers=0)]
    assert got == [(1, "SiteImage"), (2, "ImageTooLargeError"), (3, "SiteImage")]


def test_pixel_limit_is_configurable_and_checks_png(tmp_path):
    from PIL import Image

    from subcell_screen.io import ImageTooLargeError

    _plate(tmp_path / "P1", n_fields=1)
    rec = read_plate(tmp_path, channel_names=NAMES).records[0]
    assert probe_site(rec, max_plane_pixels=24 * 32) == ((2, 24, 32), np.dtype(np.uint16))
    with pytest.raises(ImageTooLargeError, match=r"24x32 pixels .* limit of 767 pixels per plane"):
        probe_site(rec, max_plane_pixels=767)
    with pytest.raises(ImageTooLargeError):
        load_site(rec, max_plane_pixels=767)
    png = tmp_path / "hpa" / "pl_A1_1_blue.png"
    png.parent.mkdir()
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(png)
    hpa = read_plate(png.parent, reader="hpa").records[0]
    with pytest.raises(ImageTooLargeError, match=r"pl_A1_1_blue.png.*40x50"):
        load_site(hpa, channels=["nucleus"], max_plane_pixels=1000)
    assert load_site(hpa, channels=["nucleus"]).data.shape == (1, 40, 50)


def test_sites_check_cli_names_the_oversized_file(tmp_path, oversized_tiff, capsys):
    from subcell_screen.cli import main

    for f in (1, 2):
        tifffile.imwrite(tmp_path / f"r01c01f0{f}p01-ch1sk1fk1fl1.tiff", np.zeros((8, 8), np.uint16))
    oversized_tiff(tmp_path / "r01c01f02p01-ch1sk1fk1fl1.tiff")
    assert main(["sites", str(tmp_path), "--check"]) == 0
    out = capsys.readouterr().out
    assert "2 site(s): 1 ok, 1 failed" in out and "r01c01f02p01-ch1sk1fk1fl1.tiff" in out and "60000x60000" in out


# -- issue 17 item 5: one plate, one dtype: the minority dtype's sites are refused by name --------------------

def test_site_of_another_dtype_is_refused_by_check_sites(tmp_path):
    from subcell_screen.io import MixedDtypeError

    arrays = _plate(tmp_path / "img" / "P1", n_fields=5)
    _plate(tmp_path / "img" / "P2", n_fields=1)
    for ch in (1, 2):  # the same pixels, exported as float64 0..1 by another tool
        tifffile.imwrite(_file(tmp_path / "img" / "P1", 4, ch), arrays[(4, ch)] / 65535.0)
    index = read_plate(tmp_path / "img", channel_names=NAMES)
    with ScreenStore.create(tmp_path / "screen") as store:
        report = check_sites(index, store=store)
        assert (report.n_ok, report.n_failed) == (5, 1) and report.plates == {"P1": (4, 1), "P2": (1, 0)}
        assert report.dtypes == {"uint16": 5}
        key, msg = report.failures[0]
        assert key == ("P1", "A01", 4)
        assert "float64" in msg and "4 of plate P1's 5 readable sites are uint16" in msg
        assert str(_file(tmp_path / "img" / "P1", 4, 1)) in msg
        row = store.sql("SELECT status, error FROM sites WHERE plate = 'P1' AND site = 4").row(0)
        assert row[0] == "failed" and "float64" in row[1]
    err = MixedDtypeError("x", key=key)
    assert isinstance(pickle.loads(pickle.dumps(err)), MixedDtypeError)
    # decode=True finds the same
    assert check_sites(index, decode=True).failures[0][0] == ("P1", "A01", 4)


def test_dtype_tie_keeps_the_first_sites_dtype(tmp_path):
    arrays = _plate(tmp_path / "P1", n_fields=2)
    for ch in (1, 2):
        tifffile.imwrite(_file(tmp_path / "P1", 2, ch), arrays[(2, ch)].astype(np.float32))
    report = check_sites(read_plate(tmp_path, channel_names=NAMES))
    assert [k for k, _ in report.failures] == [("P1", "A01", 2)] and report.dtypes == {"uint16": 1}
