"""The reports a pipeline run builds: the banner shows that run as finished, the title is [screen].name, and a
later report-only run keeps pointing the banner at the run that made the data."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from subcell_screen.config import load_config
from subcell_screen.pipeline import run
from subcell_screen.simulate import simulate_screen
from subcell_screen.store import ScreenStore


class _Banner(HTMLParser):
    """``data-col`` -> text of the banner's ``<dd data-query="run_banner">`` cells, and the page title."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self.title = ""
        self._col: str | None = None
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "dd" and a.get("data-query") == "run_banner":
            self._col = a.get("data-col")
            self.values[self._col] = ""
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag):
        if tag == "dd":
            self._col = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._col is not None:
            self.values[self._col] += data
        if self._in_title:
            self.title += data


def _banner(path) -> _Banner:
    p = _Banner()
    p.feed(path.read_text(encoding="utf-8"))
    return p


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report_run")
    sim = simulate_screen(tmp / "sim", style="hpa", preset="smoke", seed=0)
    cfg = load_config(sim.config)
    cfg = cfg.model_copy(update={
        "screen": cfg.screen.model_copy(update={"path": tmp / "screen", "name": "HDAC8 pilot, plate 1"}),
        "report": cfg.report.model_copy(update={"out": tmp / "reports"}),
        "embedding": cfg.embedding.model_copy(update={
            "featurizer": "classical", "classical_families": ["shape", "intensity"],
            "classical_zernike_degree": -1})})
    return cfg, run(cfg, progress=False)


def test_reports_built_by_run_show_it_finished(smoke_run):
    cfg, result = smoke_run
    assert {p.name for p in result.reports} == {"qc_report.html", "hit_report.html", "map_report.html"}
    with ScreenStore.open(cfg.screen.path, read_only=True) as store:
        rec = store.sql("SELECT * FROM runs WHERE run_id = ?", [result.run_id]).row(0, named=True)
    for path in result.reports:
        page = _banner(path)
        assert page.values["run_id"] == result.run_id
        assert page.values["status"] == "ok"
        shown = page.values["finished_at"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", shown), shown
        # the time the reports show is when the stages were done, at or before the final record
        assert shown <= rec["finished_at"].strftime("%Y-%m-%d %H:%M:%S")
        assert page.values["featurizer"] == "classical"
        kind = {"qc": "QC report", "hit": "Hit report", "map": "Phenotypic map"}[path.name.split("_")[0]]
        assert page.title == f"{kind} — HDAC8 pilot, plate 1"


def test_report_only_run_keeps_the_banner_on_the_run_that_made_the_data(smoke_run):
    cfg, first = smoke_run
    # the configured featurizer is SubCell; the report stage loads no model and so cannot know it was not used
    cfg = cfg.model_copy(update={"embedding": cfg.embedding.model_copy(update={"featurizer": "subcell"}),
                                 "screen": cfg.screen.model_copy(update={"name": "HDAC8 pilot (renamed)"})})
    again = run(cfg, stages=["report"], progress=False)
    assert again.run_id != first.run_id
    for path in again.reports:
        page = _banner(path)
        assert page.values["run_id"] == first.run_id
        assert (page.values["status"], page.values["featurizer"]) == ("ok", "classical")
        assert page.title.endswith(" — HDAC8 pilot (renamed)")  # the newest name
