"""Benchmark: subcell_screen.profiles against pycytominer 1.7.1, in the same run.

Workloads (defaults are the issue's sizes):

1. **Per-plate normalisation + feature selection** — 100 plates x 384 wells x 4608 features (float64). Every
   plate has its own per-feature offset and scale and 32 negcon wells; features are correlated (rank-64 latent
   structure), 5 % are near-duplicates of others (correlation > 0.9) and 1 % are constant. ``mad_robustize``
   per plate fitted on negcon, then ``feature_select`` over the whole screen with
   ``["variance_threshold", "frequency_threshold", "drop_na_columns", "correlation_threshold", "blocklist"]``.
   pycytominer runs its documented per-plate loop (one ``normalize`` per plate, ``pd.concat``) and one
   ``feature_select`` on our normalised output (so both select from the same input).
2. **Cell -> well aggregation** — 650,000 cells x 1536 features (float32) in a real screen store: 20 plates x
   384 wells x 9 sites, one zstd Parquet file per site (``cells/<feature_set>/plate=<p>/<well>_s<site>.parquet``,
   a ``features`` column ``pl.Array(pl.Float32, 1536)``), median per (plate, well).

   * *in memory*: the cells already in memory (ours: the store's array layout, one frame per plate;
     pycytominer: one wide pandas frame); only the aggregation is timed.
   * *from the store's files*: everything from the Parquet files to the well medians. Ours: the store reader
     (``read_site_arrays``, per plate) + grouped medians. pycytominer: ``pyarrow.dataset`` reads the same
     files (the fastest generic reader for its pandas input here), the ``features`` arrays are expanded into
     one pandas column per feature (pycytominer's wide layout), then ``pycytominer.aggregate``. We also time
     the store's two-level path (``well_profiles_from_store``: cells -> site median -> well mean).

Each measurement runs in its own subprocess; peak memory is that process's ``ru_maxrss`` (input data
included). pycytominer is slow and memory-hungry at full size on a small machine, so by default its
normalisation and aggregations run on a fraction (``--pyc-plates``, ``--pyc-cells``) and its time and memory
are **extrapolated linearly** to the full size (normalisation is one call per plate; aggregation is linear in
cells for a fixed feature count); ``feature_select`` runs at full size. The output marks extrapolated numbers.

``--reuse-pyc`` keeps pycytominer's numbers in the work folder and reuses them in later runs (to compare
versions of subcell_screen against one measurement of the reference; the output says so).

Usage::

    python benchmarks/profiles_vs_pycytominer.py                       # issue sizes (~10 min on 2 cores)
    python benchmarks/profiles_vs_pycytominer.py --quick               # small smoke run
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
SITES = 9
OPS = ["variance_threshold", "frequency_threshold", "drop_na_columns", "correlation_threshold", "blocklist"]
FEATURE_SET = "bench"


# -- data ---------------------------------------------------------------------------------------------------


def _well_names() -> list[str]:
    return [f"{chr(65 + i // 24)}{i % 24 + 1:02d}" for i in range(WELLS)]


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
            "Metadata_Well": _well_names(),
            "Metadata_control_type": ["negcon"] * NEGCON + [None] * (WELLS - NEGCON),
        }, schema={"Metadata_Plate": pl.String, "Metadata_Well": pl.String, "Metadata_control_type": pl.String})
        frame = pl.concat([meta, pl.DataFrame(x, schema=names, orient="row")], how="horizontal")
        frame.write_parquet(Path(folder) / f"plate_{p:03d}.parquet", compression="lz4")


def gen_store(folder: str, n_cells: int, n_features: int, n_plates: int = 20, seed: int = 1) -> None:
    """A screen store with one zstd Parquet file per site, as ``ScreenStore.write_cell_features`` writes them
    (written directly, without the per-file fsync, to keep generation short)."""
    import numpy as np
    import polars as pl

    from subcell_screen.store import ScreenStore

    rng = np.random.default_rng(seed)
    wells = np.asarray(_well_names())
    per_plate = n_cells // n_plates
    dtype = pl.Array(pl.Float32, n_features)
    with ScreenStore.create(Path(folder)) as store:
        store.register_feature_set(FEATURE_SET, kind="subcell", feature_names=[f"f{i:04d}" for i in range(n_features)])
        for p in range(n_plates):
            plate = f"PLATE{p:03d}"
            n = per_plate + (n_cells - per_plate * n_plates if p == n_plates - 1 else 0)
            w = rng.integers(0, WELLS, n)
            site = rng.integers(1, SITES + 1, n)
            order = np.lexsort((site, w))
            w, site = w[order], site[order]
            x = rng.normal(size=(n, n_features)).astype(np.float32)
            x += rng.normal(size=(WELLS, n_features)).astype(np.float32)[w]
            bounds = np.flatnonzero(np.diff(w * 100 + site)) + 1
            folder_p = store.cells_dir(FEATURE_SET, plate)
            folder_p.mkdir(parents=True, exist_ok=True)
            for a, b in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [n]])):
                df = pl.DataFrame({"plate": [plate] * (b - a), "well": wells[w[a:b]], "site": site[a:b].astype(np.int64),
                                   "cell_id": np.arange(1, b - a + 1, dtype=np.int64)}).with_columns(
                    pl.Series("features", x[a:b], dtype=dtype))
                df.write_parquet(folder_p / f"{wells[w[a]]}_s{int(site[a])}.parquet", compression="zstd",
                                 statistics=True)


# -- helpers ------------------------------------------------------------------------------------------------


def _files(folder: str, limit: int | None) -> list[str]:
    files = sorted(str(p) for p in Path(folder).glob("*.parquet"))
    return files[:limit] if limit else files


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _plates(store_dir: str) -> list[str]:
    return sorted(p.name[len("plate="):] for p in (Path(store_dir) / "cells" / FEATURE_SET).glob("plate=*"))


def _plate_files(store_dir: str, plate: str) -> list[str]:
    return sorted(str(p) for p in (Path(store_dir) / "cells" / FEATURE_SET / f"plate={plate}").glob("*.parquet"))


def _plates_for_cells(store_dir: str, n_cells: int | None) -> list[str]:
    """The first plates holding at least ``n_cells`` cells (all plates for None)."""
    import pyarrow.parquet as pq

    plates = _plates(store_dir)
    if not n_cells:
        return plates
    out, total = [], 0
    for plate in plates:
        out.append(plate)
        total += sum(pq.ParquetFile(f).metadata.num_rows for f in _plate_files(store_dir, plate))
        if total >= n_cells:
            break
    return out


def _summary(x) -> dict:
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    return {"checksum": float(np.nansum(x[:, :16])), "first": x[:3, :8].tolist()}


# -- workers: normalise / select ----------------------------------------------------------------------------


def work_ours_norm(folder: str, n_plates: int | None, select: bool, save: str | None = None) -> dict:
    import polars as pl

    from subcell_screen.profiles import NEGCON as negcon
    from subcell_screen.profiles import feature_select, normalize

    base = _maxrss_mb()
    df = pl.read_parquet(_files(folder, n_plates))
    t0 = time.perf_counter()
    feats = [c for c in df.columns if not c.startswith("Metadata_")]
    norm = normalize(df, method="mad_robustize", controls=negcon, features=feats)
    t_norm = time.perf_counter() - t0
    del df
    out = {"rows": norm.height, "normalize_s": t_norm, "base_mb": base}
    if select:
        t0 = time.perf_counter()
        sel = feature_select(norm, operation=OPS, features=feats)
        out["select_s"] = time.perf_counter() - t0
        out["kept"] = [c for c in sel.columns if not c.startswith("Metadata_")]
    out["maxrss_mb"] = _maxrss_mb()
    if save:  # input of both tools' feature selection (not timed)
        norm.write_parquet(save, compression="lz4")
    return out


def work_ours_select(path: str) -> dict:
    import polars as pl

    from subcell_screen.profiles import feature_select

    base = _maxrss_mb()
    norm = pl.read_parquet(path)
    t0 = time.perf_counter()
    sel = feature_select(norm, operation=OPS, features=[c for c in norm.columns if not c.startswith("Metadata_")])
    t = time.perf_counter() - t0
    return {"rows": norm.height, "select_s": t, "kept": [c for c in sel.columns if not c.startswith("Metadata_")],
            "maxrss_mb": _maxrss_mb(), "base_mb": base}


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
    return {"rows": len(norm), "normalize_s": t_norm, "maxrss_mb": _maxrss_mb(), "base_mb": base}


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


# -- workers: aggregation -----------------------------------------------------------------------------------


def work_ours_agg_mem(store_dir: str, n_cells: int | None) -> dict:
    """Cells in memory (one array-layout frame per plate, loading not timed) -> (plate, well) medians.

    Frames are rechunked at load (one contiguous block per plate, like pycytominer's consolidated pandas
    frame). The one-time set-up of a process (numba import, loading the compiled kernel from its disk cache,
    or compiling it on the very first run) is timed separately on a two-cell frame, and so are the imports.
    """
    t0 = time.perf_counter()
    import numpy as np
    import polars as pl

    from subcell_screen.profiles import aggregate_array

    import_s = time.perf_counter() - t0

    base = _maxrss_mb()
    frames, total = [], 0
    for plate in _plates_for_cells(store_dir, n_cells):
        df = pl.scan_parquet(_plate_files(store_dir, plate)).select("plate", "well", "features").collect()
        if n_cells:
            df = df.head(n_cells - total)
        frames.append(df.rechunk())
        total += df.height
    loaded = _maxrss_mb()
    t0 = time.perf_counter()
    aggregate_array(frames[0].head(2), by=["plate", "well"], method="median")
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    wells = pl.concat([aggregate_array(df, by=["plate", "well"], method="median") for df in frames])
    t = time.perf_counter() - t0
    return {"cells": int(wells["n_cells"].sum()), "wells": wells.height, "total_s": t, "setup_s": setup,
            "import_s": import_s,
            **_summary(np.stack(wells["features"].to_numpy()) if wells.height else np.zeros((0, 16))),
            "maxrss_mb": _maxrss_mb(), "base_mb": base, "loaded_mb": loaded}


def work_pyc_agg_mem(store_dir: str, n_cells: int) -> dict:
    import warnings

    t0 = time.perf_counter()
    import pycytominer  # pandas, numpy, scikit-learn, ...

    import_s = time.perf_counter() - t0

    warnings.simplefilter("ignore")
    base = _maxrss_mb()
    wide, names = _pandas_wide(_cell_files(store_dir, n_cells), n_cells)
    loaded = _maxrss_mb()
    t0 = time.perf_counter()
    out = pycytominer.aggregate(wide, strata=["Metadata_Plate", "Metadata_Well"], features=names,
                                operation="median")
    t = time.perf_counter() - t0
    return {"cells": len(wide), "wells": len(out), "total_s": t, "import_s": import_s,
            **_summary(out[names].to_numpy()), "maxrss_mb": _maxrss_mb(), "base_mb": base, "loaded_mb": loaded}


def _cell_files(store_dir: str, n_cells: int | None) -> list[str]:
    return [f for plate in _plates_for_cells(store_dir, n_cells) for f in _plate_files(store_dir, plate)]


def _pandas_wide(files: list[str], n_cells: int | None):
    """pycytominer's input from the store's files: pyarrow.dataset read, one pandas column per feature."""
    import pandas as pd
    import pyarrow.dataset as ds

    table = ds.dataset(files, format="parquet").to_table(columns=["plate", "well", "features"])
    if n_cells:
        table = table.slice(0, n_cells)
    feats = table.column("features").combine_chunks()
    x = feats.values.to_numpy(zero_copy_only=False).reshape(len(feats), -1)
    names = [f"Cells_f{i:04d}" for i in range(x.shape[1])]
    wide = pd.concat([pd.DataFrame({"Metadata_Plate": table.column("plate").to_numpy(),
                                    "Metadata_Well": table.column("well").to_numpy()}),
                      pd.DataFrame(x, columns=names)], axis=1)
    return wide, names


def work_pyc_agg_store(store_dir: str, n_cells: int) -> dict:
    import warnings

    import pycytominer

    warnings.simplefilter("ignore")
    base = _maxrss_mb()
    files = _cell_files(store_dir, n_cells)
    t0 = time.perf_counter()
    wide, names = _pandas_wide(files, n_cells)
    t_read = time.perf_counter() - t0
    out = pycytominer.aggregate(wide, strata=["Metadata_Plate", "Metadata_Well"], features=names,
                                operation="median")
    t = time.perf_counter() - t0
    return {"cells": len(wide), "wells": len(out), "total_s": t, "read_s": t_read, **_summary(out[names].to_numpy()),
            "maxrss_mb": _maxrss_mb(), "base_mb": base}


def work_ours_agg_store(store_dir: str, n_cells: int | None, two_level: bool) -> dict:
    """From the store's per-site files to well profiles, one plate in memory at a time."""
    import numpy as np
    import polars as pl

    from subcell_screen import profiles
    from subcell_screen.store import ScreenStore

    base = _maxrss_mb()
    reader = getattr(profiles, "read_site_arrays", None)  # absent before the fast reader existed
    t0 = time.perf_counter()
    t_read = 0.0
    if two_level:
        with ScreenStore.open(Path(store_dir), read_only=True) as store:
            prof = profiles.well_profiles_from_store(store, feature_set=FEATURE_SET, metadata=False)
        feats = [c for c in prof.columns if not c.startswith("Metadata_")]
        cells, n_wells, x = int(prof["Metadata_Object_Count"].sum()), prof.height, prof.select(feats[:16]).to_numpy()
    else:
        parts = []
        for plate in _plates_for_cells(store_dir, n_cells):
            t1 = time.perf_counter()
            if reader is not None:  # site blocks -> (plate, well) medians without a per-cell frame
                arr = reader(_plate_files(store_dir, plate))
                t_read += time.perf_counter() - t1
                uniq = arr.sites.select("plate", "well").unique(maintain_order=True).sort("plate", "well")
                site_well = arr.sites.join(uniq.with_row_index("__g"), on=["plate", "well"], how="left",
                                           maintain_order="left")["__g"].to_numpy().astype(np.int64)
                codes = site_well[arr.site_codes()]
                med = profiles.reduce_groups(arr.x, codes, uniq.height, "median")
                parts.append(uniq.with_columns(
                    pl.Series("n_cells", np.bincount(codes, minlength=uniq.height)),
                    pl.Series("features", med, dtype=pl.Array(pl.Float64, med.shape[1]))))
                del arr
            else:
                df = pl.scan_parquet(_plate_files(store_dir, plate)).select("plate", "well", "features").collect()
                t_read += time.perf_counter() - t1
                parts.append(profiles.aggregate_array(df, by=["plate", "well"], method="median"))
                del df
        wells = pl.concat(parts)
        cells, n_wells = int(wells["n_cells"].sum()), wells.height
        x = np.stack(wells["features"].to_numpy())
    t = time.perf_counter() - t0
    return {"cells": cells, "wells": n_wells, "total_s": t, "read_s": t_read, **_summary(x),
            "maxrss_mb": _maxrss_mb(), "base_mb": base, "reader": "read_site_arrays" if reader else "polars"}


