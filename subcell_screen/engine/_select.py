"""Which sites a run works on: index the images, keep the mapped channels, check every site, skip done work.

Resume trusts the store's bookkeeping only as far as the files behind it: a site whose ``embed`` stage is
recorded done but whose per-cell file is missing or unreadable is recomputed, and named.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import polars as pl

from .._errors import PipelineError

if TYPE_CHECKING:  # pragma: no cover
    from ..channels import ChannelMap
    from ..config import RunConfig
    from ..io import SiteIndex
    from ..layouts import ScreenDesign
    from ..store import ScreenStore
    from ._types import RunPlan

__all__ = ["SiteSelection", "select_sites", "site_index", "mapped_channels", "channel_rows", "require_pixel_sizes",
           "pixel_size_lines", "plate_illumination"]

logger = logging.getLogger(__name__)


def site_index(config: RunConfig, design: ScreenDesign) -> SiteIndex:
    """The configured plates' sites (all acquired channels), checked against the plates table and layouts."""
    from ..io import read_plate

    reader = None if config.images.reader == "auto" else config.images.reader
    index = read_plate(config.images.source, reader=reader, channel_names=config.images.channel_names or None,
                       pixel_size_um=config.images.pixel_size_um)
    known = set(design.plates["plate"].to_list())
    wanted = set(config.images.plates) if config.images.plates else None
    found = set(index.plates())
    if wanted is not None:
        missing = sorted(wanted - found)
        if missing:
            raise PipelineError(f"{config.images.source}: no images for plate(s) {missing} listed in "
                                f"[images].plates; plates found: {sorted(found)}")
        index = index.filter(plates=sorted(wanted))
        found = wanted
    unknown = sorted(found - known)
    if unknown:
        raise PipelineError(f"{config.images.source}: plate(s) {unknown} have images but are not in the plates "
                            f"table {config.plates.table}; plates there: {sorted(known)}")
    layout_wells = {(r["plate"], r["well"]) for r in design.wells().select("plate", "well").iter_rows(named=True)}
    stray = sorted({(r.plate, r.well) for r in index} - layout_wells)
    if stray:
        raise PipelineError(f"{config.images.source}: well(s) {stray[:5]}{' ...' if len(stray) > 5 else ''} have "
                            "images but are not in their plate's layout")
    return index


def mapped_channels(index: SiteIndex, channel_map: ChannelMap) -> SiteIndex:
    """The index with each site's channels cut to those of the channel map (in acquisition order).

    Channels outside the map (brightfield, extra stains) are never loaded, corrected, featurized or shown.

    Raises
    ------
    PipelineError
        When a plate lacks a channel the map needs (e.g. the wrong ``[channels].preset``), naming the plate,
        the missing channel and the channels found.
    """
    from ..channels import ChannelMapError

    records, bad = [], {}
    for r in index:
        try:
            used = channel_map.acquired(list(r.channels))
        except ChannelMapError as exc:
            bad.setdefault(r.plate, str(exc))
            continue
        records.append(replace(r, channels={c: r.channels[c] for c in used}))
    if bad:
        lines = "\n".join(f"  plate {p}: {msg}" for p, msg in sorted(bad.items()))
        raise PipelineError(f"the images do not have the channels of the channel map:\n{lines}\nCheck "
                            "[channels].preset and [images].channel_names in the run config.")
    return replace(index, records=tuple(records))


def channel_rows(channel_map: ChannelMap, acquired: Sequence[str], *, featurizer: str,
                 colors: dict[str, str] | None = None) -> pl.DataFrame:
    """The ``channels`` table of a run: every acquired channel, whether it is used, its colour and roles."""
    shown = channel_map.display_colors(colors)
    roles = channel_map.roles()
    resolved = channel_map.resolve(list(acquired)) if acquired else {}
    name_of = {acquired[i]: ch for ch, i in resolved.items()}
    rows = []
    for pos, name in enumerate(acquired):
        ch = name_of.get(name)
        if ch is None:
            rows.append({"channel": name, "position": pos, "used": False, "color": None,
                         "roles": ["not in the channel map: not loaded, featurized or shown"]})
            continue
        r = list(roles[ch]) + (["classical features"] if featurizer == "classical" else [])
        rows.append({"channel": name, "position": pos, "used": True, "color": shown[ch], "roles": r})
    return pl.DataFrame(rows, schema={"channel": pl.String, "position": pl.Int32, "used": pl.Boolean,
                                      "color": pl.String, "roles": pl.List(pl.String)})


def require_pixel_sizes(index: Iterable[Any]) -> None:
    """Refuse to segment or crop plates without a credible pixel size (every size-dependent step needs one).

    Raises
    ------
    PipelineError
        Naming each plate, where its pixel size was looked for (or the implausible value found and in which
        file), and the config key to set.
    """
    unset: dict[str, str] = {}
    for r in index:
        if r.pixel_size_um is None:
            unset.setdefault(r.plate, r.pixel_size_source or "no pixel size in the metadata")
    if unset:
        lines = "\n".join(f"  plate {plate}: {why}" for plate, why in sorted(unset.items()))
        raise PipelineError(f"no credible pixel size for {len(unset)} plate(s); segmentation and crops need one:\n"
                            f"{lines}\nSet [images].pixel_size_um in the run config (µm per pixel of the images, "
                            "e.g. 0.598 for JUMP's 20x water objective with 2x2 binning on an Opera Phenix).")


