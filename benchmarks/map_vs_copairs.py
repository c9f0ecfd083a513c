"""Benchmark: streamed AP/mAP (subcell_screen.score) against copairs 0.5 on a phenotypic-activity design.

Design: ``n_plates`` plates x 384 wells x ``n_features`` features; per plate 32 DMSO wells and 352 compound
wells; every compound sits once on every plate (replicates across plates); a third of the compounds carry a
planted shift. Pair rules are copairs' phenotypic-activity example: positives = same compound (reference index
-1), negatives = every DMSO well (``assign_reference_index`` on DMSO), cosine similarity; then mAP per compound
with ``null_size`` null draws (seed 0).

Each tool runs in its own subprocess that builds the same data from a seed; we record wall time of
``average_precision`` and ``mean_average_precision`` and the peak resident memory (``resource.getrusage``
``ru_maxrss``) both in absolute terms and above the process's resident memory after the data were built
("algorithm memory"). Results of the two tools are compared (max |AP difference|, p-values equal).

A larger screen (default 200 plates, 76,800 wells) is then scored by subcell_screen only; for copairs we print
its exact pair count and a memory estimate: copairs' bytes per pair, measured on a 16-feature run of
``--calib-plates`` plates (where its per-pair arrays dominate), times the large screen's pair count.

Usage::

    python benchmarks/map_vs_copairs.py                    # 10 plates x 384 wells x 1536 features, + 200 plates
    python benchmarks/map_vs_copairs.py --plates 4 --large-plates 20 --features 256   # quick check

Runs on CUDA automatically when a GPU is present (``backend="auto"``); ``--backend numpy`` forces the CPU path.
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

WELLS = 384
DMSO_PER_PLATE = 32


def make_data(n_plates: int, n_features: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    n_cpd = WELLS - DMSO_PER_PLATE
    shifts = np.zeros((n_cpd, n_features))
    active = rng.random(n_cpd) < 1 / 3
    dirs = rng.normal(size=(n_cpd, n_features))
    shifts[active] = 1.5 * dirs[active] / np.linalg.norm(dirs[active], axis=1, keepdims=True) * np.sqrt(n_features) * 0.3
    pert, plate, ctrl = [], [], []
    blocks = []
    for p in range(n_plates):
        offset = rng.normal(0, 0.3, n_features)
        x = rng.normal(0, 1, (WELLS, n_features)) + offset
        x[DMSO_PER_PLATE:] += shifts
        blocks.append(x)
        pert += ["DMSO"] * DMSO_PER_PLATE + [f"cpd_{i:04d}" for i in range(n_cpd)]
        plate += [f"P{p:03d}"] * WELLS
        ctrl += [True] * DMSO_PER_PLATE + [False] * n_cpd
    feats = np.concatenate(blocks)
    ref = np.where(np.asarray(ctrl), np.arange(len(pert)), -1)
    return pert, plate, ref, feats


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(tool: str, n_plates: int, n_features: int, null_size: int, out: str, backend: str) -> None:
    import numpy as np

    pert, plate, ref, feats = make_data(n_plates, n_features)
    kw = dict(pos_sameby=["Metadata_pert", "Metadata_Reference_Index"], pos_diffby=[], neg_sameby=[],
              neg_diffby=["Metadata_pert", "Metadata_Reference_Index"])
    if tool == "copairs":
        import pandas as pd
        from copairs import map as cm

        meta = pd.DataFrame({"Metadata_pert": pert, "Metadata_Plate": plate, "Metadata_Reference_Index": ref})
        base = _rss_mb()
        t0 = time.perf_counter()
        ap = cm.average_precision(meta, feats, **kw, progress_bar=False)
        t1 = time.perf_counter()
        ap = ap[ap["Metadata_pert"] != "DMSO"]
        m = cm.mean_average_precision(ap, sameby=["Metadata_pert"], null_size=null_size, threshold=0.05, seed=0,
                                      progress_bar=False, cache_dir=tempfile.mkdtemp())
        t2 = time.perf_counter()
        apv = ap["average_precision"].to_numpy()
        pv = m["p_value"].to_numpy()
        n_pairs = int(ap["n_total_pairs"].sum() // 1)  # each compound-row's pairs (DMSO rows excluded)
    else:
        import polars as pl

        from subcell_screen.score import average_precision, mean_average_precision
        from subcell_screen.score._engine import resolve_backend

        kind, dev = resolve_backend(backend, None)
        if kind == "torch":  # import torch / create the CUDA context before the baseline (GPU memory reported apart)
            import torch

            torch.zeros(1, device=dev)
        meta = pl.DataFrame({"Metadata_pert": pert, "Metadata_Plate": plate, "Metadata_Reference_Index": ref})
        base = _rss_mb()
        t0 = time.perf_counter()
        ap = average_precision(meta, feats, **kw, backend=backend)
        t1 = time.perf_counter()
        ap = ap.filter(pl.col("Metadata_pert") != "DMSO")
        m = mean_average_precision(ap, sameby=["Metadata_pert"], null_size=null_size, threshold=0.05, seed=0)
        t2 = time.perf_counter()
        apv = ap["average_precision"].to_numpy()
        pv = m["p_value"].to_numpy()
        n_pairs = int(ap["n_total_pairs"].sum())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_peak = None
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        gpu_peak = sys.modules["torch"].cuda.max_memory_allocated() / 2**20
    np.save(out + ".ap.npy", apv)
    np.save(out + ".p.npy", pv)
    with open(out, "w") as fh:
        json.dump({"tool": tool, "t_ap": t1 - t0, "t_map": t2 - t1, "peak_mb": peak, "base_mb": base,
                   "n_rows": len(pert), "n_pairs_compound_rows": n_pairs, "gpu_peak_mb": gpu_peak,
                   "fraction_retrieved": float(np.mean(np.asarray(m["below_corrected_p"])))}, fh)


def run(tool: str, n_plates: int, args: argparse.Namespace, n_features: int | None = None) -> dict | None:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "res.json")
        cmd = [sys.executable, __file__, "--worker", tool, "--plates", str(n_plates), "--features",
               str(n_features or args.features), "--null-size", str(args.null_size), "--out", out, "--backend",
               args.backend]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(f"[{tool}] failed (rc {proc.returncode}):\n{proc.stderr[-2000:]}")
            return None
        import numpy as np

        with open(out) as fh:
            res = json.load(fh)
        res["ap"] = np.load(out + ".ap.npy")
        res["p"] = np.load(out + ".p.npy")
        return res


def _report(r: dict) -> None:
    gpu = f"  GPU peak {r['gpu_peak_mb']:.0f} MB" if r.get("gpu_peak_mb") else ""
    print(f"  {r['tool']:8s} AP {r['t_ap']:8.2f} s  mAP {r['t_map']:7.2f} s  peak RSS {r['peak_mb']:8.0f} MB  "
          f"(algorithm {r['peak_mb'] - r['base_mb']:7.0f} MB){gpu}  fraction retrieved {r['fraction_retrieved']:.3f}")


def count_copairs_pairs(n_plates: int) -> tuple[int, int]:
    """Exact copairs pair counts (positive, negative) for the design, without listing them."""
    n_cpd = WELLS - DMSO_PER_PLATE
    pos = n_cpd * n_plates * (n_plates - 1) // 2
    neg = (n_cpd * n_plates) * (DMSO_PER_PLATE * n_plates)
    return pos, neg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plates", type=int, default=10)
    ap.add_argument("--large-plates", type=int, default=200)
    ap.add_argument("--features", type=int, default=1536)
    ap.add_argument("--null-size", type=int, default=10000)
    ap.add_argument("--backend", default="auto", choices=["auto", "numpy", "torch"])
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--calib-plates", type=int, default=20, help="plates of the copairs memory-per-pair run")
    ap.add_argument("--worker", choices=["copairs", "ours"])
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.plates, args.features, args.null_size, args.out, args.backend)
        return
    import numpy as np

    print(f"design: {args.plates} plates x {WELLS} wells x {args.features} features, null_size {args.null_size}, "
          f"backend {args.backend}")
    ours = run("ours", args.plates, args)
    cop = run("copairs", args.plates, args)
    pos, neg = count_copairs_pairs(args.plates)
    print(f"copairs pairs: {pos:,} positive + {neg:,} negative")
    for r in (ours, cop):
        if r:
            _report(r)
    if ours and cop:
        d = np.nanmax(np.abs(ours["ap"] - cop["ap"]))
        same_p = bool(np.array_equal(ours["p"], cop["p"]))
        t_o, t_c = ours["t_ap"] + ours["t_map"], cop["t_ap"] + cop["t_map"]
        alg_o = max(ours["peak_mb"] - ours["base_mb"], 1.0)
        alg_c = cop["peak_mb"] - cop["base_mb"]
        print(f"agreement: max |AP diff| {d:.2e}, p-values equal: {same_p}")
        print(f"speed-up AP {cop['t_ap'] / ours['t_ap']:.1f}x, mAP {cop['t_map'] / ours['t_map']:.1f}x, "
              f"total {t_c / t_o:.1f}x")
        print(f"memory: peak RSS ratio ours/copairs {ours['peak_mb'] / cop['peak_mb']:.3f}; "
              f"algorithm memory ratio {alg_o / alg_c:.3f}")
    if args.skip_large:
        return
    pos_l, neg_l = count_copairs_pairs(args.large_plates)
    print(f"\nlarge: {args.large_plates} plates ({args.large_plates * WELLS:,} wells) x {args.features} features; "
          f"copairs would list {pos_l + neg_l:,} pairs")
    # copairs' memory per pair, measured where pair arrays dominate (16 features, so its similarity batches
    # are small), then scaled to the large screen's pair count; its feature batches come on top
    calib = run("copairs", args.calib_plates, args, n_features=16)
    if calib:
        pc, nc = count_copairs_pairs(args.calib_plates)
        bpp = (calib["peak_mb"] - calib["base_mb"]) * 2**20 / (pc + nc)
        print(f"  copairs memory per pair: {bpp:.0f} B ({args.calib_plates} plates x 16 features, {pc + nc:,} "
              f"pairs, {calib['peak_mb'] - calib['base_mb']:.0f} MB) -> estimated "
              f"{bpp * (pos_l + neg_l) / 2**30:.1f} GiB for the large screen; not run")
    big = run("ours", args.large_plates, args)
    if big:
        _report(big)


if __name__ == "__main__":
    main()
