"""The per-site unit: a loaded site in, a :class:`~subcell_screen.engine.SiteOutcome` out, no store access.

Both executors run it: the local engine in this process (or its worker processes), the Ray engine on workers.
Every stage builds itself from its config section in one place: the segmenter from ``[segmentation]``
(:func:`~subcell_screen.segment.segmenter_from_config`), the featurizer from ``[embedding]``
(:class:`~subcell_screen.features.ClassicalSiteFeatures`, :class:`~subcell_screen.embed.SubcellSiteFeatures`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import polars as pl

from .._errors import SubcellScreenError
from ._types import SiteOutcome

if TYPE_CHECKING:  # pragma: no cover
    from ..config import RunConfig
    from ..io import SiteImage
    from ..segment import Segmentation, Segmenter
    from ..store import ScreenStore
    from ._types import RunPlan

__all__ = ["SiteProcessor", "FEATURE_ERRORS", "stored_segmentation", "feature_set_name"]

logger = logging.getLogger(__name__)

#: Featurization errors recorded as a failed site; anything else stops the run.
FEATURE_ERRORS: tuple[type[BaseException], ...] = (SubcellScreenError, ValueError, RuntimeError, KeyError,
                                                   MemoryError)


def feature_set_name(featurizer: str) -> str:
    """Store feature-set name of a featurizer (``subcell:rybg/MAE-...`` -> ``subcell_rybg_MAE-...``)."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", featurizer.replace("subcell:", "subcell_").replace("/", "_"))


def stored_segmentation(store: ScreenStore, key: tuple[str, str, int], *,
                        pixel_size_um: float | None) -> Segmentation:
    """The :class:`~subcell_screen.segment.Segmentation` of one site as the segment stage stored it."""
    from ..segment import Segmentation, segmentation_qc

    plate, well, site = key
    nuclei, cells = store.read_masks(plate, well, site)
    table = store.sql("SELECT * FROM cells WHERE plate = ? AND well = ? AND site = ? ORDER BY cell_id",
                      [plate, well, site])
    method = store.sql("SELECT method FROM masks WHERE plate = ? AND well = ? AND site = ?",
                       [plate, well, site])["method"][0]
    return Segmentation(plate=plate, well=well, site=site, nuclei=nuclei, cells=cells, cells_table=table,
                        qc=segmentation_qc(table), method=method, pixel_size_um=pixel_size_um)


class SiteProcessor:
    """Compute of the per-site stages for loaded sites: QC rows, segmentation, protein readout, features.

    Never touches the store, so it runs the same in this process or on a Ray worker.

    Parameters
    ----------
    config
        Run configuration (the channel map, ``[segmentation]``, ``[embedding]``).
    featurizer, feature_set
        As resolved in the :class:`~subcell_screen.engine.RunPlan`.
    device
        Torch device of the models.
    segmenter
        The configured segmenter (default: built from ``[segmentation]`` without loading Cellpose, i.e. the
        classical one with every classical key applied).
    subcell
        Loaded SubCell model (for ``featurizer="subcell:..."``).
    embed_batch_size
        Images per SubCell forward (default ``[embedding].batch_size``).
    """

    def __init__(self, config: RunConfig, *, featurizer: str, feature_set: str, device: str = "cpu",
                 segmenter: Segmenter | None = None, subcell: Any = None,
                 embed_batch_size: int | None = None) -> None:
        from ..segment import segmenter_from_config

        self.config = config
        self.channel_map = config.channel_map()
        self.segmenter = segmenter if segmenter is not None else segmenter_from_config(config.segmentation,
                                                                                      load=False)
        if featurizer == "classical":
            from ..features import ClassicalSiteFeatures

            self.features: Any = ClassicalSiteFeatures.from_config(config.embedding, feature_set=feature_set,
                                                                   channel_map=self.channel_map)
        else:
            from ..embed import SubcellSiteFeatures

            self.features = SubcellSiteFeatures.from_config(config.embedding, feature_set=feature_set,
                                                            channel_map=self.channel_map, model=subcell,
                                                            device=device, batch_size=embed_batch_size)

    @property
    def method(self) -> str:
        """``classical`` or ``cellpose``."""
        return self.segmenter.method

    @classmethod
    def from_plan(cls, config: RunConfig, plan: RunPlan) -> SiteProcessor:
        """The processor of a run, with the models its plan loaded."""
        from ..segment import Segmenter, segmenter_from_config

        seg = segmenter_from_config(config.segmentation, load=False)
        if plan.cellpose_model is not None:
            seg = Segmenter(method="cellpose", model=plan.cellpose_model, params=seg.params)
        return cls(config, featurizer=plan.featurizer, feature_set=plan.feature_set, device=plan.device,
                   segmenter=seg, subcell=plan.subcell_model)

    def segment(self, site: SiteImage) -> tuple[Any, pl.DataFrame | None, tuple[str, str] | None, float]:
        """``(segmentation, protein readout rows, error, seconds)``; a failed site gives ``(None, None, error, s)``."""
        from ..features import protein_readout

        t0 = time.perf_counter()
        try:
            seg = self.segmenter.segment(site, channel_map=self.channel_map)
            protein = self.channel_map.protein_channel
            readouts = protein_readout(site, seg, protein) if protein else None
        except Exception as exc:  # noqa: BLE001 - one bad site must not stop the plate
            logger.warning("segmentation failed for %s: %s", site.record.key, exc)
            return None, None, (type(exc).__name__, str(exc)), time.perf_counter() - t0
        return seg, readouts, None, time.perf_counter() - t0

    def featurize(self, site: SiteImage | None, seg: Any, *, raw_dtype: str | None = None,
                  compute: Callable[[], Any] | None = None, key: tuple | None = None
                  ) -> tuple[Any, tuple[str, str] | None, float]:
        """``(features, error, seconds)``; ``seg`` may be a callable returning the segmentation (read lazily).

        ``compute`` replaces the featurizer call (the Ray engine embeds crops made in another stage; ``site``
        may then be None and ``key`` names the site in log messages).
        """
        t0 = time.perf_counter()
        try:
            if compute is not None:
                out = compute()
            else:
                if callable(seg):
                    seg = seg()
                out = self.features.compute(site, seg, raw_dtype=raw_dtype)
        except Exception as exc:  # noqa: BLE001
            if not isinstance(exc, FEATURE_ERRORS):
                raise
            logger.warning("featurization failed for %s: %s", key or site.record.key, exc)
            return None, (type(exc).__name__, str(exc)), time.perf_counter() - t0
        return out, None, time.perf_counter() - t0

    def process(self, site: SiteImage, *, segment: bool, featurize: bool, segmentation: Any = None,
                raw_dtype: str | None = None) -> SiteOutcome:
        """All per-site stages of one loaded site (``segmentation``: the stored one when not segmenting)."""
        from ..io import site_qc_rows

        out = SiteOutcome(key=site.record.key, channel_names=tuple(site.channel_names), site_qc=site_qc_rows(site))
        seg = segmentation
        if segment:
            seg, readouts, error, dt = self.segment(site)
            out = replace(out, segmented=True, segmentation=seg, readouts=readouts, seg_error=error, seg_seconds=dt)
            if error is not None:
                return out
        if featurize:
            feats, error, dt = self.featurize(site, seg, raw_dtype=raw_dtype)
            out = replace(out, featurized=True, features=feats, feat_error=error, feat_seconds=dt,
                          site_profile=self.features.site_profile(feats) if error is None else None)
        return out
