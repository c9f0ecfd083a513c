"""``subcell-screen export CONFIG``: cells, sites, wells, consensus, image and object tables out of a screen."""

from __future__ import annotations

from pathlib import Path

import click

from ..export import FORMATS, LEVELS


@click.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--level", type=click.Choice(LEVELS), default="well", show_default=True,
              help="cell | site | well | consensus profiles, or CellProfiler-style image / nuclei / cells tables.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="Default: from the --out file name (.parquet, .csv, .csv.gz, .tsv, .h5ad).")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="File to write.")
@click.option("--profile-set", default=None, help="well level: raw, normalized or feature_selected (default: the "
              "set scoring uses).")
@click.option("--feature-set", default=None, help="cell/site levels: the per-cell feature set (default: the "
              "profiles').")
@click.option("--masks", "masks", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Also write every site's nucleus and cell label images as TIFF into DIR.")
def export(config: Path, level: str, fmt: str | None, out: Path, profile_set: str | None, feature_set: str | None,
           masks: Path | None) -> None:
    """Write one level of the screen described by CONFIG as a table pycytominer and CellProfiler users load as
    it is (Metadata_* columns, then named features)."""
    from ..config import load_config
    from ..export import export as write
    from ..export import export_masks
    from ..store import ScreenStore

    cfg = load_config(config)
    with ScreenStore.open(cfg.screen.path, read_only=True) as store:
        path = write(store, out, level=level, format=fmt, profile_set=profile_set, feature_set=feature_set)
        click.echo(f"wrote {path}")
        if masks is not None:
            files = export_masks(store, masks)
            click.echo(f"wrote {len(files)} label image(s) to {masks}")
