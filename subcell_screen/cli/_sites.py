"""``subcell-screen sites``: list the plates, wells, sites and channels found in an image folder."""

from __future__ import annotations

import json
from pathlib import Path

import click

_READER_CHOICES = ["auto", "loaddata", "phenix", "ometiff", "imagexpress", "hpa"]


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--reader", type=click.Choice(_READER_CHOICES), default="auto", show_default=True,
              help="Reader to use (default: detect).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON record per site (plate, well, site, channels, pixel_size_um, pixel_size_source, "
                   "reader).")
@click.option("--channel-names", default=None, metavar="ID=NAME,...",
              help="Instrument channel -> name, e.g. 1=DNA,2=ER,3=RNA,4=AGP,5=Mito (Phenix chN / ImageXpress wN).")
@click.option("--pixel-size", "pixel_size", type=click.FloatRange(min=0.05, max=5.0), default=None,
              metavar="UM", help="Pixel size in µm/px (overrides file metadata).")
@click.option("--check", is_flag=True,
              help="Also open every site's files (headers only) and report missing/corrupt files.")
def sites(path: Path, reader: str, as_json: bool, channel_names: str | None, pixel_size: float | None,
          check: bool) -> None:
    """List the sites found under PATH (a folder, a LoadData CSV or an OME-TIFF).

    Prints the detected reader and why the others did not match, then the plates, wells, sites and
    channels; with --json, one JSON record per site instead.
    """
    from ..io import PlateUnreadableError, ReaderError, check_sites, read_plate

    try:
        index = read_plate(path, reader=reader, channel_names=channel_names, pixel_size_um=pixel_size)
    except ReaderError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        for rec in index.records:
            click.echo(json.dumps(rec.to_dict()))
    else:
        _print_summary(index)
    if check:
        try:
            report = check_sites(index)
        except PlateUnreadableError as exc:
            click.echo(exc.report.summary(), err=True)
            raise click.ClickException(str(exc)) from None
        click.echo(report.summary(), err=as_json)


def pixel_size_text(record) -> str:
    """``0.598 µm/px (config)``, or a loud line saying the pixel size is not set, why, and the key to set."""
    if record.pixel_size_um is not None:
        return f"{record.pixel_size_um:.4g} µm/px ({record.pixel_size_source or 'source unknown'})"
    return (f"NOT SET ({record.pixel_size_source or 'no pixel size in the metadata'}); segmentation needs it: "
            "set [images].pixel_size_um in the run config (or --pixel-size here)")


def _print_summary(index) -> None:
    click.echo(f"source: {index.source}")
    click.echo(f"reader: {index.reader} ({index.notes.get(index.reader, '')})")
    for name, why in index.notes.items():
        if name != index.reader:
            click.echo(f"  not {name}: {why}")
    recs = index.records
    plates = index.plates()
    click.echo(f"{len(plates)} plate(s), {len({(r.plate, r.well) for r in recs})} well(s), {len(recs)} site(s)")
    for plate in plates:
        pr = [r for r in recs if r.plate == plate]
        wells = sorted({r.well for r in pr}, key=lambda w: (len(w), w))
        sites_per_well = {}
        for r in pr:
            sites_per_well[r.well] = sites_per_well.get(r.well, 0) + 1
        counts = sorted(set(sites_per_well.values()))
        per_well = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        channels = list(dict.fromkeys(c for r in pr for c in r.channels))
        shown = ", ".join(wells[:12]) + (f" ... ({len(wells)} wells)" if len(wells) > 12 else "")
        px = pr[0].pixel_size_um
        click.echo(f"plate {plate}: {len(wells)} well(s), {len(pr)} site(s) ({per_well} per well), "
                   f"pixel size {'unknown' if px is None else f'{px:.4g}'} µm/px")
        click.echo(f"  pixel size: {pixel_size_text(pr[0])}")
        click.echo(f"  wells: {shown}")
        click.echo(f"  channels: {', '.join(channels)}")
