"""Classical features on synthetic labels with known answers and against independent computations
(scikit-image regionprops / graycomatrix, numpy, skimage.graph), plus edge cases and the table/store path.

Agreement with CellProfiler's own output on real data: tests/test_features_cellprofiler.py.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import scipy.ndimage as ndi
import skimage.measure

from subcell_screen.features import (
    COMPARTMENTS,
    ClassicalFeaturizer,
    FeatureParams,
    cytoplasm_labels,
    feature_names,
    featurize_site,
    intensity_scales,
    measure_cells,
    to_feature_table,
    write_features,
)
from subcell_screen.features._intensity import cp_quantile
from subcell_screen.features._objects import Objects, compact_labels, inner_boundary
from subcell_screen.features._radial import _geodesic_from_centres
from subcell_screen.features._shape import minimum_enclosing_circle

FAST = dict(families=("shape", "intensity", "correlation"), zernike_degree=-1)


def blobs(seed: int = 0, size: int = 96, n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Touching irregular cells (Voronoi of random seeds, clipped) and nuclei inside them."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform(8, size - 8, (n, 2))
    markers = np.zeros((size, size), np.int32)
    markers[pts[:, 0].astype(int), pts[:, 1].astype(int)] = np.arange(1, n + 1)
    dist, (iy, ix) = ndi.distance_transform_edt(markers == 0, return_indices=True)
    cells = markers[iy, ix]
    noise = ndi.gaussian_filter(rng.standard_normal((size, size)), 2)
    cells[(dist > 14) | ((dist > 8) & (noise > 0.15))] = 0
    # keep the largest piece of each cell so labels are connected
    for k in range(1, n + 1):
        lab, m = ndi.label(cells == k)
        if m > 1:
            keep = np.argmax(np.bincount(lab.ravel())[1:]) + 1
            cells[(cells == k) & (lab != keep)] = 0
    nuclei = np.where(dist <= 4, cells, 0)
    return nuclei, cells


def image(seed: int, shape: tuple[int, int], channels: int = 3, dtype=np.uint16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1.0
    data = rng.uniform(0, 0.8 * top, (channels, *shape))
    return data.astype(dtype)


# -- shape against scikit-image ------------------------------------------------------------------------------

def test_shape_matches_regionprops_on_irregular_touching_cells() -> None:
    nuclei, cells = blobs(1)
    px = image(1, cells.shape, 1)
    wide = measure_cells(px, nuclei, cells, channel_names=["A"], families=("shape",), zernike_degree=-1)
    props = skimage.measure.regionprops_table(
        cells, properties=("label", "area", "perimeter", "eccentricity", "axis_major_length",
                           "axis_minor_length", "orientation", "extent", "equivalent_diameter_area", "solidity"))
    assert wide["cell_id"].to_list() == props["label"].tolist()
    pairs = {"Area": props["area"], "Perimeter": props["perimeter"], "Eccentricity": props["eccentricity"],
             "MajorAxisLength": props["axis_major_length"], "MinorAxisLength": props["axis_minor_length"],
             "Orientation": np.degrees(props["orientation"]), "Extent": props["extent"],
             "EquivalentDiameter": props["equivalent_diameter_area"]}
    for name, ref in pairs.items():
        np.testing.assert_allclose(wide[f"Cells_AreaShape_{name}"].to_numpy(), ref, rtol=1e-9, atol=1e-9,
                                   err_msg=name)
    np.testing.assert_allclose(wide["Cells_AreaShape_FormFactor"].to_numpy(),
                               4 * np.pi * props["area"] / props["perimeter"] ** 2, rtol=1e-12)
    # solidity follows scikit-image <= 0.16 (pixel centres in the hull of edge midpoints, crossing test);
    # modern regionprops counts a few more hull pixels
    ours = wide["Cells_AreaShape_Solidity"].to_numpy()
    assert np.all(ours >= props["solidity"] - 1e-12)
    assert np.median(ours / props["solidity"] - 1) < 0.03


def _crossing_number_area(mask: np.ndarray) -> int:
    """Independent (loop) implementation of scikit-image 0.16's convex_hull_image pixel count."""
    from scipy.spatial import ConvexHull

    pts = np.argwhere(mask).astype(float)
    corners = np.unique(np.concatenate([pts + o for o in ([0, -.5], [0, .5], [-.5, 0], [.5, 0])]), axis=0)
    verts = corners[ConvexHull(corners).vertices]
    count = 0
    for x in range(mask.shape[0]):
        for y in range(mask.shape[1]):
            c = False
            j = len(verts) - 1
            for i in range(len(verts)):
                xi, yi = verts[i]
                xj, yj = verts[j]
                if ((yi <= y < yj) or (yj <= y < yi)) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
                    c = not c
                j = i
            count += c
    return count


