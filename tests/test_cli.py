"""Tests for the command-line entry point (foundation commands)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from subcell_screen import __version__
from subcell_screen.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_help_and_version(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("run", "demo", "layout", "sites", "models", "report"):
        assert cmd in out
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_console_script_installed():
    exe = Path(sys.executable).parent / "subcell-screen"
    res = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and __version__ in res.stdout


def test_layout_check_ok(capsys):
    path = REPO / "plate_layouts" / "jump" / "JUMP-Target-1_compound_platemap.tsv"
    assert main(["layout", "check", str(path), "--plate-format", "384"]) == 0
    out = capsys.readouterr().out
    assert "384 wells" in out and "64 negcon" in out


def test_layout_check_bad(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("well,perturbation_id,control_type\nA01,DMSO,negcon\nA01,x,\n")
    assert main(["layout", "check", str(bad)]) != 0
    err = capsys.readouterr().err
    assert str(bad) in err and "line 3" in err and "'well'" in err and "duplicate well A01" in err


def test_layout_convert(tmp_path, capsys):
    src = REPO / "plate_layouts" / "jump" / "JUMP-MOA_compound_platemap.tsv"
    out = tmp_path / "moa.csv"
    assert main(["layout", "convert", str(src), str(out)]) == 0
    assert out.read_text().startswith("well,perturbation_id")
