"""Tests for subcell_screen.report.plots and the report's image and HTML helpers (fast, no store)."""

from __future__ import annotations

import os

import numpy as np
import polars as pl
import pytest

from subcell_screen.report import plots
from subcell_screen.report._html import format_value
from subcell_screen.report._images import (
    composite,
    crop_around,
    default_colors,
    draw_outlines,
    read_site_channels,
)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Plot functions must not write files: run every test in an empty folder and check it stays empty."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield
    assert os.listdir(cwd) == []


def test_plate_heatmap_places_values_in_plate_layout():
    df = pl.DataFrame({"plate": ["P1", "P1", "P1", "P2"], "well": ["B03", "P24", "A01", "A01"],
                       "n_cells": [17, 3, None, 5], "failed": [False, True, False, False]})
    fig = plots.plate_heatmap(df, plate_format=384, marks="failed", label="cells")
    image_axes = [ax for ax in fig.axes if ax.images and ax.get_title()]
    assert [ax.get_title() for ax in image_axes] == ["P1 (384-well)", "P2 (384-well)"]
    grid = image_axes[0].images[0].get_array()
    assert grid.shape == (16, 24)
    assert grid[1, 2] == 17 and grid[15, 23] == 3
    assert grid.mask[0, 0] and grid.mask.sum() == 16 * 24 - 2  # null and absent wells stay blank
    assert image_axes[1].images[0].get_array()[0, 0] == 5
    marks = image_axes[0].collections[0].get_offsets()
    assert marks.tolist() == [[23.0, 15.0]]  # the failed well (x = column, y = row)
    assert image_axes[0].images[0].get_clim() == (3.0, 17.0)  # one colour scale over both plates
    # format inferred from the wells; bad formats are named
    assert plots.plate_heatmap(pl.DataFrame({"well": ["AF48"], "n": [1]}), value="n").axes[0].images[0] \
        .get_array().shape == (32, 48)
    assert plots.plate_heatmap(pl.DataFrame({"well": ["H12"], "n": [1]}), value="n").axes[0].images[0] \
        .get_array().shape == (8, 12)
    with pytest.raises(ValueError, match="unknown plate format 100"):
        plots.plate_heatmap(df, plate_format=100)
    with pytest.raises(ValueError, match="no column.*n_cells"):
        plots.plate_heatmap(pl.DataFrame({"well": ["A01"]}))


def test_dose_response_curve_passes_half_way_at_ec50():
    from subcell_screen.simulate import four_parameter_logistic

    conc = np.array([0.01, 0.1, 1.0, 10.0, 100.0])
    act = four_parameter_logistic(np.log10(conc), bottom=1.0, top=9.0, log10_ec50=0.3, hill=1.2)
    points = pl.DataFrame({"perturbation_id": ["a"] * 5 + ["b"] * 2, "concentration": [*conc, 1.0, 10.0],
                           "activity": [*act, 0.1, 0.2]})
    fits = pl.DataFrame({"perturbation_id": ["a", "b"], "status": ["fit", "no fit"], "ec50": [10**0.3, None],
                         "hill": [1.2, None], "bottom": [1.0, None], "top": [9.0, None],
                         "reason": [None, "flat response"]})
    fig = plots.dose_response_curves(points, fits=fits, unit="µM", titles={"a": "vorinostat"})
    ax_a, ax_b = fig.axes[:2]
    curve = [ln for ln in ax_a.get_lines() if len(ln.get_xdata()) > 2][0]
    xs, ys = np.asarray(curve.get_xdata()), np.asarray(curve.get_ydata())
    assert np.interp(0.3, np.log10(xs), ys) == pytest.approx(5.0, abs=1e-3)
    # panel titles name the perturbation (its id where no name is given); EC50 with 3 significant digits
    assert ax_a.get_title() == "vorinostat\nEC50 = 2.00 µM"
    assert ax_b.get_title() == "b\nno fit: flat response"
    assert not [ln for ln in ax_b.get_lines() if len(ln.get_xdata()) > 2]
    assert ax_a.get_xlabel() == "concentration (µM)" and ax_a.get_xscale() == "log"



