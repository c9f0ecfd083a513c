"""subcell_screen: drug-screening phenotypic profiling on the SubCell vision foundation models.

Data flow (one module per stage)::

    layouts / io  ->  channels  ->  segment  ->  crops  ->  embed | features  ->  profiles
        ->  score  ->  store  ->  report          (pipeline wires them; cli and the API are thin layers)

Importing the package is cheap and has no side effects: heavy modules (torch, cellpose, ray) are imported
only when a function that needs them runs. The names below are loaded on first access.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

# public name -> submodule that defines it
_LAZY: dict[str, str] = {
    # profiles (pycytominer-compatible)
    "annotate": ".profiles",
    "aggregate": ".profiles",
    "normalize": ".profiles",
    "feature_select": ".profiles",
    "consensus": ".profiles",
    "NEGCON": ".profiles",
    # scoring (copairs-compatible)
    "average_precision": ".score",
    "mean_average_precision": ".score",
    "mean_average_precision_hierarchical": ".score",
    # phenotypic map
    "phenotypic_map": ".phenomap",
    # foundation
    "ScreenStore": ".store",
    "RunConfig": ".config",
    "load_config": ".config",
    "read_layout": ".layouts",
    "read_plates_table": ".layouts",
    "ChannelMap": ".channels",
    # errors
    "SubcellScreenError": "._errors",
    "LayoutError": "._errors",
    "ConfigError": "._errors",
    "ChannelMapError": "._errors",
    "StoreError": "._errors",
    "StoreVersionError": "._errors",
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
        StoreError,
        StoreVersionError,
        SubcellScreenError,
    )
    from .channels import ChannelMap
    from .config import RunConfig, load_config
    from .layouts import read_layout, read_plates_table
    from .phenomap import phenotypic_map
    from .profiles import NEGCON, aggregate, annotate, consensus, feature_select, normalize
    from .score import average_precision, mean_average_precision, mean_average_precision_hierarchical
    from .store import ScreenStore
