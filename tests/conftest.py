"""Shared pytest fixtures. Tests never touch the network or the user's home: caches go to tmp paths."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]

# test helper modules beside the tests (realplates.py) import by name
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Model caches and Cellpose's folder point to a temp dir; nothing is downloaded into $HOME."""
    cache = tmp_path_factory.getbasetemp() / "model-cache"
    monkeypatch.setenv("SUBCELL_SCREEN_MODELS", str(cache / "subcell"))
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(cache / "cellpose"))
    monkeypatch.setenv("SUBCELL_SCREEN_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("MPLBACKEND", "Agg")


@pytest.fixture
def data_dir() -> Path:
    """``tests/data``."""
    return DATA


@pytest.fixture
def repo_dir() -> Path:
    """Repository root."""
    return REPO


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")