def test_solidity_equals_crossing_number_hull_area() -> None:
    nuclei, cells = blobs(2, size=64, n=5)
    wide = measure_cells(image(2, cells.shape, 1), nuclei, cells, channel_names=["A"], families=("shape",),
                         zernike_degree=-1)
    for row in wide.iter_rows(named=True):
        k = row["cell_id"]
        sl = ndi.find_objects((cells == k).astype(np.int32))[0]
        expected = row["Cells_AreaShape_Area"] / _crossing_number_area(cells[sl] == k)
        assert row["Cells_AreaShape_Solidity"] == pytest.approx(expected, rel=1e-12)


def test_rectangle_and_disc_known_answers() -> None:
    lab = np.zeros((40, 60), np.int32)
    lab[5:15, 10:30] = 1  # 10 x 20 rectangle
    yy, xx = np.mgrid[:40, :60]
    lab[(yy - 25) ** 2 + (xx - 45) ** 2 <= 36] = 2  # disc of radius 6
    px = np.full((1, 40, 60), 51, np.uint8)  # 51 / 255 = 0.2 everywhere
    wide = measure_cells(px, lab, lab, channel_names=["A"], families=("shape", "intensity"), zernike_degree=2)
    r = wide.row(0, named=True)
    assert r["Cells_AreaShape_Area"] == 200
    assert r["Cells_AreaShape_Solidity"] == 1.0 and r["Cells_AreaShape_Extent"] == 1.0
    # second moments of a w x h pixel grid: variance (n^2 - 1) / 12 per axis
    assert r["Cells_AreaShape_MajorAxisLength"] == pytest.approx(4 * math.sqrt((20 ** 2 - 1) / 12))
    assert r["Cells_AreaShape_MinorAxisLength"] == pytest.approx(4 * math.sqrt((10 ** 2 - 1) / 12))
    assert r["Cells_AreaShape_Orientation"] == pytest.approx(90.0)  # long axis along columns
    assert r["Cells_AreaShape_MaximumRadius"] == 5.0  # 10 px tall: 5 px to the nearest outside pixel
    d = r["Cells_AreaShape_Zernike_0_0"]
    assert d == pytest.approx(200 / (math.pi * (math.hypot(9, 19) / 2) ** 2))  # area / enclosing-circle area
    assert r["Cells_Intensity_MeanIntensity_A"] == pytest.approx(0.2)
    assert r["Cells_Intensity_IntegratedIntensity_A"] == pytest.approx(40.0)
    assert r["Cells_Intensity_StdIntensity_A"] == 0 and r["Cells_Intensity_MADIntensity_A"] == 0
    assert r["Cells_Intensity_MassDisplacement_A"] == pytest.approx(0, abs=1e-12)
    assert r["Cells_Intensity_MeanIntensityEdge_A"] == pytest.approx(0.2)
    # the rectangle's edge: its 56 outline pixels (4-neighbour definition)
    assert r["Cells_Intensity_IntegratedIntensityEdge_A"] == pytest.approx(56 * 0.2)
    disc = wide.row(1, named=True)
    assert disc["Cells_AreaShape_Area"] == 113
    assert disc["Cells_AreaShape_Eccentricity"] == pytest.approx(0, abs=1e-12)
    assert disc["Cells_AreaShape_Zernike_1_1"] == pytest.approx(0, abs=1e-12)  # centred: no first moment


