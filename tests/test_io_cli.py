"""``subcell-screen sites``: human summary, JSON records, options, and the no-match error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile

from subcell_screen.cli import main

DATA = Path(__file__).parent / "data"


def test_sites_summary_on_imagexpress_files(capsys):
    assert main(["sites", str(DATA / "bbbc039" / "images"), "--channel-names", "1=DNA"]) == 0
    out = capsys.readouterr().out
    assert "reader: imagexpress (detected: matched 4 file(s)" in out
    assert "  not phenix: looked for rRRcCCfFFpPP-chNsk1fk1fl1.tiff" in out
    assert "1 plate(s), 4 well(s), 4 site(s)" in out
    assert "plate IXMtest: 4 well(s), 4 site(s) (1 per well), pixel size unknown µm/px" in out
    assert "  wells: A02, A06, A09, A12" in out and "  channels: DNA" in out


def test_sites_json_records(capsys):
    folder = DATA / "cellpainting" / "pediatric_site_crop256"
    assert main(["sites", str(folder), "--json", "--reader", "phenix", "--pixel-size", "0.656",
                 "--channel-names", "1=Brightfield,2=ER,3=AGP,4=Mito,5=DNA,6=RNA"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert (rec["plate"], rec["well"], rec["site"], rec["pixel_size_um"]) == ("pediatric_site_crop256", "C03", 3,
                                                                              0.656)
    assert list(rec["channels"]) == ["Brightfield", "ER", "AGP", "Mito", "DNA", "RNA"]
    assert rec["channels"]["DNA"].endswith("r03c03f03p01-ch5sk1fk1fl1.tiff")
    assert Path(rec["channels"]["DNA"]).is_file()


def test_sites_check_reports_failures(tmp_path, capsys):
    for f in (1, 2):
        tifffile.imwrite(tmp_path / f"r01c01f0{f}p01-ch1sk1fk1fl1.tiff", np.zeros((8, 8), np.uint16))
    (tmp_path / "r01c01f02p01-ch1sk1fk1fl1.tiff").write_bytes(b"II*\x00")
    assert main(["sites", str(tmp_path), "--check"]) == 0
    out = capsys.readouterr().out
    assert "2 site(s): 1 ok, 1 failed" in out and "FAILED site" in out and "r01c01f02p01" in out


def test_sites_nothing_matches_exits_non_zero(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "random_name.tif", np.zeros((4, 4), np.uint8))
    assert main(["sites", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert f"{tmp_path}: no reader matched" in err
    assert "hpa: looked for <plate>_<well>_<site>_{red,yellow,blue,green}" in err
    assert main(["sites", str(tmp_path / "missing")]) != 0
    assert "no such file or folder" in capsys.readouterr().err
