"""Benchmark: subcell_screen.profiles against pycytominer 1.7.1, in the same run.

Two workloads (defaults are the issue's sizes):

1. **Per-plate normalisation + feature selection** — 100 plates x 384 wells x 4608 features (float64). Every
   plate has its own per-feature offset and scale and 32 negcon wells; features are correlated (rank-64 latent
   structure), 5 % are near-duplicates of others (correlation > 0.9) and 1 % are constant. Pipeline:
   ``mad_robustize`` per plate fitted on negcon, then ``feature_select`` over the whole screen with
   ``["variance_threshold", "frequency_threshold", "drop_na_columns", "correlation_threshold", "blocklist"]``.
   pycytominer runs its documented per-plate loop (one ``normalize`` per plate, ``pd.concat``, one
   ``feature_select``).
2. **Cell -> well aggregation** — 650,000 cells x 1536 features (float32, the store's ``features`` array
   column), 20 plates x 384 wells x ~9 sites; median per (plate, well). pycytominer gets the same cells as a
   wide pandas frame and runs ``aggregate(strata=[plate, well], operation="median")``. We also time the
   store's two-level path (cells -> site median -> well mean).

Each measurement runs in its own subprocess (peak memory = that process's ``ru_maxrss``, input data included;
the data are generated once into Parquet files by another subprocess). pycytominer is slow and memory-hungry at
full size on a small machine, so by default it runs on a fraction (``--pyc-plates``, ``--pyc-cells``) and its
time and memory are **extrapolated linearly** to the full size (normalisation is one call per plate; feature
selection and aggregation are linear in rows for a fixed feature count); subcell_screen runs both on that same
fraction (apples-to-apples ratio, and a check that both select the same features / give the same medians) and
on the full size. The output says which numbers are extrapolated. ``--pyc-plates 100 --pyc-cells 650000``
measures pycytominer at full size.

Usage::

    python benchmarks/profiles_vs_pycytominer.py                       # issue sizes (~10-20 min on 2 cores)
    python benchmarks/profiles_vs_pycytominer.py --plates 10 --features 1024 --cells 50000 --quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WELLS = 384
NEGCON = 32
OPS = ["variance_threshold", "frequency_threshold", "drop_na_columns", "correlation_threshold", "blocklist"]


# -- data ---------------------------------------------------------------------------------------------------


def gen_wells(folder: str, n_plates: int, n_features: int, seed: int = 0) -> None:
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    d = n_features
    rank = min(64, d)
    loadings = rng.normal(size=(rank, d)) / np.sqrt(rank)
    n_dup = d // 20
    dup_src = rng.integers(n_dup, d, n_dup)
    const = rng.choice(np.arange(n_dup, d), max(1, d // 100), replace=False)
    base_mean = rng.uniform(10, 1000, d)
    base_sd = rng.uniform(0.5, 50, d)
    names = [f"feature_{i:04d}" for i in range(d)]
    shift = rng.normal(size=(WELLS - NEGCON, d)) * rng.random((WELLS - NEGCON, 1))
    Path(folder).mkdir(parents=True, exist_ok=True)
    for p in range(n_plates):
        z = rng.normal(size=(WELLS, rank)) @ loadings + 0.5 * rng.normal(size=(WELLS, d))
        z[NEGCON:] += shift
        z[:, :n_dup] = z[:, dup_src] + 0.1 * rng.normal(size=(WELLS, n_dup))
        x = (base_mean + z * base_sd) * rng.uniform(0.8, 1.25, d) + rng.normal(0, 1, d) * base_sd
        x[:, const] = base_mean[const]
        meta = pl.DataFrame({
            "Metadata_Plate": [f"PLATE{p:03d}"] * WELLS,
            "Metadata_Well": [f"{chr(65 + i // 24)}{i % 24 + 1:02d}" for i in range(WELLS)],
            "Metadata_control_type": ["negcon"] * NEGCON + [None] * (WELLS - NEGCON),
        }, schema={"Metadata_Plate": pl.String, "Metadata_Well": pl.String, "Metadata_control_type": pl.String})
        frame = pl.concat([meta, pl.DataFrame(x, schema=names, orient="row")], how="horizontal")
        frame.write_parquet(Path(folder) / f"plate_{p:03d}.parquet", compression="lz4")


def gen_cells(folder: str, n_cells: int, n_features: int, n_plates: int = 20, seed: int = 1) -> None:
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    Path(folder).mkdir(parents=True, exist_ok=True)
    per_plate = n_cells // n_plates
    wells = [f"{chr(65 + i // 24)}{i % 24 + 1:02d}" for i in range(WELLS)]
    for p in range(n_plates):
        n = per_plate + (n_cells - per_plate * n_plates if p == n_plates - 1 else 0)
        w = np.sort(rng.integers(0, WELLS, n))
        site = rng.integers(1, 10, n)
        order = np.lexsort((site, w))
        w, site = w[order], site[order]
        x = rng.normal(size=(n, n_features)).astype(np.float32) + rng.normal(size=(WELLS, n_features)).astype(
            np.float32)[w]
        df = pl.DataFrame({"plate": [f"PLATE{p:03d}"] * n, "well": np.asarray(wells)[w], "site": site,
                           "cell_id": np.arange(n)}).with_columns(
            pl.Series("features", x, dtype=pl.Array(pl.Float32, n_features)))
        df.write_parquet(Path(folder) / f"cells_{p:03d}.parquet", compression="lz4")


# -- workers ------------------------------------------------------------------------------------------------


def _files(folder: str, limit: int | None) -> list[str]:
    files = sorted(str(p) for p in Path(folder).glob("*.parquet"))
    return files[:limit] if limit else files


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def work_ours_norm(folder: str, n_plates: int | None, save: str | None = None) -> dict:
    import polars as pl

    from subcell_screen.profiles import NEGCON as negcon
    from subcell_screen.profiles import feature_select, normalize

    base = _maxrss_mb()
    t0 = time.perf_counter()
    df = pl.read_parquet(_files(folder, n_plates))
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    norm = normalize(df, method="mad_robustize", controls=negcon)
    t_norm = time.perf_counter() - t0
    del df
    t0 = time.perf_counter()
    sel = feature_select(norm, operation=OPS)
    t_sel = time.perf_counter() - t0
    kept = [c for c in sel.columns if not c.startswith("Metadata_")]
    if save:  # input of pycytominer's feature_select at full size (not timed)
        norm.write_parquet(save, compression="lz4")
    return {"rows": norm.height, "load_s": t_load, "normalize_s": t_norm, "select_s": t_sel,
            "total_s": t_norm + t_sel, "kept": kept, "maxrss_mb": _maxrss_mb(), "base_mb": base}


def work_pyc_norm(folder: str, n_plates: int | None) -> dict:
    import warnings

    import pandas as pd
    import polars as pl
    import pycytominer

    warnings.simplefilter("ignore")
    base = _maxrss_mb()
    df = pl.read_parquet(_files(folder, n_plates)).to_pandas()
    feats = [c for c in df.columns if not c.startswith("Metadata_")]
    meta = [c for c in df.columns if c.startswith("Metadata_")]
    t0 = time.perf_counter()
    parts = [pycytominer.normalize(g, features=feats, meta_features=meta, method="mad_robustize",
                                   samples="Metadata_control_type == 'negcon'")
             for _, g in df.groupby("Metadata_Plate", sort=False)]
    norm = pd.concat(parts)
    t_norm = time.perf_counter() - t0
    del df, parts
    t0 = time.perf_counter()
    sel = pycytominer.feature_select(norm, features=feats, operation=OPS)
    t_sel = time.perf_counter() - t0
    kept = [c for c in sel.columns if not c.startswith("Metadata_")]
    return {"rows": len(norm), "normalize_s": t_norm, "select_s": t_sel, "total_s": t_norm + t_sel,
            "kept": kept, "maxrss_mb": _maxrss_mb(), "base_mb": base}


def work_pyc_select(path: str) -> dict:
    import warnings

    import polars as pl
    import pycytominer

    warnings.simplefilter("ignore")
    base = _maxrss_mb()
    norm = pl.read_parquet(path).to_pandas()
    feats = [c for c in norm.columns if not c.startswith("Metadata_")]
    t0 = time.perf_counter()
    sel = pycytominer.feature_select(norm, features=feats, operation=OPS)
    t_sel = time.perf_counter() - t0
    kept = [c for c in sel.columns if not c.startswith("Metadata_")]
    return {"rows": len(norm), "select_s": t_sel, "kept": kept, "maxrss_mb": _maxrss_mb(), "base_mb": base}


def work_ours_agg(folder: str, n_cells: int | None, two_level: bool) -> dict:
    import numpy as np
    import polars as pl

    from subcell_screen.profiles import aggregate_array

    base = _maxrss_mb()
    t0 = time.perf_counter()
    parts = []
    t_load = 0.0
    if n_cells:  # the cells pycytominer gets, in memory, one call
        t1 = time.perf_counter()
        df = pl.scan_parquet(_files(folder, None)).head(n_cells).collect()
        t_load = time.perf_counter() - t1
        parts.append(aggregate_array(df, by=["plate", "well"], method="median"))
    else:  # full size from Parquet, one plate in memory at a time, as well_profiles_from_store does
        for f in _files(folder, None):
            t1 = time.perf_counter()
            one = pl.read_parquet(f)
            t_load += time.perf_counter() - t1
            if two_level:
                sites = aggregate_array(one, by=["plate", "well", "site"], method="median")
                parts.append(aggregate_array(sites, by=["plate", "well"], method="mean", count_column="n_sites",
                                             sum_columns=["n_cells"]))
            else:
                parts.append(aggregate_array(one, by=["plate", "well"], method="median"))
            del one
    wells = pl.concat(parts)
    t = time.perf_counter() - t0
    x = np.stack(wells["features"].to_numpy()) if wells.height else np.zeros((0, 0))
    return {"cells": int(wells["n_cells"].sum()), "wells": wells.height, "total_s": t, "load_s": t_load,
            "compute_s": t - t_load,
            "checksum": float(np.nansum(x[:, :16])), "first": x[:3, :8].tolist(), "maxrss_mb": _maxrss_mb(),
            "base_mb": base}


def work_pyc_agg(folder: str, n_cells: int) -> dict:
    import warnings

    import numpy as np
    import pandas as pd
    import polars as pl
    import pycytominer

    warnings.simplefilter("ignore")
    base = _maxrss_mb()
    df = pl.scan_parquet(_files(folder, None)).head(n_cells).collect()
    x = np.stack(df["features"].to_numpy()) if df["features"].to_numpy().ndim == 1 else df["features"].to_numpy()
    names = [f"Cells_f{i:04d}" for i in range(x.shape[1])]
    wide = pd.concat([pd.DataFrame({"Metadata_Plate": df["plate"].to_numpy(), "Metadata_Well": df["well"].to_numpy()}),
                      pd.DataFrame(x, columns=names)], axis=1)
    del df, x
    t0 = time.perf_counter()
    out = pycytominer.aggregate(wide, strata=["Metadata_Plate", "Metadata_Well"], features=names,
                                operation="median")
    t = time.perf_counter() - t0
    res = out[names].to_numpy()
    return {"cells": len(wide), "wells": len(out), "total_s": t, "checksum": float(np.nansum(res[:, :16])),
            "first": res[:3, :8].tolist(), "maxrss_mb": _maxrss_mb(), "base_mb": base}


def _child(args: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = fh.name
    cmd = [sys.executable, __file__, "--worker", json.dumps(args), "--out", out]
    subprocess.run(cmd, check=True)
    with open(out) as fh:
        res = json.load(fh)
    os.unlink(out)
    return res


def _extrapolate_mb(r: dict, frac: float) -> float:
    """Peak memory at full size: the imports' baseline plus the data-dependent part scaled by 1/frac."""
    return r["base_mb"] + (r["maxrss_mb"] - r["base_mb"]) / frac


