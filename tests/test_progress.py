"""The ``progress`` convention of every library function (DEVELOPERS.md): None = a bar only when stderr is a
terminal (tqdm's ``disable=None``), True = always, False = never; never tied to the logging level."""

from __future__ import annotations

import io
import logging
import sys

import numpy as np
import polars as pl
import pytest
import tifffile

from subcell_screen.store import ScreenStore

# (progress, stderr is a terminal, bar shown)
CASES = [(None, False, False), (None, True, True), (True, False, True), (False, True, False)]


class _Stderr(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


@pytest.fixture()
def stderr(monkeypatch, caplog):
    """Install a fake stderr (terminal or not) and log at INFO, as the CLI does: the bar must not follow it."""
    caplog.set_level(logging.INFO)

    def install(tty: bool) -> _Stderr:
        stream = _Stderr(tty)
        monkeypatch.setattr(sys, "stderr", stream)
        return stream

    return install


def _cells_store(path, *, plates=("P1", "P2")) -> ScreenStore:
    rng = np.random.default_rng(0)
    store = ScreenStore.create(path)
    store.register_feature_set("fs", kind="subcell", feature_names=["e0", "e1", "e2"])
    for plate in plates:
        for well in ("A01", "A02"):
            n = 3
            df = pl.DataFrame({"plate": [plate] * n, "well": [well] * n, "site": [1] * n,
                               "cell_id": list(range(1, n + 1))},
                              schema={"plate": pl.String, "well": pl.String, "site": pl.Int64, "cell_id": pl.Int64}
                              ).with_columns(pl.Series("features", rng.normal(size=(n, 3)).astype(np.float32),
                                                       dtype=pl.Array(pl.Float32, 3)))
            store.write_cell_features("fs", df, plate=plate, well=well, site=1)
    return store


@pytest.mark.parametrize(("progress", "tty", "shown"), CASES)
def test_well_profiles_bar(tmp_path, stderr, progress, tty, shown):
    """--no-progress showed a "well profiles" bar: None meant "when logging at INFO", which the CLI always is."""
    from subcell_screen.profiles import well_profiles_from_store

    with _cells_store(tmp_path / "screen") as store:
        err = stderr(tty)
        prof = well_profiles_from_store(store, feature_set="fs", metadata=False, progress=progress)
    assert prof.height == 4
    assert ("well profiles" in err.getvalue()) is shown, err.getvalue()
    assert "site files" not in err.getvalue()  # one bar per call: the per-plate reads show none


@pytest.mark.parametrize(("progress", "tty", "shown"), CASES)
def test_check_sites_bar(tmp_path, stderr, progress, tty, shown):
    from subcell_screen.io import check_sites, read_plate

    folder = tmp_path / "img" / "P1"
    folder.mkdir(parents=True)
    for field in range(1, 23):  # > 20 sites: the old rule showed a bar at INFO whatever the terminal
        tifffile.imwrite(folder / f"r01c01f{field:02d}p01-ch1sk1fk1fl1.tiff", np.zeros((8, 8), np.uint16))
    index = read_plate(tmp_path / "img", channel_names="1=DNA")
    err = stderr(tty)
    report = check_sites(index, progress=progress, workers=1)
    assert report.n_ok == 22
    assert ("checking sites" in err.getvalue()) is shown, err.getvalue()


@pytest.mark.parametrize(("progress", "tty", "shown"), CASES)
def test_measure_cells_bar(stderr, progress, tty, shown):
    from subcell_screen.features import measure_cells

    nuclei = np.zeros((40, 40), np.int32)
    nuclei[5:12, 5:12] = 1
    nuclei[20:30, 22:31] = 2
    image = np.random.default_rng(0).integers(100, 2000, size=(1, 40, 40)).astype(np.uint16)
    err = stderr(tty)
    table = measure_cells(image, nuclei, nuclei, channel_names=["DNA"], families=["shape", "intensity"],
                          progress=progress)
    assert table.height == 2
    assert ("features" in err.getvalue()) is shown, err.getvalue()


@pytest.mark.parametrize(("progress", "tty", "shown"), CASES)
def test_average_precision_bars(stderr, progress, tty, shown):
    from subcell_screen.score import average_precision, mean_average_precision

    rng = np.random.default_rng(0)
    meta = pl.DataFrame({"pert": ["a"] * 4 + ["b"] * 4 + ["ctl"] * 8, "ctl": [False] * 8 + [True] * 8})
    feats = rng.normal(size=(16, 5))
    err = stderr(tty)
    ap = average_precision(meta, feats, pos_sameby=["pert"], pos_diffby=[], neg_sameby=[], neg_diffby=["ctl"],
                           progress_bar=progress)
    mean_average_precision(ap, sameby=["pert"], null_size=100, threshold=0.05, seed=0, progress_bar=progress)
    assert ("average precision" in err.getvalue()) is shown, err.getvalue()
    assert ("mAP p-values" in err.getvalue()) is shown, err.getvalue()
