"""Shared pytest fixtures. Tests never touch the network or the user's home: caches go to tmp paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]


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


def write_oversized_tiff(path: Path, *, height: int = 60000, width: int = 60000) -> Path:
    """A ~300-byte TIFF whose header declares ``height x width`` uint16 pixels (one zlib strip of 16x16 zeros).

    A decompression-bomb-like input: reading its pixels would allocate ``2 * height * width`` bytes.
    """
    import struct

    import numpy as np
    import tifffile

    tifffile.imwrite(path, np.zeros((16, 16), np.uint16), compression="zlib", rowsperstrip=16, metadata=None)
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        patches = [(tags[n].valueoffset, tags[n].dtype, v)
                   for n, v in (("ImageWidth", width), ("ImageLength", height), ("RowsPerStrip", height))]
    with open(path, "r+b") as fh:
        for offset, dtype, value in patches:
            fh.seek(offset)
            fh.write(struct.pack("<H" if dtype == 3 else "<I", value))
    return path


@pytest.fixture(scope="session")
def oversized_tiff():
    """:func:`write_oversized_tiff`, as a fixture (tests cannot import conftest)."""
    return write_oversized_tiff


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
