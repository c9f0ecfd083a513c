"""``subcell-screen models``: list, download and verify SubCell model weights."""

from __future__ import annotations

from pathlib import Path

import click

_CACHE_HELP = "Weights folder (default: $SUBCELL_SCREEN_MODELS, else the user cache dir)."


@click.group()
def models() -> None:
    """List, download and verify the public SubCell models' weight files."""


def _cards(names: tuple[str, ...], all_: bool) -> list:
    from ..embed.registry import get_model_card, list_model_cards

    if all_ or not names:
        return list_model_cards()
    return [get_model_card(n) for n in names]


@models.command("list")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None, help=_CACHE_HELP)
def list_(cache_dir: Path | None) -> None:
    """Show the public models, their files and whether they are cached."""
    from ..embed.registry import list_model_cards
    from ..embed.weights import resolve_cache_dir

    cache = resolve_cache_dir(cache_dir)
    click.echo(f"cache folder: {cache}")
    for card in list_model_cards():
        click.echo(f"{card.name}  ({card.model_type}; channels {card.channels} = {', '.join(card.channel_names)})")
        for fname in card.files:
            state = "cached" if (cache / fname).exists() else "not cached"
            sha = card.sha256_for(fname)
            click.echo(f"    {fname}  [{state}; sha256 {'known' if sha else 'unknown'}]")


@models.command("download")
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="All 8 public models.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None, help=_CACHE_HELP)
@click.option("--force", is_flag=True, help="Download again even if cached.")
@click.option("--embeddings-only", is_flag=True, help="Skip the classifier files.")
@click.option("--mirror", default=None, help="Base URL of a mirror with the bucket's layout "
              "(default: $SUBCELL_SCREEN_MODELS_URL, else the public S3 bucket).")
def download(names: tuple[str, ...], all_: bool, cache_dir: Path | None, force: bool, embeddings_only: bool,
             mirror: str | None) -> None:
    """Download (with resume) and verify model files, e.g. ``subcell-screen models download rybg/MAE-CellS-ProtS-Pool``.

    Downloads even when $SUBCELL_SCREEN_OFFLINE is set (this command is how files get into the cache).
    """
    from ..embed.weights import ensure_model_files

    if not names and not all_:
        raise click.UsageError("name one or more models (see `subcell-screen models list`) or use --all")
    for card in _cards(names, all_):
        files = ensure_model_files(card, cache_dir=cache_dir, offline=False, classifiers=not embeddings_only,
                                   force=force, base_url=mirror)
        for p in (files.encoder, *files.classifiers):
            how = files.verified[p.name]
            note = "" if how == "card" else "; UNVERIFIED: no published SHA-256"
            click.echo(f"{card.name}: {p}  sha256 {files.sha256[p.name]} ({how}{note})")


@models.command("verify")
@click.argument("names", nargs=-1)
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None, help=_CACHE_HELP)
@click.option("--record", is_flag=True, help="Record the hash of present files that have no known hash.")
def verify(names: tuple[str, ...], cache_dir: Path | None, record: bool) -> None:
    """Check cached files against known and recorded SHA-256 hashes (never downloads).

    Exits with status 1 if a file mismatches, or if a model named on the command line is incomplete.
    """
    from ..embed.weights import verify_model_files

    bad = 0
    for card in _cards(names, False):
        for st in verify_model_files(card, cache_dir=cache_dir, record=record):
            if st.status == "missing" and not names:
                continue
            extra = f" sha256 {st.sha256}" if st.sha256 else ""
            if st.status == "mismatch":
                extra += f" (expected {st.expected} from the {st.source} hash)"
            elif st.status == "ok" and st.source != "card":
                extra += " (matches the recorded hash; no published SHA-256, so its origin is unverified)"
            click.echo(f"{st.status.upper():10s} {card.name}: {st.path}{extra}")
            bad += st.status == "mismatch" or (st.status == "missing" and bool(names))
    if bad:
        raise click.ClickException(f"{bad} file(s) missing or not matching their SHA-256")
