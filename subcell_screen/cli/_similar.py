"""``subcell-screen similar CONFIG PERT_ID``: the perturbations that look most like PERT_ID."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.argument("pert_id")
@click.option("-k", "--k", "k", default=10, show_default=True, help="Neighbours to list.")
@click.option("--per-dose", is_flag=True, help="Compare perturbation x concentration items (the query's doses "
              "are each a query).")
@click.option("--null", type=click.Choice(["nonreplicate", "negcon"]), default="nonreplicate", show_default=True,
              help="p-values against similarities of non-replicate pairs, or of negative-control "
                   "pseudo-perturbations to the query.")
@click.option("--exclude-replicates", is_flag=True, help="Leave the query's other doses out (with --per-dose).")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), default=None, help="Also write the table.")
def similar(config: Path, pert_id: str, k: int, per_dose: bool, null: str, exclude_replicates: bool,
            csv_path: Path | None) -> None:
    """List the K perturbations of the screen described by CONFIG whose consensus profiles are most similar
    (cosine) to PERT_ID's, with p-values against a null of non-replicate pairs (or negative controls)."""
    import polars as pl

    from ..config import load_config
    from ..phenomap import map_profiles
    from ..phenomap import similar as find_similar
    from ..store import ScreenStore

    cfg = load_config(config)
    with ScreenStore.open(cfg.screen.path, read_only=True) as store:
        profiles = map_profiles(store)
    by = ["Metadata_perturbation_id", "Metadata_concentration"] if per_dose else ["Metadata_perturbation_id"]
    try:
        table = find_similar(profiles, pert_id, by=by, k=k, null=null, replicate_by=["Metadata_perturbation_id"],
                             exclude_replicates=exclude_replicates)
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0] if exc.args else exc)) from None
    extra = [c for c in ("Metadata_perturbation_name", "Metadata_moa") if c in profiles.columns]
    if extra:
        names = profiles.select("Metadata_perturbation_id", *extra).unique("Metadata_perturbation_id",
                                                                          keep="first", maintain_order=True)
        table = table.with_row_index("_row").join(
            names.rename({c: f"neighbour_{c}" for c in names.columns}), on="neighbour_Metadata_perturbation_id",
            how="left").sort("_row").drop("_row")
    shown = table.select("item", "rank", "neighbour", *[f"neighbour_{c}" for c in extra], "similarity",
                         "p_value", "q_value").rename(lambda c: c.removeprefix("neighbour_Metadata_"))
    with pl.Config(tbl_rows=max(k * 4, 20), tbl_cols=12, fmt_str_lengths=40, tbl_hide_dataframe_shape=True):
        click.echo(str(shown))
    if csv_path is not None:
        table.write_csv(csv_path)
        click.echo(f"written: {csv_path}")
