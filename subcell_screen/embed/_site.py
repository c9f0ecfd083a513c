"""SubCell embeddings as a per-site featurizer of the engine, built from the ``[embedding]`` config section."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ..channels import ChannelMap
    from ..config import EmbeddingSection
    from ..crops import CropBatch
    from ..io import SiteImage
    from ..segment import Segmentation
    from .engine import EmbeddingResult

__all__ = ["SubcellSiteFeatures", "load_model_from_config", "model_provenance"]


def load_model_from_config(section: EmbeddingSection, *, device: str, cache_dir: str | Path | None = None,
                           offline: bool | None = None) -> Any:
    """The configured SubCell model (:class:`~subcell_screen.embed.WeightsError` when its weights are missing).

    ``cache_dir``/``offline`` override the section's (a Ray worker gets the folder the driver resolved).
    """
    from .model import load_model

    return load_model(section.model, cache_dir=cache_dir if cache_dir is not None else section.cache_dir,
                      device=device, precision=section.precision,
                      offline=offline if offline is not None else (True if section.offline else None),
                      compile=section.compile)


def model_provenance(model: Any) -> dict[str, Any]:
    """JSON-able provenance of a loaded model's weight files (which are verified against published hashes)."""
    files = getattr(model, "files", None)
    if files is None:
        return {}
    if hasattr(files, "provenance"):
        return files.provenance()
    if hasattr(files, "to_dict"):
        return {"files": files.to_dict()}
    return {"files": str(files)}


