"""Tests for subcell_screen.report: queries, QC and hit reports on a small realistic screen store, a real
headless-Chromium rendering, and the notebook-style example.

The store is built here from simulated well profiles (subcell_screen.simulate) plus tiny generated TIFF images
with their label masks; reference numbers are computed independently (NumPy on the fixture arrays, or plain
SQL on the store) and compared with what the HTML shows.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from subcell_screen.report import (
    NotComputed,
    build_hit_report,
    build_qc_report,
    build_reports,
    list_queries,
    load_query,
    run_query,
)
from subcell_screen.store import ScreenStore, encode_array

REPO = Path(__file__).resolve().parents[1]
CHANNELS = ("microtubules", "er", "nucleus", "protein")
SIZE = 96  # px per site side
PIXEL_UM = 0.5
FALLBACK = "SubCell weights not found: used classical features"
SCREEN_NAME = "Fixture screen (HDAC8 relocalization)"
#: A systematic name with no space to break at: the hit table must wrap it, not widen the page.
LONG_NAME = "N1-hydroxy-N8-phenyloctanediamide-(2E,4E)-7-[4-(dimethylamino)phenyl]-N-hydroxy-4,6-dimethylhepta"


def _name_of(pid: str) -> str | None:
    """The fixture's perturbation names: one long name, one name shared by two ids, one id without a name."""
    return {"active_01": LONG_NAME, "null_00": "shared name", "null_01": "shared name", "null_02": None}.get(
        pid, f"compound {pid}")


#: Relocalization effect sizes and q-values of the ratio readout (one per active, in id order): the significant
#: rows are not in effect-size order when sorted by q, so the report's ranking is seen.
RATIO_EFFECT = [-0.3, -1.2, 0.8, -0.5, 0.1, 0.05, 0.02, -0.9]
RATIO_Q = [1e-4, 2e-3, 1e-2, 3e-2, 0.2, 0.5, 0.9, 0.07]


# ------------------------------------------------------------------------------------------------------
# the fixture screen