def pixel_size_lines(index: Iterable[Any]) -> list[str]:
    """One line per plate: the pixel size used and where it came from."""
    seen: dict[str, str] = {}
    for r in index:
        if r.plate not in seen:
            value = "not set" if r.pixel_size_um is None else f"{r.pixel_size_um:.4g} µm/px"
            seen[r.plate] = f"plate {r.plate}: pixel size {value} ({r.pixel_size_source or 'source unknown'})"
    return [seen[p] for p in sorted(seen)]


@dataclass(frozen=True)
class SiteSelection:
    """Which sites a run of the per-site stages works on (see :func:`select_sites`).

    Attributes
    ----------
    index : SiteIndex
        Sites of the configured plates (channels cut to the channel map).
    report : SiteCheckReport
        What :func:`~subcell_screen.io.check_sites` found.
    records : tuple of SiteRecord
        Sites with work to do (readable, some stage not done, or ``force``).
    done : frozenset
        Keys of readable sites with nothing to do.
    check_failed : frozenset
        Keys of sites that failed the check (not loadable).
    embed_stage : str
        ``site_stages`` name of the embed stage, ``embed:<feature_set>``.
    raw_dtypes : dict
        Key -> dtype of the site's image files (as checked).
    messages : tuple of str
        What the selection found (damaged files recomputed, illumination exclusions, ...).
    """

    index: Any
    report: Any
    records: tuple[Any, ...]
    done: frozenset
    check_failed: frozenset
    seg_done: frozenset
    emb_done: frozenset
    embed_stage: str
    do_seg: bool
    do_emb: bool
    force: bool
    raw_dtypes: dict = field(default_factory=dict, repr=False)
    messages: tuple[str, ...] = ()

    @property
    def skipped(self) -> int:
        """Sites with nothing to do."""
        return len(self.done)

    def needs_segment(self, key: tuple) -> bool:
        return self.do_seg and (self.force or key not in self.seg_done)

    def needs_embed(self, key: tuple) -> bool:
        return self.do_emb and (self.force or key not in self.emb_done)

    def raw_dtype(self, key: tuple) -> str:
        """The dtype of a site's image files as checked (``float32`` when unknown)."""
        return self.raw_dtypes.get(tuple(key)) or "float32"


def select_sites(store: ScreenStore, config: RunConfig, plan: RunPlan, design: ScreenDesign, *,
                 stages: Sequence[str], force: bool, progress: bool | None = None) -> SiteSelection:
    """Index the images, check every site (recorded in ``sites``) and pick the sites with work to do.

    Also records the run's ``channels`` table (acquired channels, which are used, colours and roles), and
    refuses plates without a credible pixel size before any work.
    """
    from ..io import check_sites

    do_seg, do_emb = "segment" in stages, "embed" in stages
    acquired_index = site_index(config, design)
    acquired = list(dict.fromkeys(c for r in acquired_index for c in r.channels))
    index = mapped_channels(acquired_index, config.channel_map())
    require_pixel_sizes(index)
    store.write_table("channels", channel_rows(config.channel_map(), acquired, featurizer=plan.featurizer,
                                               colors=config.report.channel_colors))
    report = check_sites(index, store=store, raise_on_unreadable_plate=False, progress=progress)
    check_failed = frozenset(tuple(key) for key, _msg in report.failures)
    embed_stage = f"embed:{plan.feature_set}"
    seg_done = frozenset() if force else frozenset(store.sites_with_stage("segment"))
    emb_done = frozenset() if force else frozenset(store.sites_with_stage(embed_stage))
    messages = []
    if do_emb and emb_done:
        damaged = store.damaged_cell_feature_files(plan.feature_set, sorted(emb_done & {r.key for r in index}))
        if damaged:
            emb_done = emb_done - set(damaged)
            first = "; ".join(f"{k[0]} {k[1]} s{k[2]}: {why}" for k, why in list(damaged.items())[:3])
            messages.append(f"{len(damaged)} site(s) recorded as featurized have a missing or damaged per-cell "
                            f"file and are featurized again, e.g. {first}")
            logger.warning(messages[-1])
    records = tuple(r for r in index if r.key not in check_failed and (
        (do_seg and r.key not in seg_done) or (do_emb and r.key not in emb_done)))
    todo = {r.key for r in records}
    done = frozenset(r.key for r in index if r.key not in check_failed and r.key not in todo)
    dtypes = {(p, w, int(s)): d for p, w, s, d in store.sql("SELECT plate, well, site, dtype FROM sites").rows()}
    return SiteSelection(index=index, report=report, records=records, done=done, check_failed=check_failed,
                         seg_done=seg_done, emb_done=emb_done, embed_stage=embed_stage, do_seg=do_seg,
                         do_emb=do_emb, force=force, raw_dtypes=dtypes, messages=tuple(messages))


def plate_illumination(store: ScreenStore, index: SiteIndex, plates: Iterable[str], *, force: bool,
                       progress: bool | None = None) -> tuple[dict, list[str]]:
    """Illumination functions of ``plates`` (stored ones reused unless ``force``), and messages naming sites
    left out of a function (another shape or dtype, unreadable)."""
    from ..io import compute_illumination

    out, messages = {}, []
    for plate in plates:
        stored = {} if force else store.read_illumination(plate)
        if stored:
            out[plate] = stored
            continue
        funcs = compute_illumination(index, plate=plate, progress=progress)
        store.write_illumination(plate, dict(funcs), recipe=dict(funcs.recipe))
        excluded = dict(getattr(funcs, "excluded", {}) or {})
        if excluded:
            first = "; ".join(f"{k}: {why}" for k, why in list(excluded.items())[:3])
            messages.append(f"plate {plate}: {len(excluded)} site(s) left out of the illumination functions, "
                            f"e.g. {first}")
        out[plate] = dict(funcs)
    return out, messages
