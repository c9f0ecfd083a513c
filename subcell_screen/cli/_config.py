"""``subcell-screen config [SECTION]``: every run-config key, its type, default and meaning."""

from __future__ import annotations

import click


@click.command(name="config")
@click.argument("section", required=False)
@click.option("--markdown", is_flag=True, help="Markdown tables (docs/config-reference.md is this output).")
def config(section: str | None, markdown: bool) -> None:
    """Print the run-config reference: every key of SECTION (top, screen, images, plates, channels,
    segmentation, embedding, profiles, scoring, map, report, ray; default all), with its type, default, allowed
    values and meaning."""
    from ..config import config_reference

    click.echo(config_reference(section=section, markdown=markdown), nl=False)
