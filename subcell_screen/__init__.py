"""subcell_screen: drug-screening phenotypic profiling on the SubCell vision foundation models.

Data flow (one module per stage)::

    layouts / io  ->  channels  ->  segment  ->  crops  ->  embed | features  ->  profiles
        ->  score  ->  store  ->  report          (pipeline wires them; cli and the API are thin layers)

Importing the package is cheap and has no side effects: heavy modules (torch, cellpose, ray) are imported
only when a function that needs them runs. The names below are loaded on first access; docs/api.md lists them
on one page (``import subcell_screen as ss; ss.run(ss.load_config("screen.toml"))``).
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

# public name -> submodule that defines it, in data-flow order (docs/api.md lists them on one page)
_LAZY: dict[str, str] = {
    # run a screen
    "load_config": ".config",
    "RunConfig": ".config",
    "config_reference": ".config",
    "write_starter": ".starter",
    "plan_run": ".pipeline",
    "run": ".pipeline",
    "RunResult": ".pipeline",
    "STAGES": ".pipeline",
    # plates in
    "read_layout": ".layouts",
    "read_plates_table": ".layouts",
    "read_plate": ".io",
    "load_site": ".io",
    "check_sites": ".io",
    "compute_illumination": ".io",
    # channels
    "ChannelMap": ".channels",
    "preset": ".channels",
    # segment, crops, features, embed
    "segment_site": ".segment",
    "segmenter_from_config": ".segment",
    "load_cellpose": ".segment",
    "iter_crops": ".crops",
    "featurize_site": ".features",
    "load_model": ".embed",
    "Embedder": ".embed",
    "resolve_precision": ".embed",
    # profiles (pycytominer-compatible)
    "build_profile_sets": ".profiles",
    "well_profiles_from_store": ".profiles",
    "annotate": ".profiles",
    "aggregate": ".profiles",
    "normalize": ".profiles",
    "feature_select": ".profiles",
    "consensus": ".profiles",
    "NEGCON": ".profiles",
    # scoring (copairs-compatible)
    "score_profiles": ".score",
    "hit_table": ".score",
    "dose_response": ".score",
    "relocalization": ".score",
    "average_precision": ".score",
    "mean_average_precision": ".score",
    "mean_average_precision_hierarchical": ".score",
    # phenotypic map
    "phenotypic_map": ".phenomap",
    # store, reports, export
    "ScreenStore": ".store",
    "build_reports": ".report",
    "export": ".export",
    "export_table": ".export",
    # simulation
    "simulate_screen": ".simulate",
    "simulate_well_profiles": ".simulate",
    # errors
    "SubcellScreenError": "._errors",
    "LayoutError": "._errors",
    "ConfigError": "._errors",
    "ChannelMapError": "._errors",
    "StoreError": "._errors",
    "StoreVersionError": "._errors",
    "PipelineError": "._errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'subcell_screen' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover  (static view of the lazy names above)
    # ruff: noqa: F401
    from ._errors import (
        ChannelMapError,
        ConfigError,
        LayoutError,
        PipelineError,
        StoreError,
        StoreVersionError,
        SubcellScreenError,
    )
    from .channels import ChannelMap, preset
    from .config import RunConfig, config_reference, load_config
    from .crops import iter_crops
    from .embed import Embedder, load_model, resolve_precision
    from .export import export, export_table
    from .features import featurize_site
    from .io import check_sites, compute_illumination, load_site, read_plate
    from .layouts import read_layout, read_plates_table
    from .phenomap import phenotypic_map
    from .pipeline import STAGES, RunResult, plan_run, run
    from .profiles import (
        NEGCON,
        aggregate,
        annotate,
        build_profile_sets,
        consensus,
        feature_select,
        normalize,
        well_profiles_from_store,
    )
    from .report import build_reports
    from .score import (
        average_precision,
        dose_response,
        hit_table,
        mean_average_precision,
        mean_average_precision_hierarchical,
        relocalization,
        score_profiles,
    )
    from .segment import load_cellpose, segment_site, segmenter_from_config
    from .simulate import simulate_screen, simulate_well_profiles
    from .starter import write_starter
    from .store import ScreenStore
