"""``subcell-screen map CONFIG``: the phenotypic map of a screen (tables in the store + ``map_report.html``)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

logger = logging.getLogger(__name__)


@click.command(name="map")
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--per-dose/--per-perturbation", default=None, help="One item per perturbation and concentration "
              "(compound identity is then an annotation), or per perturbation (default: [map].per_dose).")
@click.option("--annotation", "annotations", multiple=True, metavar="COLUMN",
              help="Metadata_ column to test for enrichment (repeatable; default Metadata_moa, Metadata_target).")
@click.option("--resolution", "resolutions", multiple=True, type=float, metavar="GAMMA",
              help="Clustering resolution (repeatable; larger = finer; default 0.5 1 2 4 8).")
@click.option("--neighbors", type=int, default=None, help="Neighbours per item in the kNN graph ([map].n_neighbors).")
@click.option("--activity", type=click.Choice(["auto", "scores", "replicates", "controls", "none"]),
              default=None,
              help="([map].activity) Which perturbations are clustered: the score stage's hits (auto: when scored), replicate "
                   "consistency, distance from the negative controls, or all.")
@click.option("--seed", type=int, default=None, help="Seed of the layout ([map].seed).")
@click.option("--attention/--no-attention", default=None,
              help="Overlay SubCell pooler attention on example cells (needs the weights in the model cache).")
def map_command(config: Path, per_dose: bool | None, annotations: tuple[str, ...], resolutions: tuple[float, ...],
                neighbors: int | None, activity: str | None, seed: int | None, attention: bool | None) -> None:
    """Build the phenotypic map of the screen described by CONFIG: clusters at several resolutions, 2-D
    coordinates, enrichment and nearest neighbours in the store (map_* tables), and map_report.html next to
    the other reports."""
    from ..config import load_config
    from ..phenomap import attention_model, run_map_stage
    from ..store import ScreenStore

    cfg = load_config(config)
    sec = cfg.map  # options given on the command line override the config's [map] section
    per_dose = sec.per_dose if per_dose is None else per_dose
    annotations = annotations or tuple(sec.annotations or ())
    resolutions = resolutions or tuple(sec.resolutions or ())
    neighbors = sec.n_neighbors if neighbors is None else neighbors
    activity = sec.activity if activity is None else activity
    seed = sec.seed if seed is None else seed
    attention = sec.attention if attention is None else attention
    with ScreenStore.open(cfg.screen.path) as store:
        model, note = attention_model(store, embedding=cfg.embedding, device=cfg.device) if attention else (
            None, "attention overlays off")
        click.echo(note, err=model is None and attention)
        result = run_map_stage(store, out_dir=Path(cfg.report.out), per_dose=per_dose,
                               annotations=list(annotations) or None, resolutions=list(resolutions) or None,
                               n_neighbors=neighbors, seed=seed, activity=activity, model=model,
                               channel_map=cfg.channel_map())
    m = result.map
    summary = m.cluster_summary
    for line in result.messages:
        click.echo(line)
    click.echo(f"{m.n_items} items, {int(m.items['active'].sum())} active, {len(m.features)} features")
    for (res,), grp in summary.group_by(["resolution"], maintain_order=True):
        active = grp.filter(~grp["inactive"])
        click.echo(f"  resolution {res:g}: {active.height} clusters, {active['label'].drop_nulls().len()} labelled")
    sig = m.enrichment.filter(m.enrichment["q_value"] < m.parameters["q_threshold"])
    click.echo(f"{sig.height} enriched (cluster, term) pairs at q < {m.parameters['q_threshold']:g}")
    click.echo(f"tables: {', '.join(result.tables)}")
    click.echo(f"report: {result.report}")
    click.echo(f"done in {result.seconds:.1f} s")
