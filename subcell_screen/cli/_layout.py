"""``subcell-screen layout``: check and convert plate layouts."""

from __future__ import annotations

from pathlib import Path

import click

from .._errors import LayoutError


@click.group()
def layout() -> None:
    """Check and convert plate layouts (standard CSV or JUMP platemap TSV)."""


@layout.command("check")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--metadata", type=click.Path(path_type=Path), default=None,
              help="JUMP metadata TSV (default: the *_metadata.tsv beside a *_platemap.tsv).")
@click.option("--plate-format", type=click.Choice(["96", "384", "1536"]), default=None,
              help="Plate format to check wells against (default: inferred).")
@click.option("--allow-no-negcon", is_flag=True, help="Accept a layout without negative controls.")
def check(path: Path, metadata: Path | None, plate_format: str | None, allow_no_negcon: bool) -> None:
    """Validate a layout file and print a one-line summary."""
    from ..layouts import layout_summary, read_layout

    try:
        df = read_layout(path, metadata=metadata, plate_format=int(plate_format) if plate_format else None,
                         allow_no_negcon=allow_no_negcon)
    except LayoutError as exc:
        raise click.ClickException(str(exc)) from None
    s = layout_summary(df)
    click.echo(f"{path}: OK - {s['wells']} wells, {s['perturbations']} perturbations in "
               f"{s['treatment_wells']} treatment wells, controls: {s['negcon_wells']} negcon, "
               f"{s['poscon_wells']} poscon, {s['empty_wells']} empty")


@layout.command("convert")
@click.argument("path", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--metadata", type=click.Path(path_type=Path), default=None, help="JUMP metadata TSV.")
@click.option("--allow-no-negcon", is_flag=True)
def convert(path: Path, out: Path, metadata: Path | None, allow_no_negcon: bool) -> None:
    """Convert a layout (e.g. a JUMP platemap + metadata pair) to the standard CSV."""
    from ..layouts import read_layout, write_layout

    try:
        df = read_layout(path, metadata=metadata, allow_no_negcon=allow_no_negcon)
    except LayoutError as exc:
        raise click.ClickException(str(exc)) from None
    write_layout(df, out)
    click.echo(f"wrote {out} ({df.height} wells)")
