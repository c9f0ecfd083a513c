"""Profiles: aggregation, per-plate normalisation, feature selection and batch correction.

pycytominer-compatible functions on wide profiles (``Metadata_*`` columns plus features, as a polars or
pandas DataFrame or a CSV/TSV/Parquet path; the result has the input's type, polars for a path). Feature
columns are inferred by pycytominer's rule (``features="infer"``) plus SubCell embedding names, rows are
selected with ``controls=`` / ``samples=`` (:func:`frames.row_mask`), groups with ``by=`` (``plate_col=`` for
the per-plate fit); see ``docs/migration.md`` for the pycytominer -> subcell_screen table.

* :func:`annotate` — platemap (and coSMicQC/external) metadata onto profiles;
* :func:`aggregate` / :func:`consensus` — per-group median, mean (and MODZ);
* :func:`normalize` — per-plate ``standardize``, ``robustize``, ``mad_robustize`` (pycytominer's scaled MAD or
  the JUMP recipe's unscaled one), ``spherize`` (PCA/ZCA[-cor], correctly whitened), inverse normal
  transforms; fitted on control rows (e.g. :data:`NEGCON`) of every plate in one grouped pass;
* :func:`feature_select` — variance, frequency, correlation, missing values, blocklist, outliers, noise;
* :func:`correct_batch` — Harmony across batches or plates.

:mod:`subcell_screen.profiles.frames` is the polars/pandas adapter that :mod:`subcell_screen.score` shares
(feature inference, row selection, :data:`NEGCON`, :func:`load_profiles`).

Array-layout helpers for the screen store (per-cell ``features`` = ``pl.Array(pl.Float32, D)``):
:func:`aggregate_array`, :func:`to_wide`, :func:`from_wide`, :func:`well_profiles_from_store`; the store's
per-site Parquet files are read straight into numpy by :func:`read_site_arrays` (:func:`site_profiles`).

Example
-------
>>> import polars as pl
>>> from subcell_screen.profiles import NEGCON, normalize, feature_select
>>> from subcell_screen.simulate import simulate_well_profiles
>>> sim = simulate_well_profiles(n_plates=2, n_features=16, seed=0)
>>> norm = normalize(sim.profiles, method="mad_robustize", controls=NEGCON, features=sim.feature_names)
>>> sel = feature_select(norm, operation=["drop_na_columns", "correlation_threshold"], features=sim.feature_names)
>>> norm.height == sim.profiles.height
True
"""

from __future__ import annotations

from ._aggregate import (
                         AGGREGATE_METHODS,
                         aggregate,
                         aggregate_array,
                         consensus,
                         from_wide,
                         reduce_groups,
                         site_profiles,
                         to_wide,
                         well_profiles_from_store,
)
from ._annotate import annotate
from ._batch import BATCH_METHODS, correct_batch
from ._normalize import NORMALIZE_METHODS, SPHERIZE_METHODS, SpherizeFit, fit_spherize, normalize
from ._read import SiteArrays, read_site_arrays
from ._select import (
                         FEATURE_SELECT_OPERATIONS,
                         calculate_frequency,
                         default_blocklist,
                         feature_select,
                         features_to_exclude,
                         read_blocklist,
)
from ._site import SITE_PROFILE_SCHEMA, SiteProfile, profiles_of, site_profile, site_profiles_frame
from ._stage import CONSENSUS_BY, PROFILE_SETS, ProfileSets, build_profile_sets
from .frames import NEGCON, infer_features, load_profiles

__all__ = [
    "annotate",
    "aggregate",
    "aggregate_array",
    "consensus",
    "normalize",
    "feature_select",
    "features_to_exclude",
    "correct_batch",
    "to_wide",
    "from_wide",
    "well_profiles_from_store",
    "read_site_arrays",
    "SiteArrays",
    "site_profiles",
    "SiteProfile",
    "site_profile",
    "site_profiles_frame",
    "profiles_of",
    "SITE_PROFILE_SCHEMA",
    "fit_spherize",
    "SpherizeFit",
    "reduce_groups",
    "infer_features",
    "load_profiles",
    "default_blocklist",
    "read_blocklist",
    "calculate_frequency",
    "NEGCON",
    "AGGREGATE_METHODS",
    "NORMALIZE_METHODS",
    "SPHERIZE_METHODS",
    "FEATURE_SELECT_OPERATIONS",
    "BATCH_METHODS",
    "ProfileSets",
    "build_profile_sets",
    "PROFILE_SETS",
    "CONSENSUS_BY",
]