# -- main ---------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plates", type=int, default=100)
    ap.add_argument("--features", type=int, default=4608)
    ap.add_argument("--cells", type=int, default=650_000)
    ap.add_argument("--cell-features", type=int, default=1536)
    ap.add_argument("--pyc-plates", type=int, default=10, help="plates pycytominer runs on (then extrapolated)")
    ap.add_argument("--pyc-cells", type=int, default=65_000, help="cells pycytominer aggregates (extrapolated)")
    ap.add_argument("--pyc-select-extrapolate", action="store_true",
                    help="run pycytominer's feature_select on --pyc-plates only and extrapolate (default: full size)")
    ap.add_argument("--skip-norm", action="store_true")
    ap.add_argument("--skip-agg", action="store_true")
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    ap.add_argument("--workdir", default=None, help="folder for the generated Parquet (default: a temp dir)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        kind, *rest = json.loads(a.worker)
        fn = {"gen_wells": gen_wells, "gen_cells": gen_cells, "ours_norm": work_ours_norm,
              "pyc_norm": work_pyc_norm, "ours_agg": work_ours_agg, "pyc_agg": work_pyc_agg,
              "pyc_select": work_pyc_select}[kind]
        res = fn(*rest)
        with open(a.out, "w") as fh:
            json.dump(res if res is not None else {}, fh)
        return

    if a.quick:
        a.plates, a.features, a.cells, a.cell_features = 6, 512, 40_000, 256
        a.pyc_plates, a.pyc_cells = 3, 20_000
    a.pyc_plates = min(a.pyc_plates, a.plates)
    a.pyc_cells = min(a.pyc_cells, a.cells)
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="profiles_bench_"))
    print(f"# subcell_screen.profiles vs pycytominer (data in {work}; {os.cpu_count()} CPUs)")

    if not a.skip_norm:
        wells_dir = str(work / f"wells_{a.plates}x{a.features}")
        if not Path(wells_dir).exists():
            t = time.perf_counter()
            _child(["gen_wells", wells_dir, a.plates, a.features])
            print(f"generated {a.plates} plates x {WELLS} wells x {a.features} features in {time.perf_counter() - t:.0f} s")
        frac = a.pyc_plates / a.plates
        normed = str(work / "normalized_full.parquet")
        pyc = _child(["pyc_norm", wells_dir, a.pyc_plates])
        ours_small = _child(["ours_norm", wells_dir, a.pyc_plates])
        ours = _child(["ours_norm", wells_dir, None, normed])
        pyc_sel = None if a.pyc_select_extrapolate else _child(["pyc_select", normed])
        os.unlink(normed)
        print(f"\n## normalise (mad_robustize per plate on negcon) + feature_select {OPS}")
        print(f"same features selected on {a.pyc_plates} plates: {pyc['kept'] == ours_small['kept']} "
              f"({len(pyc['kept'])} of {a.features} kept)")
        if pyc_sel:
            print(f"same features selected on {a.plates} plates: {pyc_sel['kept'] == ours['kept']} "
                  f"({len(ours['kept'])} kept)")
        print(f"{'':34s}{'normalize s':>12s}{'select s':>10s}{'total s':>10s}{'peak MB':>10s}")
        rows = [(f"pycytominer {a.pyc_plates} plates", pyc), (f"ours {a.pyc_plates} plates", ours_small),
                (f"ours {a.plates} plates", ours)]
        for label, r in rows:
            print(f"{label:34s}{r['normalize_s']:12.2f}{r['select_s']:10.2f}{r['total_s']:10.2f}{r['maxrss_mb']:10.0f}")
        if pyc_sel:
            print(f"{'pycytominer select, ' + str(a.plates) + ' plates':34s}{'':12s}{pyc_sel['select_s']:10.2f}"
                  f"{'':10s}{pyc_sel['maxrss_mb']:10.0f}")
        ext_norm = pyc["normalize_s"] / frac
        ext_norm_mb = _extrapolate_mb(pyc, frac)
        pyc_select_s = pyc_sel["select_s"] if pyc_sel else pyc["select_s"] / frac
        pyc_total = ext_norm + pyc_select_s
        how_norm = "measured" if frac == 1 else f"extrapolated linearly x{1 / frac:g} from {a.pyc_plates} plates"
        how_sel = "measured" if pyc_sel else "extrapolated linearly"
        print(f"pycytominer at {a.plates} plates: normalise {ext_norm:.1f} s ({how_norm}), select "
              f"{pyc_select_s:.1f} s ({how_sel}), total {pyc_total:.1f} s")
        print(f"speed ratio at {a.pyc_plates} plates (both measured): {pyc['total_s'] / ours_small['total_s']:.1f}x")
        print(f"speed ratio at {a.plates} plates: {pyc_total / ours['total_s']:.1f}x; normalise "
              f"{ext_norm / ours['normalize_s']:.1f}x, select {pyc_select_s / ours['select_s']:.1f}x")
        sel_mb = f", select {pyc_sel['maxrss_mb']:.0f} MB (measured)" if pyc_sel else ""
        print(f"peak memory at {a.plates} plates: ours {ours['maxrss_mb']:.0f} MB (normalise + select, one "
              f"process); pycytominer normalise ~{ext_norm_mb:.0f} MB ({how_norm}){sel_mb}")

    if not a.skip_agg:
        cells_dir = str(work / f"cells_{a.cells}x{a.cell_features}")
        if not Path(cells_dir).exists():
            t = time.perf_counter()
            _child(["gen_cells", cells_dir, a.cells, a.cell_features])
            print(f"\ngenerated {a.cells} cells x {a.cell_features} features in {time.perf_counter() - t:.0f} s")
        frac = a.pyc_cells / a.cells
        pyc = _child(["pyc_agg", cells_dir, a.pyc_cells])
        ours_small = _child(["ours_agg", cells_dir, a.pyc_cells, False])
        ours = _child(["ours_agg", cells_dir, None, False])
        two = _child(["ours_agg", cells_dir, None, True])
        import numpy as np

        diff = float(np.abs(np.asarray(pyc["first"]) - np.asarray(ours_small["first"])).max())
        print(f"\n## cell -> well aggregation (median), {a.cell_features} features")
        print(f"same medians on {a.pyc_cells} cells: max |diff| of a sample {diff:.2e}, checksums "
              f"{pyc['checksum']:.6f} / {ours_small['checksum']:.6f}")
        print(f"{'':40s}{'cells':>9s}{'wells':>7s}{'time s':>9s}{'of it read s':>13s}{'peak MB':>9s}")
        for label, r in [("pycytominer aggregate (in-memory pandas)", pyc), ("ours aggregate_array", ours_small),
                         ("ours aggregate_array, per plate", ours), ("ours cells->site median->well mean", two)]:
            print(f"{label:40s}{r['cells']:9d}{r['wells']:7d}{r['total_s']:9.2f}{r.get('load_s', 0.0):13.2f}"
                  f"{r['maxrss_mb']:9.0f}")
        ext_t = pyc["total_s"] / frac
        ext_m = _extrapolate_mb(pyc, frac)
        tag = "" if frac == 1 else f" (extrapolated linearly x{1 / frac:g} from {a.pyc_cells} cells)"
        print(f"pycytominer {a.cells} cells{tag}: {ext_t:.1f} s, peak ~{ext_m:.0f} MB")
        print(f"speed ratio at {a.pyc_cells} cells (measured): {pyc['total_s'] / ours_small['compute_s']:.1f}x "
              f"in memory, {pyc['total_s'] / ours_small['total_s']:.1f}x with our Parquet read")
        print(f"speed ratio at {a.cells} cells: {ext_t / ours['compute_s']:.1f}x in memory, "
              f"{ext_t / ours['total_s']:.1f}x with our Parquet read{'' if frac == 1 else ' (pycytominer extrapolated)'}"
              f"; peak memory ours {ours['maxrss_mb']:.0f} MB vs pycytominer ~{ext_m:.0f} MB")


if __name__ == "__main__":
    main()
