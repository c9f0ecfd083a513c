"""Simulated screens with planted effects: images with ground truth, and well-level profiles.

Everything is deterministic for a seed and carries an answer key, so every stage can be held to known
answers offline.
"""

from __future__ import annotations

from .profiles import SimulatedProfiles, four_parameter_logistic, simulate_well_profiles

__all__ = ["SimulatedProfiles", "simulate_well_profiles", "four_parameter_logistic"]
