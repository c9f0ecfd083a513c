"""Simulated screens with planted effects: images with ground truth, and well-level profiles.

Everything is deterministic for a seed and carries an answer key, so every stage can be held to known
answers offline.

* :func:`render_site` renders one multi-channel site (HPA or Cell Painting style) with label images and a
  per-cell truth table.
* :func:`simulate_screen` writes a whole screen (images in HPA or Opera Phenix naming, layouts, plates table,
  run config, ground truth, answer key) and returns a :class:`SimulatedScreen`.
* :func:`simulate_well_profiles` is the image-free, well-level simulator for profile and scoring stages.
"""

from __future__ import annotations

from .effects import (
    EFFECTS,
    PROTEIN_LOCALIZATION,
    PlantedEffect,
    answer_key_table,
    hpa_demo_effects,
    jump_target1_effects,
)
from .images import (
    LOCALIZATIONS,
    PHENOTYPES,
    STYLE_CHANNELS,
    Acquisition,
    CellPopulation,
    RenderedSite,
    default_acquisition,
    normalize_localization,
    render_site,
)
from .profiles import SimulatedProfiles, four_parameter_logistic, simulate_well_profiles
from .screen import (
    HPA_COLORS,
    PHENIX_CHANNEL_NUMBERS,
    SCREEN_PRESETS,
    Nuisance,
    ScreenPreset,
    SimulatedScreen,
    hpa_layout,
    open_simulated_screen,
    simulate_screen,
)

__all__ = [
    "SimulatedProfiles",
    "simulate_well_profiles",
    "four_parameter_logistic",
    # images
    "render_site",
    "RenderedSite",
    "CellPopulation",
    "Acquisition",
    "default_acquisition",
    "normalize_localization",
    "LOCALIZATIONS",
    "PHENOTYPES",
    "STYLE_CHANNELS",
    # effects
    "PlantedEffect",
    "EFFECTS",
    "PROTEIN_LOCALIZATION",
    "answer_key_table",
    "hpa_demo_effects",
    "jump_target1_effects",
    # screens
    "simulate_screen",
    "open_simulated_screen",
    "SimulatedScreen",
    "ScreenPreset",
    "SCREEN_PRESETS",
    "Nuisance",
    "hpa_layout",
    "HPA_COLORS",
    "PHENIX_CHANNEL_NUMBERS",
]
