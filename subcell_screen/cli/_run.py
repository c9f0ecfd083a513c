"""``subcell-screen run|segment|embed|profile|score|report``: thin wrappers around :mod:`subcell_screen.pipeline`."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import click

STAGE_COMMANDS = {
    "segment": ("segment",),
    "embed": ("embed",),
    "profile": ("profile",),
    "score": ("score",),
    "report": ("report",),
}


def _log_to_screen(screen: Path) -> logging.Handler:
    """Also log to <screen>/logs/<timestamp>.log (the CLI owns logging configuration)."""
    logs = screen / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(logs / time.strftime("run-%Y%m%dT%H%M%S.log"), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    pkg = logging.getLogger("subcell_screen")
    pkg.addHandler(handler)
    if pkg.level > logging.INFO or pkg.level == logging.NOTSET:
        pkg.setLevel(logging.INFO)
        for h in pkg.handlers:
            if h is not handler and isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                h.setLevel(logging.WARNING)
    return handler


def run_stages(config_path: Path, stages: tuple[str, ...], *, force: bool, engine: str = "local",
               address: str | None = None, progress: bool | None = None) -> None:
    """Load the config, print the plan, run the stages and print the summary."""
    from ..config import load_config
    from ..pipeline import run

    config = load_config(config_path)
    handler = _log_to_screen(Path(config.screen.path))
    t0 = time.perf_counter()

    def show_plan(plan) -> None:
        for line in plan.lines():
            click.echo(line, err=line.startswith("WARNING"))

    try:
        result = run(config, stages=stages, force=force, progress=progress, engine=engine, ray_address=address,
                     on_plan=show_plan)
    finally:
        logging.getLogger("subcell_screen").removeHandler(handler)
        handler.close()
    click.echo(result.summary())
    click.echo(f"done in {time.perf_counter() - t0:.1f} s")


_force = click.option("--force", is_flag=True, help="Recompute sites and tables that are already done.")
_progress = click.option("--progress/--no-progress", default=None, help="Progress bars (default: on a terminal).")


@click.command()
@click.argument("config", type=click.Path(path_type=Path))
@_force
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Run segmentation and embedding here, or on a Ray cluster.")
@click.option("--address", default=None, help="Ray cluster address (with --engine ray).")
@click.option("--stages", default=None, help="Comma-separated subset of segment,embed,profile,score,report.")
@_progress
def run(config: Path, force: bool, engine: str, address: str | None, stages: str | None,
        progress: bool | None) -> None:
    """Run every stage of a screen described by CONFIG (TOML)."""
    from ..pipeline import STAGES

    if stages is None:
        chosen = STAGES
    else:
        chosen = tuple(s.strip() for s in stages.split(",") if s.strip())
        unknown = [s for s in chosen if s not in STAGES]
        if unknown or not chosen:
            raise click.BadParameter(
                (f"unknown stage(s) {', '.join(unknown)}" if unknown else "no stage given")
                + f"; choose from {','.join(STAGES)} (comma-separated), or leave --stages out to run them all",
                param_hint="--stages")
    run_stages(config, chosen, force=force, engine=engine, address=address, progress=progress)


def _stage_command(name: str, stages: tuple[str, ...], help_text: str) -> click.Command:
    @click.command(name=name, help=help_text)
    @click.argument("config", type=click.Path(path_type=Path))
    @_force
    @_progress
    def cmd(config: Path, force: bool, progress: bool | None) -> None:
        run_stages(config, stages, force=force, progress=progress)

    return cmd


segment = _stage_command("segment", ("segment",), "Segment every site of the screen described by CONFIG.")
embed = _stage_command("embed", ("embed",), "Compute per-cell features (SubCell or classical) from stored masks.")
profile = _stage_command("profile", ("profile",), "Aggregate, normalise and select well profiles.")
score = _stage_command("score", ("score",), "Score perturbations: activity mAP, hits, dose response, relocalization.")
report = _stage_command("report", ("report",), "Render the QC and hit reports from the screen store.")

if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
