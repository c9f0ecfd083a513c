"""``subcell-screen portable``: SubCellPortable-compatible inference from a ``path_list.csv``.

Accepts SubCellPortable's options (``process.py`` / ``cli.py``, 2025) so existing scripts switch by replacing
``python process.py`` with ``subcell-screen portable``. Precedence: defaults < ``--config`` YAML < options
given on the command line. ``--prefetch_factor`` and ``--async_saving`` are accepted for compatibility
(prefetching and saving are handled internally). Outputs stay inside ``-o`` (an ``output_prefix`` that would
leave it is refused); image paths given as URLs are downloaded only with ``--allow-remote``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

_DEFAULTS: dict[str, Any] = {
    "path_list": "path_list.csv", "model_channels": "rybg", "model_type": "mae_contrast_supcon_model",
    "output_dir": None, "create_csv": False, "embeddings_only": False, "output_format": "individual",
    "save_attention_maps": False, "gpu": None, "batch_size": 128, "num_workers": 4, "prefetch_factor": 2,
    "async_saving": False, "quiet": False, "update_model": False, "normalize": "per_channel",
    "probabilities": "sigmoid", "precision": "fp32", "cache_dir": None, "offline": None, "device": None,
    "allow_remote": False,
}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", type=click.Path(path_type=Path, exists=True), default=None,
              help="SubCellPortable config.yaml (values below override it).")
@click.option("--path_list", "--path-list", "path_list", default=None, help="Input CSV (default path_list.csv).")
@click.option("-c", "--model_channels", "model_channels", type=click.Choice(["rybg", "rbg", "ybg", "bg"]),
              default=None, help="Channel set (default rybg).")
@click.option("-m", "-t", "--model_type", "model_type",
              type=click.Choice(["mae_contrast_supcon_model", "vit_supcon_model"]), default=None,
              help="Model family (default mae_contrast_supcon_model).")
@click.option("-u", "--update_model", "update_model", is_flag=True, default=None, help="Download the weights again.")
@click.option("-o", "--output_dir", "output_dir", default=None, help="Output folder.")
@click.option("-csv", "--create_csv", "create_csv", is_flag=True, default=None, help="Also write result.csv.")
@click.option("--embeddings_only", "embeddings_only", is_flag=True, default=None, help="Skip classification.")
@click.option("--output_format", "output_format", type=click.Choice(["individual", "combined"]), default=None,
              help="Per-cell .npy files or one embeddings.h5ad (default individual).")
@click.option("--save_attention_maps", "save_attention_maps", is_flag=True, default=None,
              help="Write <prefix>_attention_map.png.")
@click.option("-g", "--gpu", "gpu", type=int, default=None, help="GPU index, -1 for CPU (default: auto).")
@click.option("-b", "--batch_size", "batch_size", type=int, default=None, help="Crops per batch (default 128).")
@click.option("-w", "--num_workers", "num_workers", type=int, default=None, help="Image-reading threads (default 4).")
@click.option("-p", "--prefetch_factor", "prefetch_factor", type=int, default=None, help="Accepted, unused.")
@click.option("--async_saving", "async_saving", is_flag=True, default=None, help="Accepted, unused.")
@click.option("-q", "--quiet", "quiet", is_flag=True, default=None, help="Less logging.")
@click.option("--normalize", type=click.Choice(["per_channel", "joint"]), default=None,
              help="Min-max per channel (SubCellPortable 2025, default) or joint (training).")
@click.option("--probabilities", type=click.Choice(["sigmoid", "softmax"]), default=None,
              help="Mean classifier sigmoids (default) or SubCellPortable 2025's softmax over them.")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default=None, help="Default fp32.")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:<i> (overrides --gpu).")
@click.option("--cache-dir", "cache_dir", type=click.Path(path_type=Path), default=None, help="Weights folder.")
@click.option("--offline/--online", "offline", default=None, help="Never download weights.")
@click.option("--allow-remote", "allow_remote", is_flag=True, default=None,
              help="Download image paths given as http(s):// URLs (default: refuse them).")
def portable(config: Path | None, **options: Any) -> None:
    """Embed the cell crops listed in a SubCellPortable path_list.csv and write its outputs."""
    from ..embed.portable import run_portable

    values = dict(_DEFAULTS)
    if config is not None:
        try:
            import yaml
        except ImportError:  # pragma: no cover
            raise click.ClickException("--config needs PyYAML (pip install pyyaml)") from None

        loaded = yaml.safe_load(config.read_text()) or {}
        unknown = sorted(set(loaded) - set(_DEFAULTS))
        if unknown:
            raise click.ClickException(f"{config}: unknown setting(s) {unknown}")
        values.update(loaded)
    values.update({k: v for k, v in options.items() if v is not None})
    path_list = values.pop("path_list")
    for unused in ("prefetch_factor", "async_saving"):
        values.pop(unused)
    try:
        res = run_portable(path_list, **values)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    if not values.get("quiet"):
        click.echo(f"{len(res.ids)} crops embedded with {res.model} in {res.seconds:.2f} s; "
                   f"{len(res.files)} files written")
