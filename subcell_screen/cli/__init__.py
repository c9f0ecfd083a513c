"""Command-line interface: ``subcell-screen``.

Each subcommand lives in its own module here and is a thin wrapper (parse options, call one public function,
print); commands are imported only when invoked, so ``subcell-screen --help`` stays fast. Only the CLI
configures logging.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from .. import __version__

__all__ = ["main", "cli"]

#: command name -> "module:attribute" (relative to this package). Add a stage's command here.
COMMANDS: dict[str, tuple[str, str]] = {
    "layout": ("._layout:layout", "Check and convert plate layouts."),
    "sites": ("._sites:sites", "List the sites, wells and channels found in an image folder."),
    "models": ("._models:models", "List, download and verify SubCell model weights."),
    "init": ("._init:init", "Write a commented run config for a plate folder (reader, channels, pixel size)."),
    "config": ("._config:config", "Every run-config key: type, default, allowed values, meaning."),
    "run": ("._run:run", "Run every stage of a screen from a TOML config."),
    "segment": ("._run:segment", "Run only the segmentation stage."),
    "embed": ("._run:embed", "Run only the per-cell feature stage (SubCell or classical)."),
    "profile": ("._run:profile", "Run only the profile stage (aggregate, normalise, select)."),
    "score": ("._run:score", "Run only the scoring stage."),
    "report": ("._run:report", "Render the QC and hit reports from a screen store."),
    "export": ("._export:export", "Write cell/site/well/consensus profiles or image/object tables (parquet, csv, h5ad)."),
    "map": ("._map:map_command", "Phenotypic map: nested clusters, enrichment, neighbours, map_report.html."),
    "similar": ("._similar:similar", "List the perturbations whose profiles look most like a given one."),
    "demo": ("._demo:demo", "Simulate a small screen with planted effects and run the whole pipeline."),
    "portable": ("._portable:portable", "SubCellPortable-compatible inference from a path_list.csv."),
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when it is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target[0].split(":")
        try:
            module = importlib.import_module(module_name, __name__)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(__name__):
                return _not_available(cmd_name, target[1])
            raise
        return getattr(module, attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # short help from the table, without importing every command module
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _not_available(name: str, help_text: str) -> click.Command:
    @click.command(name=name, help=f"{help_text} (not available in this version)",
                   context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def _cmd(args: tuple[str, ...]) -> None:
        raise click.ClickException(f"'subcell-screen {name}' is not implemented in this version yet")

    return _cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="subcell-screen")
@click.option("-v", "--verbose", count=True,
              help="More log output: -v one line per site and stage details (info), -vv debug.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors (default: warnings, progress bars and summaries).")
def cli(verbose: int, quiet: bool) -> None:
    """subcell-screen: phenotypic profiling of drug screens with the SubCell foundation models.

    Plates in (Cell Painting or HPA-style), segmented cells, SubCell embeddings, pycytominer-exact profiles,
    mAP-based hit calling, relocalization, one DuckDB screen store and HTML reports out.
    """
    level = logging.ERROR if quiet else {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("subcell_screen")
    root.handlers[:] = [handler]
    root.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``subcell-screen`` console script."""
    try:
        cli.main(args=argv, prog_name="subcell-screen", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code or 0)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return 130
    except Exception as exc:  # user-facing errors from the library carry their own context
        from .._errors import SubcellScreenError

        if isinstance(exc, SubcellScreenError):
            click.echo(f"Error: {exc}", err=True)
            return 2
        if type(exc).__module__.split(".")[0] in ("duckdb", "_duckdb"):  # a store damaged after it was opened
            click.echo(f"Error: the screen database could not be read ({type(exc).__name__}: {exc}). It is damaged "
                       "(e.g. a truncated copy or a full disk): restore it from a backup, or re-run the screen into "
                       "a new folder.", err=True)
            return 2
        raise
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
