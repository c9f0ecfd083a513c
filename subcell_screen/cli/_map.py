"""``subcell-screen map CONFIG``: the phenotypic map of a screen (tables in the store + ``map_report.html``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

logger = logging.getLogger(__name__)


def _attention_model(config: Any, store: Any) -> tuple[Any, str]:
    """The SubCell model of the profiles' feature set, from the local model cache (never downloaded here)."""
    sets = store.sql("SELECT DISTINCT p.feature_set, f.kind, f.model FROM profiles p JOIN feature_sets f "
                     "USING (feature_set) WHERE p.profile_set = 'normalized'")
    if sets.height != 1 or sets["kind"][0] != "subcell":
        return None, "the profiles are not SubCell embeddings: no attention overlays"
    name = sets["model"][0] or config.embedding.model
    from ..embed import WeightsError, load_model

    try:
        model = load_model(name, cache_dir=config.embedding.cache_dir, offline=True, device=config.device,
                           precision="fp32")
    except WeightsError as exc:
        return None, f"SubCell weights of {name} not in the model cache ({exc}): no attention overlays"
    return model, f"attention overlays from {name}"


@click.command(name="map")
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--per-dose", is_flag=True, help="One item per perturbation and concentration (default: per "
              "perturbation); compound identity is then an annotation.")
@click.option("--annotation", "annotations", multiple=True, metavar="COLUMN",
              help="Metadata_ column to test for enrichment (repeatable; default Metadata_moa, Metadata_target).")
@click.option("--resolution", "resolutions", multiple=True, type=float, metavar="GAMMA",
              help="Clustering resolution (repeatable; larger = finer; default 0.5 1 2 4 8).")
@click.option("--neighbors", default=15, show_default=True, help="Neighbours per item in the kNN graph.")
@click.option("--activity", type=click.Choice(["auto", "scores", "replicates", "controls", "none"]),
              default="auto", show_default=True,
              help="Which perturbations are clustered: the score stage's hits (auto: when scored), replicate "
                   "consistency, distance from the negative controls, or all.")
@click.option("--seed", default=0, show_default=True, help="Seed of the layout.")
@click.option("--attention/--no-attention", default=True, show_default=True,
              help="Overlay SubCell pooler attention on example cells (needs the weights in the model cache).")
def map_command(config: Path, per_dose: bool, annotations: tuple[str, ...], resolutions: tuple[float, ...],
                neighbors: int, activity: str, seed: int, attention: bool) -> None:
    """Build the phenotypic map of the screen described by CONFIG: clusters at several resolutions, 2-D
    coordinates, enrichment and nearest neighbours in the store (map_* tables), and map_report.html next to
    the other reports."""
    from ..config import load_config
    from ..phenomap import run_map_stage
    from ..store import ScreenStore

    cfg = load_config(config)
    with ScreenStore.open(cfg.screen.path) as store:
        model, note = _attention_model(cfg, store) if attention else (None, "attention overlays off")
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
