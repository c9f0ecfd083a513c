"""Classical per-cell features: a CellProfiler-style baseline and the offline featurizer.

Used to compare SubCell embeddings with CellProfiler features, and by the pipeline whenever SubCell
weights are not available (the pipeline announces it; nothing here falls back silently).

Public API
----------
measure_cells(site, nuclei, cells, *, channel_names=None, keys=None, ...) -> polars.DataFrame
    One row per cell (keys ``plate, well, site, cell_id`` + one Float64 column per feature).
feature_names(channel_names, params=None) -> list[str]
to_feature_table(wide) -> (frame with keys + ``features`` pl.Array(pl.Float32, D), feature_names)
ClassicalFeaturizer(params=FeatureParams(), intensity_scale="dtype").featurize_site(site, segmentation,
    channel_map=None) -> keys + ``features``;  featurize_site(...) is the one-call form
write_features(store, table, *, feature_set="classical", feature_names, parameters=None)
cytoplasm_labels(nuclei, cells, *, shrink_nuclei=False)
ClassicalSiteFeatures.from_config(config.embedding, feature_set=..., channel_map=...)  (the engine's featurizer)
protein_readout(site, segmentation, channel) -> per-cell nuclear/cytoplasmic ratio (relocalization readout)
FeatureParams, intensity_scales

Compartments and rows
---------------------
Nucleus and cell label images share ids (cell ``k`` contains nucleus ``k``). ``Nuclei`` is the nucleus
label image, ``Cells`` the cell label image and ``Cytoplasm`` the cell minus any nucleus (optionally
keeping the nucleus outline, CellProfiler's "shrink" option, or an explicit label image). Rows are the cell
ids. A cell without a nucleus has an empty ``Nuclei`` object (intensity sums 0, shape NaN, ratio NaN) and
is all cytoplasm; a nucleus without a cell has no row.

Feature names (CellProfiler's pattern, so ``pycytominer``'s ``features="infer"`` works)
----------------------------------------------------------------------------------------
``<Compartment>_AreaShape_<F>``: Area, Perimeter, FormFactor (4 pi A / P^2), Compactness (P^2 / 4 pi A),
Solidity, Extent, EquivalentDiameter, Eccentricity, Major/MinorAxisLength, Orientation (degrees, as
CellProfiler >= 4.1; 4.0 wrote radians), Maximum/Mean/MedianRadius, ``Zernike_<n>_<m>`` (degree 9: 30).
``<Compartment>_Intensity_<F>_<channel>``: Integrated/Mean/Std/Min/Max/LowerQuartile/Median/UpperQuartile/
MAD intensity, MassDisplacement, and the *Edge variants (integrated, mean, std, min, max).
``Cells_Intensity_NucCytoRatio_<channel>``: mean nuclear intensity / mean cytoplasmic intensity, the direct
readout of protein relocalization (NaN when either compartment is empty or the cytoplasm mean is 0).
``<Compartment>_Texture_<F>_<channel>_<scale>_<direction 00..03>_<grey levels>``: the 13 Haralick features.
``<Compartment>_Correlation_Correlation_<a>_<b>``: Pearson correlation of two channels within the object.
``Cells_RadialDistribution_{FracAtD,MeanFrac,RadialCV}_<channel>_<k>of<n>``: rings from the nucleus centre.

Feature count: per compartment 14 + 30 (Zernike) shape features, 15 intensity and 52 texture features per
channel and scale, C(C-1)/2 correlations; plus C ratios and 3 x bins radial features per channel (cells
only). With the defaults (3 compartments, texture scale 3, 4 radial bins) that is 132 + 214 C + 1.5 C (C - 1)
features: 783 for 3 channels, 1,006 for 4 (HPA), 1,232 for the 5 Cell Painting channels.

Units and conventions (agreement with CellProfiler)
---------------------------------------------------
Intensities are in CellProfiler's units: pixels divided by the dtype's maximum (uint8 / 255, uint16 / 65535,
also for 12-bit data stored in uint16, as CellProfiler's default "intensity range from image metadata"
does for TIFFs; pass ``intensity_scale=4095`` for its manual 12-bit setting, or the source dtype's maximum
for illumination-corrected float pixels). Quartiles, median and MAD use CellProfiler's interpolation at
``n * q`` (not numpy's ``(n - 1) * q``); std is the population std; edge pixels are object pixels with a
4-neighbour of another value. Solidity counts pixel centres inside the hull of the pixels' edge midpoints
with a crossing-number test (scikit-image <= 0.16, as in CellProfiler 4.0); newer scikit-image gives about 1 %
lower solidity. Texture quantises ``round(255 x)`` to ``levels`` grey levels and ignores level 0; values
above 1 are clipped. Checked on CellProfiler's ExampleHuman output (tests/test_features_cellprofiler.py)
and against cp_measure (CellProfiler's measurement code as a library) for texture, radial distribution,
Zernike moments and correlation.

Defined values: empty objects give 0 for intensity sums and statistics (CellProfiler's zero-initialised
arrays), Area/Perimeter 0 and NaN for other shape features; NaN otherwise only where CellProfiler divides 0
by 0: MassDisplacement and FracAtD/MeanFrac of an object with zero total intensity, Pearson correlation
with a constant channel, texture of an object without non-zero co-occurring pairs, Zernike moments of a
one-pixel object. FormFactor of a one-pixel object (perimeter 0) is NaN where CellProfiler gives inf.

Implementation (what comes from where)
--------------------------------------
Written here, vectorised over labels (``np.bincount`` and one sort over packed ``(label, value)`` keys; no
per-cell loop): intensity statistics, quantiles and edges, mass displacement, area, perimeter (the
scikit-image ``perimeter`` weights applied to all objects at once), second moments, axes, eccentricity and
orientation (scikit-image ``regionprops`` formulas), convex areas (crossing counts of all hull polygons at
once), Haralick features (mahotas' formulas on sparse co-occurrence counts of all objects at once), radial
distribution and correlation. Library calls: distances to the object edge (``scipy.ndimage
.distance_transform_edt``) run once per compartment on a canvas where all objects are packed side by side;
the geodesic distance from the centre is the closed-form chamfer distance wherever a pixel-by-pixel check
proves it exact, and ``skimage.graph.MCP_Geometric`` on the packed concave objects otherwise. Per-object
loops remain only where the work is inherently per object and small: the convex hull
(``scipy.spatial.ConvexHull`` of each object's row extremes), its minimum enclosing circle (Welzl) and the
Zernike complex moments (one small matrix product per object). Zernike moments need the enclosing circle,
and whether a hull pixel on that circle counts (``r^2 <= 1``) depends on round-off, so about a third of
objects differ from CellProfiler there (the median object is identical).

``cp_measure`` (CellProfiler's measurement modules as a library, PyPI) was evaluated and is not a
dependency: it loops over objects in Python in every family, so it is slower by 2-8x per family on a
5-channel 16-bit site and by 60x overall on ExampleHuman (270x for texture with 256 grey levels; see
benchmarks/classical_features.py), and its ``centrosome`` dependency pins ``pillow<12``. It serves as the
reference for texture, radial distribution and correlation in the tests.
Not implemented: Feret diameters, Euler number, granularity, Manders/RWC/Costes colocalization, intensity
location features (positions are not phenotypes).

Texture on 16-bit images: ``round(255 x)`` of 12-bit data stored in uint16 uses only 16 grey levels, exactly
as CellProfiler does; pass ``intensity_scale=4095`` to spread them over 256.
"""

from __future__ import annotations

from ._measure import (
                       COMPARTMENTS,
                       FAMILIES,
                       KEY_COLUMNS,
                       FeatureParams,
                       feature_names,
                       intensity_scales,
                       measure_cells,
)
from ._objects import cytoplasm_labels
from ._site import READOUT_SCHEMA, ClassicalSiteFeatures, protein_readout
from ._table import FEATURE_SET, ClassicalFeaturizer, featurize_site, to_feature_table, write_features

__all__ = [
    "measure_cells",
    "feature_names",
    "to_feature_table",
    "ClassicalFeaturizer",
    "featurize_site",
    "write_features",
    "cytoplasm_labels",
    "intensity_scales",
    "FeatureParams",
    "FAMILIES",
    "COMPARTMENTS",
    "KEY_COLUMNS",
    "FEATURE_SET",
    "ClassicalSiteFeatures",
    "protein_readout",
    "READOUT_SCHEMA",
]
