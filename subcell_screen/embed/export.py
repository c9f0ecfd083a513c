"""Writing SubCell outputs: screen store (Parquet), AnnData ``.h5ad``, SubCellPortable ``result.csv``, ``.npy``
files and attention-map PNGs.

* :func:`write_embeddings` -- per-site Parquet through :meth:`ScreenStore.write_cell_features`: key columns,
  a fixed-width ``features`` array column (float32 or float16) and a ``probabilities`` array column, with the
  feature set registered (``kind="subcell"``, column names, model, weight hashes, parameters).
* :func:`write_h5ad` -- spec-compliant AnnData (``X`` = embeddings, ``obsm["probabilities"]``, ``obs`` = keys
  or ids), via the ``anndata`` package.
* :func:`result_table` / :func:`write_result_csv` -- SubCellPortable's ``result.csv`` columns: ``id,
  top_class_name, top_class, top_3_classes_names, top_3_classes, prob00..prob30, feat0000..feat1535``.
* :func:`attention_map_image` / :func:`save_attention_map` -- SubCellPortable's PNG: pooler attention
  bilinearly upsampled to the input size, each head min-max scaled separately, heads side by side, (H, 2W, 3)
  uint8.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .classes import CLASS_NAMES, NUM_CLASSES

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

    from ..store import ScreenStore
    from .engine import EmbeddingResult

__all__ = ["write_embeddings", "embeddings_frame", "write_h5ad", "result_table", "write_result_csv",
           "top_classes", "attention_map_image", "save_attention_map", "write_individual"]

logger = logging.getLogger(__name__)

_KEYS = ("plate", "well", "site", "cell_id")


def _as_results(results: EmbeddingResult | Iterable[EmbeddingResult]) -> list[EmbeddingResult]:
    from .engine import EmbeddingResult

    if isinstance(results, EmbeddingResult):
        return [results]
    return list(results)


def embeddings_frame(result: EmbeddingResult, *, dtype: str = "float32") -> pl.DataFrame:
    """Key columns + ``features`` (``Array(dtype, D)``) + ``probabilities`` (``Array(Float32, 31 x P)``)."""
    import polars as pl

    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    keys = result.keys
    if not isinstance(keys, pl.DataFrame):
        raise TypeError("result.keys must be a polars DataFrame with plate, well, site, cell_id")
    missing = [k for k in _KEYS if k not in keys.columns]
    if missing:
        raise ValueError(f"result keys lack column(s) {missing}; have {keys.columns}")
    n, d = result.embedding.shape
    feats = result.embedding.astype(np.float16 if dtype == "float16" else np.float32)
    pl_dtype = pl.Float16 if dtype == "float16" else pl.Float32
    cols = [pl.Series("features", feats, dtype=pl.Array(pl_dtype, d))]
    if result.probabilities is not None:
        cols.append(pl.Series("probabilities", result.probabilities.astype(np.float32),
                              dtype=pl.Array(pl.Float32, result.probabilities.shape[1])))
    return keys.select(list(_KEYS)).with_columns(cols)


def write_embeddings(
    store: ScreenStore,
    results: EmbeddingResult | Iterable[EmbeddingResult],
    *,
    feature_set: str,
    dtype: str = "float32",
    feature_names: Sequence[str] | None = None,
    model: str | None = None,
    model_sha256: Mapping[str, str] | None = None,
    parameters: Mapping[str, Any] | None = None,
    register: bool = True,
    sites: Iterable[tuple[str, str, int]] = (),
) -> list[Path]:
    """Write per-cell embeddings to the screen store, one Parquet file per site.

    Parameters
    ----------
    store
        An open, writable :class:`~subcell_screen.store.ScreenStore`.
    results
        One or more :class:`EmbeddingResult`. Together they must hold **every** cell of each site they touch:
        a site's file is replaced as a whole (concatenate partial results first; they are grouped here).
    feature_set
        Feature-set name (e.g. ``"subcell"``).
    dtype
        ``"float32"`` or ``"float16"`` for the ``features`` column (probabilities stay float32).
    feature_names
        Column names registered for ``features`` (default: ``feat0000..`` / ``<pass>_feat0000..``).
    model, model_sha256, parameters
        Provenance registered with the feature set.
    register
        Register (or replace) the feature set's description.
    sites
        ``(plate, well, site)`` triples to write even when they have no cells (an empty file records "no cells").

    Returns
    -------
    list of Path
        Files written.
    """
    from .engine import EmbeddingResult

    res = _as_results(results)
    if not res:
        return []
    merged = EmbeddingResult.concat(res) if len(res) > 1 else res[0]
    names = list(feature_names) if feature_names is not None else merged.feature_names()
    if len(names) != merged.embedding_dim:
        raise ValueError(f"{len(names)} feature names for {merged.embedding_dim} embedding columns")
    if register:
        params = {"dtype": dtype, "passes": list(merged.pass_names), "probability_columns": merged.probability_names()}
        params.update(dict(parameters or {}))
        store.register_feature_set(feature_set, kind="subcell", feature_names=names, model=model or merged.model,
                                   model_sha256=model_sha256, parameters=params)
    df = embeddings_frame(merged, dtype=dtype)
    paths = []
    written = set()
    for (plate, well, site), part in df.group_by(["plate", "well", "site"], maintain_order=True):
        paths.append(store.write_cell_features(feature_set, part.sort("cell_id"), plate=str(plate), well=str(well),
                                               site=int(site)))
        written.add((str(plate), str(well), int(site)))
    for plate, well, site in sites:
        if (str(plate), str(well), int(site)) not in written:
            paths.append(store.write_cell_features(feature_set, df.clear(), plate=str(plate), well=str(well),
                                                   site=int(site)))
    return paths


def write_h5ad(
    path: str | os.PathLike,
    embedding: np.ndarray,
    *,
    probabilities: np.ndarray | None = None,
    obs: Any = None,
    var_names: Sequence[str] | None = None,
    uns: Mapping[str, Any] | None = None,
) -> Path:
    """Write an AnnData ``.h5ad``: ``X`` = embeddings, ``obsm["probabilities"]``, ``obs`` from keys or ids.

    Parameters
    ----------
    path
        Output file (written atomically).
    embedding : ndarray, (N, D)
    probabilities : ndarray, (N, K), optional
    obs
        polars/pandas DataFrame of per-cell keys (index = ``"<plate>_<well>_<site>_<cell_id>"`` when those
        columns exist), or a sequence of ids (SubCellPortable output prefixes), or None.
    var_names
        Feature names (default ``feat0000..``).
    uns
        Extra unstructured metadata (e.g. ``created_by``, ``model``).
    """
    try:
        import anndata as ad
        import pandas as pd
    except ImportError as exc:  # pragma: no cover
        raise ImportError("writing .h5ad needs anndata: pip install 'subcell_screen[anndata]'") from exc
    n, d = embedding.shape
    if obs is None:
        obs_df = pd.DataFrame(index=[str(i) for i in range(n)])
    elif hasattr(obs, "to_pandas"):
        obs_df = obs.to_pandas()
    elif isinstance(obs, pd.DataFrame):
        obs_df = obs.copy()
    else:
        obs_df = pd.DataFrame(index=[str(i) for i in obs])
    if len(obs_df) != n:
        raise ValueError(f"{len(obs_df)} obs rows for {n} embeddings")
    if all(k in obs_df.columns for k in _KEYS):
        obs_df.index = [f"{p}_{w}_{s}_{c}" for p, w, s, c in obs_df[list(_KEYS)].itertuples(index=False)]
    obs_df.index = obs_df.index.astype(str)
    for col in obs_df.columns:  # AnnData wants str, not object mixes
        if obs_df[col].dtype == object:
            obs_df[col] = obs_df[col].astype(str)
    var = pd.DataFrame(index=list(var_names) if var_names is not None else [f"feat{i:04d}" for i in range(d)])
    adata = ad.AnnData(X=np.asarray(embedding, dtype=np.float32), obs=obs_df, var=var)
    if probabilities is not None:
        adata.obsm["probabilities"] = np.asarray(probabilities, dtype=np.float32)
    if uns:
        adata.uns.update({k: v for k, v in uns.items() if v is not None})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    adata.write_h5ad(tmp)
    os.replace(tmp, path)
    return path


def top_classes(probabilities: np.ndarray, k: int = 3) -> np.ndarray:
    """Indices of the ``k`` most probable classes per row, highest first (ties: lower index first)."""
    return np.argsort(-np.asarray(probabilities), axis=1, kind="stable")[:, :k]


def result_table(ids: Sequence[str], embedding: np.ndarray, probabilities: np.ndarray | None) -> pl.DataFrame:
    """SubCellPortable's ``result.csv`` as a polars DataFrame (same columns and order)."""
    import polars as pl

    n, d = embedding.shape
    cols: dict[str, Any] = {"id": [str(i) for i in ids]}
    if len(cols["id"]) != n:
        raise ValueError(f"{len(cols['id'])} ids for {n} embeddings")
    if probabilities is not None:
        if probabilities.shape != (n, NUM_CLASSES):
            raise ValueError(f"probabilities must be (N, {NUM_CLASSES}) for result.csv; got {probabilities.shape}")
        top = top_classes(probabilities, 3)
        cols["top_class_name"] = [CLASS_NAMES[t[0]] for t in top]
        cols["top_class"] = [int(t[0]) for t in top]
        cols["top_3_classes_names"] = [",".join(CLASS_NAMES[i] for i in t) for t in top]
        cols["top_3_classes"] = [",".join(str(int(i)) for i in t) for t in top]
        for j in range(NUM_CLASSES):
            cols[f"prob{j:02d}"] = probabilities[:, j].astype(np.float64)
    for j in range(d):
        cols[f"feat{j:04d}"] = embedding[:, j].astype(np.float64)
    return pl.DataFrame(cols)


