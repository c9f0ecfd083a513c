# ruff: noqa: F401  (names below are re-exported lazily through __getattr__)
"""SubCell embeddings: model registry, weights, faithful PyTorch model, preprocessing, fast inference, exports.

Quick start::

    from subcell_screen.embed import load_model, preprocess

    model = load_model("rybg/MAE-CellS-ProtS-Pool", device="auto", precision="fp32")
    out = model(preprocess(crops, normalize="joint"))   # crops: (N, 4, H, W) in r, y, b, g order
    out.embedding        # (N, 1536) float32 CPU tensor
    out.probabilities    # (N, 31): mean of classifier sigmoids (CLASS_NAMES)

Pipeline use: :class:`Embedder` turns :class:`~subcell_screen.crops.CropBatch` streams into
:class:`EmbeddingResult` per batch (Cell Painting: three ``ybg`` passes -> 4608-d), and
:func:`write_embeddings` stores them in a :class:`~subcell_screen.store.ScreenStore`.

Submodules: :mod:`.registry` (model cards), :mod:`.weights` (cache, download, verify), :mod:`.model`
(network, strict loading), :mod:`.precision` (``precision="auto"``: bf16 where the hardware has native
bf16, fp32 elsewhere), :mod:`.preprocess`, :mod:`.engine`, :mod:`.export`, :mod:`.portable`
(SubCellPortable-compatible entry), :mod:`.testing` (synthetic checkpoints, HF reference).

Importing this package is cheap: torch is imported when a model, engine or export function is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY: dict[str, str] = {
    "SubcellSiteFeatures": "._site",
    "load_model_from_config": "._site",
    "model_provenance": "._site",
    # model
    "load_model": ".model",
    "SubCellModel": ".model",
    "SubCellOutput": ".model",
    "SubCellNet": ".model",
    "select_device": ".model",
    # precision
    "PrecisionChoice": ".precision",
    "PrecisionWarning": ".precision",
    "CpuInfo": ".precision",
    "CudaInfo": ".precision",
    "resolve_precision": ".precision",
    "cpu_info": ".precision",
    # registry
    "ModelCard": ".registry",
    "Architecture": ".registry",
    "Preprocessing": ".registry",
    "MODEL_CARDS": ".registry",
    "get_model_card": ".registry",
    "list_model_cards": ".registry",
    "model_names": ".registry",
    "resolve_preprocessing": ".registry",
    # weights
    "ensure_model_files": ".weights",
    "verify_model_files": ".weights",
    "resolve_cache_dir": ".weights",
    "ModelFiles": ".weights",
    # preprocessing
    "preprocess": ".preprocess",
    "min_max": ".preprocess",
    "resize_crops": ".preprocess",
    # engine
    "Embedder": ".engine",
    "EmbeddingResult": ".engine",
    "embed_batches": ".engine",
    # exports
    "write_embeddings": ".export",
    "write_h5ad": ".export",
    "write_result_csv": ".export",
    "result_table": ".export",
    "save_attention_map": ".export",
    # portable
    "run_portable": ".portable",
    "read_path_list": ".portable",
    # classes
    "CLASS_NAMES": ".classes",
    "CLASS_COLORS": ".classes",
    "NUM_CLASSES": ".classes",
    # errors
    "ModelError": "._errors",
    "UnknownModelError": "._errors",
    "WeightsError": "._errors",
    "WeightsNotFoundError": "._errors",
    "ChecksumError": "._errors",
    "DownloadError": "._errors",
    "CheckpointError": "._errors",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'subcell_screen.embed' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover
    from ._errors import (
        CheckpointError,
        ChecksumError,
        DownloadError,
        ModelError,
        UnknownModelError,
        WeightsError,
        WeightsNotFoundError,
    )
    from ._site import SubcellSiteFeatures, load_model_from_config, model_provenance
    from .classes import CLASS_COLORS, CLASS_NAMES, NUM_CLASSES
    from .engine import Embedder, EmbeddingResult, embed_batches
    from .export import result_table, save_attention_map, write_embeddings, write_h5ad, write_result_csv
    from .model import SubCellModel, SubCellNet, SubCellOutput, load_model, select_device
    from .portable import read_path_list, run_portable
    from .precision import CpuInfo, CudaInfo, PrecisionChoice, PrecisionWarning, cpu_info, resolve_precision
    from .preprocess import min_max, preprocess, resize_crops
    from .registry import (
        MODEL_CARDS,
        Architecture,
        ModelCard,
        Preprocessing,
        get_model_card,
        list_model_cards,
        model_names,
        resolve_preprocessing,
    )
    from .weights import ModelFiles, ensure_model_files, resolve_cache_dir, verify_model_files
