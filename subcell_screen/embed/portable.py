"""SubCellPortable-compatible inference: ``path_list.csv`` in, the same output files out.

Input CSV (SubCellPortable 2025): header ``r_image,y_image,b_image,g_image,output_prefix`` (a leading ``#`` on
the header is ignored; later lines starting with ``#`` are comments; blank lines are skipped). One row = one
cell crop; one single-channel image file per channel letter the model uses; unused channel columns may be
empty. ``output_prefix`` may contain sub-folders. The legacy layout with an ``output_folder`` column before
``output_prefix`` is accepted (outputs go to ``<output_folder>/<output_prefix>``, or to
``<output_dir>/<output_folder>/<output_prefix>`` when ``output_dir`` is given). Relative image paths are
resolved against the current directory, then against the CSV's folder.

Containment: every output stays inside its output folder (``output_dir``, else the legacy row's
``output_folder``). An ``output_prefix`` that is absolute, has a ``..`` part or leads through a symbolic link
out of the folder is refused (:class:`~subcell_screen.LayoutError` naming the line and column) before anything
is written. Image paths given as ``http(s)://`` URLs are downloaded only with ``allow_remote=True``
(``--allow-remote``); otherwise the CSV is refused, before anything is read.

Reading follows SubCellPortable 2025: tifffile for ``.tif``/``.tiff``, Pillow otherwise; a multi-channel
file is max-projected to grey. Crops of different sizes may be mixed (they are batched by size). Normalisation
defaults to ``per_channel`` min-max (what SubCellPortable 2025 does), with epsilon; ``joint`` is the
training-faithful alternative.

Outputs (under ``output_dir``): ``individual`` -> ``<prefix>_embedding.npy`` (1536,) and
``<prefix>_probabilities.npy`` (31,) per cell; ``combined`` -> ``embeddings.h5ad`` (AnnData: ``X``,
``obsm["probabilities"]``, obs index = prefixes); ``create_csv`` -> ``result.csv``; ``save_attention_maps``
-> ``<prefix>_attention_map.png``; always ``log.txt``. Probabilities are the mean of classifier sigmoids
(``probabilities="sigmoid"``, default) or SubCellPortable 2025's softmax over those (``"softmax"``).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import LayoutError

__all__ = ["PathListRow", "PortableResult", "read_path_list", "read_grayscale", "run_portable", "MODEL_TYPES"]

logger = logging.getLogger(__name__)

#: SubCellPortable ``model_type`` -> model family.
MODEL_TYPES = {"mae_contrast_supcon_model": "MAE-CellS-ProtS-Pool", "vit_supcon_model": "ViT-ProtS-Pool"}
_LETTERS = "rybg"
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def _relative_inside(value: str) -> str | None:
    """Why ``value`` is not a relative path that stays inside its folder (None when it is)."""
    parts = value.replace("\\", "/").split("/")
    if value.startswith(("/", "\\")) or re.match(r"^[a-zA-Z]:", value):
        return "is absolute"
    if value.startswith("~"):
        return "starts with '~' (a home folder)"
    if ".." in parts:
        return "has a '..' part"
    if _SCHEME.match(value):
        return "is a URL"
    return None


@dataclass(frozen=True)
class PathListRow:
    """One row of ``path_list.csv``: ``paths`` maps letters to image locations."""

    line: int
    paths: dict
    output_prefix: str
    output_folder: str | None = None


@dataclass(frozen=True)
class PortableResult:
    """What :func:`run_portable` computed and wrote.

    Attributes
    ----------
    ids : list of str
        Output prefixes, in CSV order.
    embedding : ndarray, (N, 1536), float32
    probabilities : ndarray, (N, 31), float32, or None
    files : list of Path
        Files written.
    seconds : float
        Wall time.
    model : str
    """

    ids: list
    embedding: np.ndarray
    probabilities: np.ndarray | None
    files: list
    seconds: float
    model: str


def read_path_list(path: str | os.PathLike, *, model_channels: str, allow_remote: bool = False,
                   output_dir: str | os.PathLike | None = None) -> tuple[list[PathListRow], bool]:
    """Parse a SubCellPortable ``path_list.csv``.

    Parameters
    ----------
    path
        The CSV.
    model_channels
        Channel letters of the model; their ``<letter>_image`` columns must be filled.
    allow_remote
        Accept ``http(s)://`` image paths (they are downloaded when read); default: refuse them.
    output_dir
        The output folder the run was given; with it, a legacy ``output_folder`` must be a relative folder
        inside it.

    Returns
    -------
    rows, uses_old_format
        Rows in file order; True when the legacy ``output_folder`` column is present.

    Raises
    ------
    LayoutError
        Missing columns, an empty required cell, an ``output_prefix`` (or legacy ``output_folder``) that would
        write outside the output folder, or a URL image path without ``allow_remote`` (names the file, line and
        column).
    """
    path = Path(path)
    if not path.exists():
        raise LayoutError("input file not found; create it with columns r_image,y_image,b_image,g_image,"
                          "output_prefix", path=path)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        lines = [(i + 1, line) for i, line in enumerate(fh.read().splitlines())]
    lines = [(n, ln) for n, ln in lines if ln.strip()]
    if not lines:
        raise LayoutError("empty file", path=path)
    head_no, head = lines[0]
    header = [h.strip().lstrip("#").strip() for h in next(csv.reader([head]))]
    need = [f"{c}_image" for c in model_channels] + ["output_prefix"]
    missing = [c for c in need if c not in header]
    if missing:
        raise LayoutError(f"missing column(s) {missing} for model channels {model_channels!r}; header is {header}",
                          path=path, line=head_no)
    old = "output_folder" in header
    rows = []
    seen: dict[str, int] = {}
    for n, ln in lines[1:]:
        if ln.lstrip().startswith("#"):
            continue
        vals = next(csv.reader([ln]))
        rec = dict(zip(header, (v.strip() for v in vals)))
        paths = {}
        for c in model_channels:
            v = rec.get(f"{c}_image", "")
            if not v:
                raise LayoutError(f"empty image path for channel {c!r} (model channels {model_channels!r})",
                                  path=path, line=n, column=f"{c}_image")
            if _SCHEME.match(v):
                if not v.lower().startswith(("http://", "https://")):
                    raise LayoutError(f"image path {v!r} is a URL of an unsupported scheme (only http(s))",
                                      path=path, line=n, column=f"{c}_image")
                if not allow_remote:
                    raise LayoutError(f"image path {v!r} is a URL; remote images are downloaded only when asked "
                                      "for (allow_remote=True, `subcell-screen portable --allow-remote`)",
                                      path=path, line=n, column=f"{c}_image")
            paths[c] = v
        prefix = rec.get("output_prefix", "")
        if not prefix:
            raise LayoutError("empty output_prefix", path=path, line=n, column="output_prefix")
        why = _relative_inside(prefix)
        if why:
            raise LayoutError(f"output_prefix {prefix!r} {why}; it must be a relative path that stays inside the "
                              "output folder", path=path, line=n, column="output_prefix")
        folder = rec.get("output_folder") if old else None
        if folder and output_dir is not None and _relative_inside(folder):
            raise LayoutError(f"output_folder {folder!r} {_relative_inside(folder)}, but an output folder was "
                              f"given ({output_dir}): outputs stay inside it, so output_folder must be a relative "
                              "sub-folder (or run without -o/output_dir)", path=path, line=n,
                              column="output_folder")
        key = os.path.join(folder or "", prefix)
        if key in seen:
            raise LayoutError(f"duplicate output_prefix {prefix!r} (first on line {seen[key]})", path=path, line=n,
                              column="output_prefix")
        seen[key] = n
        rows.append(PathListRow(n, paths, prefix, folder))
    return rows, old


def read_grayscale(location: str | os.PathLike, *, base_dir: str | os.PathLike | None = None,
                   allow_remote: bool = False) -> np.ndarray:
    """Read one channel image as float32 (H, W); multi-channel files are max-projected.

    ``location`` is a path (relative: cwd first, then ``base_dir``) or, with ``allow_remote=True``, an
    ``http(s)://`` URL (downloaded).
    """
    loc = str(location)
    is_url = loc.startswith(("http://", "https://"))
    suffix = Path(loc.split("?")[0]).suffix.lower()
    if is_url and not allow_remote:
        raise ValueError(f"image {loc} is a URL; remote images are read only with allow_remote=True")
    if is_url:
        with urllib.request.urlopen(loc, timeout=60) as resp:  # noqa: S310 - user-provided image URL
            data: Any = io.BytesIO(resp.read())
    else:
        p = Path(loc).expanduser()
        if not p.is_absolute() and not p.exists() and base_dir is not None and (Path(base_dir) / p).exists():
            p = Path(base_dir) / p
        if not p.exists():
            raise FileNotFoundError(f"image {loc} not found (looked in {Path.cwd()}"
                                    + (f" and {base_dir}" if base_dir else "") + ")")
        data = p
    if suffix in (".tif", ".tiff"):
        import tifffile

        arr = np.asarray(tifffile.imread(data))
    else:
        from PIL import Image

        with Image.open(data) as im:
            arr = np.asarray(im)
    arr = np.squeeze(arr)
    if arr.ndim == 3:
        axis = -1 if arr.shape[-1] <= 4 else 0 if arr.shape[0] <= 4 else None
        if axis is None:
            raise ValueError(f"image {loc}: cannot tell the channel axis of shape {arr.shape}")
        arr = arr.max(axis=axis)
    if arr.ndim != 2:
        raise ValueError(f"image {loc}: expected a 2-D image, got shape {arr.shape}")
    return arr.astype(np.float32)


def _device_from_gpu(gpu: int | str | None, device: str | None) -> str:
    if device:
        return device
    if gpu is None:
        return "auto"
    g = int(gpu)
    if g < 0:
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        logger.warning("GPU %d requested but CUDA is not available; using the CPU", g)
        return "cpu"
    return f"cuda:{g}"


def run_portable(
    path_list: str | os.PathLike,
    *,
    model_channels: str = "rybg",
    model_type: str = "mae_contrast_supcon_model",
    output_dir: str | os.PathLike | None = None,
    create_csv: bool = False,
    embeddings_only: bool = False,
    output_format: str = "individual",
    save_attention_maps: bool = False,
    gpu: int | None = None,
    device: str | None = None,
    batch_size: int = 128,
    num_workers: int = 4,
    normalize: str = "per_channel",
    probabilities: str = "sigmoid",
    precision: str = "fp32",
    cache_dir: str | os.PathLike | None = None,
    offline: bool | None = None,
    update_model: bool = False,
    quiet: bool = False,
    model: Any = None,
    allow_remote: bool = False,
) -> PortableResult:
    """Run SubCell on the crops listed in a SubCellPortable ``path_list.csv`` (see module docs).

    Parameters mirror SubCellPortable's options (``gpu=-1`` is the CPU; ``device`` overrides ``gpu``);
    ``normalize``, ``probabilities``, ``precision``, ``cache_dir``, ``offline`` and ``allow_remote``
    (download ``http(s)://`` image paths; default: refuse them) are additions; ``model`` may be an already
    loaded :class:`~subcell_screen.embed.SubCellModel`.

    Raises
    ------
    LayoutError
        Bad CSV, including outputs that would leave the output folder and URLs without ``allow_remote``
        (checked before anything is read or written); ValueError for bad options; weight errors from
        :func:`~subcell_screen.embed.load_model`.
    """
    import torch

    from .classes import CLASS_NAMES
    from .export import save_attention_map, top_classes, write_h5ad, write_individual, write_result_csv
    from .model import load_model
    from .preprocess import preprocess
    from .weights import ensure_model_files

    t0 = time.perf_counter()
    if model_channels not in ("rybg", "rbg", "ybg", "bg"):
        raise ValueError(f"model_channels must be rybg, rbg, ybg or bg; got {model_channels!r}")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {list(MODEL_TYPES)}; got {model_type!r}")
    if output_format not in ("individual", "combined"):
        raise ValueError(f"output_format must be 'individual' or 'combined'; got {output_format!r}")
    if probabilities not in ("sigmoid", "softmax"):
        raise ValueError(f"probabilities must be 'sigmoid' or 'softmax'; got {probabilities!r}")
    rows, old = read_path_list(path_list, model_channels=model_channels, allow_remote=allow_remote,
                               output_dir=output_dir)
    if not old and output_dir is None:
        raise ValueError("output_dir is required with the current CSV format (no output_folder column)")

    def prefix_path(r: PathListRow) -> Path:
        if output_dir is not None:
            return Path(output_dir) / (r.output_folder or "") / r.output_prefix
        return Path(r.output_folder or ".") / r.output_prefix

    def root_of(r: PathListRow) -> Path:
        return Path(output_dir) if output_dir is not None else Path(r.output_folder or ".")

    for r in rows:  # symbolic links inside the folder may still lead out of it: resolve, before any write
        root = root_of(r).resolve()
        target = prefix_path(r).resolve()
        if target != root and root not in target.parents:
            raise LayoutError(f"output_prefix {r.output_prefix!r} resolves to {target}, outside the output folder "
                              f"{root} (through a symbolic link)", path=path_list, line=r.line,
                              column="output_prefix")
    name = f"{model_channels}/{MODEL_TYPES[model_type]}"
    if model is None:
        if update_model:
            ensure_model_files(name, cache_dir=cache_dir, offline=offline, classifiers=not embeddings_only,
                               force=True)
        model = load_model(name, cache_dir=cache_dir, device=_device_from_gpu(gpu, device), precision=precision,
                           offline=offline, classifiers=not embeddings_only)
    out_root = Path(output_dir) if output_dir is not None else Path(rows[0].output_folder or ".")
    out_root.mkdir(parents=True, exist_ok=True)
    log_lines = ["SubCellPortable-compatible inference (subcell_screen)", f"Input CSV: {path_list}",
                 f"Model: {model.name} on {model.device} ({model.precision}); normalize={normalize}; "
                 f"probabilities={probabilities}"]
    base_dir = Path(path_list).resolve().parent

    def load(r: PathListRow) -> np.ndarray:
        chans = [read_grayscale(r.paths[c], base_dir=base_dir, allow_remote=allow_remote) for c in model_channels]
        shapes = {c.shape for c in chans}
        if len(shapes) != 1:
            raise ValueError(f"{path_list} line {r.line}: channel images differ in size {sorted(shapes)}")
        return np.stack(chans)

    n = len(rows)
    emb = np.zeros((n, model.embedding_dim), np.float32)
    prob = np.zeros((n, model.architecture.num_classes), np.float32) if model.has_classifier else None
    files: list[Path] = []
    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        for start in range(0, n, batch_size):
            chunk = rows[start:start + batch_size]
            images = list(pool.map(load, chunk))
            by_shape: dict[tuple, list[int]] = {}
            for i, im in enumerate(images):
                by_shape.setdefault(im.shape, []).append(i)
            for shape, idx in by_shape.items():
                x = preprocess(np.stack([images[i] for i in idx]), normalize=normalize)
                out = model(torch.from_numpy(x), attention=save_attention_maps)
                e = out.embedding.numpy()
                p = out.probabilities.numpy() if out.probabilities is not None else None
                if p is not None and probabilities == "softmax":
                    p = torch.softmax(torch.from_numpy(p), dim=-1).numpy()
                for j, i in enumerate(idx):
                    k = start + i
                    emb[k] = e[j]
                    if p is not None:
                        prob[k] = p[j]
                    pref = prefix_path(rows[k])
                    if output_format == "individual":
                        files += write_individual(pref, e[j], None if p is None else p[j])
                    if save_attention_maps and out.pool_attention is not None:
                        files.append(save_attention_map(pref, out.pool_attention[j].numpy(), shape[1:]))
    ids = [r.output_prefix for r in rows]
    if create_csv:
        files.append(write_result_csv(out_root / "result.csv", ids, emb, prob))
    if output_format == "combined":
        files.append(write_h5ad(out_root / "embeddings.h5ad", emb, probabilities=prob, obs=ids,
                                uns={"created_by": "subcell_screen", "model": model.name,
                                     "embeddings_only": bool(embeddings_only or prob is None),
                                     "normalize": normalize, "probabilities": probabilities}))
    seconds = time.perf_counter() - t0
    if prob is not None:
        for r, t in zip(rows, top_classes(prob, 3)):
            log_lines.append(f"- Saved results for {r.output_prefix}, locations predicted "
                             f"[{','.join(CLASS_NAMES[i] for i in t)}]")
    else:
        log_lines += [f"- Saved results for {r.output_prefix}" for r in rows]
    log_lines.append(f"Processed {n} images in {seconds:.2f} s ({n / max(seconds, 1e-9):.2f} images/s)")
    log = out_root / "log.txt"
    log.write_text("\n".join(log_lines) + "\n")
    files.append(log)
    if not quiet:
        logger.info("processed %d crops in %.2f s (%.2f/s)", n, seconds, n / max(seconds, 1e-9))
    return PortableResult(ids, emb, prob, files, seconds, model.name)