def test_dose_curve_is_the_scorers_logistic4_of_the_fit():
    """The drawn curve is score.logistic4 (what fit_dose_response fits) at the fitted parameters, also for a
    steep fit drawn over many decades (the scorer's model clips the exponent: no overflow)."""
    import warnings

    from subcell_screen.score import fit_dose_response, logistic4

    conc = np.repeat(10.0 ** np.arange(-3, 3.5, 0.5), 2)
    rng = np.random.default_rng(0)
    act = logistic4(np.log10(conc), 0.5, 6.0, 0.2, 1.4) + rng.normal(0, 0.2, conc.size)
    fit = fit_dose_response(conc, act)
    assert fit.status == "ok"
    points = pl.DataFrame({"perturbation_id": ["a"] * conc.size + ["s", "s"], "concentration":
                           [*conc, 1e-35, 1e35], "activity": [*act, 0.0, 1.0]})
    fits = pl.DataFrame({"perturbation_id": ["a", "s"], "status": ["fit", "fit"], "ec50": [fit.ec50, 1.0],
                         "hill": [fit.hill, 10.0], "bottom": [fit.bottom, 0.0], "top": [fit.top, 1.0]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = plots.dose_response_curves(points, fits=fits)
    curves = []
    for ax in fig.axes[:2]:
        line = [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 2][0]
        curves.append((np.asarray(line.get_xdata()), np.asarray(line.get_ydata())))
    for (xs, ys), (ec50, hill, bottom, top) in zip(curves, [(fit.ec50, fit.hill, fit.bottom, fit.top),
                                                             (1.0, 10.0, 0.0, 1.0)]):
        np.testing.assert_array_equal(ys, logistic4(np.log10(xs), bottom, top, np.log10(ec50), hill))
    xs, ys = curves[0]  # half-way between bottom and top at the EC50
    assert np.interp(fit.log10_ec50, np.log10(xs), ys) == pytest.approx((fit.bottom + fit.top) / 2, abs=1e-3)

def test_hit_ranking_highlights_hits_and_labels_top():
    df = pl.DataFrame({"perturbation_id": ["a", "b", "c", "d"], "mean_average_precision": [0.9, 0.8, 0.2, 0.1],
                       "corrected_p_value": [0.001, 0.01, 0.5, 0.9], "is_hit": [True, True, False, False],
                       "cytotoxic": [False, True, False, False], "rank": [1, 2, 3, 4],
                       "name": ["vorinostat", None, "x", "y"]})
    fig = plots.hit_ranking(df, label_top=2)
    ax = fig.axes[0]
    sizes = {c.get_label(): len(c.get_offsets()) for c in ax.collections}
    assert sizes == {"not a hit": 2, "hit": 1, "hit, cytotoxic": 1}
    assert [t.get_text() for t in ax.texts] == ["a", "b"]
    hit = [c for c in ax.collections if c.get_label() == "hit"][0].get_offsets()[0]
    assert hit[0] == pytest.approx(0.9) and hit[1] == pytest.approx(3.0)  # -log10(0.001)
    # labels from a name column, the id where the name is missing; each label points at its point
    fig = plots.hit_ranking(df, label_top=2, label="name")
    texts = fig.axes[0].texts
    assert [t.get_text() for t in texts] == ["vorinostat", "b"]
    assert [tuple(t.xy) for t in texts] == [pytest.approx((0.9, 3.0)), pytest.approx((0.8, 2.0))]
    with pytest.raises(ValueError, match="no label column 'names'"):
        plots.hit_ranking(df, label="names")


def _crowded_scores(n: int = 40, seed: int = 0, *, weak: bool = False) -> pl.DataFrame:
    """Many perturbations, the best ones crowded at the top right with long names (the hard case); ``weak``:
    the best q-values lie just below 0.05, so the q = 0.05 line runs near the top of the plot (where a legend
    inside the axes would sit)."""
    rng = np.random.default_rng(seed)
    m = np.r_[np.full(8, 0.99) + rng.uniform(-0.01, 0.01, 8), rng.uniform(0, 0.7, n - 8)]
    q = np.r_[np.full(8, 0.04 if weak else 1e-4), rng.uniform(0.06 if weak else 0.02, 1, n - 8)]
    names = [f"N-hydroxy-N'-phenyloctanediamide analogue {i:02d}" if i % 3 == 0 else f"cmpd-{i}" for i in range(n)]
    return pl.DataFrame({"perturbation_id": [f"p{i:02d}" for i in range(n)], "perturbation_name": names,
                         "mean_average_precision": m, "corrected_p_value": q, "is_hit": q < 0.05,
                         "cytotoxic": [i == 1 for i in range(n)], "rank": np.argsort(np.argsort(q - m)) + 1})


@pytest.mark.parametrize(("q_threshold", "weak"), [(0.05, False), (0.5, False), (0.05, True)])
def test_hit_ranking_geometry_legend_clear_of_q_line_and_text_inside(q_threshold, weak):
    """The legend must not cover the dashed q line, no text may be clipped at the figure's edges, and the
    labels must not overlap each other (display coordinates of the drawn figure)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = plots.hit_ranking(_crowded_scores(weak=weak), q_threshold=q_threshold, label_top=10,
                            label="perturbation_name")
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    line = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"][0]
    line_y = ax.transData.transform((0.5, -np.log10(q_threshold)))[1]
    assert line.get_ydata()[0] == pytest.approx(-np.log10(q_threshold))
    ax_box = ax.get_window_extent(renderer)
    legend = ax.get_legend().get_window_extent(renderer)
    covers = legend.y0 <= line_y <= legend.y1 and legend.x0 < ax_box.x1 and legend.x1 > ax_box.x0
    assert not covers, (legend, line_y)
    assert legend.y0 >= ax_box.y1 - 1  # above the plotting area: it covers no point either
    fig_box = fig.bbox
    # everything drawn (tick labels, axis labels, legend, point labels) lies inside the figure
    tight = fig.get_tightbbox(renderer).transformed(fig.dpi_scale_trans)
    assert fig_box.x0 - 0.5 <= tight.x0 and tight.x1 <= fig_box.x1 + 0.5, (tight, fig_box)
    assert fig_box.y0 - 0.5 <= tight.y0 and tight.y1 <= fig_box.y1 + 0.5, (tight, fig_box)
    texts = [*ax.texts, *ax.get_legend().get_texts(), ax.xaxis.label, ax.yaxis.label]
    assert len(texts) == 10 + 4 + 2
    for t in texts:
        bb = t.get_window_extent(renderer)
        assert fig_box.x0 - 0.5 <= bb.x0 and bb.x1 <= fig_box.x1 + 0.5, (t.get_text(), bb, fig_box)
        assert fig_box.y0 - 0.5 <= bb.y0 and bb.y1 <= fig_box.y1 + 0.5, (t.get_text(), bb, fig_box)
    from matplotlib.text import Text

    labels = [Text.get_window_extent(t, renderer) for t in ax.texts]  # the text, without its leader line
    assert len(labels) == 10
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            assert not labels[i].overlaps(labels[j]), (ax.texts[i].get_text(), ax.texts[j].get_text())
    for bb in labels:  # the labels sit right of the plotting area, outside the data
        assert bb.x0 >= ax_box.x1


def test_lane_positions_keep_order_spacing_and_range():
    from subcell_screen.report.plots import _lane_positions

    wanted = np.array([0.9, 0.9, 0.9, 0.1, 0.5])
    pos = _lane_positions(wanted, gap=0.1, lo=0.0, hi=1.0, tie=np.array([0.1, 0.3, 0.2, 0.0, 0.0]))
    assert np.all((pos >= 0) & (pos <= 1))
    s = np.sort(pos)
    assert np.all(np.diff(s) >= 0.1 - 1e-12)
    assert pos[1] > pos[2] > pos[0]  # among equal heights the rightmost point gets the top lane
    assert pos[3] == pytest.approx(0.1) and pos[4] == pytest.approx(0.5)  # free labels stay where they point
    crowded = _lane_positions(np.full(30, 1.0), gap=0.1, lo=0.0, hi=1.0)
    assert crowded.min() >= 0 and crowded.max() <= 1 and np.all(np.diff(np.sort(crowded)) > 0)


def test_scatter_and_histogram_plots():
    coords = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]])
    fig = plots.embedding_scatter(coords, groups=["negcon", None, "negcon"], axis_labels=("PC1 (50%)", "PC2"))
    labels = sorted(t.get_text() for t in fig.axes[0].get_legend().get_texts())
    assert labels == ["negcon (2)", "treatment (1)"]
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        plots.embedding_scatter(coords[:, :1], groups=["a", "b", "c"])
    readouts = pl.DataFrame({"plate": ["P1"] * 4, "control_type": ["negcon", "negcon", "poscon", "poscon"],
                             "profile_distance": [1.0, 1.2, 5.0, 5.5]})
    fig = plots.control_separation(readouts, zprime={"P1": 0.42})
    assert [t.get_text() for t in fig.axes[0].texts] == ["Z′ = 0.42"]
    fig = plots.replicate_correlation([0.8, 0.9], [0.0, 0.1, -0.1], threshold=0.09)
    assert fig.axes[0].get_lines()[0].get_xdata()[0] == pytest.approx(0.09)
    reloc = pl.DataFrame({"protein": ["HDAC8", "TP53"], "perturbation_id": ["x", "y"], "from_class": ["Cytosol"] * 2,
                          "to_class": ["Nucleoplasm", "Mitochondria"], "effect_size": [2.0, 0.5],
                          "q_value": [0.01, 0.2], "name": ["vorinostat", None]})
    fig = plots.relocalization_bars(reloc)
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert "HDAC8 | x: Cytosol → Nucleoplasm" in ticks
    ticks = [t.get_text() for t in plots.relocalization_bars(reloc, label="name").axes[0].get_yticklabels()]
    assert ticks == ["HDAC8 | vorinostat: Cytosol → Nucleoplasm", "TP53 | y: Cytosol → Mitochondria"]
    # several readouts: one panel each, with the unit of its effect size
    two = pl.concat([reloc.with_columns(pl.lit("probabilities").alias("readout")),
                     reloc.with_columns(pl.lit("nuc_cyto_ratio").alias("readout"), pl.col("effect_size") * -1)])
    fig = plots.relocalization_bars(two, units={"probabilities": "Σ|Δp|/2", "nuc_cyto_ratio": "Δ ratio"})
    assert [ax.get_xlabel() for ax in fig.axes] == ["probabilities: effect size (Σ|Δp|/2)",
                                                    "nuc_cyto_ratio: effect size (Δ ratio)"]
    assert [len(ax.patches) for ax in fig.axes] == [2, 2]
    qc = pl.DataFrame({"channel": ["a", "a", "b"], "mean": [1.0, 2.0, 3.0], "focus": [0.1, 0.2, 0.3]})
    fig = plots.channel_metrics(qc, metrics=("mean", "focus"))
    assert [ax.get_title() for ax in fig.axes] == ["mean", "focus"]


def test_cell_gallery_mosaic():
    a = np.zeros((8, 8, 3), np.float32)
    a[..., 0] = 1.0  # red crop
    b = np.zeros((8, 8, 3), np.float32)
    b[..., 2] = 1.0  # blue crop
    fig = plots.cell_gallery([[a, a], [a]], control=[[b], [b, b]], row_labels=["hit 1", "hit 2"], gap=2)
    mosaic = fig.axes[0].images[0].get_array()
    step = 10
    assert mosaic.shape == (2 * step, 2 * step + 6 + 2 * step, 3)
    assert mosaic[0, 0].tolist() == [1, 0, 0] and mosaic[step, step].tolist() == [1, 1, 1]  # 2nd row, 1 crop
    assert mosaic[0, 2 * step + 6].tolist() == [0, 0, 1]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["hit 1", "hit 2"]
    with pytest.raises(ValueError, match="one size"):
        plots.cell_gallery([[a, np.zeros((4, 4, 3))]])
    assert plots.cell_gallery([]).axes[0].texts[0].get_text() == "no cells to show"


def test_segmentation_overlay_outlines():
    labels = np.zeros((20, 20), np.int32)
    labels[5:15, 5:15] = 1
    image = np.full((20, 20), 0.5, np.float32)
    fig = plots.segmentation_overlays([image], cells=[labels], titles=["s1"])
    shown = fig.axes[0].images[0].get_array()
    assert shown[5, 5].tolist() == [1.0, 1.0, 1.0] and shown[10, 10].tolist() == [0.0, 0.0, 0.0]
    assert shown[0, 0].tolist() == [0.0, 0.0, 0.0]  # grey image min-max scaled (constant -> 0)
    big = np.zeros((2000, 2000), np.int32)
    big[500:1500, 500:1500] = 1
    thick = draw_outlines(np.zeros((2000, 2000, 3)), big, thickness=3)
    assert thick[500:503, 1000].tolist() == [[1, 1, 1]] * 3 and thick[503, 1000].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="labels are"):
        plots.segmentation_overlays([image], cells=[labels[:10]])


def test_composite_colors_and_crops():
    hpa = default_colors(["microtubules", "er", "nucleus", "protein"])
    assert hpa == {"microtubules": (1.0, 0.0, 0.0), "er": (1.0, 1.0, 0.0), "nucleus": (0.0, 0.35, 1.0),
                   "protein": (0.0, 1.0, 0.0)}
    cp = default_colors(["DNA", "ER", "RNA", "AGP", "Mito"])
    # every Cell Painting dye is shown in its conventional colour (Mito and RNA were dropped before)
    assert cp["DNA"] == (0.0, 0.35, 1.0) and len(cp) == 5 and len(set(cp.values())) == 5
    assert (cp["ER"], cp["RNA"], cp["AGP"], cp["Mito"]) == ((0.0, 1.0, 0.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0),
                                                           (1.0, 0.0, 1.0))
    assert "Brightfield" not in default_colors(["Brightfield", "DNA", "ER"])
    img = {"nucleus": np.array([[0, 50], [100, 200]], np.uint16)}
    rgb = composite(img, limits={"nucleus": (0.0, 100.0)})
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.float32
    assert rgb[1, 0].tolist() == pytest.approx([0.0, 0.35, 1.0]) and rgb[0, 1].tolist() == pytest.approx(
        [0.0, 0.175, 0.5])
    assert rgb[1, 1].tolist() == pytest.approx([0.0, 0.35, 1.0])  # clipped at the upper limit
    a = np.arange(16).reshape(4, 4)
    c = crop_around(a, center=(0, 0), size=4)
    assert c.tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 4, 5]]
    assert crop_around(a, center=(2, 2), size=2).tolist() == [[5, 6], [9, 10]]


def test_read_site_channels_planes_and_errors(tmp_path):
    import tifffile

    stack = np.stack([np.full((6, 7), i, np.uint16) for i in range(3)])
    tifffile.imwrite(tmp_path / "site.tif", stack, photometric="minisblack")
    tifffile.imwrite(tmp_path / "site_a.tif", np.full((6, 7), 9, np.uint16))
    got = read_site_channels({"x": "site.tif#2", "y": str(tmp_path / "site_a.tif")}, plate="P", well="A01", site=1,
                             base=tmp_path)
    assert got["x"].shape == (6, 7) and int(got["x"][0, 0]) == 2 and int(got["y"][0, 0]) == 9
    with pytest.raises(Exception, match=r"site P/A01/1, channel 'z'.*missing\.tif"):
        read_site_channels('{"z": "missing.tif"}', plate="P", well="A01", site=1, base=tmp_path)


def test_format_value():
    assert format_value(None) == "—" and format_value(True) == "yes" and format_value(12) == "12"
    assert format_value(float("nan")) == "—" and format_value(["a", None]) == "a, —"
    # any other number: 3 significant digits, no exponent between 0.001 and 1e6
    assert format_value(0.123456) == "0.123" and format_value(1234.5) == "1234"
    assert format_value(478.2, column="effect_size") == "478" and format_value(-22.31, column="effect_size") == "-22.3"
    assert format_value(0.00012, column="effect_size") == "1.20e-04" and format_value(0.5) == "0.500"
    assert format_value(0.9996, column="mean_average_precision") == "1.000" and format_value(0.0) == "0"
    assert format_value(2.5e7) == "2.50e+07"
    # p- and q-values: scientific below 1e-3
    assert format_value(0.00012, column="corrected_p_value") == "1.20e-04"
    assert format_value(0.0123, column="p_value") == "0.0123" and format_value(0.05, column="q_value") == "0.0500"
    # fractions: 2 decimals (tiny nonzero ones do not read as 0); counts: integers
    assert format_value(0.4849, column="cell_count_fraction") == "0.48"
    assert format_value(0.0003, column="saturated_fraction") == "3.0e-04"
    assert format_value(0.0, column="border_fraction") == "0.00"
    assert format_value(12.0, column="n_cells") == "12" and format_value(12.5, column="median_cells") == "12.5"
    assert format_value(3.0, column="rank") == "3" and format_value(7.0, column="sites_failed") == "7"


def test_column_kinds_of_every_report_column():
    """Every numeric column the report queries return gets the kind its name says."""
    from subcell_screen.report._html import column_kind

    kinds = {"p_value": "p", "q_value": "p", "corrected_p_value": "p", "min_corrected_p_value": "p",
             "cell_count_fraction": "fraction", "saturated_fraction": "fraction", "border_fraction": "fraction",
             "n_wells": "count", "n_cells": "count", "rank": "count", "sites_failed": "count",
             "n_failed_sites": "count", "saturated_sites": "count", "illumination_plates": "count",
             "median_cells_per_well": "count",
             "effect_size": "number", "effect_ci_low": "number", "mean_average_precision": "number",
             "ec50": "number", "percent_replicating": "number", "z_prime_profile_distance": "number",
             "null_p95": "number", "seconds": "number", "pixel_size_um": "number"}
    assert {c: column_kind(c) for c in kinds} == kinds


def test_illumination_panels_and_downsample():
    from subcell_screen.report._images import downsample

    yy, xx = np.mgrid[0:200, 0:300]
    f = (1.0 + ((yy - 100) ** 2 + (xx - 150) ** 2) / 40000.0).astype(np.float32)
    small = downsample(f, max_side=96)
    assert small.shape == (50, 75)  # factor 4: ceil(300 / 96)
    assert small[0, 0] == pytest.approx(f[:4, :4].mean())
    assert downsample(f[:50, :60]).shape == (50, 60)
    with pytest.raises(ValueError, match="2-D"):
        downsample(np.zeros((2, 2, 2)))
    funcs = {("P1", "DNA"): small, ("P1", "ER"): small * 2, ("P2", "DNA"): small}
    fig = plots.illumination_functions(funcs)
    panels = [ax for ax in fig.axes if ax.get_xticks().size == 0 and ax.get_yticks().size == 0 and
              (ax.images or ax.texts)]
    assert len(panels) == 4  # 2 plates x 2 channels; P2 has no ER function
    shown = [ax for ax in panels if ax.images]
    assert len(shown) == 3 and np.array_equal(shown[0].images[0].get_array(), small)
    assert [ax.get_title() for ax in panels[:2]] == ["DNA", "ER"]
    assert [t.get_text() for ax in panels for t in ax.texts] == ["none"]
    # one colour scale per channel, from 1 to the channel's largest value
    assert shown[0].images[0].get_clim() == pytest.approx((1.0, float(small.max())))
    assert shown[1].images[0].get_clim() == pytest.approx((1.0, float(small.max() * 2)))
    assert plots.illumination_functions({}).axes[0].texts[0].get_text() == "no illumination functions"