# -- driver -------------------------------------------------------------------------------------------------


WORKERS = {"gen_wells": gen_wells, "gen_store": gen_store, "ours_norm": work_ours_norm,
           "ours_select": work_ours_select, "pyc_norm": work_pyc_norm, "pyc_select": work_pyc_select,
           "ours_agg_mem": work_ours_agg_mem, "pyc_agg_mem": work_pyc_agg_mem,
           "ours_agg_store": work_ours_agg_store, "pyc_agg_store": work_pyc_agg_store}


def _child(args: list) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = fh.name
    subprocess.run([sys.executable, __file__, "--worker", json.dumps(args), "--out", out], check=True)
    with open(out) as fh:
        res = json.load(fh)
    os.unlink(out)
    return res


def _pyc(cache: Path | None, key: str, args: list) -> dict:
    """A pycytominer measurement, reused from ``cache`` (``--reuse-pyc``) when present."""
    if cache is not None and cache.exists():
        stored = json.loads(cache.read_text())
        if key in stored:
            return {**stored[key], "reused": True}
    res = _child(args)
    if cache is not None:
        stored = json.loads(cache.read_text()) if cache.exists() else {}
        stored[key] = res
        cache.write_text(json.dumps(stored))
    return res


def _ext_mb(r: dict, frac: float) -> float:
    """Peak memory at full size: the baseline plus the data-dependent part scaled by 1/frac."""
    return r["base_mb"] + (r["maxrss_mb"] - r["base_mb"]) / frac


