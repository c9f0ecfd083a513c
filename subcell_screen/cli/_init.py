"""``subcell-screen init PLATE_FOLDER``: write a commented run config from what the folder holds."""

from __future__ import annotations

from pathlib import Path

import click

from ._sites import _READER_CHOICES


@click.command()
@click.argument("folder", type=click.Path(path_type=Path, exists=True))
@click.option("--layout", default=None, metavar="FILE|ID",
              help="Layout of the plates (a layout CSV, or a built-in id such as JUMP-Target-1_compound).")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="Config file to write (default ./<folder name>.toml); the plates table goes beside it.")
@click.option("--reader", type=click.Choice(_READER_CHOICES), default="auto", show_default=True)
@click.option("--channel-names", default=None, metavar="ID=NAME,...",
              help="Instrument channel -> dye, e.g. 1=Brightfield,2=ER,3=AGP,4=Mito,5=DNA,6=RNA.")
@click.option("--pixel-size", "pixel_size", type=click.FloatRange(min=0.05, max=5.0), default=None, metavar="UM",
              help="Pixel size in µm/px (when the metadata does not give a credible one).")
@click.option("--overwrite", is_flag=True, help="Replace an existing config / plates table.")
def init(folder: Path, layout: str | None, out: Path | None, reader: str, channel_names: str | None,
         pixel_size: float | None, overwrite: bool) -> None:
    """Write a commented run config for the plates in FOLDER: reader, plates, channels with proposed roles,
    the pixel size and where it came from (or a loud TODO), a plates table, and the stages. Edit it, then
    `subcell-screen run CONFIG`."""
    from ..io import ReaderError
    from ..starter import write_starter

    try:
        starter = write_starter(folder, layout=layout, out=out, reader=None if reader == "auto" else reader,
                                channel_names=channel_names, pixel_size_um=pixel_size, overwrite=overwrite)
    except (ReaderError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from None
    for line in starter.lines():
        click.echo(line)