def _site_images(rng, k: int, *, nuclear_protein: bool, blur: float, saturate: bool):
    """(channels dict, nuclei labels, cell labels) of one synthetic HPA-style site with k cells on a grid."""
    from scipy import ndimage

    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    nuclei = np.zeros((SIZE, SIZE), np.int32)
    cells = np.zeros((SIZE, SIZE), np.int32)
    centers = [(16 + 32 * (i // 3), 16 + 32 * (i % 3)) for i in range(9)]
    for lab, (cy, cx) in enumerate(centers[:k], start=1):
        cy += int(rng.integers(-2, 3))
        cx += int(rng.integers(-2, 3))
        r2 = (yy - cy) ** 2 + (xx - cx) ** 2
        cells[r2 <= 13**2] = lab
        nuclei[r2 <= 6**2] = lab
    cyto = (cells > 0) & (nuclei == 0)
    base = {
        "microtubules": 1500.0 * cyto,
        "er": 1200.0 * ((cells > 0) & ~ndimage.binary_erosion(cells > 0, iterations=3)) + 300.0 * cyto,
        "nucleus": 3000.0 * (nuclei > 0),
        "protein": 2000.0 * ((nuclei > 0) if nuclear_protein else cyto),
    }
    images = {}
    for name, signal in base.items():
        img = ndimage.gaussian_filter(signal, blur) + 200.0 + rng.normal(0, 20, (SIZE, SIZE))
        images[name] = np.clip(img, 0, 65535).astype(np.uint16)
    if saturate:
        images["protein"][:10, :10] = 65535
    return images, nuclei, cells


def _average_precision(ranked_pos: np.ndarray) -> np.ndarray:
    """AP of boolean relevance vectors ranked best first (last axis)."""
    hits = np.cumsum(ranked_pos, axis=-1)
    prec = hits / np.arange(1, ranked_pos.shape[-1] + 1)
    return np.sum(prec * ranked_pos, axis=-1) / np.maximum(ranked_pos.sum(axis=-1), 1)


def _map_and_p(x_pert: np.ndarray, x_neg: np.ndarray, rng) -> tuple[float, float]:
    """mAP of retrieving replicates among replicates + negcons (cosine), and a permutation p-value."""
    pool = np.vstack([x_pert, x_neg])
    pool = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    is_pos = np.r_[np.ones(len(x_pert), bool), np.zeros(len(x_neg), bool)]
    aps = []
    for q in range(len(x_pert)):
        others = np.delete(np.arange(len(pool)), q)
        sims = pool[others] @ pool[q]
        aps.append(_average_precision(is_pos[others][np.argsort(-sims, kind="stable")]))
    observed = float(np.mean(aps))
    n_other, n_pos = len(pool) - 1, len(x_pert) - 1
    labels = np.r_[np.ones(n_pos, bool), np.zeros(n_other - n_pos, bool)]
    shuffled = labels[np.argsort(rng.random((1000, len(x_pert), n_other)), axis=-1)]
    null = _average_precision(shuffled).mean(axis=1)
    return observed, float((1 + np.sum(null >= observed)) / (1 + null.size))


def _fit_4pl(conc: np.ndarray, act: np.ndarray):
    from scipy.optimize import curve_fit

    from subcell_screen.simulate import four_parameter_logistic

    def f(logc, bottom, top, log_ec50, hill):
        return four_parameter_logistic(logc, bottom=bottom, top=top, log10_ec50=log_ec50, hill=hill)

    logc = np.log10(conc)
    p0 = [act.min(), act.max(), float(np.median(logc)), 1.0]
    params, cov = curve_fit(f, logc, act, p0=p0, maxfev=20000)
    se = np.sqrt(np.diag(cov))
    return params, se


def _build_screen(root: Path) -> dict:
    """Write a 2-plate, 96-well HPA-style screen store; returns the answer key used by the tests."""
    from scipy import ndimage

    from subcell_screen.simulate import simulate_well_profiles

    sim = simulate_well_profiles(n_plates=2, plate_format=96, n_features=16, n_negcon=12, n_active=8, n_null=8,
                                 n_moa=2, n_dose_compounds=2, doses_uM=(0.01, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0),
                                 replicates=4, effect_size=5.0, cytotoxic_fraction=0.25, seed=3)
    rng = np.random.default_rng(7)
    poscons = {"active_06", "active_07"}
    prof = sim.profiles.with_columns(
        pl.when(pl.col("Metadata_perturbation_id").is_in(list(poscons))).then(pl.lit("poscon"))
        .otherwise(pl.col("Metadata_control_type")).alias("Metadata_control_type"))
    plates = sorted(set(prof["Metadata_Plate"].to_list()))
    key: dict = {"plates": plates, "poscons": poscons, "answer": sim.answer_key}
    store_dir = root / "screen"
    img_dir = root / "images"
    with ScreenStore.create(store_dir) as store:
        store.replace_rows("plates", pl.DataFrame({
            "plate": plates, "layout": ["sim_layout"] * 2, "plate_format": [96, 96], "batch": ["batch1", "batch2"],
            "cell_line": ["U2OS"] * 2, "timepoint": ["24h"] * 2, "extra": ["{}"] * 2},
            schema_overrides={"plate_format": pl.Int32}), keys=["plate"])
        wells = prof.select(
            pl.col("Metadata_Plate").alias("plate"), pl.col("Metadata_Well").alias("well"),
            pl.col("Metadata_perturbation_id").alias("perturbation_id"),
            pl.col("Metadata_perturbation_id").map_elements(_name_of, return_dtype=pl.String)
            .alias("perturbation_name"),
            pl.lit("compound").alias("perturbation_type"), pl.col("Metadata_control_type").alias("control_type"),
            pl.col("Metadata_concentration").alias("concentration"),
            pl.when(pl.col("Metadata_concentration").is_not_null()).then(pl.lit("uM")).otherwise(None)
            .alias("concentration_unit"),
            pl.lit(None, dtype=pl.String).alias("target"), pl.col("Metadata_moa").alias("moa"),
            pl.lit(None, dtype=pl.String).alias("inchikey"), pl.lit("HDAC8").alias("protein"),
            pl.lit("{}").alias("extra"))
        store.replace_rows("wells", wells, keys=["plate", "well"])

        # sites, images, masks, cells, site QC
        run_id = store.start_run(command="run segment,embed,profile,score,report",
                                 config={"screen": {"path": str(store_dir), "name": SCREEN_NAME}},
                                 parameters={"stages": ["segment", "embed", "profile", "score", "report"]})
        failed = (plates[1], prof.filter(pl.col("Metadata_Plate") == plates[1])["Metadata_Well"][5], 1)
        blurred = (plates[0], prof.filter(pl.col("Metadata_Plate") == plates[0])["Metadata_Well"][3], 1)
        saturated = (plates[0], prof.filter(pl.col("Metadata_Plate") == plates[0])["Metadata_Well"][7], 1)
        key.update(failed=failed, blurred=blurred, saturated=saturated)
        site_rows, cell_rows, qc_rows, mask_rows, stage_rows, n_cells_of = [], [], [], [], [], {}
        max_count = prof["Metadata_Count_Cells"].max()
        for rec in prof.iter_rows(named=True):
            plate, well, pid = rec["Metadata_Plate"], rec["Metadata_Well"], rec["Metadata_perturbation_id"]
            site = 1
            folder = img_dir / plate
            folder.mkdir(parents=True, exist_ok=True)
            if (plate, well, site) == failed:
                channels = {c: str(folder / f"{well}_s1_{c}.tif") for c in CHANNELS}  # never written
                site_rows.append({"plate": plate, "well": well, "site": site, "channels": json.dumps(channels),
                                  "status": "failed", "error": "load: file not found"})
                n_cells_of[(plate, well)] = 0
                continue
            k = int(np.clip(round(rec["Metadata_Count_Cells"] / max_count * 9), 1, 9))
            active = sim.answer_key.filter(pl.col("perturbation_id") == pid)["is_active"].to_list()
            images, nuclei, cells = _site_images(
                rng, k, nuclear_protein=bool(active and active[0]), blur=4.0 if (plate, well, site) == blurred else 1.0,
                saturate=(plate, well, site) == saturated)
            import tifffile

            if plate == plates[0]:  # one file per channel
                channels = {}
                for c in CHANNELS:
                    path = folder / f"{well}_s1_{c}.tif"
                    tifffile.imwrite(path, images[c])
                    channels[c] = str(path)
            else:  # one multi-channel file, planes addressed with '#index'
                path = folder / f"{well}_s1.tif"
                tifffile.imwrite(path, np.stack([images[c] for c in CHANNELS]), photometric="minisblack")
                channels = {c: f"{path}#{i}" for i, c in enumerate(CHANNELS)}
            site_rows.append({"plate": plate, "well": well, "site": site, "channels": json.dumps(channels),
                              "status": "ok", "error": None})
            mask_rows.append({"plate": plate, "well": well, "site": site, "height": SIZE, "width": SIZE,
                              "method": "classical", "nuclei": encode_array(nuclei), "cells": encode_array(cells)})
            from skimage.measure import regionprops

            nuc_area = {p.label: p.area for p in regionprops(nuclei)}
            for p in regionprops(cells):
                y0, x0, y1, x1 = p.bbox
                cell_rows.append({
                    "plate": plate, "well": well, "site": site, "cell_id": p.label, "nucleus_id": p.label,
                    "centroid_y": p.centroid[0], "centroid_x": p.centroid[1], "bbox_y0": y0, "bbox_x0": x0,
                    "bbox_y1": y1, "bbox_x1": x1, "cell_area_um2": p.area * PIXEL_UM**2,
                    "nucleus_area_um2": nuc_area[p.label] * PIXEL_UM**2,
                    "touches_border": bool(y0 == 0 or x0 == 0 or y1 == SIZE or x1 == SIZE),
                    "eccentricity": p.eccentricity, "solidity": None})
            n_cells_of[(plate, well)] = k
            for c in CHANNELS:
                a = images[c].astype(np.float64)
                p99 = np.percentile(a, 99)
                qc_rows.append({"plate": plate, "well": well, "site": site, "channel": c, "mean": a.mean(),
                                "median": float(np.median(a)), "p01": np.percentile(a, 1), "p99": p99,
                                "saturated_fraction": float(np.mean(images[c] >= 65535)),
                                "focus": float(np.var(ndimage.laplace(a / p99)))})
            for stage, secs in (("load", 0.01), ("segment", 0.2), ("embed", 0.5)):
                stage_rows.append({"plate": plate, "well": well, "site": site, "stage": stage, "status": "ok",
                                   "error": None, "n_cells": k, "run_id": run_id, "seconds": secs})
        from subcell_screen.channels import preset

        store.write_table("channels", pl.DataFrame({
            "channel": list(CHANNELS), "position": list(range(len(CHANNELS))), "used": [True] * len(CHANNELS),
            "color": [preset("hpa").display_colors()[c] for c in CHANNELS],
            "roles": [preset("hpa").roles()[c] for c in CHANNELS]}, schema_overrides={"position": pl.Int32}))
        store.register_sites(pl.DataFrame(site_rows).with_columns(
            pl.lit("fixture").alias("reader"), pl.lit(PIXEL_UM).alias("pixel_size_um"),
            pl.lit(SIZE).alias("height"), pl.lit(SIZE).alias("width"), pl.lit("uint16").alias("dtype")))
        store.replace_rows("masks", pl.DataFrame(mask_rows, schema_overrides={
            "site": pl.Int32, "height": pl.Int32, "width": pl.Int32}), keys=["plate", "well", "site"])
        store.replace_rows("site_stages", pl.DataFrame(stage_rows, schema_overrides={
            "site": pl.Int32, "n_cells": pl.Int32, "error": pl.String}), keys=["plate", "well", "site", "stage"])
        store.set_site_status(*failed, stage="load", status="failed", error="file not found", run_id=run_id)
        store.write_table("cells", pl.DataFrame(cell_rows, schema_overrides={
            "site": pl.Int32, "cell_id": pl.Int32, "nucleus_id": pl.Int32, "bbox_y0": pl.Int32, "bbox_x0": pl.Int32,
            "bbox_y1": pl.Int32, "bbox_x1": pl.Int32, "solidity": pl.Float64}))
        store.write_table("site_qc", pl.DataFrame(qc_rows, schema_overrides={"site": pl.Int32}))
        store.register_feature_set("classical", kind="classical", feature_names=sim.feature_names, model=None)

        # profiles: raw and normalised (robust z against each plate's negcons)
        feats = prof.select(sim.feature_names).to_numpy()
        norm = np.empty_like(feats)
        for plate in plates:
            sel = (prof["Metadata_Plate"] == plate).to_numpy()
            neg = sel & prof["Metadata_control_type"].eq_missing("negcon").to_numpy()
            med = np.median(feats[neg], axis=0)
            mad = np.median(np.abs(feats[neg] - med), axis=0) * 1.4826
            norm[sel] = (feats[sel] - med) / mad
        meta = prof.select(pl.col("Metadata_Plate").alias("plate"), pl.col("Metadata_Well").alias("well"))
        n_cells = [n_cells_of[(p, w)] for p, w in meta.iter_rows()]
        rows = []
        for profile_set, x in (("raw", feats), ("normalized", norm)):
            rows.append(meta.with_columns(
                pl.lit(profile_set).alias("profile_set"), pl.lit("classical").alias("feature_set"),
                pl.Series("n_cells", n_cells, dtype=pl.Int32),
                pl.Series("features", x.astype(np.float32).tolist(), dtype=pl.List(pl.Float32))))
        store.write_table("profiles", pl.concat(rows).select(
            "profile_set", "feature_set", "plate", "well", "n_cells", "features"))
        store.write_table("profile_features", pl.DataFrame({
            "profile_set": ["normalized"] * 16, "position": list(range(16)), "name": sim.feature_names}))
        store.create_view("well_profiles", "SELECT p.plate, p.well, p.feature_set, p.n_cells, p.features, "
                          "w.* EXCLUDE (plate, well, extra) FROM profiles p JOIN wells w USING (plate, well) "
                          "WHERE p.profile_set = 'normalized'")
        key.update(norm=norm, meta=prof.select("Metadata_Plate", "Metadata_Well", "Metadata_perturbation_id",
                                                  "Metadata_control_type", "Metadata_concentration"))

        # scores: mAP vs negcons (same plates), permutation p, BH q, effect size, cell counts
        pert_ids = sorted(set(prof["Metadata_perturbation_id"].to_list()) - {"DMSO"})
        ctrl = prof["Metadata_control_type"].to_list()
        pid_col = prof["Metadata_perturbation_id"].to_numpy()
        neg_mask = np.asarray([c == "negcon" for c in ctrl])
        neg_cells = np.mean([n for n, m in zip(n_cells, neg_mask) if m])
        score_rows = []
        for pid in pert_ids:
            sel = pid_col == pid
            m_ap, p = _map_and_p(norm[sel], norm[neg_mask], rng)
            norms = np.linalg.norm(norm[sel], axis=1) / np.sqrt(norm.shape[1])
            ci = 1.96 * norms.std(ddof=1) / np.sqrt(sel.sum())
            ccf = float(np.mean(np.asarray(n_cells)[sel]) / neg_cells)
            score_rows.append({"perturbation_id": pid, "perturbation_name": _name_of(pid),
                               "control_type": "poscon" if pid in poscons else None, "n_wells": int(sel.sum()),
                               "mean_average_precision": m_ap, "p_value": p, "effect_size": float(norms.mean()),
                               "effect_ci_low": float(norms.mean() - ci), "effect_ci_high": float(norms.mean() + ci),
                               "cell_count_fraction": ccf, "cytotoxic": ccf < 0.5})
        scores = pl.DataFrame(score_rows, schema_overrides={"control_type": pl.String})
        pv = scores["p_value"].to_numpy()
        order = np.argsort(pv)
        q = np.empty_like(pv)
        q[order] = np.minimum.accumulate((pv[order] * len(pv) / np.arange(1, len(pv) + 1))[::-1])[::-1]
        scores = scores.with_columns(pl.Series("corrected_p_value", np.minimum(q, 1.0)))
        scores = scores.with_columns((pl.col("corrected_p_value") < 0.05).alias("is_hit"))
        scores = scores.sort(["corrected_p_value", "mean_average_precision", "perturbation_id"],
                             descending=[False, True, False]).with_row_index("rank", offset=1)
        scores = scores.with_columns(pl.col("rank").cast(pl.Int32))
        store.write_table("perturbation_scores", scores)
        # what the score stage records beside the scores: every perturbation, scored or not and why
        negcon_wells = int(neg_mask.sum())
        store.write_table("scoring_coverage", pl.concat([
            scores.select("perturbation_id", "perturbation_name", "control_type", "n_wells").with_columns(
                pl.lit(1, dtype=pl.Int64).alias("n_plates"), pl.lit(True).alias("scored"),
                pl.lit(None, dtype=pl.String).alias("reason")),
            pl.DataFrame({"perturbation_id": ["DMSO"], "perturbation_name": ["DMSO"], "control_type": ["negcon"],
                          "n_wells": [negcon_wells], "n_plates": [len(plates)], "scored": [False],
                          "reason": ["negative control: the reference the others are ranked against"]})],
            how="vertical_relaxed"))

        # dose response: activity = mean profile norm per dose, 4PL fit
        conc = prof["Metadata_concentration"].to_numpy()
        dr_rows, dp_rows = [], []
        for pid in ("dose_00", "dose_01"):
            sel = pid_col == pid
            doses = np.unique(conc[sel])
            act = np.asarray([np.linalg.norm(norm[sel & (conc == d)], axis=1).mean() for d in doses])
            for d, a in zip(doses, act):
                dp_rows.append({"perturbation_id": pid, "concentration": float(d), "activity": float(a),
                                "n_wells": int(np.sum(sel & (conc == d)))})
            (bottom, top, log_ec50, hill), se = _fit_4pl(doses, act)
            dr_rows.append({"perturbation_id": pid, "status": "fit", "reason": None, "ec50": 10**log_ec50,
                            "ec50_ci_low": 10 ** (log_ec50 - 1.96 * se[2]),
                            "ec50_ci_high": 10 ** (log_ec50 + 1.96 * se[2]), "concentration_unit": "uM",
                            "hill": hill, "bottom": bottom, "top": top, "n_doses": len(doses)})
        dr_rows.append({"perturbation_id": "null_00", "status": "no fit", "reason": "fewer than 4 concentrations",
                        "ec50": None, "ec50_ci_low": None, "ec50_ci_high": None, "concentration_unit": None,
                        "hill": None, "bottom": None, "top": None, "n_doses": 1})
        store.write_table("dose_response", pl.DataFrame(dr_rows, schema_overrides={
            "reason": pl.String, "concentration_unit": pl.String, "n_doses": pl.Int32}))
        store.write_table("dose_points", pl.DataFrame(dp_rows))

        # relocalization calls of the planted nuclear translocation, through the three readouts; the feature set
        # is classical, so only the ratio readout applies (probabilities and embedding need SubCell)
        actives = [p for p in pert_ids if p.startswith("active")]
        k = len(actives)
        rel = pl.concat([
            pl.DataFrame({"protein": ["HDAC8"] * k, "perturbation_id": actives, "readout": ["probabilities"] * k,
                          "from_class": ["Cytosol"] * k, "to_class": ["Nucleoplasm"] * k,
                          "effect_size": np.linspace(0.6, 0.1, k), "p_value": np.geomspace(1e-6, 0.2, k),
                          "q_value": np.geomspace(1e-5, 0.4, k)}),
            pl.DataFrame({"protein": ["HDAC8"] * k, "perturbation_id": actives, "readout": ["embedding"] * k,
                          "from_class": ["Cytosol"] * k, "to_class": ["Nucleoplasm"] * k,
                          "effect_size": np.linspace(0.2, -0.1, k), "p_value": np.linspace(0.9, 1.0, k),
                          "q_value": [1.0] * k}),
            pl.DataFrame({"protein": ["HDAC8"] * k, "perturbation_id": actives, "readout": ["nuc_cyto_ratio"] * k,
                          "from_class": ["Nucleus" if e < 0 else "Cytoplasm" for e in RATIO_EFFECT],
                          "to_class": ["Cytoplasm" if e < 0 else "Nucleus" for e in RATIO_EFFECT],
                          "effect_size": RATIO_EFFECT, "p_value": [q / 2 for q in RATIO_Q], "q_value": RATIO_Q})])
        store.write_table("relocalization_results", rel)

        # illumination functions: a centred vignette per plate and channel (brighter channels more uneven)
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        r2 = ((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2) / (SIZE / 2) ** 2
        illum = {}
        for i, plate in enumerate(plates):
            funcs = {c: (1.0 + (0.1 + 0.1 * j + 0.05 * i) * np.clip(1 - r2, 0, 1)).astype(np.float32)
                     for j, c in enumerate(CHANNELS)}
            recipe = {"version": 1, "method": "median", "n_sites": 40 + i, "n_failed": 0, "n_excluded": i,
                      "downsample": 1, "filter": "gaussian", "sigma_px": 4.8, "robust_percentile": 2.0}
            store.write_illumination(plate, funcs, recipe=recipe)
            illum[plate] = (funcs, recipe)
        key["illumination"] = illum
        store.finish_run(run_id, status="ok", summary={
            "featurizer": "classical", "segmenter": "classical", "fallbacks": [FALLBACK],
            "sites_ok": len(site_rows) - 1, "sites_failed": 1})
        # a later report-only run, recorded as the pipeline records one: its summary names the configured
        # featurizer (no model was loaded, no fallback could be seen), so the banner must not take it
        later = store.start_run(command="run report", config={"screen": {"path": str(store_dir),
                                                                         "name": SCREEN_NAME}},
                                parameters={"stages": ["report"]},
                                summary={"featurizer": "subcell:rybg/MAE-CellS-ProtS-Pool", "segmenter": "classical",
                                         "fallbacks": []})
        store.finish_run(later, status="ok", summary={"featurizer": "subcell:rybg/MAE-CellS-ProtS-Pool",
                                                      "segmenter": "classical", "fallbacks": [], "reports": 2})
        key["run_id"] = run_id

        # the phenotypic map of the normalised profiles (map_* tables), with made-up class probabilities
        from subcell_screen.phenomap import cluster_localization, phenotypic_map, write_map_tables

        wide = pl.concat([prof.select(pl.col("^Metadata_.*$")), pl.DataFrame(norm, schema=sim.feature_names)],
                         how="horizontal")
        pmap = phenotypic_map(wide, by=["Metadata_perturbation_id"], annotations=["Metadata_moa"])
        probs = pmap.items.select("item").with_columns(
            pl.Series("probabilities", rng.random((pmap.n_items, 31)).tolist()))
        write_map_tables(store, pmap, localization=cluster_localization(
            pmap, probs, class_names=[f"class {i}" for i in range(31)]))
    key["store"] = store_dir
    return key


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_screen")
    return _build_screen(root)


@pytest.fixture(scope="module")
def reports(screen, tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    with ScreenStore.open(screen["store"], read_only=True) as store:
        paths = build_reports(store, out, top=15)
    return {"qc": paths[0], "hits": paths[1], "out": out}


# ------------------------------------------------------------------------------------------------------
# HTML parsing helpers


class _Tables(HTMLParser):
    """Collects ``table[data-query]`` rows (column -> text), ``[data-query][data-col]`` stat cells and imgs."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[dict[str, str]]] = {}
        self.values: dict[tuple[str, str], str] = {}
        self.imgs: list[dict[str, str]] = []
        self.titles: dict[str, dict[str, str]] = {}  # query -> column -> header tooltip
        self.captions: dict[str, list[str]] = {}  # query -> caption texts
        self.scripts = 0
        self._caption: list[str] | None = None
        self._caption_of: str | None = None
        self._table: str | None = None
        self._row: dict[str, str] | None = None
        self._cell: str | None = None
        self._value: tuple[str, str] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        elif tag == "script":
            self.scripts += 1
        elif tag == "table" and "data-query" in a:
            self._table = a["data-query"]
            self.tables.setdefault(self._table, [])
        elif tag == "th" and self._table and "data-col" in a:
            self.titles.setdefault(self._table, {})[a["data-col"]] = a.get("title", "")
        elif tag == "p" and a.get("class") == "table-caption":
            self._caption, self._caption_of = [], a.get("data-query")
        elif tag == "tr" and self._table:
            self._row = {}
        elif tag == "td" and self._row is not None:
            self._cell, self._text = a.get("data-col"), []
        elif tag in ("span", "dd", "div") and "data-query" in a and "data-col" in a:
            self._value, self._text = (a["data-query"], a["data-col"]), []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row[self._cell] = "".join(self._text).strip()
            self._cell = None
        elif tag == "tr" and self._row:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "p" and self._caption is not None:
            self.captions.setdefault(self._caption_of, []).append("".join(self._caption))
            self._caption = None
        elif tag == "table":
            self._table = None
        elif tag in ("span", "dd", "div") and self._value is not None:
            self.values[self._value] = "".join(self._text).strip()
            self._value = None

    def handle_data(self, data):
        if self._cell is not None or self._value is not None:
            self._text.append(data)
        if self._caption is not None:
            self._caption.append(data)


def _parse(path: Path) -> _Tables:
    p = _Tables()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def _num(text: str) -> float:
    return float(text.replace(",", ""))


def _close(text: str, value: float) -> bool:
    """Displayed text equals value to the digits shown (half a unit of the last digit shown)."""
    mantissa, _, exponent = text.replace(",", "").lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    half_unit = 0.5 * 10.0 ** (-decimals) * 10.0 ** (int(exponent) if exponent else 0)
    return abs(_num(text) - value) <= half_unit * (1 + 1e-9) + 1e-15


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


# ------------------------------------------------------------------------------------------------------
# queries


def test_query_files_are_documented_and_parse(screen):
    names = list_queries()
    assert {"cells_per_well", "failed_sites", "zprime", "ranked_hits", "relocalization", "gallery_cells"} <= set(names)
    readme = (REPO / "subcell_screen" / "report" / "queries" / "README.md").read_text()
    for name in names:
        q = load_query(name)
        assert q.description, name
        assert q.requires, f"{name}: no '-- requires:' header"
        header = "\n".join(line for line in q.sql.splitlines() if line.startswith("--"))
        for p in q.params:
            assert re.search(rf"params:.*\b{p}\b", header), f"{name}: parameter {p} not documented in its header"
        assert f"`{name}`" in readme, f"{name} missing from queries/README.md"
    with pytest.raises(KeyError, match="known: .*cells_per_well"):
        load_query("no_such_query")
    params = {"plate": None, "feature_set": "classical", "n": 5, "top": 5, "per_site": 2, "perturbation_id":
              "active_00", "focus_z": -3.0, "saturation": 0.01}
    with ScreenStore.open(screen["store"], read_only=True) as store:
        for name in names:
            df = run_query(store, name, **params)  # every query runs on a complete store
            assert isinstance(df, pl.DataFrame)
        # parameters the query does not use are ignored; NULL plate = every plate
        all_wells = run_query(store, "cells_per_well", plate=None, top=3)
        one = run_query(store, "cells_per_well", plate=screen["plates"][1])
        assert set(one["plate"]) == {screen["plates"][1]} and all_wells.height > one.height



def test_replicate_sql_is_defined_once_and_each_query_runs_alone(screen):
    """Pairs, null sample and Pearson r live once, in queries/_macros.sql; every query calling them carries
    the definitions in Query.sql, so it runs alone on a fresh DuckDB connection with the same numbers."""
    import duckdb

    qdir = REPO / "subcell_screen" / "report" / "queries"
    assert [p.name for p in sorted(qdir.glob("*.sql")) if "list_dot_product(" in p.read_text()] == ["_macros.sql"]
    assert "_macros" not in list_queries()
    with pytest.raises(KeyError):
        load_query("_macros")
    params = {"plate": None, "feature_set": "classical", "n": 50}
    con = duckdb.connect(str(Path(screen["store"]) / "screen.duckdb"), read_only=True)
    try:
        for name in ("replicate_correlation", "percent_replicating", "replicate_null"):
            q = load_query(name)
            assert {"replicate_pairs", "replicate_null_pairs"} & set(q.macros), name
            alone = con.sql(q.sql, params={p: params[p] for p in q.params}).pl()
            with ScreenStore.open(screen["store"], read_only=True) as store:
                assert_frame_equal(alone, run_query(store, name, **params), check_exact=True)
    finally:
        con.close()

def test_cells_per_well_matches_sql_and_masks(screen):
    plate = screen["plates"][0]
    with ScreenStore.open(screen["store"], read_only=True) as store:
        df = run_query(store, "cells_per_well", plate=plate)
        ref = store.sql("SELECT well, count(*) AS n FROM cells WHERE plate = ? GROUP BY well", [plate])
        for well, n in ref.iter_rows():
            assert df.filter(pl.col("well") == well)["n_cells"].item() == n
            # and the cells table agrees with the stored label image
            _, cells = store.read_masks(plate, well, 1)
            assert len(np.unique(cells[cells > 0])) == n
        # the failed site's well has a site, no cells, and is counted as failed
        fplate, fwell, _ = screen["failed"]
        row = run_query(store, "cells_per_well", plate=fplate).filter(pl.col("well") == fwell).row(0, named=True)
        assert (row["n_sites"], row["n_failed_sites"], row["n_cells"]) == (1, 1, 0)


def test_replicate_correlation_and_zprime_match_numpy(screen):
    norm, meta = screen["norm"], screen["meta"]
    pid = meta["Metadata_perturbation_id"].to_numpy()
    ctrl = meta["Metadata_control_type"].to_list()
    plate = meta["Metadata_Plate"].to_numpy()
    with ScreenStore.open(screen["store"], read_only=True) as store:
        rep = run_query(store, "replicate_correlation", feature_set="classical")
        zp = run_query(store, "zprime", feature_set="classical")
    x = norm.astype(np.float32).astype(np.float64)  # the store keeps FLOAT
    for p in ("active_00", "null_03"):
        idx = np.flatnonzero(pid == p)
        r = np.corrcoef(x[idx])[np.triu_indices(len(idx), 1)]
        got = rep.filter(pl.col("perturbation_id") == p)["median_correlation"].item()
        assert got == pytest.approx(np.median(r), abs=1e-9)
    # negative-control replicate pairs are taken within plates only
    dmso = []
    for pl_name in screen["plates"]:
        idx = np.flatnonzero((pid == "DMSO") & (plate == pl_name))
        dmso.extend(np.corrcoef(x[idx])[np.triu_indices(len(idx), 1)])
    assert rep.filter(pl.col("perturbation_id") == "DMSO")["median_correlation"].item() == pytest.approx(
        np.median(dmso), abs=1e-9)
    assert rep.filter(pl.col("perturbation_id") == "DMSO")["n_pairs"].item() == len(dmso) == 2 * 66
    for pl_name in screen["plates"]:
        d = np.linalg.norm(x, axis=1)
        neg = d[(plate == pl_name) & np.asarray([c == "negcon" for c in ctrl])]
        pos = d[(plate == pl_name) & np.asarray([c == "poscon" for c in ctrl])]
        z = 1 - 3 * (pos.std(ddof=1) + neg.std(ddof=1)) / abs(pos.mean() - neg.mean())
        assert zp.filter(pl.col("plate") == pl_name)["z_prime_profile_distance"].item() == pytest.approx(z, rel=1e-9)
        assert zp.filter(pl.col("plate") == pl_name)["n_poscon"].item() == len(pos) == 4
    # the PCA query keeps every control well first when it has to cut
    with ScreenStore.open(screen["store"], read_only=True) as store:
        cut = run_query(store, "well_profile_vectors", feature_set="classical", max_wells=40)
        full = run_query(store, "well_profile_vectors", feature_set="classical", max_wells=None)
    n_controls = sum(c is not None for c in ctrl)
    assert cut.height == 40 and full.height == len(ctrl)
    assert (cut["control_type"] != "treatment").sum() == n_controls == 32


def test_flagged_sites_match_numpy_robust_z(screen):
    with ScreenStore.open(screen["store"], read_only=True) as store:
        qc = store.sql("SELECT * FROM site_qc")
        flagged = run_query(store, "qc_flagged_sites", focus_z=-3.0, saturation=0.01)
    expected = set()
    for (plate, channel), g in qc.group_by(["plate", "channel"]):
        f = g["focus"].to_numpy()
        z = (f - np.median(f)) / (1.4826 * np.median(np.abs(f - np.median(f))))
        sat = g["saturated_fraction"].to_numpy()
        for w, s, zz, ss in zip(g["well"], g["site"], z, sat):
            if zz < -3 or ss > 0.01:
                expected.add((plate, w, s, channel))
    got = set(flagged.select("plate", "well", "site", "channel").iter_rows())
    assert got == expected
    bp, bw, bs = screen["blurred"]
    # the blurred site is out of focus in the channels whose pattern is the same in every well
    assert {(bp, bw, bs, c) for c in ("microtubules", "er", "nucleus")} <= got
    sp, sw, ss_ = screen["saturated"]
    assert "saturated" in flagged.filter((pl.col("well") == sw) & (pl.col("channel") == "protein"))["flag"].item()


# ------------------------------------------------------------------------------------------------------
# QC report


def test_qc_report_shows_sql_numbers(screen, reports):
    page = _parse(reports["qc"])
    plate = screen["plates"][0]
    with ScreenStore.open(screen["store"], read_only=True) as store:
        counts = store.sql("SELECT plate, well, count(*) AS n FROM cells GROUP BY ALL ORDER BY ALL")
        n_failed = store.sql("SELECT count(*) AS n FROM sites WHERE status = 'failed'")["n"].item()
    shown = {(r["plate"], r["well"]): r["n_cells"] for r in page.tables["cells_per_well"]}
    assert len(shown) == counts.height + 1  # + the well whose only site failed
    for p, w, n in counts.iter_rows():
        assert int(shown[(p, w)]) == n
    summary = {r["plate"]: r for r in page.tables["plate_summary"]}
    assert sum(int(r["sites_failed"]) for r in summary.values()) == n_failed == 1
    assert summary[plate]["plate_format"] == "96"
    failed = page.tables["failed_sites"]
    fp, fw, fs = screen["failed"]
    assert [(r["plate"], r["well"], r["site"]) for r in failed] == [(fp, fw, str(fs))]
    assert "file not found" in failed[0]["error"] and failed[0]["failed_stages"] == "load"
    stages = {r["stage"]: r for r in page.tables["stage_summary"]}
    assert int(stages["segment"]["n_cells"]) == counts["n"].sum()
    assert int(stages["load"]["sites_failed"]) == 1
    # Z' table equals the SQL result; channel table has the four channels
    zrows = {r["plate"]: r for r in page.tables["zprime"]}
    with ScreenStore.open(screen["store"], read_only=True) as store:
        ref = run_query(store, "zprime", feature_set="classical")
        pr = run_query(store, "percent_replicating", feature_set="classical").row(0, named=True)
    for r in ref.iter_rows(named=True):
        assert _close(zrows[r["plate"]]["z_prime_profile_distance"], r["z_prime_profile_distance"])
    assert _close(page.values[("percent_replicating", "percent_replicating")], pr["percent_replicating"])
    assert pr["percent_replicating"] > 30  # planted actives replicate
    assert [r["channel"] for r in page.tables["channel_qc"]] == sorted(CHANNELS)
    bp, bw, _ = screen["blurred"]
    assert any(r["well"] == bw and r["flag"] == "out of focus" for r in page.tables["qc_flagged_sites"])
    # banner: featurizer/segmenter of the run that recorded them, fallback shown prominently
    assert page.values[("run_banner", "featurizer")] == "classical"
    assert page.values[("run_banner", "run_id")] == screen["run_id"]
    assert FALLBACK in page.values[("run_banner", "fallbacks")]
    html = reports["qc"].read_text()
    assert 'class="fallback"' in html and html.index(FALLBACK) < html.index('id="plates"')
    assert "not computed" not in html.lower()
    assert "Overlay skipped" not in html


def test_qc_report_for_one_plate(screen, tmp_path):
    plate = screen["plates"][1]
    with ScreenStore.open(screen["store"], read_only=True) as store:
        path = build_qc_report(store, tmp_path, plate=plate, title="Plate QC")
    assert path.name == f"qc_report_{plate}.html"
    page = _parse(path)
    assert {r["plate"] for r in page.tables["cells_per_well"]} == {plate}
    assert {r["plate"] for r in page.tables["plate_summary"]} == {plate}
    assert "<title>Plate QC</title>" in path.read_text()
    # plate 2 stores channels as planes of one multi-channel TIFF ('#index'): overlays still drawn
    assert any(i.get("data-file") == f"qc_report_{plate}_segmentation_overlays.png" for i in page.imgs)


# ------------------------------------------------------------------------------------------------------
# hit report


def test_hit_report_shows_sql_numbers(screen, reports):
    page = _parse(reports["hits"])
    with ScreenStore.open(screen["store"], read_only=True) as store:
        top = store.sql("SELECT * FROM scores ORDER BY rank LIMIT 15")
        ec50 = store.sql("SELECT perturbation_id, ec50 FROM dose_response WHERE status = 'fit'")
        n_hits = store.sql("SELECT count(*) AS n FROM scores WHERE is_hit")["n"].item()
    rows = page.tables["ranked_hits_ec50"]
    assert [r["perturbation_id"] for r in rows] == top["perturbation_id"].to_list()
    assert _close(rows[0]["mean_average_precision"], top["mean_average_precision"][0])
    assert _close(rows[0]["corrected_p_value"], top["corrected_p_value"][0])
    assert int(page.values[("score_summary", "n_hits")]) == n_hits > 0
    # the planted actives rank above the nulls
    assert all(not p.startswith("null") for p in top["perturbation_id"].head(8).to_list())
    for pid, value in ec50.iter_rows():
        shown = [r for r in rows if r["perturbation_id"] == pid]
        if shown:
            assert _close(shown[0]["ec50"], value)
        fit = [r for r in page.tables["dose_response_fits"] if r["perturbation_id"] == pid][0]
        assert _close(fit["ec50"], value)
    nofit = [r for r in page.tables["dose_response_fits"] if r["status"] == "no fit"]
    assert nofit and nofit[0]["reason"] == "fewer than 4 concentrations"
    # the gallery shows cells of the top hits and negcon cells, all from the queries
    cells = page.tables["gallery_cells"]
    hit_ids = top.filter(pl.col("is_hit") & pl.col("control_type").is_null())["perturbation_id"].head(4).to_list()
    assert {r["perturbation_id"] for r in cells} == set(hit_ids) | {"DMSO"}
    assert any(i.get("data-file") == "hit_report_cell_gallery.png" for i in page.imgs)
    html = reports["hits"].read_text()
    assert "not computed" not in html.lower() and "Image not readable" not in html
    assert FALLBACK in page.values[("run_banner", "fallbacks")]


def test_banner_and_title_show_the_finished_run_and_the_screen_name(screen, reports):
    """The banner shows the run that made the data, finished, even when a later report-only run recorded the
    configured (not the used) featurizer; the title is [screen].name."""
    for key in ("qc", "hits"):
        page = _parse(reports[key])
        assert page.values[("run_banner", "run_id")] == screen["run_id"]
        assert page.values[("run_banner", "status")] == "ok"
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", page.values[("run_banner", "finished_at")])
        assert page.values[("run_banner", "featurizer")] == "classical"  # not the later run's "subcell:..."
        html = reports[key].read_text()
        title = ("QC report" if key == "qc" else "Hit report") + f" — {SCREEN_NAME}"
        assert f"<title>{title}</title>" in html and f"<h1>{title}</h1>" in html
        assert 'id="query-screen_name"' in html


def test_title_falls_back_to_the_folder_name(tmp_path):
    with ScreenStore.create(tmp_path / "my_screen") as store:
        run = store.start_run(command="run", config={"screen": {"path": "x", "name": "  "}})
        store.finish_run(run)
    html = build_hit_report(tmp_path / "my_screen", tmp_path / "out").read_text()
    assert "<title>Hit report — my_screen</title>" in html


def test_perturbation_labels_query(tmp_path):
    with ScreenStore.create(tmp_path / "labels") as store:
        store.replace_rows("wells", pl.DataFrame({
            "plate": ["P"] * 6, "well": ["A01", "A02", "A03", "A04", "A05", "A06"],
            "perturbation_id": ["a", "b", "c", "d", "d", "e"],
            "perturbation_name": ["vorinostat", "dup", "dup", "x", "y", " "]}), keys=["plate", "well"])
        labels = run_query(store, "perturbation_labels")
    assert dict(zip(labels["perturbation_id"], labels["label"])) == {
        "a": "vorinostat", "b": "dup (b)", "c": "dup (c)", "d": "x (d)", "e": "e"}


def test_perturbation_names_in_plots_tables_and_gallery(screen, tmp_path, monkeypatch):
    """Plots and galleries name perturbations (name; "name (id)" where a name is shared; the id without one)."""
    from subcell_screen.report import plots

    seen = {}

    def spy(name):
        real = getattr(plots, name)

        def wrapper(*args, **kwargs):
            seen[name] = (args, kwargs)
            return real(*args, **kwargs)
        return wrapper

    for name in ("hit_ranking", "dose_response_curves", "relocalization_bars", "cell_gallery"):
        monkeypatch.setattr(plots, name, spy(name))
    with ScreenStore.open(screen["store"], read_only=True) as store:
        path = build_hit_report(store, tmp_path, top=15)
        scores = store.sql("SELECT perturbation_id, rank FROM scores ORDER BY rank")
    (frame,), kw = seen["hit_ranking"]
    assert kw["label"] == "label"
    labels = dict(zip(frame["perturbation_id"], frame[kw["label"]]))
    assert labels["active_01"] == LONG_NAME and labels["active_00"] == "compound active_00"
    assert labels["null_00"] == "shared name (null_00)" and labels["null_01"] == "shared name (null_01)"
    assert labels["null_02"] == "null_02"  # no name in the layout
    _, kw = seen["dose_response_curves"]
    assert kw["titles"]["dose_00"] == "compound dose_00"
    (frame,), kw = seen["relocalization_bars"]
    assert set(frame[kw["label"]]) == {_name_of(p) for p in frame["perturbation_id"]}
    _, kw = seen["cell_gallery"]
    rank = dict(scores.iter_rows())
    expected = [f"#{rank[p]} {_name_of(p)}" for p in scores["perturbation_id"]
                if p.startswith(("active", "dose")) and p not in screen["poscons"]][:4]
    assert kw["row_labels"] == expected and any(LONG_NAME in s for s in expected)
    page = _parse(path)
    assert [r["perturbation_name"] for r in page.tables["dose_response_fits"] if r["perturbation_id"] == "dose_00"] \
        == ["compound dose_00"]
    assert {r["perturbation_name"] for r in page.tables["relocalization"]} >= {LONG_NAME, "compound active_00"}


def test_effect_size_says_what_it_is_and_numbers_are_formatted_consistently(reports):
    page = _parse(reports["hits"])
    tips = page.titles["ranked_hits_ec50"]
    assert set(tips) == set(page.tables["ranked_hits_ec50"][0])
    assert all(tips.values()), [c for c, v in tips.items() if not v]  # every column says what it is
    for phrase in ("negative controls", "debiased", "standard deviation"):
        assert phrase in tips["effect_size"]
        assert phrase in page.captions["ranked_hits_ec50"][0]
    assert "95% bootstrap" in tips["effect_ci_low"] and "Benjamini-Hochberg" in tips["corrected_p_value"]
    rel_tip = page.titles["relocalization"]["effect_size"]
    assert "0.5·Σ|Δp|" in rel_tip and "nuc_cyto_ratio" in rel_tip
    # one format per column kind, in every row
    sig3 = re.compile(r"-?(0\.0*[1-9]\d\d|[1-9]\.\d\d|[1-9]\d\.\d|[1-9]\d\d+|0)")
    sci = re.compile(r"-?[1-9]\.\d\de[-+]\d\d")
    for r in page.tables["ranked_hits_ec50"]:
        for c in ("p_value", "corrected_p_value"):
            v = r[c]
            assert (sci.fullmatch(v) and float(v) < 1e-3) or (sig3.fullmatch(v) and float(v) >= 1e-3), (c, v)
        for c in ("effect_size", "effect_ci_low", "effect_ci_high", "mean_average_precision"):
            assert sig3.fullmatch(r[c]) or sci.fullmatch(r[c]), (c, r[c])
        assert re.fullmatch(r"\d\.\d\d", r["cell_count_fraction"]), r["cell_count_fraction"]
        assert re.fullmatch(r"\d+", r["n_wells"]) and re.fullmatch(r"\d+", r["rank"])
        assert r["ec50"] == "—" or sig3.fullmatch(r["ec50"]), r["ec50"]


def test_docs_describe_every_report_section_and_hit_column(reports):
    doc = (REPO / "docs" / "reports.md").read_text()
    page = _parse(reports["hits"])
    for column in page.tables["ranked_hits_ec50"][0]:
        assert f"`{column}`" in doc, column
    for key in ("qc", "hits"):
        for title in re.findall(r'<li><a href="#[^"]+">([^<]+)</a></li>', reports[key].read_text()):
            assert title in doc, title
    assert "standard deviation" in doc and r"0.5·Σ\|Δp\|" in doc  # (pipes escaped in the Markdown table)


def test_relocalization_ranked_by_effect_and_only_readouts_that_apply(screen, reports, tmp_path):
    page = _parse(reports["hits"])
    rel = page.tables["relocalization"]
    # a classical run: the SubCell readouts (probabilities, embedding) are left out, and the page says so
    assert {r["readout"] for r in rel} == {"nuc_cyto_ratio"}
    html = reports["hits"].read_text()
    assert "16 row(s) of the embedding, probabilities readout(s) are not listed" in html
    # significant rows (q < 0.05) first by |effect size|, then the others by q
    actives = sorted(p for p in screen["answer"]["perturbation_id"].to_list() if p.startswith("active"))
    rows = sorted(zip(actives, RATIO_EFFECT, RATIO_Q), key=lambda x: (x[2] >= 0.05, -abs(x[1]) if x[2] < 0.05
                                                                          else 0, x[2]))
    assert [r["perturbation_id"] for r in rel] == [p for p, _, _ in rows]
    assert [r["significant"] for r in rel] == ["yes" if q < 0.05 else "no" for _, _, q in rows]
    for shown, (_, effect, q) in zip(rel, rows):
        assert _close(shown["effect_size"], effect) and _close(shown["q_value"], q)
    # with SubCell features every readout applies, each in its own table
    copy = tmp_path / "screen"
    shutil.copytree(screen["store"], copy)
    with ScreenStore.open(copy) as store:
        store.con.execute("UPDATE feature_sets SET kind = 'subcell'")
    with ScreenStore.open(copy, read_only=True) as store:
        html = build_hit_report(store, tmp_path / "out").read_text()
    page = _parse(tmp_path / "out" / "hit_report.html")
    readouts = [r["readout"] for r in page.tables["relocalization"]]
    assert readouts == ["probabilities"] * 8 + ["embedding"] * 8 + ["nuc_cyto_ratio"] * 8
    assert "are not listed" not in html
    assert len(page.captions["relocalization"]) == 3 and "0.5·Σ|Δp|" in page.captions["relocalization"][0]


def test_qc_report_shows_illumination_pixel_size_and_channel_use(screen, reports, tmp_path, monkeypatch):
    from subcell_screen.report import plots

    page = _parse(reports["qc"])
    recipes = {r["plate"]: r for r in page.tables["illumination_recipes"]}
    assert set(recipes) == set(screen["plates"])
    # the images drawn are the stored functions (96 px: small enough to be drawn as they are)
    drawn = {}
    real = plots.illumination_functions
    monkeypatch.setattr(plots, "illumination_functions", lambda f, **kw: drawn.update(f) or real(f, **kw))
    build_qc_report(screen["store"], tmp_path, plate=screen["plates"][1])
    assert set(drawn) == {(screen["plates"][1], c) for c in CHANNELS}
    assert list(drawn) == [(screen["plates"][1], c) for c in CHANNELS]  # channels in acquisition order
    for (plate, c), a in drawn.items():
        np.testing.assert_array_equal(a, screen["illumination"][plate][0][c])
    for plate, (_, recipe) in screen["illumination"].items():
        r = recipes[plate]
        assert r["channels"] == ", ".join(CHANNELS) and r["method"] == "median"  # acquisition order
        assert int(r["n_sites"]) == recipe["n_sites"] and int(r["n_sites_excluded"]) == recipe["n_excluded"]
        assert _close(r["smoothing_sigma_px"], recipe["sigma_px"]) and (r["height"], r["width"]) == ("96", "96")
    assert any(i.get("data-file") == "qc_report_illumination_functions.png" for i in page.imgs)
    png = (reports["out"] / "qc_report_illumination_functions.png").read_bytes()
    w, h = _png_size(png)
    assert w > 4 * 100 and h > 2 * 100  # 2 plates x 4 channels
    html = reports["qc"].read_text()
    assert html.index('id="plates"') < html.index('id="illumination-correction"') < html.index('id="cell-counts"')
    # pixel size per plate with its source, and the channels with what each is used for
    for r in page.tables["plate_summary"]:
        assert _close(r["pixel_size_um"], PIXEL_UM)
    ch = {r["channel"]: r for r in page.tables["channels"]}
    assert set(ch) == set(CHANNELS) and "segmentation" in ch["nucleus"]["used_for"]
    assert {r["illumination_plates"] for r in ch.values()} == {"2"}


def test_qc_report_without_illumination_says_why(screen, tmp_path):
    copy = tmp_path / "screen"
    shutil.copytree(screen["store"], copy)
    with ScreenStore.open(copy) as store:
        store.con.execute("DELETE FROM illumination")
    html = build_qc_report(copy, tmp_path / "out").read_text()
    assert "Illumination correction: not computed (no illumination functions are stored" in html
    assert "illumination_correction" in html


def test_reports_are_self_contained(reports):
    for key in ("qc", "hits"):
        path = reports[key]
        html = path.read_text(encoding="utf-8")
        assert not re.search(r"https?:", html, re.I), f"{path.name} references a URL"
        assert "<script" not in html.lower() and "<link" not in html.lower()
        page = _parse(path)
        assert len(page.imgs) >= (6 if key == "qc" else 4)
        srcs = re.findall(r'src="([^"]*)"', html)
        assert len(srcs) == len(page.imgs)
        for img in page.imgs:
            assert img["src"].startswith("data:image/png;base64,")
            data = base64.b64decode(img["src"].split(",", 1)[1])
            w, h = _png_size(data)
            assert w > 50 and h > 50
            # the same figure is saved as a PNG next to the HTML
            assert (path.parent / img["data-file"]).read_bytes() == data
            assert img.get("alt")
        assert b"matplotlib.org" not in (path.parent / page.imgs[0]["data-file"]).read_bytes()


# ------------------------------------------------------------------------------------------------------
# missing and empty tables


def test_missing_tables_say_not_computed(tmp_path):
    # the store declares every table, so in a fresh store they exist and are empty (before the store owned its
    # schema, tables appeared with their first writer and these sections said "missing")
    with ScreenStore.create(tmp_path / "bare") as store:
        store.replace_rows("plates", pl.DataFrame({"plate": ["P1"], "plate_format": [96]},
                                                  schema_overrides={"plate_format": pl.Int32}), keys=["plate"])
    with ScreenStore.open(tmp_path / "bare", read_only=True) as store:
        with pytest.raises(NotComputed, match="empty scores") as info:
            run_query(store, "ranked_hits", top=3)
        assert info.value.reason == "table scores is empty"
        qc = build_qc_report(store, tmp_path / "out")
    hits = build_hit_report(tmp_path / "bare", tmp_path / "out")  # a screen folder works too
    qc_html, hit_html = qc.read_text(), hits.read_text()
    for phrase in ("Cells per well: not computed (tables sites, cells are empty",
                   "Per-channel intensity and focus: not computed (table site_qc is empty)",
                   "Control separation: not computed (table well_profiles is empty)",
                   "Segmentation overlays: not computed (tables masks, sites are empty)",
                   "Run provenance: not computed (table runs is empty)"):
        assert phrase in qc_html, phrase
    for phrase in ("Scores: not computed (table scores is empty)",
                   "Dose-response fits: not computed (table dose_response is empty)",
                   "Relocalization: not computed (table relocalization is empty)"):
        assert phrase in hit_html, phrase
    assert "<img" not in hit_html


def test_empty_tables_and_views_say_not_computed(screen, tmp_path):
    copy = tmp_path / "screen"
    shutil.copytree(screen["store"], copy)
    with ScreenStore.open(copy) as store:
        store.con.execute("DELETE FROM perturbation_scores")
        store.con.execute("DROP TABLE relocalization_results")  # the view now points at nothing
        store.con.execute("DELETE FROM dose_points")
    with ScreenStore.open(copy, read_only=True) as store:
        html = build_hit_report(store, tmp_path / "out").read_text()
    assert "Scores: not computed (table scores is empty)" in html
    assert "Relocalization: not computed (table relocalization is missing)" in html
    assert "Dose-response fits: not computed (table scores is empty)" not in html  # falls back to unranked
    assert "Dose-response curves: not computed (table dose_points is empty)" in html
    assert 'data-query="dose_response_fits_unranked"' in html


# ------------------------------------------------------------------------------------------------------
# real browser


def _chromium() -> tuple[str, str] | None:
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
                   None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.mark.browser
def test_reports_render_in_headless_chromium(reports, tmp_path, monkeypatch):
    found = _chromium()
    if found is None:
        pytest.skip("no chromium + chromedriver on PATH (Debian packages 'chromium' and 'chromium-driver')")
    pytest.importorskip("selenium", reason="selenium (dev extra) is not installed")
    monkeypatch.setenv("SE_OFFLINE", "true")  # never let Selenium Manager look for drivers online
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = found
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    try:
        for key in ("qc", "hits"):
            path = reports[key]
            driver.get(path.resolve().as_uri())
            for _ in range(100):  # large data-URI images: wait for the load event, not only the parse
                if driver.execute_script("return document.readyState") == "complete":
                    break
                time.sleep(0.1)
            state = driver.execute_script(
                "return {ready: document.readyState, title: document.title,"
                " imgs: Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight]),"
                " tables: document.querySelectorAll('table.data').length,"
                " height: document.documentElement.scrollHeight,"
                " scroll_width: document.documentElement.scrollWidth, inner_width: window.innerWidth,"
                " sticking_out: Array.from(document.querySelectorAll('body *')).filter(e =>"
                "   !e.closest('.table-wrap, pre') && e.getBoundingClientRect().right > window.innerWidth + 0.5)"
                "   .map(e => e.tagName + ' ' + (e.textContent || '').slice(0, 60)).slice(0, 5),"
                " effect_title: (document.querySelector('table[data-query^=ranked_hits] th[data-col=effect_size]')"
                "   || {}).title || null,"
                " hit_table: (() => { const w = document.querySelector('table[data-query^=ranked_hits]');"
                "   if (!w) return null; const box = w.parentElement; const long = Array.from(w.querySelectorAll("
                "   'td[data-col=perturbation_name]')).find(td => td.textContent.length > 80);"
                "   const yes = w.querySelector('td[data-col=is_hit]');"
                "   return {scroll: box.scrollWidth, client: box.clientWidth, box_right: box.getBoundingClientRect()"
                "   .right, overflow: getComputedStyle(box).overflowX, long_width: long.getBoundingClientRect()"
                "   .width, long_height: long.getBoundingClientRect().height, line: parseFloat(getComputedStyle("
                "   long).lineHeight), yes_height: yes.getBoundingClientRect().height}; })()}")
            assert state["ready"] == "complete"
            assert state["title"] == ("QC report" if key == "qc" else "Hit report") + f" — {SCREEN_NAME}"
            # nothing widens the page at 1280 px: long ids and names wrap, wide tables scroll in their box
            assert state["scroll_width"] <= state["inner_width"] == 1280, state
            assert not state["sticking_out"], state["sticking_out"]
            if key == "hits":
                assert "standard deviation" in state["effect_title"]
                hit = state["hit_table"]
                # the ranked hit table stays inside the page; wider than its box, it scrolls there
                assert hit["box_right"] <= state["inner_width"], hit
                assert hit["scroll"] <= hit["client"] + 1 or hit["overflow"] == "auto", hit
                # the long name wraps onto several lines of a column of reasonable width; "yes" does not break
                assert hit["long_height"] > 2.5 * hit["line"] and 150 <= hit["long_width"] <= 400, hit
                assert hit["yes_height"] < 2 * hit["line"] + 12, hit
            assert state["imgs"] and all(c and w > 0 and h > 0 for c, w, h in state["imgs"]), state["imgs"]
            assert state["tables"] >= 5
            errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
            assert not errors, errors
            shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False})
            png = base64.b64decode(shot["data"])
            assert _png_size(png)[0] >= 1000
            (tmp_path / f"{key}.png").write_bytes(png)
            target = os.environ.get("SUBCELL_SCREEN_SCREENSHOT")
            if target:  # e.g. for the README: <target> for the hit report, <stem>_qc<suffix> for the QC report
                t = Path(target)
                dest = t if key == "hits" else t.with_name(f"{t.stem}_qc{t.suffix or '.png'}")
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(png)
    finally:
        driver.quit()


# ------------------------------------------------------------------------------------------------------
# notebook-style example


def test_notebook_example_runs(screen, tmp_path):
    out = tmp_path / "nb"
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "notebook_api.py"), str(screen["store"]),
                           "--out", str(out), "--no-reports"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "top hits" in proc.stdout.lower()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert {"cell_count_heatmap.png", "hit_ranking.png", "pca.png"} <= set(pngs)
    assert not list(out.glob("*.html"))  # --no-reports: build_reports is exercised by the tests above