def _use_impl(folder: str) -> None:
    """Import subcell_screen from ``folder``: drop an editable install's import hook, put the folder first."""
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
    sys.path.insert(0, folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plates", type=int, default=100)
    ap.add_argument("--features", type=int, default=4608)
    ap.add_argument("--cells", type=int, default=650_000)
    ap.add_argument("--cell-features", type=int, default=1536)
    ap.add_argument("--pyc-plates", type=int, default=10, help="plates pycytominer normalises (extrapolated)")
    ap.add_argument("--pyc-cells", type=int, default=65_000, help="cells pycytominer aggregates (extrapolated)")
    ap.add_argument("--skip-norm", action="store_true")
    ap.add_argument("--skip-agg", action="store_true")
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    ap.add_argument("--workdir", default=None, help="folder for the generated data (default: a temp dir)")
    ap.add_argument("--reuse-pyc", action="store_true", help="reuse pycytominer's numbers from the work folder")
    ap.add_argument("--impl", default=None,
                    help="import subcell_screen from this folder instead (e.g. `git archive <commit> subcell_screen` "
                         "unpacked there), to measure another version")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.impl:
        os.environ["PROFILES_BENCH_IMPL"] = str(Path(a.impl).resolve())
    if os.environ.get("PROFILES_BENCH_IMPL"):
        _use_impl(os.environ["PROFILES_BENCH_IMPL"])

    if a.worker:
        kind, *rest = json.loads(a.worker)
        res = WORKERS[kind](*rest)
        with open(a.out, "w") as fh:
            json.dump(res if res is not None else {}, fh)
        return

    if a.quick:
        a.plates, a.features, a.cells, a.cell_features = 6, 640, 40_000, 256
        a.pyc_plates, a.pyc_cells = 3, 20_000
    a.pyc_plates = min(a.pyc_plates, a.plates)
    a.pyc_cells = min(a.pyc_cells, a.cells)
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="profiles_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    import subcell_screen

    print(f"# subcell_screen.profiles ({Path(subcell_screen.__file__).parent}) vs pycytominer; data in {work}; "
          f"{os.cpu_count()} CPUs")
    rows: list[tuple] = []  # label, ours s, pycytominer s (or None), ours MB, pycytominer MB (text)

    if not a.skip_norm:
        cache = work / f"pyc_norm_{a.plates}x{a.features}_{a.pyc_plates}.json" if a.reuse_pyc else None
        wells_dir = str(work / f"wells_{a.plates}x{a.features}")
        if not Path(wells_dir).exists():
            t = time.perf_counter()
            _child(["gen_wells", wells_dir, a.plates, a.features])
            print(f"generated {a.plates} plates x {WELLS} wells x {a.features} features in "
                  f"{time.perf_counter() - t:.0f} s")
        frac = a.pyc_plates / a.plates
        normed = str(work / "normalized_full.parquet")
        both = _child(["ours_norm", wells_dir, None, True, normed])
        norm = _child(["ours_norm", wells_dir, None, False])
        sel = _child(["ours_select", normed])
        pyc_n = _pyc(cache, "norm", ["pyc_norm", wells_dir, a.pyc_plates])
        pyc_s = _pyc(cache, "select", ["pyc_select", normed])
        os.unlink(normed)
        pyc_norm_s = pyc_n["normalize_s"] / frac
        pyc_norm_mb = _ext_mb(pyc_n, frac)
        how = "measured" if frac == 1 else f"extrapolated x{1 / frac:g} from {a.pyc_plates} plates"
        reused = " (pycytominer numbers reused from an earlier run)" if pyc_n.get("reused") else ""
        print(f"\n## {a.plates} plates x {WELLS} wells x {a.features} features: mad_robustize per plate on negcon, "
              f"feature_select {OPS}{reused}")
        same = pyc_s["kept"] == both["kept"] == sel["kept"]
        print(f"same features selected as pycytominer: {same} ({len(both['kept'])} of {a.features} kept)")
        ext = f"~{pyc_norm_mb:.0f} ({how})"
        rows += [("normalise", norm["normalize_s"], pyc_norm_s, norm["maxrss_mb"], ext),
                 ("feature select", sel["select_s"], pyc_s["select_s"], sel["maxrss_mb"],
                  f"{pyc_s['maxrss_mb']:.0f}"),
                 ("normalise + feature select", both["normalize_s"] + both["select_s"], pyc_norm_s + pyc_s["select_s"],
                  both["maxrss_mb"], f"max of the two: ~{max(pyc_norm_mb, pyc_s['maxrss_mb']):.0f}")]
        print(f"(ours in one process: normalise {both['normalize_s']:.2f} s + select {both['select_s']:.2f} s; "
              f"pycytominer normalise {pyc_n['normalize_s']:.2f} s on {a.pyc_plates} plates, {how})")

    if not a.skip_agg:
        cache = work / f"pyc_agg_{a.cells}x{a.cell_features}_{a.pyc_cells}.json" if a.reuse_pyc else None
        store_dir = str(work / f"store_{a.cells}x{a.cell_features}")
        if not Path(store_dir).exists():
            t = time.perf_counter()
            _child(["gen_store", store_dir, a.cells, a.cell_features])
            print(f"\ngenerated a store of {a.cells} cells x {a.cell_features} features (one file per site) in "
                  f"{time.perf_counter() - t:.0f} s")
        frac = a.pyc_cells / a.cells
        pyc_m = _pyc(cache, "mem", ["pyc_agg_mem", store_dir, a.pyc_cells])
        pyc_f = _pyc(cache, "store", ["pyc_agg_store", store_dir, a.pyc_cells])
        ours_m_small = _child(["ours_agg_mem", store_dir, a.pyc_cells])
        ours_m = _child(["ours_agg_mem", store_dir, None])
        ours_f = _child(["ours_agg_store", store_dir, None, False])
        ours_2 = _child(["ours_agg_store", store_dir, None, True])
        import numpy as np

        diff = float(np.abs(np.asarray(pyc_m["first"]) - np.asarray(ours_m_small["first"])).max())
        reused = " (pycytominer numbers reused from an earlier run)" if pyc_m.get("reused") else ""
        print(f"\n## cell -> well median, {a.cells} cells x {a.cell_features} features, {len(_plates(store_dir))} "
              f"plates, one Parquet file per site{reused}")
        print(f"same medians as pycytominer on {a.pyc_cells} cells: max |diff| of a sample {diff:.1e}, checksums "
              f"{pyc_m['checksum']:.6f} / {ours_m_small['checksum']:.6f}; ours in memory vs from files: "
              f"{ours_m['checksum']:.6f} / {ours_f['checksum']:.6f}")
        how = "measured" if frac == 1 else f"extrapolated x{1 / frac:g} from {pyc_m['cells']} cells"
        pyc_mem_s = pyc_m["total_s"] * a.cells / pyc_m["cells"]
        pyc_file_s = pyc_f["total_s"] * a.cells / pyc_f["cells"]
        fr_m, fr_f = pyc_m["cells"] / a.cells, pyc_f["cells"] / a.cells
        setup = ours_m.get("setup_s", 0.0)
        rows += [("aggregate, in memory", ours_m["total_s"], pyc_mem_s, ours_m["maxrss_mb"],
                  f"~{_ext_mb(pyc_m, fr_m):.0f} ({how})")]
        if "import_s" in pyc_m:  # a fresh process: library imports + one-time set-up + the aggregation
            rows.append(("  fresh process (imports, numba set-up)", ours_m["import_s"] + setup + ours_m["total_s"],
                         pyc_m["import_s"] + pyc_mem_s, ours_m["maxrss_mb"], "as above"))
        rows += [("aggregate, from the store's files", ours_f["total_s"], pyc_file_s, ours_f["maxrss_mb"],
                  f"~{_ext_mb(pyc_f, fr_f):.0f} ({how})"),
                 ("(store: cells->site median->well mean)", ours_2["total_s"], None, ours_2["maxrss_mb"], "-")]
        print(f"ours from files: reading {ours_f['read_s']:.2f} s ({ours_f['reader']}) + medians "
              f"{ours_f['total_s'] - ours_f['read_s']:.2f} s; pycytominer from files: reading + widening "
              f"{pyc_f['read_s']:.2f} s + aggregate {pyc_f['total_s'] - pyc_f['read_s']:.2f} s on {pyc_f['cells']} "
              f"cells; in memory ours {ours_m_small['total_s']:.2f} s vs pycytominer {pyc_m['total_s']:.2f} s on "
              f"{pyc_m['cells']} cells (both measured: {pyc_m['total_s'] / ours_m_small['total_s']:.1f}x); "
              f"memory with the cells loaded: ours {ours_m['loaded_mb']:.0f} MB, pycytominer "
              f"{pyc_m['loaded_mb']:.0f} MB; one-time set-up of our process (numba import + compiled kernel "
              f"load) {setup:.2f} s, included in the from-files rows; imports: ours {ours_m['import_s']:.2f} s, "
              f"pycytominer {pyc_m.get('import_s', float('nan')):.2f} s")

    print(f"\n{'':42s}{'ours s':>9s}{'pycyto s':>10s}{'speed-up':>10s}{'ours MB':>9s}  pycytominer MB")
    for label, ours_s, pyc_s, ours_mb, pyc_mb in rows:
        ref = f"{pyc_s:10.1f}{pyc_s / ours_s:9.1f}x" if pyc_s else f"{'-':>10s}{'-':>10s}"
        print(f"{label:42s}{ours_s:9.2f}{ref}{ours_mb:9.0f}  {pyc_mb}")
    print("pycytominer seconds: normalise and aggregations extrapolated linearly from the fraction it ran on "
          "(see above); feature select measured at full size. Peak MB = the measuring process's ru_maxrss.")


if __name__ == "__main__":
    main()
