"""Planted effects of a simulated screen (the answer key) and the plate nuisance model.

A :class:`PlantedEffect` says what a perturbation does to the cells and how strongly at a given dose: the
response follows a 4-parameter logistic in log10 concentration (:func:`four_parameter_logistic`) with a known
EC50, and is turned into per-site cell-population parameters by :meth:`PlantedEffect.apply`.

Examples
--------
>>> from subcell_screen.simulate.effects import PlantedEffect
>>> eff = PlantedEffect("vorinostat", "relocalization", protein="HDAC8", from_class="Nucleoplasm",
...                     to_class="Cytosol", ec50_uM=1.0, hill=1.5, bottom=0.03, top=0.9)
>>> round(eff.response(1.0), 3), eff.direction
(0.465, 'Nucleoplasm->Cytosol')
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import polars as pl

from .images import CellPopulation, normalize_localization
from .profiles import four_parameter_logistic

__all__ = [
    "EFFECTS",
    "PROTEIN_LOCALIZATION",
    "PlantedEffect",
    "answer_key_table",
    "hpa_demo_effects",
    "jump_target1_effects",
]

EffectKind = Literal["relocalization", "mitotic_arrest", "cell_loss", "nuclear_size", "none"]
#: Effect kinds a perturbation can carry.
EFFECTS: tuple[str, ...] = ("relocalization", "mitotic_arrest", "cell_loss", "nuclear_size", "none")

#: Baseline localization of proteins the simulator knows (HPA main location), for the ``protein`` column.
PROTEIN_LOCALIZATION: Mapping[str, str] = {
    "HDAC8": "Nucleoplasm",
    "TOMM20": "Mitochondria",
    "FBL": "Nucleoli",
    "CALR": "Endoplasmic reticulum",
    "SON": "Nuclear speckles",
    "ATP1A1": "Plasma membrane",
    "GAPDH": "Cytosol",
    "GOLGA2": "Golgi apparatus",
    "LMNB1": "Nuclear membrane",
    "TUBB": "Microtubules",
    "PCNT": "Centrosome",
    "RAB5A": "Vesicles",
}


@dataclass(frozen=True)
class PlantedEffect:
    """What one perturbation does, as a function of dose.

    Attributes
    ----------
    perturbation_id : str
        Layout ``perturbation_id`` the effect applies to.
    effect : str
        ``relocalization`` (protein moves ``from_class`` -> ``to_class``; ``bottom``/``top`` are the
        fractions of relocalized cells), ``mitotic_arrest`` (rounding, condensed chromatin, spindles;
        ``top`` = fraction of arrested cells; the rest of the cells get bundled microtubules, paclitaxel-like),
        ``cell_loss`` (cytotoxic; ``top`` = fraction of cells lost; survivors partly apoptotic),
        ``nuclear_size`` (``top`` = relative increase of nucleus area, 0.8 -> 1.8x) or ``none``.
    protein : str or None
        For ``relocalization``: the protein that moves (only wells stained for it show the effect).
    from_class, to_class : str or None
        Localization classes of a relocalization.
    ec50_uM : float or None
        Concentration of half-maximal response, µM. ``None``: the effect is at ``top`` at any dose.
    hill : float
        Hill slope of the 4-parameter logistic.
    bottom, top : float
        Effect at zero and saturating dose (meaning per ``effect``, see above).
    """

    perturbation_id: str
    effect: EffectKind
    protein: str | None = None
    from_class: str | None = None
    to_class: str | None = None
    ec50_uM: float | None = None
    hill: float = 1.5
    bottom: float = 0.0
    top: float = 1.0

    def __post_init__(self) -> None:
        if self.effect not in EFFECTS:
            raise ValueError(f"unknown effect {self.effect!r} for {self.perturbation_id!r}; expected one of "
                             f"{', '.join(EFFECTS)}")
        if self.effect == "relocalization":
            if self.protein is None or self.from_class is None or self.to_class is None:
                raise ValueError(f"relocalization of {self.perturbation_id!r} needs protein, from_class and "
                                 "to_class")
            object.__setattr__(self, "from_class", normalize_localization(self.from_class))
            object.__setattr__(self, "to_class", normalize_localization(self.to_class))
            if not (0 <= self.bottom <= 1 and 0 <= self.top <= 1):
                raise ValueError(f"relocalization fractions of {self.perturbation_id!r} must be in [0, 1]")
        if self.effect in ("mitotic_arrest", "cell_loss") and not (0 <= self.bottom <= 1 and 0 <= self.top <= 1):
            raise ValueError(f"{self.effect} fractions of {self.perturbation_id!r} must be in [0, 1]")
        if self.ec50_uM is not None and not self.ec50_uM > 0:
            raise ValueError(f"ec50_uM of {self.perturbation_id!r} must be > 0, got {self.ec50_uM}")
        if not self.hill > 0:
            raise ValueError(f"hill of {self.perturbation_id!r} must be > 0, got {self.hill}")

    @property
    def direction(self) -> str | None:
        """Human-readable direction, e.g. ``"Nucleoplasm->Cytosol"``."""
        if self.effect == "relocalization":
            return f"{self.from_class}->{self.to_class}"
        if self.effect == "mitotic_arrest":
            return "mitotic arrest: rounding, condensed chromatin, microtubule bundling"
        if self.effect == "cell_loss":
            return "cell count down, apoptotic cells"
        if self.effect == "nuclear_size":
            return f"nucleus area up x{1 + self.top:.2g}" if self.top >= 0 else f"nucleus area down x{1 + self.top:.2g}"
        return None

    def response(self, concentration_uM: float | None) -> float:
        """Effect level at a dose: ``bottom .. top`` along the 4-parameter logistic.

        A null (unknown) or absent EC50 gives ``top``; a zero dose gives ``bottom``.
        """
        if self.effect == "none":
            return 0.0
        if self.ec50_uM is None or concentration_uM is None:
            return float(self.top)
        if concentration_uM <= 0:
            return float(self.bottom)
        return float(four_parameter_logistic(np.log10(concentration_uM), bottom=self.bottom, top=self.top,
                                             log10_ec50=float(np.log10(self.ec50_uM)), hill=self.hill))

    def fraction_of_max(self, concentration_uM: float | None) -> float:
        """Response rescaled to 0 (``bottom``) .. 1 (``top``)."""
        span = self.top - self.bottom
        return 0.0 if span == 0 else (self.response(concentration_uM) - self.bottom) / span

    def apply(self, population: CellPopulation, *, concentration_uM: float | None,
              protein: str | None = None) -> CellPopulation:
        """The population of a well treated at ``concentration_uM`` (``protein``: the well's stained protein)."""
        r = self.response(concentration_uM)
        if self.effect == "relocalization":
            if protein is None or protein.upper() != str(self.protein).upper():
                return population
            return replace(population, localization=self.from_class, relocalize_to=self.to_class,
                           relocalized_fraction=r)
        if self.effect == "mitotic_arrest":
            f = self.fraction_of_max(concentration_uM)
            return replace(population, mitotic_fraction=max(population.mitotic_fraction, r),
                           bundled_fraction=float(np.clip(0.85 * f, 0, 1)))
        if self.effect == "cell_loss":
            f = self.fraction_of_max(concentration_uM)
            return replace(population, density_per_mm2=population.density_per_mm2 * max(1.0 - r, 0.02),
                           apoptotic_fraction=float(np.clip(0.25 * f, 0, 1)))
        if self.effect == "nuclear_size":
            return replace(population, nucleus_scale=population.nucleus_scale * max(1.0 + r, 0.2))
        return population

    def to_dict(self) -> dict[str, object]:
        return {"perturbation_id": self.perturbation_id, "effect": self.effect, "protein": self.protein,
                "from_class": self.from_class, "to_class": self.to_class, "direction": self.direction,
                "ec50_uM": self.ec50_uM, "hill": self.hill if self.effect != "none" else None,
                "bottom": self.bottom if self.effect != "none" else None,
                "top": self.top if self.effect != "none" else None}


def hpa_demo_effects() -> tuple[PlantedEffect, ...]:
    """The planted effects of the HPA-style demo layout (:func:`subcell_screen.simulate.hpa_layout`).

    * vorinostat: HDAC8 Nucleoplasm -> Cytosol, EC50 1 µM, Hill 1.5, 3 % -> 90 % of cells;
    * paclitaxel: mitotic arrest (2 % -> 60 % of cells) + microtubule bundling, EC50 0.01 µM;
    * staurosporine: cytotoxic, 80 % of cells lost at saturation, EC50 0.1 µM;
    * etoposide: nucleus area x1.8, EC50 2 µM;
    * ``inactive-*``: no effect.
    """
    return (
        PlantedEffect("vorinostat", "relocalization", protein="HDAC8", from_class="Nucleoplasm",
                      to_class="Cytosol", ec50_uM=1.0, hill=1.5, bottom=0.03, top=0.9),
        PlantedEffect("paclitaxel", "mitotic_arrest", ec50_uM=0.01, hill=1.5, bottom=0.03, top=0.6),
        PlantedEffect("staurosporine", "cell_loss", ec50_uM=0.1, hill=1.5, bottom=0.0, top=0.8),
        PlantedEffect("etoposide", "nuclear_size", ec50_uM=2.0, hill=1.5, bottom=0.0, top=0.8),
    )


def jump_target1_effects(layout: pl.DataFrame) -> tuple[PlantedEffect, ...]:
    """Planted morphology effects for the JUMP-Target-1 compound layout, keyed by compound name.

    CYT-997 (tubulin) and BI-2536 (PLK1): mitotic arrest; ganetespib (HSP90): cell loss; AMG900 and danusertib
    (Aurora kinases): larger nuclei. The layout has no concentrations, so every effect is at its ``top``.
    Every other compound is null.
    """
    plan = {"CYT-997": ("mitotic_arrest", 0.6), "BI-2536": ("mitotic_arrest", 0.5),
            "ganetespib": ("cell_loss", 0.75), "AMG900": ("nuclear_size", 0.9), "danusertib": ("nuclear_size", 0.7)}
    out = []
    seen = set()
    for rec in layout.select("perturbation_id", "perturbation_name").unique(maintain_order=True).iter_rows():
        pid, name = rec
        if name in plan and pid not in seen:
            kind, top = plan[name]
            out.append(PlantedEffect(pid, kind, top=top, bottom=0.03 if kind == "mitotic_arrest" else 0.0))
            seen.add(pid)
    return tuple(out)


def answer_key_table(layout: pl.DataFrame, effects: Iterable[PlantedEffect]) -> pl.DataFrame:
    """One row per (treatment perturbation, effect): the screen's answer key.

    Columns: ``perturbation_id``, ``perturbation_name``, ``protein``, ``effect``, ``from_class``, ``to_class``,
    ``direction``, ``ec50_uM``, ``hill``, ``bottom``, ``top``, ``max_concentration_uM``, ``expected_hit``
    (a planted effect whose response at the highest tested dose is at least half its maximum).
    Perturbations without a planted effect appear once with ``effect = "none"``; negative controls and empty
    wells are left out (positive controls are treatments here).
    """
    by_pid: dict[str, list[PlantedEffect]] = {}
    for e in effects:
        by_pid.setdefault(e.perturbation_id, []).append(e)
    treat = layout.filter(pl.col("control_type").is_null() | (pl.col("control_type") == "poscon"))
    rows = []
    for pid, name in treat.select("perturbation_id", "perturbation_name").unique(maintain_order=True).iter_rows():
        sub = treat.filter(pl.col("perturbation_id") == pid)
        concs = [c for c in sub["concentration"].to_list() if c is not None]
        cmax = max(concs) if concs else None
        for e in by_pid.get(pid, [PlantedEffect(pid, "none")]):
            d = e.to_dict()
            d["perturbation_name"] = name
            d["max_concentration_uM"] = cmax
            d["expected_hit"] = e.effect != "none" and e.fraction_of_max(cmax) >= 0.5
            rows.append(d)
    schema = {"perturbation_id": pl.String, "perturbation_name": pl.String, "protein": pl.String,
              "effect": pl.String, "from_class": pl.String, "to_class": pl.String, "direction": pl.String,
              "ec50_uM": pl.Float64, "hill": pl.Float64, "bottom": pl.Float64, "top": pl.Float64,
              "max_concentration_uM": pl.Float64, "expected_hit": pl.Boolean}
    return pl.DataFrame(rows, schema=schema).select(list(schema)).sort(
        ["expected_hit", "perturbation_id"], descending=[True, False])
