"""The map stage end to end on a screen store: well profiles -> map -> tables -> ``map_report.html``.

The pipeline runs it as its ``map`` stage (and ``subcell-screen map CONFIG`` alone). The store is
passed in (opened writable by the caller); everything it reads or writes goes through the store's public
methods and SQL.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ._items import item_ids
from ._map import PhenotypicMap, phenotypic_map
from ._tables import cluster_localization, write_map_tables

__all__ = ["MapStageResult", "run_map_stage", "map_profiles", "default_annotations", "STAGE_ACTIVITY"]

logger = logging.getLogger(__name__)

#: Activity sources of the map stage: ``auto`` = the score stage's hits when scores exist, else replicates.
STAGE_ACTIVITY = ("auto", "scores", "replicates", "controls", "none")

#: Annotation columns used by default when present with values (compound identity is added per dose).
_DEFAULT_ANNOTATIONS = ("Metadata_moa", "Metadata_target")


@dataclass(frozen=True)
class MapStageResult:
    """What :func:`run_map_stage` did.

    Attributes
    ----------
    map : PhenotypicMap
    tables : tuple of str
        Store tables written.
    report : Path or None
        ``map_report.html`` (None with ``report=False``).
    seconds : float
    messages : tuple of str
        One-line notes (activity source, items left out, SubCell probabilities used or not).
    """

    map: PhenotypicMap = field(repr=False)
    tables: tuple[str, ...]
    report: Path | None
    seconds: float
    messages: tuple[str, ...] = ()


def default_annotations(profiles: pl.DataFrame, *, per_dose: bool) -> list[str]:
    """Annotation columns present with at least one value; the perturbation itself when items are doses."""
    cols = [c for c in _DEFAULT_ANNOTATIONS if c in profiles.columns and profiles[c].drop_nulls().len()]
    if per_dose and "Metadata_perturbation_id" in profiles.columns:
        cols.append("Metadata_perturbation_id")
    return cols


def map_profiles(store: Any, *, profile_set: str | None = None) -> pl.DataFrame:
    """The store's well profiles for the map (:meth:`~subcell_screen.store.ScreenStore.read_profiles`; default the
    set scoring uses), without empty wells."""
    wide = store.read_profiles(profile_set=profile_set)
    if "Metadata_control_type" in wide.columns:
        wide = wide.filter(pl.col("Metadata_control_type").is_null() | (pl.col("Metadata_control_type") != "empty"))
    return wide


def attention_model(store: Any, *, embedding: Any, device: str = "auto") -> tuple[Any, str]:
    """The SubCell model of the mapped profiles' feature set, from the local model cache (never downloaded here),
    for the attention overlays; ``(None, why)`` when there is none.

    Parameters
    ----------
    store : ScreenStore
    embedding : EmbeddingSection
        ``[embedding]`` (its ``cache_dir``, and the model when the feature set does not record one).
    device : str
    """
    sets = store.sql("SELECT DISTINCT p.feature_set, f.kind, f.model FROM profiles p JOIN feature_sets f "
                     "USING (feature_set) JOIN profile_sets s USING (profile_set) WHERE s.final")
    if sets.height != 1 or sets["kind"][0] != "subcell":
        return None, "the profiles are not SubCell embeddings: no attention overlays"
    name = sets["model"][0] or embedding.model
    from ..embed import WeightsError, load_model

    try:
        model = load_model(name, cache_dir=embedding.cache_dir, offline=True, device=device, precision="fp32")
    except WeightsError as exc:
        return None, f"SubCell weights of {name} not in the model cache ({str(exc).splitlines()[0]}): no attention overlays"
    return model, f"attention overlays from {name}"


def _scores(store: Any) -> pl.DataFrame | None:
    for name in ("scores", "perturbation_scores"):
        if store.has_table(name):
            try:
                return store.sql(f'SELECT perturbation_id, is_hit FROM "{name}"')
            except Exception as exc:  # noqa: BLE001 - a broken view means "no scores"
                logger.info("map: %s not readable (%s)", name, exc)
    return None


def _item_probabilities(store: Any, feature_set: str, profiles: pl.DataFrame, by: Sequence[str]
                        ) -> pl.DataFrame | None:
    """Per item, the mean over its wells of the wells' mean per-cell SubCell probabilities (31 classes; with
    several passes, the mean over passes)."""
    try:
        wells = store.well_mean_probabilities(feature_set)  # from the site profiles: every cell counted
    except Exception as exc:  # noqa: BLE001 - no probabilities: no localization section
        logger.info("map: no class probabilities for %s (%s)", feature_set, exc)
        return None
    if wells is None or wells.height == 0:
        return None
    p = np.asarray(wells["probabilities"].to_list(), dtype=np.float64)
    if p.ndim != 2 or p.shape[1] % 31:
        logger.warning("map: probabilities of %s have shape %s, not 31 per pass", feature_set, p.shape)
        return None
    p = p.reshape(p.shape[0], -1, 31).mean(axis=1)
    well_mean = {(pl_, w): p[i] for i, (pl_, w) in
                 enumerate(wells.select("Metadata_Plate", "Metadata_Well").iter_rows())}
    keyed = profiles.select(list(by)).with_columns(
        pl.Series("item", _row_ids(profiles.select(list(by)))),
        profiles["Metadata_Plate"].alias("_plate"), profiles["Metadata_Well"].alias("_well"))
    per_item: dict[str, list[np.ndarray]] = {}
    for item, plate, well in keyed.select("item", "_plate", "_well").iter_rows():
        v = well_mean.get((plate, well))
        if v is not None:
            per_item.setdefault(item, []).append(v)
    if not per_item:
        return None
    return pl.DataFrame({"item": list(per_item),
                         "probabilities": [np.mean(v, axis=0).tolist() for v in per_item.values()]},
                        schema={"item": pl.String, "probabilities": pl.List(pl.Float64)})


def _row_ids(keys: pl.DataFrame) -> list[str]:
    """The item id of every row (rows of one item share it; :func:`item_ids` on the distinct keys)."""
    uniq = keys.unique(maintain_order=True)
    text = dict(zip(uniq.rows(), item_ids(uniq)))
    return [text[r] for r in keys.rows()]


def run_map_stage(
    store: Any,
    *,
    out_dir: str | Path | None,
    per_dose: bool = False,
    annotations: Sequence[str] | None = None,
    resolutions: Sequence[float] | None = None,
    n_neighbors: int = 15,
    seed: int = 0,
    activity: str = "auto",
    profile_set: str | None = None,
    model: Any = None,
    channel_map: Any = None,
    report: bool = True,
) -> MapStageResult:
    """Build the phenotypic map of a screen store, write its tables and ``map_report.html``.

    Parameters
    ----------
    store : ScreenStore
        Opened writable; needs the profile stage's tables (``profiles``, ``profile_features``, ``wells``).
    out_dir : str or Path or None
        Report folder (the other reports' folder); None with ``report=False``.
    per_dose : bool
        One item per perturbation and concentration (compound identity becomes an annotation, and a
        compound's doses are replicates of each other in the similarity null), instead of one per perturbation.
    annotations : sequence of str, optional
        Annotation columns (default: ``Metadata_moa`` and ``Metadata_target`` when they hold values, plus
        ``Metadata_perturbation_id`` per dose). Any ``Metadata_*`` column of the wells works.
    resolutions, n_neighbors, seed
        See :func:`~subcell_screen.phenomap.phenotypic_map`.
    activity : {"auto", "scores", "replicates", "controls", "none"}
        Which items are clustered (the others share the inactive cluster): ``scores`` = the score stage's
        hits (``scores.is_hit``); ``auto`` = scores when they exist with at least two hits, else
        ``replicates``; the rest as in :func:`~subcell_screen.phenomap.phenotypic_map`.
    profile_set : str, optional
        Profiles to map (default: the well-level set scoring uses, e.g. ``feature_selected``).
    model : SubCellModel, optional
        A loaded SubCell model: the report overlays its pooler attention on the example cells (SubCell
        feature sets only). Without it the report says the overlays were not computed.
    channel_map : ChannelMap, optional
        Channel map of the screen (for the attention crops; default the model's HPA map).
    report : bool
        Write ``map_report.html``.

    Returns
    -------
    MapStageResult
    """
    if activity not in STAGE_ACTIVITY:
        raise ValueError(f"activity must be one of {STAGE_ACTIVITY}, got {activity!r}")
    if report and out_dir is None:
        raise ValueError("out_dir is required to write the map report")
    t0 = time.perf_counter()
    messages: list[str] = []
    profiles = map_profiles(store, profile_set=profile_set)
    by = ["Metadata_perturbation_id", "Metadata_concentration"] if per_dose else ["Metadata_perturbation_id"]
    anns = list(annotations) if annotations is not None else default_annotations(profiles, per_dose=per_dose)
    active_col = None
    chosen = activity
    if activity in ("auto", "scores"):
        scores = _scores(store)
        n_hits = int(scores["is_hit"].fill_null(False).sum()) if scores is not None else 0
        if scores is not None and (activity == "scores" or n_hits >= 2):
            hits = scores.filter(pl.col("is_hit").fill_null(False))["perturbation_id"].to_list()
            profiles = profiles.with_columns(pl.col("Metadata_perturbation_id").is_in(hits)
                                             .alias("Metadata_map_active"))
            active_col = "Metadata_map_active"
            chosen = "scores"
            messages.append(f"clustered the score stage's {n_hits} hit(s)")
        elif activity == "scores":
            raise ValueError("activity='scores' but the store has no scores; run the score stage first")
        else:
            chosen = "replicates"
            messages.append("no scores with hits: active items by replicate consistency")
    result = phenotypic_map(profiles, by=by, annotations=anns, resolutions=resolutions, seed=seed,
                            n_neighbors=n_neighbors, activity=chosen if chosen != "scores" else "replicates",
                            active=active_col,
                            replicate_by=["Metadata_perturbation_id"] if per_dose else None)
    if result.excluded.height:
        messages.append(f"{result.excluded.height} item(s) left out: {result.excluded['item'].head(5).to_list()}")
    if profile_set is None:
        profile_set = store.sql("SELECT any_value(profile_set) AS p FROM profile_sets WHERE final")["p"][0]
    feature_set = store.sql("SELECT DISTINCT feature_set FROM profiles WHERE profile_set = ?",
                            [profile_set])["feature_set"].to_list()
    fs = feature_set[0] if len(feature_set) == 1 else None
    localization = None
    if fs is not None:
        kind = store.sql("SELECT kind FROM feature_sets WHERE feature_set = ?", [fs])["kind"].to_list()
        if kind and kind[0] == "subcell":
            from ..embed.classes import CLASS_NAMES

            probs = _item_probabilities(store, fs, profiles, by)
            if probs is not None:
                localization = cluster_localization(result, probs, class_names=CLASS_NAMES)
                messages.append(f"mean SubCell localization probabilities of {probs.height} item(s)")
    tables = write_map_tables(store, result, localization=localization, extra_info={
        "feature_set": fs, "profile_set": profile_set, "activity_source": chosen, "per_dose": per_dose})
    path = None
    if report:
        from ..report.map_report import build_map_report

        path = build_map_report(store, out_dir, model=model, channel_map=channel_map)
    seconds = time.perf_counter() - t0
    logger.info("map stage: %r in %.1f s", result, seconds)
    return MapStageResult(map=result, tables=tuple(tables), report=path, seconds=seconds, messages=tuple(messages))