def test_minimum_enclosing_circle_brute_force() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        pts = rng.integers(0, 30, (rng.integers(1, 25), 2)).astype(float)
        c, r = minimum_enclosing_circle(pts)
        assert np.all(np.hypot(*(pts - c).T) <= r + 1e-9)
        # no smaller circle through 2 or 3 of the points contains all of them
        best = np.inf
        u = np.unique(pts, axis=0)
        if len(u) == 1:
            assert r == 0
            continue
        for i in range(len(u)):
            for j in range(i + 1, len(u)):
                cc = (u[i] + u[j]) / 2
                rr = np.hypot(*(u[i] - u[j])) / 2
                if np.all(np.hypot(*(u - cc).T) <= rr + 1e-9):
                    best = min(best, rr)
                for k in range(j + 1, len(u)):
                    a, b, d = u[i], u[j], u[k]
                    den = 2 * (a[0] * (b[1] - d[1]) + b[0] * (d[1] - a[1]) + d[0] * (a[1] - b[1]))
                    if abs(den) < 1e-12:
                        continue
                    ux = ((a @ a) * (b[1] - d[1]) + (b @ b) * (d[1] - a[1]) + (d @ d) * (a[1] - b[1])) / den
                    uy = ((a @ a) * (d[0] - b[0]) + (b @ b) * (a[0] - d[0]) + (d @ d) * (b[0] - a[0])) / den
                    rr = np.hypot(a[0] - ux, a[1] - uy)
                    if np.all(np.hypot(u[:, 0] - ux, u[:, 1] - uy) <= rr + 1e-9):
                        best = min(best, rr)
        assert r == pytest.approx(best, rel=1e-9)


# -- intensity ------------------------------------------------------------------------------------------------

def _cp_quantile_loop(values: np.ndarray, q: float) -> float:
    """CellProfiler's MeasureObjectIntensity quantile, one object, written as a loop."""
    s = np.sort(values)
    pos = len(s) * q
    lo = int(pos)
    if lo < len(s) - 1:
        f = pos - lo
        return s[lo] * (1 - f) + s[lo + 1] * f
    return s[min(lo, len(s) - 1)]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_intensity_against_numpy_per_object(dtype) -> None:
    nuclei, cells = blobs(4)
    px = image(4, cells.shape, 2, dtype=dtype)
    wide = measure_cells(px, nuclei, cells, channel_names=["A", "B"], **FAST)
    scale = {np.uint8: 255.0, np.uint16: 65535.0, np.float32: 1.0}[dtype]
    cyto = cytoplasm_labels(nuclei, cells)
    for comp, lab in (("Cells", cells), ("Nuclei", nuclei), ("Cytoplasm", cyto)):
        edge = inner_boundary(lab)
        for row in wide.iter_rows(named=True):
            k = row["cell_id"]
            v = px[1][lab == k].astype(np.float64) / scale
            col = f"{comp}_Intensity_{{}}_B"
            if v.size == 0:
                assert row[col.format("MeanIntensity")] == 0 and row[col.format("IntegratedIntensity")] == 0
                continue
            assert row[col.format("MeanIntensity")] == pytest.approx(v.mean(), rel=1e-12)
            assert row[col.format("IntegratedIntensity")] == pytest.approx(v.sum(), rel=1e-12)
            assert row[col.format("StdIntensity")] == pytest.approx(v.std(), rel=1e-9, abs=1e-15)
            assert row[col.format("MinIntensity")] == pytest.approx(v.min(), rel=1e-12)
            assert row[col.format("MaxIntensity")] == pytest.approx(v.max(), rel=1e-12)
            for name, q in (("LowerQuartileIntensity", .25), ("MedianIntensity", .5), ("UpperQuartileIntensity", .75)):
                assert row[col.format(name)] == pytest.approx(_cp_quantile_loop(v, q), rel=1e-12), name
            med = _cp_quantile_loop(v, .5)
            assert row[col.format("MADIntensity")] == pytest.approx(_cp_quantile_loop(np.abs(v - med), .5),
                                                                  rel=1e-9, abs=1e-15)
            yy, xx = np.nonzero(lab == k)
            md = np.hypot(yy.mean() - (yy * v).sum() / v.sum(), xx.mean() - (xx * v).sum() / v.sum())
            assert row[col.format("MassDisplacement")] == pytest.approx(md, rel=1e-9, abs=1e-12)
            ve = px[1][(lab == k) & edge].astype(np.float64) / scale
            assert row[col.format("MeanIntensityEdge")] == pytest.approx(ve.mean(), rel=1e-12)
            assert row[col.format("MaxIntensityEdge")] == pytest.approx(ve.max(), rel=1e-12)


def test_inner_boundary_is_skimage_find_boundaries_inner() -> None:
    from skimage.segmentation import find_boundaries

    _, cells = blobs(5)
    np.testing.assert_array_equal(inner_boundary(cells), find_boundaries(cells, mode="inner") & (cells != 0))


