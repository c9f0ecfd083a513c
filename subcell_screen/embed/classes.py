"""The 31 SubCell localization classes (index -> name, hex colour), as in SubCellPortable.

Index ``i`` is output column ``prob{i:02d}``. Probabilities are multi-label: each is the mean over the loaded
classifier heads of a per-class sigmoid, so they need not sum to 1 (see :mod:`subcell_screen.embed`).
"""

from __future__ import annotations

__all__ = ["CLASS_NAMES", "CLASS_COLORS", "NUM_CLASSES", "probability_columns"]

#: Class names, index = classifier output (SubCellPortable ``CLASS2NAME``).
CLASS_NAMES: tuple[str, ...] = (
    "Actin filaments", "Aggresome", "Cell Junctions", "Centriolar satellite", "Centrosome",
    "Cytokinetic bridge", "Cytoplasmic bodies", "Cytosol", "Endoplasmic reticulum", "Endosomes",
    "Focal adhesion sites", "Golgi apparatus", "Intermediate filaments", "Lipid droplets", "Lysosomes",
    "Microtubules", "Midbody", "Mitochondria", "Mitotic chromosome", "Mitotic spindle", "Nuclear bodies",
    "Nuclear membrane", "Nuclear speckles", "Nucleoli", "Nucleoli fibrillar center", "Nucleoli rim",
    "Nucleoplasm", "Peroxisomes", "Plasma membrane", "Vesicles", "Negative",
)

#: Hex colour per class (SubCellPortable ``CLASS2COLOR``).
CLASS_COLORS: tuple[str, ...] = (
    "#ffeb3b", "#76ff03", "#ff6d00", "#eb30c1", "#faadd4", "#795548", "#64ffda", "#00e676", "#03a9f4",
    "#4caf50", "#ffc107", "#00bcd4", "#cddc39", "#212121", "#8bc34a", "#ff9800", "#ae8c08", "#ffff00",
    "#31b61f", "#9e9e9e", "#2196f3", "#e91e63", "#3f51b5", "#9c27b0", "#673ab7", "#d3a50b", "#f44336",
    "#009688", "#ff9e80", "#242e4b", "#000000",
)

#: Number of classifier outputs.
NUM_CLASSES = len(CLASS_NAMES)


def probability_columns(pass_names: tuple[str, ...] | list[str] | None = None) -> list[str]:
    """Names of probability columns: ``prob00..prob30``, prefixed ``<pass>_`` when there are several passes."""
    base = [f"prob{i:02d}" for i in range(NUM_CLASSES)]
    if not pass_names or len(pass_names) == 1:
        return base
    return [f"{p}_{c}" for p in pass_names for c in base]
