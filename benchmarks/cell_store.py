"""Benchmark: the compacted cell store and site profiles against pycytominer reading its own files.

A screen store is built with the pipeline's write path (``ScreenStore.write_site_cells`` per site, site
profiles computed from each site's float32 cells as the featurizers do, then ``compact_cells`` per plate),
default 100 plates x 384 wells x 2 sites x 8 cells x 1536 float32 features (614,400 cells). Measured, each
in its own subprocess (peak memory = that process's ``ru_maxrss``):

1. **Files and bytes per plate** before and after compaction, and the compaction time.
2. **Cells -> well profiles from the store**:
   * *ours, pipeline*: ``well_profiles_from_store`` (site profiles -> well means; no cell is read);
   * *ours, from the cells*: every cell read back from the compacted files (``ScreenStore.cell_arrays``),
     cells -> site medians -> well means (must equal the pipeline's profiles exactly);
   * *pycytominer*: its input read from the same compacted files (``pyarrow.dataset``, one pandas column per
     feature, pycytominer's wide layout), then ``pycytominer.aggregate`` (median per well). pycytominer runs
     on ``--pyc-plates`` plates and is **extrapolated linearly** to all plates (marked in the output).
3. **Bytes per cell of each storage policy** on a 2-plate store: ``keep_cells`` all (float32, float16),
   sample (``--sample`` cells per well), none; compacted file bytes / cells featurized.

Usage::

    python benchmarks/cell_store.py                    # issue sizes (~10 min on 2 cores)
    python benchmarks/cell_store.py --quick            # small smoke run
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

FS = "subcell_bench"


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _wells(n: int) -> list[str]:
    rows = "ABCDEFGHIJKLMNOP"
    return [f"{rows[i // 24]}{i % 24 + 1:02d}" for i in range(n)]


def gen(folder: str, plates: int, wells: int, sites: int, cells: int, features: int, keep: str = "all",
        dtype: str = "float32", sample: int = 200, seed: int = 0) -> dict:
    """A store written the way a run writes it; returns files/bytes before and after compaction."""
    import numpy as np
    import polars as pl

    from subcell_screen.profiles import profiles_of, site_profile
    from subcell_screen.store import ScreenStore

    rng = np.random.default_rng(seed)
    names = _wells(wells)
    pl_dtype = pl.Float16 if dtype == "float16" else pl.Float32
    before_files = before_bytes = 0
    t_write = t_compact = t_profile = 0.0
    n_cells = 0
    with ScreenStore.create(Path(folder)) as store:
        store.register_feature_set(FS, kind="subcell", feature_names=[f"f{i:04d}" for i in range(features)])
        for p in range(plates):
            plate = f"PLATE{p:03d}"
            effects = rng.normal(size=(wells, features)).astype(np.float32)
            keys, frames, profs = [], [], []
            for w, well in enumerate(names):
                for s in range(1, sites + 1):
                    n = int(rng.poisson(cells)) or 1
                    x = rng.normal(size=(n, features)).astype(np.float32) + effects[w]
                    keys.append((plate, well, s))
                    t1 = time.perf_counter()
                    profs.append(site_profile(x))
                    t_profile += time.perf_counter() - t1
                    frames.append(pl.DataFrame({"plate": [plate] * n, "well": [well] * n, "site": [s] * n,
                                                "cell_id": np.arange(1, n + 1)},
                                               schema={"plate": pl.String, "well": pl.String, "site": pl.Int32,
                                                       "cell_id": pl.Int32})
                                  .with_columns(pl.Series("features", x.astype(np.float16 if dtype == "float16"
                                                                                 else np.float32),
                                                          dtype=pl.Array(pl_dtype, features))))
                    n_cells += n
            t0 = time.perf_counter()
            store.write_site_cells(FS, keys, frames, keep=keep)
            store.write_site_profiles(FS, profiles_of(keys, profs), sites=keys)
            t_write += time.perf_counter() - t0
            del frames
            st = store.cell_storage(FS).filter(pl.col("plate") == plate)
            before_files += int(st["files"].sum())
            before_bytes += int(st["bytes"].sum())
            t0 = time.perf_counter()
            if keep != "none":
                store.compact_cells(FS, plates=[plate], keep=keep, cells_per_well=sample)
            t_compact += time.perf_counter() - t0
        after = store.cell_storage(FS)
    return {"plates": plates, "cells": n_cells, "files_before": before_files, "bytes_before": before_bytes,
            "files_after": int(after["files"].sum()), "bytes_after": int(after["bytes"].sum()),
            "write_s": t_write, "compact_s": t_compact, "profile_s": t_profile}


def ours_sites(folder: str, out: str) -> dict:
    import numpy as np

    from subcell_screen.profiles import well_profiles_from_store
    from subcell_screen.store import ScreenStore

    base = _maxrss_mb()
    t0 = time.perf_counter()
    with ScreenStore.open(Path(folder), read_only=True) as store:
        prof = well_profiles_from_store(store, feature_set=FS, metadata=False)
    t = time.perf_counter() - t0
    feats = [c for c in prof.columns if not c.startswith("Metadata_")]
    np.save(out, prof.sort("Metadata_Plate", "Metadata_Well").select(feats).to_numpy())
    return {"total_s": t, "wells": prof.height, "cells": int(prof["Metadata_Object_Count"].sum()),
            "maxrss_mb": _maxrss_mb(), "base_mb": base}


def ours_cells(folder: str, out: str) -> dict:
    import numpy as np
    import polars as pl

    from subcell_screen.profiles import aggregate_array, site_profiles
    from subcell_screen.store import ScreenStore

    base = _maxrss_mb()
    t0 = time.perf_counter()
    t_read = 0.0
    parts = []
    with ScreenStore.open(Path(folder), read_only=True) as store:
        for plate in store.sql("SELECT DISTINCT plate FROM cell_files ORDER BY 1")["plate"].to_list():
            t1 = time.perf_counter()
            arrays = store.cell_arrays(FS, plate=plate)
            t_read += time.perf_counter() - t1
            sites = site_profiles(arrays, method="median")
            parts.append(aggregate_array(sites, by=["plate", "well"], method="mean", count_column="n_sites",
                                         sum_columns=["n_cells"]))
            del arrays
    wells = pl.concat(parts).sort("plate", "well")
    t = time.perf_counter() - t0
    np.save(out, np.stack(wells["features"].to_numpy()))
    return {"total_s": t, "read_s": t_read, "wells": wells.height, "cells": int(wells["n_cells"].sum()),
            "maxrss_mb": _maxrss_mb(), "base_mb": base}


def pyc(folder: str, n_plates: int) -> dict:
    import warnings

    import pandas as pd
    import pyarrow.dataset as ds
    import pycytominer

    from subcell_screen.store import ScreenStore

    warnings.simplefilter("ignore")
    with ScreenStore.open(Path(folder), read_only=True) as store:
        plates = store.sql("SELECT DISTINCT plate FROM cell_files ORDER BY 1")["plate"].to_list()[:n_plates]
        files = [str(f) for p in plates for f in store.cell_feature_files(FS, plate=p)]
    base = _maxrss_mb()
    t0 = time.perf_counter()
    table = ds.dataset(files, format="parquet").to_table(columns=["plate", "well", "features"])
    feats = table.column("features").combine_chunks()
    x = feats.values.to_numpy(zero_copy_only=False).reshape(len(feats), -1)
    names = [f"Cells_f{i:04d}" for i in range(x.shape[1])]
    wide = pd.concat([pd.DataFrame({"Metadata_Plate": table.column("plate").to_numpy(),
                                    "Metadata_Well": table.column("well").to_numpy()}),
                      pd.DataFrame(x, columns=names)], axis=1)
    t_read = time.perf_counter() - t0
    out = pycytominer.aggregate(wide, strata=["Metadata_Plate", "Metadata_Well"], features=names,
                                operation="median")
    t = time.perf_counter() - t0
    return {"total_s": t, "read_s": t_read, "plates": len(plates), "cells": len(wide), "wells": len(out),
            "maxrss_mb": _maxrss_mb(), "base_mb": base}


WORKERS = {"gen": gen, "ours_sites": ours_sites, "ours_cells": ours_cells, "pyc": pyc}


def _child(args: list) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = fh.name
    subprocess.run([sys.executable, __file__, "--worker", json.dumps(args), "--out", out], check=True)
    res = json.loads(Path(out).read_text())
    os.unlink(out)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plates", type=int, default=100)
    ap.add_argument("--wells", type=int, default=384)
    ap.add_argument("--sites", type=int, default=2)
    ap.add_argument("--cells", type=int, default=8, help="mean cells per site (Poisson)")
    ap.add_argument("--features", type=int, default=1536)
    ap.add_argument("--pyc-plates", type=int, default=10, help="plates pycytominer aggregates (extrapolated)")
    ap.add_argument("--sample", type=int, default=4, help="keep_cells = sample: cells per well (of ~16 here)")
    ap.add_argument("--real-plate-wells", type=int, default=48,
                    help="section 4: wells of a plate with JUMP-like sites (9 sites x ~190 cells)")
    ap.add_argument("--skip-read", action="store_true", help="only sections 1, 3 and 4")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        kind, *rest = json.loads(a.worker)
        Path(a.out).write_text(json.dumps(WORKERS[kind](*rest)))
        return
    if a.quick:
        a.plates, a.wells, a.features, a.pyc_plates, a.real_plate_wells = 6, 48, 256, 3, 4

    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="cell_store_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# cell store benchmark; data in {work}; {os.cpu_count()} CPUs")
    store = str(work / "store")
    if not Path(store).exists():
        g = _child(["gen", store, a.plates, a.wells, a.sites, a.cells, a.features])
        per = g["plates"]
        print(f"\n## {a.plates} plates x {a.wells} wells x {a.sites} sites, {g['cells']:,} cells x {a.features} float32")
        print(f"per plate before compaction: {g['files_before'] / per:.0f} files, {g['bytes_before'] / per / 1e6:.1f} MB; "
              f"after: {g['files_after'] / per:.0f} file(s), {g['bytes_after'] / per / 1e6:.1f} MB; "
              f"write {g['write_s']:.1f} s, compaction {g['compact_s']:.1f} s ({g['compact_s'] / per:.2f} s/plate)")
    if not a.skip_read:
        _read_section(a, work, store)
    _policy_section(a, work)
    _real_plate_section(a, work)


def _read_section(a: argparse.Namespace, work: Path, store: str) -> None:
    import numpy as np

    a_sites = _child(["ours_sites", store, str(work / "sites.npy")])
    a_cells = _child(["ours_cells", store, str(work / "cells.npy")])
    p = _child(["pyc", store, a.pyc_plates])
    frac = p["plates"] / a.plates
    pyc_s = p["total_s"] / frac
    x, y = np.load(work / "sites.npy"), np.load(work / "cells.npy")
    same = x.shape == y.shape and np.array_equal(x, y, equal_nan=True)
    print(f"\n## cells -> well profiles from the store ({a_sites['cells']:,} cells, {a_sites['wells']} wells)")
    print(f"pipeline (site profiles) == recomputed from every stored cell: {same} (max |diff| "
          f"{float(np.nanmax(np.abs(x - y))) if x.shape == y.shape else 'shape'})")
    how = "measured" if frac == 1 else f"extrapolated x{1 / frac:g} from {p['plates']} plates, {p['cells']:,} cells"
    print("| path | time s | vs pycytominer | peak RSS MB |")
    print("|---|---:|---:|---:|")
    print(f"| ours: site profiles -> wells (the pipeline) | {a_sites['total_s']:.2f} | "
          f"{pyc_s / a_sites['total_s']:.1f}x | {a_sites['maxrss_mb']:.0f} |")
    print(f"| ours: every cell from the compacted files -> sites -> wells | {a_cells['total_s']:.2f} "
          f"(read {a_cells['read_s']:.2f}) | {pyc_s / a_cells['total_s']:.1f}x | {a_cells['maxrss_mb']:.0f} |")
    print(f"| pycytominer: compacted files -> pandas -> aggregate(median) | {pyc_s:.1f} ({how}; read "
          f"{p['read_s'] / frac:.1f}) | 1.0x | {p['maxrss_mb']:.0f} (on {p['plates']} plates) |")



def _policy_section(a: argparse.Namespace, work: Path) -> None:
    print(f"\n## bytes per cell of each storage policy (2 plates x {a.wells} wells x {a.sites} sites, "
          f"{a.features} features)")
    print("| keep_cells | store_dtype | files/plate | bytes per cell (compacted) |")
    print("|---|---|---:|---:|")
    for keep, dtype in [("all", "float32"), ("all", "float16"), ("sample", "float32"), ("none", "float32")]:
        folder = str(work / f"policy_{keep}_{dtype}")
        g = _child(["gen", folder, 2, a.wells, a.sites, a.cells, a.features, keep, dtype, a.sample])
        label = f"sample ({a.sample}/well)" if keep == "sample" else keep
        print(f"| {label} | {dtype} | {g['files_after'] / 2:.0f} | {g['bytes_after'] / g['cells']:.0f} |")
        profile_us = 1e6 * g["profile_s"] / g["cells"]
    print(f"(site profiles: median + mean in float64 = {16 * a.features} B per site with cells, in DuckDB; "
          f"computing them at featurization: {profile_us:.1f} µs per cell, one core)")


def _real_plate_section(a: argparse.Namespace, work: Path) -> None:
    import shutil

    folder = work / "real_plate"
    if folder.exists():
        shutil.rmtree(folder)
    g = _child(["gen", str(folder), 1, a.real_plate_wells, 9, 190, a.features])
    raw = g["cells"] * (a.features * 4 + 16)
    print(f"\n## compaction at JUMP-like site sizes: 1 plate x {a.real_plate_wells} wells x 9 sites x ~190 cells "
          f"x {a.features} float32 ({g['cells']:,} cells, {raw / 1e6:.0f} MB in memory)")
    print(f"{g['files_before']} files, {g['bytes_before'] / 1e6:.0f} MB -> {g['files_after']} file, "
          f"{g['bytes_after'] / 1e6:.0f} MB in {g['compact_s']:.1f} s ({raw / 1e6 / g['compact_s']:.0f} MB/s, "
          f"{g['cells'] / g['compact_s']:,.0f} cells/s, one core); site profiles {1e6 * g['profile_s'] / g['cells']:.1f} "
          "µs per cell")
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
