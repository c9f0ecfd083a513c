"""Simulated well-level profiles with planted effects (the answer key for profile and scoring stages).

This is the fast, image-free simulator: it produces what aggregation would produce from a screen (one row per
plate x well, ``Metadata_`` columns plus raw feature columns), with known active and null perturbations,
mechanism-of-action groups sharing a direction, dose series following a 4-parameter logistic with a known EC50,
cytotoxic compounds that lower cell counts, and nuisance effects (per-plate offsets and scales, a batch effect,
edge-well effects). Features have non-zero means, unequal scales and correlated noise so normalisation and
whitening have real work to do.

Examples
--------
>>> from subcell_screen.simulate import simulate_well_profiles
>>> sim = simulate_well_profiles(n_plates=2, n_features=16, seed=0)
>>> sim.profiles.height, sim.answer_key.filter(sim.answer_key["is_active"]).height > 0
(320, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from ..layouts import PLATE_FORMATS, row_letters

__all__ = ["SimulatedProfiles", "simulate_well_profiles", "four_parameter_logistic"]


def four_parameter_logistic(
    log10_conc: np.ndarray, *, bottom: float, top: float, log10_ec50: float, hill: float
) -> np.ndarray:
    """4-parameter logistic response at ``log10_conc`` (same units as ``log10_ec50``)."""
    return bottom + (top - bottom) / (1.0 + 10.0 ** ((log10_ec50 - log10_conc) * hill))


@dataclass(frozen=True)
class SimulatedProfiles:
    """Output of :func:`simulate_well_profiles`.

    Attributes
    ----------
    profiles : polars.DataFrame
        One row per (plate, well): ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Batch``,
        ``Metadata_perturbation_id``, ``Metadata_control_type``, ``Metadata_moa``, ``Metadata_target``,
        ``Metadata_concentration`` (µM, null for controls), ``Metadata_Count_Cells``, then the raw features
        ``Cells_Feature_000`` ... (Float64; CellProfiler-style names, so ``features="infer"`` finds them).
    answer_key : polars.DataFrame
        One row per perturbation: ``perturbation_id``, ``moa``, ``is_active``, ``effect_size`` (norm of the
        planted shift at full response, in units of the within-plate noise sd), ``ec50_uM`` (null unless a
        dose series), ``hill``, ``cytotoxic`` (bool), ``kind`` (``negcon``, ``active``, ``null``, ``dose``).
    feature_names : list of str
    """

    profiles: pl.DataFrame = field(repr=False)
    answer_key: pl.DataFrame = field(repr=False)
    feature_names: list[str] = field(repr=False)


def _wells(plate_format: int) -> list[str]:
    n_rows, n_cols = PLATE_FORMATS[plate_format]
    return [row_letters(r) + f"{c + 1:02d}" for r in range(n_rows) for c in range(n_cols)]


def simulate_well_profiles(
    *,
    n_plates: int = 4,
    plate_format: int = 384,
    n_features: int = 64,
    n_negcon: int = 32,
    n_active: int = 24,
    n_null: int = 24,
    n_moa: int = 6,
    n_dose_compounds: int = 4,
    doses_uM: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0),
    replicates: int = 4,
    effect_size: float = 4.0,
    noise_rank: int = 8,
    plate_effect: float = 1.0,
    batch_effect: float = 1.0,
    n_batches: int = 2,
    edge_effect: float = 0.5,
    cytotoxic_fraction: float = 0.25,
    shuffle_per_plate: bool = True,
    seed: int = 0,
) -> SimulatedProfiles:
    """Simulate well-level profiles of a multi-plate screen with planted effects.

    Every plate holds the same perturbations (replicates across plates); within a plate, positions are
    shuffled per plate (``shuffle_per_plate``) so well position does not confound identity.

    Parameters
    ----------
    n_plates, plate_format
        Number of plates and wells per plate (96, 384 or 1536).
    n_features
        Feature columns.
    n_negcon
        DMSO negative-control wells per plate.
    n_active, n_null
        Active perturbations (planted shift) and null perturbations (no shift), each in ``replicates`` wells
        spread over the plates (``replicates`` per screen, at least one per plate when
        ``replicates >= n_plates``).
    n_moa
        Active perturbations are split into this many MoA groups; members of a group share a shift direction
        (cosine ~0.8 between members).
    n_dose_compounds, doses_uM
        Compounds tested at every dose (one well per dose per plate); their activity follows a 4-parameter
        logistic in log10 concentration with a known EC50 (answer key).
    replicates
        Wells per active/null perturbation over the whole screen.
    effect_size
        Norm of an active perturbation's shift, in units of the per-feature noise sd (so the Mahalanobis-like
        separation is roughly ``effect_size``).
    noise_rank
        Rank of the correlated part of the biological noise.
    plate_effect, batch_effect, edge_effect
        Nuisance scales: per-plate additive offset and multiplicative scale per feature, per-batch offset,
        and an offset in outer-ring wells.
    n_batches
        Plates are assigned to batches round-robin.
    cytotoxic_fraction
        Fraction of active perturbations that also reduce cell counts (to ~20 % of controls at full effect).
    shuffle_per_plate
        Randomise well positions on every plate.
    seed
        Everything is deterministic for a seed.

    Returns
    -------
    SimulatedProfiles
    """
    rng = np.random.default_rng(seed)
    wells = _wells(plate_format)
    n_dose_wells = n_dose_compounds * len(doses_uM)
    per_plate_treat = int(np.ceil((n_active + n_null) * replicates / n_plates))
    needed = n_negcon + n_dose_wells + per_plate_treat
    if needed > len(wells):
        raise ValueError(f"{needed} wells needed per plate but a {plate_format}-well plate has {len(wells)}; "
                         "lower n_active/n_null/replicates or raise n_plates/plate_format")

    feature_names = [f"Cells_Feature_{i:03d}" for i in range(n_features)]  # CellProfiler-style: inferred
    base_mean = rng.uniform(50, 500, n_features)  # raw units, unequal scales
    base_sd = rng.uniform(1, 30, n_features)
    loadings = rng.normal(0, 1, (noise_rank, n_features)) / np.sqrt(noise_rank)

    # perturbation directions: one unit direction per MoA, members perturbed around it
    moa_dirs = rng.normal(0, 1, (n_moa, n_features))
    moa_dirs /= np.linalg.norm(moa_dirs, axis=1, keepdims=True)
    key_rows = [{"perturbation_id": "DMSO", "moa": None, "is_active": False, "effect_size": 0.0, "ec50_uM": None,
                 "hill": None, "cytotoxic": False, "kind": "negcon"}]
    shifts: dict[str, np.ndarray] = {}
    tox: dict[str, bool] = {}
    for i in range(n_active):
        pid = f"active_{i:02d}"
        m = i % n_moa
        d = moa_dirs[m] + rng.normal(0, 0.6, n_features) / np.sqrt(n_features)
        d /= np.linalg.norm(d)
        shifts[pid] = d * effect_size
        tox[pid] = bool(i < round(cytotoxic_fraction * n_active))
        key_rows.append({"perturbation_id": pid, "moa": f"moa_{m}", "is_active": True, "effect_size": effect_size,
                         "ec50_uM": None, "hill": None, "cytotoxic": tox[pid], "kind": "active"})
    for i in range(n_null):
        pid = f"null_{i:02d}"
        shifts[pid] = np.zeros(n_features)
        tox[pid] = False
        key_rows.append({"perturbation_id": pid, "moa": f"moa_null_{i % max(1, n_moa)}", "is_active": False,
                         "effect_size": 0.0, "ec50_uM": None, "hill": None, "cytotoxic": False, "kind": "null"})
    log_doses = np.log10(np.asarray(doses_uM, dtype=float))
    dose_params: dict[str, tuple[float, float]] = {}
    for i in range(n_dose_compounds):
        pid = f"dose_{i:02d}"
        d = rng.normal(0, 1, n_features)
        d /= np.linalg.norm(d)
        shifts[pid] = d * effect_size * 1.5
        # EC50 inside the tested range, at least one dose step from either end
        log_ec50 = float(rng.uniform(log_doses[1], log_doses[-2]))
        hill = float(rng.uniform(1.0, 2.0))
        dose_params[pid] = (log_ec50, hill)
        tox[pid] = False
        key_rows.append({"perturbation_id": pid, "moa": f"moa_dose_{i}", "is_active": True,
                         "effect_size": effect_size * 1.5, "ec50_uM": float(10 ** log_ec50), "hill": hill,
                         "cytotoxic": False, "kind": "dose"})

    # well assignments per plate: replicate wells of active/null perturbations spread over plates
    treat_ids = [f"active_{i:02d}" for i in range(n_active)] + [f"null_{i:02d}" for i in range(n_null)]
    all_treat = [pid for pid in treat_ids for _ in range(replicates)]
    plate_lists: list[list[str]] = [[] for _ in range(n_plates)]
    for k, pid in enumerate(all_treat):  # round-robin: replicates land on different plates
        plate_lists[k % n_plates].append(pid)

    moa_of = {k["perturbation_id"]: k["moa"] for k in key_rows}
    rows = []
    feats = []
    for p in range(n_plates):
        plate = f"SIM{p + 1:03d}"
        batch = f"batch{p % n_batches + 1}"
        content: list[tuple[str, float | None]] = [("DMSO", None)] * n_negcon
        content += [(pid, None) for pid in plate_lists[p]]
        content += [(pid, float(dose)) for pid in dose_params for dose in doses_uM]
        positions = rng.permutation(len(wells))[: len(content)] if shuffle_per_plate else np.arange(len(content))
        plate_offset = rng.normal(0, plate_effect, n_features) * base_sd
        plate_scale = np.exp(rng.normal(0, 0.1 * plate_effect, n_features))
        batch_offset = np.random.default_rng(seed + 1000 + p % n_batches).normal(0, batch_effect, n_features) * base_sd
        edge_offset = rng.normal(0, edge_effect, n_features) * base_sd
        n_rows, n_cols = PLATE_FORMATS[plate_format]
        for (pid, dose), pos in zip(content, positions):
            well = wells[pos]
            r, c = divmod(int(pos), n_cols)
            edge = r in (0, n_rows - 1) or c in (0, n_cols - 1)
            response = 1.0
            if pid in dose_params:
                log_ec50, hill = dose_params[pid]
                response = float(four_parameter_logistic(np.log10(dose), bottom=0.0, top=1.0,
                                                         log10_ec50=log_ec50, hill=hill))
            shift = shifts.get(pid, np.zeros(n_features)) * response
            noise = rng.normal(0, 1, n_features) * 0.6 + rng.normal(0, 1, noise_rank) @ loadings * 0.8
            z = shift + noise
            x = (base_mean + z * base_sd) * plate_scale + plate_offset + batch_offset + (edge_offset if edge else 0)
            count = rng.normal(300, 30)
            if tox.get(pid):
                count *= 0.2
            rows.append({
                "Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Batch": batch,
                "Metadata_perturbation_id": pid,
                "Metadata_control_type": "negcon" if pid == "DMSO" else None,
                "Metadata_moa": moa_of.get(pid),
                "Metadata_concentration": dose,
                "Metadata_Count_Cells": int(max(5, round(count))),
            })
            feats.append(x)
    meta = pl.DataFrame(rows, schema={"Metadata_Plate": pl.String, "Metadata_Well": pl.String,
                                      "Metadata_Batch": pl.String, "Metadata_perturbation_id": pl.String,
                                      "Metadata_control_type": pl.String, "Metadata_moa": pl.String,
                                      "Metadata_concentration": pl.Float64, "Metadata_Count_Cells": pl.Int64})
    x = pl.DataFrame(np.asarray(feats), schema=feature_names, orient="row")
    profiles = pl.concat([meta, x], how="horizontal").sort(["Metadata_Plate", "Metadata_Well"])
    answer_key = pl.DataFrame(key_rows, schema={"perturbation_id": pl.String, "moa": pl.String,
                                                "is_active": pl.Boolean, "effect_size": pl.Float64,
                                                "ec50_uM": pl.Float64, "hill": pl.Float64, "cytotoxic": pl.Boolean,
                                                "kind": pl.String})
    return SimulatedProfiles(profiles=profiles, answer_key=answer_key, feature_names=feature_names)