def write_result_csv(path: str | os.PathLike, ids: Sequence[str], embedding: np.ndarray,
                     probabilities: np.ndarray | None) -> Path:
    """Write :func:`result_table` to CSV (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    result_table(ids, embedding, probabilities).write_csv(tmp)
    os.replace(tmp, path)
    return path


def attention_map_image(attention: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """SubCellPortable's attention PNG content for one cell.

    Parameters
    ----------
    attention : ndarray, (heads, h, w)
        Pooler attention over patches.
    size : (H, W)
        Input crop size in pixels.

    Returns
    -------
    ndarray, (H, heads * W, 3), uint8
    """
    import torch
    import torch.nn.functional as F

    a = torch.as_tensor(np.asarray(attention, dtype=np.float32))[None]
    a = F.interpolate(a, size=tuple(size), mode="bilinear", align_corners=False)[0]
    tiles = []
    for head in a:
        lo, hi = float(head.min()), float(head.max())
        tiles.append(((head.clamp(lo, hi) - lo) / max(hi - lo, 1e-5)).numpy())
    img = np.concatenate(tiles, axis=1)
    return np.repeat((img * 255).astype(np.uint8)[..., None], 3, axis=2)


def save_attention_map(prefix: str | os.PathLike, attention: np.ndarray, size: tuple[int, int]) -> Path:
    """Write ``<prefix>_attention_map.png`` (see :func:`attention_map_image`)."""
    from PIL import Image

    path = Path(f"{prefix}_attention_map.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(attention_map_image(attention, size)).save(path)
    return path


def write_individual(prefix: str | os.PathLike, embedding: np.ndarray, probabilities: np.ndarray | None) -> list[Path]:
    """SubCellPortable's ``individual`` outputs: ``<prefix>_embedding.npy`` (D,) and ``_probabilities.npy`` (31,)."""
    out = []
    p = Path(f"{prefix}_embedding.npy")
    p.parent.mkdir(parents=True, exist_ok=True)
    np.save(p, np.asarray(embedding, dtype=np.float32))
    out.append(p)
    if probabilities is not None:
        q = Path(f"{prefix}_probabilities.npy")
        np.save(q, np.asarray(probabilities, dtype=np.float32))
        out.append(q)
    return out
