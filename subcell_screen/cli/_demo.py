"""``subcell-screen demo``: simulate a small screen with planted effects and run the whole pipeline."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("demo_out"), show_default=True,
              help="Output folder: screen.duckdb, reports/ and the simulated images.")
@click.option("--seed", type=int, default=0, show_default=True, help="Simulation seed.")
@click.option("--force", is_flag=True, help="Recompute everything (default: resume).")
@click.option("--featurizer", type=click.Choice(["auto", "subcell", "classical"]), default="auto", show_default=True,
              help="auto: SubCell when its weights are cached and a GPU is present, else classical features.")
@click.option("--preset", type=click.Choice(["demo", "smoke"]), default="demo", show_default=True,
              help="Simulation size: the demo screen, or a 4-well smoke plate (seconds).")
@click.option("--progress/--no-progress", default=None)
def demo(out: Path, seed: int, force: bool, featurizer: str, preset: str, progress: bool | None) -> None:
    """Simulate an HPA-style screen (HDAC8 relocalizing under vorinostat, morphology hits, null compounds),
    run segmentation, features, profiles, scoring and reports, and print where everything is."""
    from ..demo import run_demo

    result = run_demo(out, seed=seed, force=force, progress=progress, featurizer=featurizer, preset=preset, echo=click.echo)
    click.echo(result.text())
