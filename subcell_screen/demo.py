"""The demo: simulate a small HPA-style screen with planted effects and run the whole pipeline on it.

Offline on 2 CPU cores it takes a few minutes. Without SubCell weights in the model cache the demo uses the
classical featurizer and says so (first lines, log, report banner); with weights present
(``subcell-screen models download rybg/MAE-CellS-ProtS-Pool``) it embeds cells with SubCell.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

__all__ = ["DemoResult", "run_demo", "demo_config"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoResult:
    """What the demo produced."""

    out: Path
    store_path: Path
    reports: tuple[Path, ...]
    top_hits: pl.DataFrame = field(repr=False)
    relocalization: pl.DataFrame = field(repr=False)
    answer_key: pl.DataFrame = field(repr=False)
    seconds: float = 0.0
    summary: str = ""

    def text(self) -> str:
        """What the CLI prints at the end."""
        with pl.Config(tbl_rows=12, tbl_cols=8, fmt_str_lengths=40, tbl_hide_dataframe_shape=True):
            lines = [self.summary, "",
                     f"screen store: {self.store_path / 'screen.duckdb'}",
                     *[f"report:       {p}" for p in self.reports],
                     "", "top hits (activity mAP vs DMSO, BH q-values):",
                     str(self.top_hits) if self.top_hits.height else "  not computed (see the score stage above)"]
            if self.relocalization.height:
                lines += ["", "relocalization (protein, perturbation, from -> to):", str(self.relocalization)]
            lines += ["", f"planted effects: {self.out / 'input' / 'answer_key.csv'}",
                      f"demo finished in {self.seconds:.0f} s"]
        return "\n".join(lines)


def choose_featurizer(choice: str, *, model: str, cache_dir: str | Path | None = None) -> tuple[str, str]:
    """``(featurizer, reason)`` for the demo.

    ``auto`` uses SubCell when its weights are already in the model cache *and* a CUDA device is present (the
    demo never downloads 350 MB on its own, and SubCell on 2 CPU cores would take hours for ~4,700 cells at
    640 px); otherwise the classical featurizer. ``subcell`` forces SubCell (downloading the weights when
    missing and allowed); ``classical`` forces classical features.
    """
    if choice == "classical":
        return "classical", "classical features requested (--featurizer classical)"
    if choice == "subcell":
        return "subcell", "SubCell requested (--featurizer subcell)"
    from .embed import WeightsError, ensure_model_files

    try:
        ensure_model_files(model, cache_dir=cache_dir, offline=True)
    except WeightsError:
        return "classical", (f"SubCell weights for {model} are not in the model cache: using classical "
                             f"CellProfiler-style features (get them with `subcell-screen models download {model}`, "
                             "then rerun with --featurizer subcell)")
    import torch

    if not torch.cuda.is_available():
        return "classical", ("no CUDA device: SubCell on the CPU would take hours for this screen, so the demo uses "
                             "classical features (rerun with --featurizer subcell to embed on the CPU anyway)")
    return "subcell", f"SubCell {model} on the GPU (weights found in the model cache)"


def demo_config(out: str | Path, *, seed: int = 0, progress: bool | None = None,
                featurizer: str = "classical", preset: str = "demo") -> tuple[object, object]:
    """Simulate the demo screen under ``out/input`` and return ``(config, simulated_screen)``.

    The config writes the store to ``out`` (``out/screen.duckdb``) and reports to ``out/reports``;
    ``featurizer`` (``classical`` or ``subcell``) is the per-cell featurizer.
    """
    from ._errors import SubcellScreenError
    from .config import load_config
    from .simulate import simulate_screen

    out = Path(out)
    sim_dir = out / "input"
    if out.is_dir() and any(out.iterdir()) and not (out / "screen.duckdb").exists() and not sim_dir.exists():
        raise SubcellScreenError(f"{out} is not empty and is not a demo folder (no screen.duckdb, no input/): the demo "
                                 "writes its screen there; pass --out with a new or empty folder")
    if (sim_dir / "config.toml").is_file() and (sim_dir / "answer_key.csv").is_file():
        from .simulate import open_simulated_screen

        sim = open_simulated_screen(sim_dir)
    elif sim_dir.is_dir() and any(sim_dir.iterdir()):
        raise SubcellScreenError(f"{sim_dir} holds files but not a complete demo simulation (config.toml and "
                                 f"answer_key.csv; an interrupted first run?): delete {sim_dir} to simulate again, "
                                 "or pass --out with a new folder")
    else:
        sim = simulate_screen(sim_dir, style="hpa", preset=preset, seed=seed)
    cfg = load_config(sim.config)
    cfg = cfg.model_copy(update={
        "screen": cfg.screen.model_copy(update={"path": out.resolve()}),
        "report": cfg.report.model_copy(update={"out": (out / "reports").resolve()}),
        # Haralick texture is ~80 % of the classical featurizer's time; the demo skips it to stay within a few
        # minutes on 2 CPU cores (the planted effects do not need it)
        "embedding": cfg.embedding.model_copy(update={
            "featurizer": featurizer, "classical_families": ["shape", "intensity", "correlation", "radial"]}),
    })
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.toml").write_text("# The demo's run config (written by `subcell-screen demo`): rerun any stage with\n"
                                   f"#   subcell-screen run {out / 'demo.toml'} --stages score,map,report\n"
                                   + cfg.to_toml())
    return cfg, sim


def run_demo(out: str | Path = "demo_out", *, seed: int = 0, force: bool = False, progress: bool | None = None,
             featurizer: str = "auto", preset: str = "demo", echo: Callable[[str], None] | None = None
             ) -> DemoResult:
    """Simulate the demo screen and run every stage on it.

    Parameters
    ----------
    out
        Output folder (created): ``screen.duckdb``, ``cells/``, ``reports/``, ``input/`` (simulated images).
    seed
        Simulation seed.
    force
        Recompute everything instead of resuming.
    progress
        Progress bars.
    featurizer
        ``auto``, ``subcell`` or ``classical`` (see :func:`choose_featurizer`).
    preset
        Simulation preset (``demo``; ``smoke`` is a 4-well plate for quick checks).
    echo
        Where to print the plan's first lines (the CLI passes ``click.echo``).

    Returns
    -------
    DemoResult
    """
    from .pipeline import run, top_hits
    from .store import ScreenStore

    t0 = time.perf_counter()
    say = echo or (lambda s: logger.info(s))
    from .config import EmbeddingSection

    chosen, reason = choose_featurizer(featurizer, model=EmbeddingSection().model)
    say(f"featurizer choice: {reason}")
    say(f"simulating the demo screen under {Path(out) / 'input'} ...")
    cfg, sim = demo_config(out, seed=seed, progress=progress, featurizer=chosen, preset=preset)
    result = run(cfg, force=force, progress=progress, on_plan=lambda plan: [say(line) for line in plan.lines()])
    with ScreenStore.open(cfg.screen.path, read_only=True) as store:
        hits = top_hits(store, n=10) if store.has_table("scores") else pl.DataFrame()
        reloc = store.sql("SELECT protein, perturbation_id, readout, from_class, to_class, effect_size, q_value "
                          "FROM relocalization ORDER BY q_value, p_value LIMIT 8") \
            if store.has_table("relocalization") else pl.DataFrame()
    key = pl.read_csv(sim.answer_key_path)
    return DemoResult(out=Path(out), store_path=Path(cfg.screen.path), reports=result.reports, top_hits=hits,
                      relocalization=reloc, answer_key=key, seconds=time.perf_counter() - t0,
                      summary=result.summary())