class SubcellSiteFeatures:
    """SubCell embeddings of one site at a time: :meth:`crops` + :meth:`embed` (= :meth:`compute`, pure) and
    :meth:`write_many`.

    ``model`` is a loaded SubCell model (the :class:`~subcell_screen.embed.Embedder` is created on first use, so
    a writer needs no device); ``batch_size`` is images per forward (default ``[embedding].batch_size``). Crops
    are rescaled on the CPU unless the device is CUDA (then the embedder resizes on the device).
    """

    kind = "subcell"

    def __init__(self, section: EmbeddingSection, *, feature_set: str, channel_map: ChannelMap, model: Any,
                 device: str, batch_size: int | None = None) -> None:
        self.section = section
        self.feature_set = feature_set
        self.channel_map = channel_map
        self.model = model
        self.device = device
        self.batch_size = int(batch_size or section.batch_size)
        self.rescale = "defer" if str(device).startswith("cuda") else "cpu"
        self._embedder = None

    @classmethod
    def from_config(cls, section: EmbeddingSection, *, feature_set: str, channel_map: ChannelMap, model: Any,
                    device: str, batch_size: int | None = None) -> SubcellSiteFeatures:
        """Built from ``[embedding]`` (crop size, normalisation, mask, batch size, precision, storage dtype)."""
        return cls(section, feature_set=feature_set, channel_map=channel_map, model=model, device=device,
                   batch_size=batch_size)

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            from .engine import Embedder

            sec = self.section
            self._embedder = Embedder(self.model, channel_map=self.channel_map, normalize=sec.normalize,
                                      mask=sec.mask, batch_size=self.batch_size, device=self.device,
                                      precision=sec.precision, compile=sec.compile, num_workers=sec.num_workers)
        return self._embedder

    def crops(self, site: SiteImage, seg: Segmentation) -> Iterable[CropBatch]:
        """Lazy iterator of the site's :class:`~subcell_screen.crops.CropBatch` es."""
        from ..crops import iter_crops

        sec = self.section
        return iter_crops(site, seg, target_pixel_size_um=sec.target_pixel_size_um, crop_size=sec.crop_size,
                          mask=sec.mask, batch_size=sec.batch_size, rescale=self.rescale)

    def embed(self, batches: Iterable[CropBatch]) -> list[EmbeddingResult]:
        """One :class:`~subcell_screen.embed.EmbeddingResult` per crop batch, in order."""
        return list(self.embedder.embed_batches(batches, progress=False))

    def compute(self, site: SiteImage, seg: Segmentation, *, raw_dtype: str | None = None) -> list[EmbeddingResult]:
        return self.embed(self.crops(site, seg))

    @staticmethod
    def n_cells(results: list[EmbeddingResult]) -> int:
        """Cells in one site's output."""
        return int(sum(len(r.embedding) for r in results))

    def parameters(self) -> dict[str, Any]:
        """Preprocessing recorded with the feature set."""
        sec = self.section
        emb = self.embedder
        choice = getattr(emb, "precision_choice", None)
        return {"crop_size": sec.crop_size, "normalize": getattr(emb, "normalize", sec.normalize),
                "mask": sec.mask, "precision": choice.precision if choice is not None else sec.precision,
                "precision_choice": choice.to_dict() if choice is not None else None,
                "target_pixel_size_um": sec.target_pixel_size_um}

    @property
    def keep_cells(self) -> str:
        """Per-cell storage policy (``[embedding].keep_cells``)."""
        return self.section.keep_cells

    @staticmethod
    def site_profile(results: list[EmbeddingResult]) -> Any:
        """The :class:`~subcell_screen.profiles.SiteProfile` of one site's output (None without cells), from
        the float32 embeddings before any storage rounding."""
        import numpy as np

        from ..profiles import site_profile

        res = [r for r in results if len(r.embedding)]
        if not res:
            return None
        emb = res[0].embedding if len(res) == 1 else np.concatenate([r.embedding for r in res])
        probs = None
        if all(r.probabilities is not None for r in res):
            probs = res[0].probabilities if len(res) == 1 else np.concatenate([r.probabilities for r in res])
        return site_profile(emb, probabilities=probs)

    @staticmethod
    def describe(results: list[EmbeddingResult]) -> dict[str, Any]:
        """What the store needs to register the feature set without the cells (a Ray worker sends it)."""
        if not results:
            return {}
        return {"pass_names": list(results[0].pass_names), "model": results[0].model,
                "dim": int(results[0].embedding_dim)}

    def register(self, store: Any, *, channel_names: Sequence[str], meta: Mapping[str, Any]) -> None:
        """Register (or update) the feature set from :meth:`describe` output (nothing without cells)."""
        from .classes import probability_columns
        from .engine import EmbeddingResult

        if not meta:
            return
        prov = model_provenance(self.model)
        sha = {f: v["sha256"] for f, v in prov.get("files", {}).items()} if isinstance(prov.get("files"), dict) \
            and all(isinstance(v, dict) for v in prov["files"].values()) else prov.get("files", {})
        params = {"dtype": self.section.store_dtype, "passes": list(meta["pass_names"]),
                  "probability_columns": probability_columns(tuple(meta["pass_names"]))}
        params.update(self.parameters())
        store.register_feature_set(self.feature_set, kind="subcell",
                                   feature_names=EmbeddingResult.names_for(meta["pass_names"], meta["dim"]),
                                   model=self.section.model or meta.get("model"), model_sha256=sha,
                                   parameters=params)

    def cell_frame(self, results: list[EmbeddingResult]) -> Any:
        """One site's per-cell frame as stored (``store_dtype``), or None without cells."""
        from .engine import EmbeddingResult
        from .export import embeddings_frame

        res = [r for r in results if len(r.embedding)]
        if not res:
            return None
        merged = EmbeddingResult.concat(res) if len(res) > 1 else res[0]
        return embeddings_frame(merged, dtype=self.section.store_dtype).sort("cell_id")

    def write_many(self, store: Any, keys: Sequence[tuple[str, str, int]], channel_names: Sequence[str],
                   outputs: Sequence[list[EmbeddingResult]]) -> None:
        """Store several sites' embeddings: one staging file per site with cells (``keep_cells`` "all" or
        "sample"; the sample is drawn when the plate is compacted), a manifest row for every site."""
        meta = next((self.describe(out) for out in outputs if out), {})
        self.register(store, channel_names=channel_names, meta=meta)
        store.write_site_cells(self.feature_set, keys, [self.cell_frame(out) for out in outputs],
                               keep=self.keep_cells)