def test_cp_quantile_small_objects() -> None:
    vals = np.array([1.0, 2.0, 3.0, 10.0, 20.0])
    starts, areas = np.array([0, 1, 3]), np.array([1, 2, 2])
    # one value: itself; two values: position n*q interpolated, upper neighbour clamped
    np.testing.assert_allclose(cp_quantile(vals, starts, areas, 0.5), [1.0, 3.0, 20.0])
    np.testing.assert_allclose(cp_quantile(vals, starts, areas, 0.25), [1.0, 2.5, 15.0])


def test_nuc_cyto_ratio_reads_relocalization() -> None:
    cells = np.zeros((30, 60), np.int32)
    cells[5:25, 5:25] = 1
    cells[5:25, 35:55] = 2
    nuclei = np.zeros_like(cells)
    nuclei[10:20, 10:20] = 1
    nuclei[10:20, 40:50] = 2
    px = np.zeros((1, 30, 60), np.uint16)
    px[0][cells == 1] = 100
    px[0][nuclei == 1] = 400   # cell 1: protein in the nucleus
    px[0][cells == 2] = 300
    px[0][nuclei == 2] = 150   # cell 2: protein in the cytoplasm
    wide = measure_cells(px, nuclei, cells, channel_names=["GFP"], families=("intensity",))
    np.testing.assert_allclose(wide["Cells_Intensity_NucCytoRatio_GFP"].to_numpy(), [4.0, 0.5])
    # shrinking the nucleus (CellProfiler's tertiary objects) moves its 36 outline pixels into the cytoplasm
    shrunk = measure_cells(px, nuclei, cells, channel_names=["GFP"], families=("intensity",), shrink_nuclei=True)
    assert shrunk["Cytoplasm_AreaShape_Area" if "Cytoplasm_AreaShape_Area" in shrunk.columns else
                  "Cytoplasm_Intensity_IntegratedIntensity_GFP"][0] == pytest.approx((300 * 100 + 36 * 400) / 65535)
    assert shrunk["Cells_Intensity_NucCytoRatio_GFP"][0] == pytest.approx(400 / ((300 * 100 + 36 * 400) / 336))


# -- texture --------------------------------------------------------------------------------------------------

def test_texture_against_skimage_graycomatrix() -> None:
    from skimage.feature import graycomatrix, graycoprops

    rng = np.random.default_rng(6)
    q = rng.integers(1, 256, (24, 30)).astype(np.uint8)  # no zero level: nothing ignored
    lab = np.zeros((40, 50), np.int32)
    lab[8:32, 10:40] = 7
    px = np.zeros((1, 40, 50), np.uint8)
    px[0, 8:32, 10:40] = q
    wide = measure_cells(px, lab, lab, channel_names=["A"], families=("texture",), compartments=("Cells",))
    # mahotas direction (dy, dx) * 3 -> skimage (angle, distance) giving the offset (round(sin a * d),
    # round(cos a * d)): 00 (0, 3), 01 (3, 3), 02 (3, 0), 03 (3, -3)
    angles = {"00": (0.0, 3), "01": (np.pi / 4, 4), "02": (np.pi / 2, 3), "03": (3 * np.pi / 4, 4)}
    for d, (theta, dist) in angles.items():
        glcm = graycomatrix(q, distances=[dist], angles=[theta], levels=256, symmetric=True, normed=True)
        name = f"Cells_Texture_{{}}_A_3_{d}_256"
        for ours, prop in (("Contrast", "contrast"), ("AngularSecondMoment", "ASM"),
                           ("Correlation", "correlation"), ("InverseDifferenceMoment", "homogeneity"),
                           ("Variance", "variance")):
            assert wide[name.format(ours)][0] == pytest.approx(graycoprops(glcm, prop)[0, 0], rel=1e-9), (d, ours)
        p = glcm[:, :, 0, 0]
        nz = p[p > 0]
        assert wide[name.format("Entropy")][0] == pytest.approx(-(nz * np.log2(nz)).sum(), rel=1e-12)
        i, j = np.indices(p.shape)
        assert wide[name.format("SumAverage")][0] == pytest.approx(((i + j) * p).sum(), rel=1e-12)


