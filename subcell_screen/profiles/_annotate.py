"""Annotate profiles with a platemap and external metadata (pycytominer ``annotate``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import polars as pl

from .frames import (
    COMPARTMENTS,
    METADATA_PREFIX,
    PANDAS_NA_VALUES,
    as_frame,
    format_names,
    is_pandas,
    load_profiles,
    require_columns,
    to_polars,
)

__all__ = ["annotate"]

logger = logging.getLogger(__name__)

#: CellProfiler image-level metadata columns renamed by ``clean_cellprofiler`` (pycytominer ``cp_clean``).
_CP_CLEAN = {"Image_Metadata_Plate": "Metadata_Plate", "Image_Metadata_Well": "Metadata_Well",
             "Image_Metadata_Site": "Metadata_Site"}


def _read_table(table: Any, *, name: str, sep: str | None = None) -> pl.DataFrame:
    if isinstance(table, (str, os.PathLike)):
        if sep is not None:
            return pl.read_csv(table, separator=sep, null_values=PANDAS_NA_VALUES, infer_schema_length=None)
        return load_profiles(table)
    return to_polars(as_frame(table, name=name))


def _prefix_metadata(frame: pl.DataFrame, protected: set[str] = frozenset()) -> pl.DataFrame:
    return frame.rename({c: f"{METADATA_PREFIX}{c}" for c in frame.columns
                         if not c.startswith(METADATA_PREFIX) and c not in protected})


def annotate(
    profiles: Any,
    platemap: Any,
    *,
    join_on: str | Sequence[str] = ("Metadata_well_position", "Metadata_Well"),
    add_metadata_id_to_platemap: bool = True,
    clean_cellprofiler: bool = True,
    external_metadata: Any = None,
    external_join_on: str | Sequence[str] | None = None,
    platemap_sep: str | None = None,
) -> Any:
    """Add platemap (and external, e.g. coSMicQC) metadata to profiles (pycytominer ``annotate``).

    Parameters
    ----------
    profiles : polars.DataFrame, pandas.DataFrame or path
        Profiles (e.g. :func:`~subcell_screen.profiles.aggregate` output).
    platemap : polars.DataFrame, pandas.DataFrame or path
        One row per well; with ``add_metadata_id_to_platemap`` its columns get the ``Metadata_`` prefix.
    join_on : str or (str, str)
        Platemap key and profiles key (after prefixing), e.g. ``("Metadata_well_position",
        "Metadata_Well")``; one name for both sides. An inner join: profiles without a platemap row (and
        platemap rows without profiles) are left out; rows come in platemap order. Platemap columns that the
        profiles also have get the suffix ``_platemap``; the platemap key is dropped when it differs.
    add_metadata_id_to_platemap : bool
        Prefix platemap columns with ``Metadata_`` (those not already prefixed).
    clean_cellprofiler : bool
        Rename ``Image_Metadata_Plate``/``Well``/``Site`` to ``Metadata_Plate``/``Well``/``Site``.
    external_metadata : polars.DataFrame, pandas.DataFrame or path, optional
        Extra per-profile metadata (e.g. coSMicQC's QC table with ``cqc_*`` flags), left-joined on
        ``external_join_on``; its columns get the ``Metadata_`` prefix except ``Metadata_*``, CellProfiler
        feature, numeric ``Image_*`` and ``Image_Metadata_*`` columns, and exact duplicate rows of the result
        are dropped (pycytominer).
    external_join_on : str or list of str, optional
        Key column(s) of the external join, as named on both sides after prefixing; required with
        ``external_metadata``.
    platemap_sep : str, optional
        Delimiter of a platemap file (default: detected).

    Returns
    -------
    polars.DataFrame or pandas.DataFrame
        ``Metadata_*`` columns first, then the others in their order (pandas when ``profiles`` is pandas,
        else polars).

    Raises
    ------
    ValueError
        A key column is missing, or only one of ``external_metadata`` / ``external_join_on`` is given.
    """
    pandas_out = is_pandas(profiles)
    prof = _read_table(profiles, name="profiles")
    pmap = _read_table(platemap, name="platemap", sep=platemap_sep)
    if add_metadata_id_to_platemap:
        pmap = _prefix_metadata(pmap)
    keys = [join_on, join_on] if isinstance(join_on, str) else list(join_on)
    if len(keys) != 2:
        raise ValueError(f"join_on must be one column name or [platemap column, profiles column], got {join_on!r}")
    left, right = keys
    require_columns(pmap, [left], name="platemap")
    require_columns(prof, [right], name="profiles")
    clash = [c for c in pmap.columns if c in set(prof.columns) and not (c == left and left == right)]
    pmap = pmap.rename({c: f"{c}_platemap" for c in clash})
    if left in clash:
        left = f"{left}_platemap"
    if pmap.schema[left] != prof.schema[right]:
        raise ValueError(f"join_on columns have different types: platemap {left!r} is {pmap.schema[left]}, "
                         f"profiles {right!r} is {prof.schema[right]}")
    # pandas' merge (pycytominer) matches missing keys with each other
    out = pmap.join(prof, left_on=left, right_on=right, how="inner", maintain_order="left_right",
                    coalesce=left == right, nulls_equal=True)
    if left != right:
        out = out.drop(left)
    if out.height < prof.height:
        logger.info("annotate: %d of %d profile rows have no platemap row (join on %s / %s); left out",
                    prof.height - out.height, prof.height, left, right)
    if (external_metadata is None) != (external_join_on is None):
        raise ValueError("give external_metadata and external_join_on together")
    if external_metadata is not None:
        out = _join_external(out, _read_table(external_metadata, name="external_metadata"),
                             [external_join_on] if isinstance(external_join_on, str) else list(external_join_on))
    if clean_cellprofiler:
        out = out.rename({k: v for k, v in _CP_CLEAN.items() if k in out.columns})
    meta = [c for c in out.columns if c.startswith(METADATA_PREFIX)]
    out = out.select(meta + [c for c in out.columns if c not in set(meta)])
    return out.to_pandas() if pandas_out else out


def _join_external(out: pl.DataFrame, ext: pl.DataFrame, on: list[str]) -> pl.DataFrame:
    schema = ext.schema
    nested = {c for c, t in schema.items() if isinstance(t, pl.List | pl.Array | pl.Struct | pl.Object)}
    protected = {c for c in ext.columns if c.startswith((METADATA_PREFIX, "Image_Metadata_"))}
    protected |= {c for c in ext.columns if c.startswith(COMPARTMENTS) and c not in nested}
    protected |= {c for c in ext.columns if c.startswith("Image") and c not in nested
                  and (not c.startswith("Image_") or schema[c].is_numeric())}
    ext = _prefix_metadata(ext, protected)
    require_columns(out, on, name="annotated profiles (external_join_on)")
    require_columns(ext, on, name="external_metadata (external_join_on, after the Metadata_ prefix)")
    clash = [c for c in ext.columns if c in set(out.columns) and c not in on]
    if clash:
        logger.info("annotate: external metadata columns also in the profiles get the suffix _external: %s",
                    format_names(clash))
    ext = ext.rename({c: f"{c}_external" for c in clash})
    joined = out.join(ext, on=on, how="left", maintain_order="left_right", nulls_equal=True)
    return joined.unique(maintain_order=True)

