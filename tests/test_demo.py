"""Tests for the demo (the README's main command) and its public contract."""

from __future__ import annotations

import re

import pytest

from subcell_screen.cli import main
from subcell_screen.demo import choose_featurizer
from subcell_screen.store import ScreenStore


def test_demo_cli_contract_on_the_smoke_plate(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--preset", "smoke", "--no-progress"]) == 0
    text = capsys.readouterr()
    lines = (text.out + text.err).splitlines()
    assert lines[0].startswith("featurizer choice: SubCell weights for rybg/MAE-CellS-ProtS-Pool are not in the model cache")
    assert (out / "screen.duckdb").is_file()
    # the store owns its schema: every table and view of a finished demo store is declared
    from subcell_screen.store import TABLES, VIEWS

    with ScreenStore.open(out, read_only=True) as store:
        assert set(store.tables()) == set(TABLES) | set(VIEWS)
    html = sorted(out.glob("**/*.html"))
    assert {p.name for p in html} == {"qc_report.html", "hit_report.html", "map_report.html"}
    for page in html:
        body = page.read_text()
        assert not re.search(r"(src|href)=\"https?://", body)  # self-contained
        assert "data:image/png;base64," in body or page.name == "hit_report.html"
    with ScreenStore.open(out, read_only=True) as store:
        assert store.sql("SELECT count(*) n FROM cells")["n"][0] > 0
        assert store.has_table("well_profiles")
    assert "planted effects:" in text.out


def test_choose_featurizer(tmp_path, monkeypatch):
    from subcell_screen.embed.testing import make_tiny_checkpoint

    model = "rybg/MAE-CellS-ProtS-Pool"
    monkeypatch.setenv("SUBCELL_SCREEN_MODELS", str(tmp_path / "empty"))
    chosen, reason = choose_featurizer("auto", model=model)
    assert chosen == "classical" and "not in the model cache" in reason and "models download" in reason
    assert choose_featurizer("classical", model=model)[0] == "classical"
    assert choose_featurizer("subcell", model=model)[0] == "subcell"
    cache = tmp_path / "cache"
    make_tiny_checkpoint(cache, model, width=32, depth=1, heads=2)
    monkeypatch.setenv("SUBCELL_SCREEN_MODELS", str(cache))
    torch = pytest.importorskip("torch")
    chosen, reason = choose_featurizer("auto", model=model)
    if torch.cuda.is_available():
        assert chosen == "subcell"
    else:
        assert chosen == "classical" and "no CUDA device" in reason