def test_texture_undefined_where_no_pairs() -> None:
    lab = np.zeros((20, 20), np.int32)
    lab[5, 5:15] = 1   # a horizontal line: no vertical pairs at distance 3
    lab[10:18, 10:18] = 2
    px = np.full((1, 20, 20), 90, np.uint8)  # constant: one grey level
    wide = measure_cells(px, lab, lab, channel_names=["A"], families=("texture",), compartments=("Cells",))
    assert np.isnan(wide["Cells_Texture_Contrast_A_3_00_256"][0])
    assert wide["Cells_Texture_AngularSecondMoment_A_3_00_256"][1] == 1.0
    assert wide["Cells_Texture_Contrast_A_3_00_256"][1] == 0.0
    assert wide["Cells_Texture_Correlation_A_3_00_256"][1] == 1.0  # mahotas: constant -> 1


# -- radial, correlation -------------------------------------------------------------------------------------

def test_radial_distribution_known_answers() -> None:
    yy, xx = np.mgrid[:41, :41]
    r = np.hypot(yy - 20, xx - 20)
    cells = (r <= 15).astype(np.int32)
    nuclei = (r <= 5).astype(np.int32)
    flat = np.full((1, 41, 41), 100, np.uint8)
    wide = measure_cells(flat, nuclei, cells, channel_names=["A"], families=("radial",))
    frac = np.array([wide[f"Cells_RadialDistribution_FracAtD_A_{k}of4"][0] for k in range(1, 5)])
    mean_frac = np.array([wide[f"Cells_RadialDistribution_MeanFrac_A_{k}of4"][0] for k in range(1, 5)])
    cv = np.array([wide[f"Cells_RadialDistribution_RadialCV_A_{k}of4"][0] for k in range(1, 5)])
    assert frac.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(mean_frac, 1.0, rtol=1e-9)  # uniform intensity: same share as pixels
    np.testing.assert_allclose(cv, 0.0, atol=1e-12)
    centred = np.where(r <= 5, 250, 10).astype(np.uint8)[None]
    w2 = measure_cells(centred, nuclei, cells, channel_names=["A"], families=("radial",))
    # independent computation: geodesic distance from the centre (MCP), distance to the edge (EDT)
    from skimage.graph import MCP_Geometric

    d_c, _ = MCP_Geometric(np.where(cells > 0, 1.0, np.inf)).find_costs([(20, 20)])
    d_e = ndi.distance_transform_edt(cells)
    m = cells > 0
    bins = np.minimum((d_c[m] / (d_c[m] + d_e[m] + 0.001) * 4).astype(int), 3)
    v = centred[0][m] / 255
    expected = np.bincount(bins, weights=v, minlength=4) / v.sum()
    got = [w2[f"Cells_RadialDistribution_FracAtD_A_{k}of4"][0] for k in range(1, 5)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert got[0] > 0.4 and w2["Cells_RadialDistribution_MeanFrac_A_1of4"][0] > 5  # bright centre
    # rings follow the nucleus: an off-centre nucleus moves intensity to other bins
    off = (np.hypot(yy - 20, xx - 28) <= 4).astype(np.int32)
    spot = np.where(off > 0, 250, 10).astype(np.uint8)[None]
    w_nuc = measure_cells(spot, off, cells, channel_names=["A"], families=("radial",))
    w_self = measure_cells(spot, off, cells, channel_names=["A"], families=("radial",), radial_center="self")
    # around the nucleus the spot fills the inner ring evenly (CV 0); around the cell centre it does not
    assert w_nuc["Cells_RadialDistribution_FracAtD_A_1of4"][0] > 10 * w_self["Cells_RadialDistribution_FracAtD_A_1of4"][0]
    assert w_nuc["Cells_RadialDistribution_RadialCV_A_1of4"][0] == 0
    assert w_self["Cells_RadialDistribution_RadialCV_A_3of4"][0] > 1


def test_geodesic_distance_in_concave_object_matches_mcp() -> None:
    from skimage.graph import MCP_Geometric

    lab = np.zeros((40, 40), np.int32)
    lab[5:35, 5:12] = 1
    lab[28:35, 5:35] = 1
    lab[5:35, 28:35] = 1          # a U: the free-space distance cuts across the gap
    lab[2:8, 20:24] = 2           # a small convex object
    objs = Objects("Cells", compact_labels(lab, np.array([1, 2])), 2)
    centre = np.array([8 * 40 + 8, 4 * 40 + 21])
    d = _geodesic_from_centres(objs, centre)
    for k, c in enumerate(centre):
        cum, _ = MCP_Geometric(np.where(lab == k + 1, 1.0, np.inf)).find_costs([divmod(int(c), 40)])
        sel = objs.lab == k + 1
        np.testing.assert_allclose(d[sel], cum.ravel()[objs.pix[sel]], rtol=1e-12)
    assert d.max() > 50  # the far arm of the U is reached around the bend


def test_correlation_against_numpy_corrcoef() -> None:
    nuclei, cells = blobs(7)
    px = image(7, cells.shape, 3)
    px[2] = (px[0] // 2 + px[1] // 3).astype(np.uint16)
    wide = measure_cells(px, nuclei, cells, channel_names=["A", "B", "C"], families=("correlation",))
    for row in wide.iter_rows(named=True):
        m = cells == row["cell_id"]
        for a, b, i, j in (("A", "B", 0, 1), ("A", "C", 0, 2), ("B", "C", 1, 2)):
            ref = np.corrcoef(px[i][m].astype(float), px[j][m].astype(float))[0, 1]
            assert row[f"Cells_Correlation_Correlation_{a}_{b}"] == pytest.approx(ref, rel=1e-9)


# -- edge cases ----------------------------------------------------------------------------------------------

def test_edge_cases_are_defined_and_never_crash() -> None:
    lab = np.zeros((32, 32), np.int32)
    lab[3, 3] = 5                     # one-pixel cell with a one-pixel nucleus
    lab[10:20, 10:20] = 9             # a cell ...
    nuclei = np.zeros_like(lab)
    nuclei[3, 3] = 5
    nuclei[25:28, 25:28] = 77         # ... without nucleus, and a nucleus without cell
    lab[25:30, 2:6] = 1_000_000       # a large, non-contiguous id
    px = np.zeros((2, 32, 32), np.uint16)
    px[1] = 1234                      # constant channel; channel 0 all zero
    wide = measure_cells(px, nuclei, lab, channel_names=["Zero", "Const"])
    assert wide["cell_id"].to_list() == [5, 9, 1_000_000]
    assert wide.width == 1 + len(feature_names(["Zero", "Const"]))
    r = {row["cell_id"]: row for row in wide.iter_rows(named=True)}
    one = r[5]
    assert one["Cells_AreaShape_Area"] == 1 and one["Cells_AreaShape_Perimeter"] == 0
    assert np.isnan(one["Cells_AreaShape_FormFactor"]) and np.isnan(one["Cells_AreaShape_Zernike_0_0"])
    assert one["Cells_AreaShape_Solidity"] == 1.0
    assert one["Cells_Intensity_MeanIntensity_Const"] == pytest.approx(1234 / 65535)
    assert one["Cytoplasm_AreaShape_Area"] == 0 and np.isnan(one["Cytoplasm_AreaShape_Solidity"])
    assert one["Cytoplasm_Intensity_MeanIntensity_Const"] == 0 and np.isnan(one["Cells_Intensity_NucCytoRatio_Const"])
    no_nuc = r[9]
    assert no_nuc["Nuclei_AreaShape_Area"] == 0 and no_nuc["Nuclei_Intensity_IntegratedIntensity_Const"] == 0
    assert no_nuc["Cytoplasm_AreaShape_Area"] == 100  # all cytoplasm
    # NaN only where CellProfiler divides 0 by 0: zero total intensity, constant channels in correlation
    assert np.isnan(no_nuc["Cells_Intensity_MassDisplacement_Zero"])
    assert no_nuc["Cells_Intensity_MassDisplacement_Const"] == pytest.approx(0, abs=1e-12)
    assert np.isnan(no_nuc["Cells_Correlation_Correlation_Zero_Const"])
    assert np.isnan(no_nuc["Cells_RadialDistribution_FracAtD_Zero_1of4"])
    assert no_nuc["Cells_RadialDistribution_MeanFrac_Const_1of4"] == pytest.approx(1.0)
    assert np.isnan(no_nuc["Cells_Texture_Contrast_Zero_3_00_256"])  # all level 0: ignored
    assert no_nuc["Cells_Texture_Contrast_Const_3_00_256"] == 0.0
    # every feature of the regular cell that is not one of those is finite
    bad = [c for c in wide.columns[1:] if not np.isfinite(no_nuc[c]) and "Zero" not in c
           and not c.startswith(("Nuclei_", "Cells_Intensity_NucCyto", "Cells_Correlation"))]
    assert bad == []


def test_empty_site_gives_empty_frame_with_all_columns() -> None:
    px = np.zeros((2, 16, 16), np.uint8)
    empty = np.zeros((16, 16), np.int32)
    wide = measure_cells(px, empty, empty, channel_names=["A", "B"], keys={"plate": "P", "well": "A01", "site": 2})
    assert wide.height == 0
    assert wide.columns[:4] == ["plate", "well", "site", "cell_id"]
    assert wide.width == 4 + len(feature_names(["A", "B"]))
    table, names = to_feature_table(wide)
    assert table.height == 0 and table.schema["features"] == pl.Array(pl.Float32, len(names))


def test_feature_names_order_and_count() -> None:
    for c in (1, 3, 5):
        chans = [f"c{i}" for i in range(c)]
        assert len(feature_names(chans)) == 132 + 214 * c + 3 * c * (c - 1) // 2
    names = feature_names(["DNA", "ER"])
    assert names[0] == "Nuclei_AreaShape_Area"
    for expected in ("Cells_Intensity_MeanIntensity_DNA", "Nuclei_AreaShape_Zernike_9_9",
                     "Cytoplasm_Texture_InfoMeas2_ER_3_03_256", "Cells_Correlation_Correlation_DNA_ER",
                     "Cells_RadialDistribution_FracAtD_DNA_1of4", "Cells_Intensity_NucCytoRatio_ER"):
        assert expected in names
    assert len(set(names)) == len(names)
    two = feature_names(["DNA"], FeatureParams(texture_scales=(3, 5), texture_levels=64, radial_bins=3))
    assert "Cells_Texture_Entropy_DNA_5_02_64" in two and "Cells_RadialDistribution_RadialCV_DNA_3of3" in two
    with pytest.raises(ValueError, match="unknown families"):
        FeatureParams(families=("granularity",))
    with pytest.raises(ValueError, match="unique"):
        feature_names(["A", "A"])


def test_intensity_scales() -> None:
    u16 = np.zeros((2, 4, 4), np.uint16)
    assert intensity_scales(u16, ["A", "B"]) == [65535.0, 65535.0]
    assert intensity_scales(u16, ["A", "B"], 4095) == [4095.0, 4095.0]
    assert intensity_scales(np.zeros((1, 2, 2), np.uint8), ["A"]) == [255.0]
    assert intensity_scales(u16, ["A", "B"], {"A": 1.0, "B": 2.0}) == [1.0, 2.0]
    with pytest.raises(ValueError, match="no value for channel"):
        intensity_scales(u16, ["A", "B"], {"A": 1.0})
    # 12-bit data in uint16: CellProfiler divides by 65535 unless told otherwise
    px = np.full((1, 8, 8), 4095, np.uint16)
    lab = np.ones((8, 8), np.int32)
    a = measure_cells(px, lab, lab, channel_names=["A"], families=("intensity",))
    b = measure_cells(px, lab, lab, channel_names=["A"], families=("intensity",), intensity_scale=4095)
    assert a["Cells_Intensity_MeanIntensity_A"][0] == pytest.approx(4095 / 65535)
    assert b["Cells_Intensity_MeanIntensity_A"][0] == pytest.approx(1.0)


def test_bad_inputs_name_the_problem() -> None:
    lab = np.ones((8, 8), np.int32)
    with pytest.raises(ValueError, match="channel_names are required"):
        measure_cells(np.zeros((1, 8, 8), np.uint8), lab, lab)
    with pytest.raises(ValueError, match=r"cells label image has shape \(4, 4\)"):
        measure_cells(np.zeros((1, 8, 8), np.uint8), lab, lab[:4, :4], channel_names=["A"])
    with pytest.raises(ValueError, match="2 channel names for 1 channels"):
        measure_cells(np.zeros((1, 8, 8), np.uint8), lab, lab, channel_names=["A", "B"])
    with pytest.raises(ValueError, match="nuclei label image has negative labels"):
        measure_cells(np.zeros((1, 8, 8), np.uint8), -lab, lab, channel_names=["A"])
    with pytest.raises(ValueError, match="cells label image must hold integers"):
        measure_cells(np.zeros((1, 8, 8), np.uint8), lab, lab.astype(float), channel_names=["A"])


# -- tables, featurizer, store -------------------------------------------------------------------------------

def _site(seed: int = 8):
    from subcell_screen.io import SiteImage, SiteRecord

    nuclei, cells = blobs(seed, size=64, n=6)
    px = image(seed, cells.shape, 3)
    rec = SiteRecord(plate="P1", well="B03", site=2, channels={"DNA": "a.tif", "ER": "b.tif", "Mito": "c.tif"},
                     pixel_size_um=0.65, reader="test")
    return SiteImage(data=px, channel_names=("DNA", "ER", "Mito"), pixel_size_um=0.65, record=rec), nuclei, cells


def test_site_image_keys_and_feature_table() -> None:
    site, nuclei, cells = _site()
    wide = measure_cells(site, nuclei, cells, **FAST)
    assert wide.select("plate", "well", "site").unique().rows() == [("P1", "B03", 2)]
    assert wide.schema["site"] == pl.Int32 and wide.schema["cell_id"] == pl.Int32
    table, names = to_feature_table(wide)
    assert table.columns == ["plate", "well", "site", "cell_id", "features"]
    assert names == wide.columns[4:]
    arr = np.stack(table["features"].to_list())
    np.testing.assert_array_equal(arr, wide.select(names).to_numpy().astype(np.float32))
    sub = measure_cells(site, nuclei, cells, channel_names=["mito"], **FAST)  # a channel by name
    assert "Cells_Intensity_MeanIntensity_mito" in sub.columns and "Cells_Intensity_MeanIntensity_DNA" not in sub.columns


def test_featurizer_with_channel_map_and_store_roundtrip(tmp_path) -> None:
    from subcell_screen.channels import custom_channel_map
    from subcell_screen.store import ScreenStore

    site, nuclei, cells = _site(9)
    cmap = custom_channel_map(channels=["dna", "er"], model_channels="bg", slots={"b": "dna", "g": "er"},
                              nucleus="dna")
    featurizer = ClassicalFeaturizer(params=FeatureParams(**FAST))

    class Seg:  # the segmentation stage's result: label images with shared ids and the site key
        key = ("P1", "B03", 2)

    seg = Seg()
    seg.nuclei, seg.cells = nuclei, cells
    table = featurizer.featurize_site(site, seg, channel_map=cmap)
    names = featurizer.feature_names(["dna", "er"])
    assert table.schema["features"] == pl.Array(pl.Float32, len(names))
    assert "Cells_Intensity_MeanIntensity_er" in names and not any("Mito" in n for n in names)
    assert table.height == len(np.unique(cells)) - 1
    same = featurize_site(site, (nuclei, cells), channel_map=cmap, featurizer=featurizer)
    assert same.equals(table)

    seg.key = ("P1", "B03", 3)
    with pytest.raises(ValueError, match="segmentation is of site"):
        featurizer.featurize_site(site, seg)

    with ScreenStore.create(tmp_path / "screen") as store:
        n = write_features(store, table, feature_names=names, parameters=featurizer.parameters(),
                           sites=[("P1", "B04", 1)])
        assert n == table.height
        rec = store.feature_set("classical")
        assert rec["kind"] == "classical" and rec["feature_names"] == names and rec["n_features"] == len(names)
        back = store.read_cell_features("classical").sort("well", "cell_id")
        assert back.filter(pl.col("well") == "B03").drop("well").equals(table.drop("well").sort("cell_id"))
        assert back.filter(pl.col("well") == "B04").height == 0
        assert store.cell_feature_files("classical")[0].name == "B03_s2.parquet"
        write_features(store, table, feature_names=names)  # idempotent rewrite
        assert store.read_cell_features("classical").height == table.height
        with pytest.raises(ValueError, match="already registered"):
            write_features(store, table.with_columns(pl.col("features").arr.slice(0, 3).list.to_array(3)),
                           feature_names=names[:3])


def test_compartments_listed_in_canonical_order() -> None:
    p = FeatureParams(compartments=("Cells", "Nuclei"))
    assert p.compartments == ("Nuclei", "Cells")
    assert set(COMPARTMENTS) == {"Nuclei", "Cytoplasm", "Cells"}
