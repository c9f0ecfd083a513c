"""Benchmark: the driver's peak memory against the number of plates, local and Ray engines.

Simulated HPA screens (``simulate_screen(preset="smoke")``: 4 wells per plate, ``--sites`` sites per well of
160 x 160 px) of each plate count are run end to end (segment, embed with classical features, profile,
score, map, report) by ``subcell_screen.run`` in a fresh process per run; the number is that process's peak
resident memory (``ru_maxrss`` of the driver itself: the local engine's worker processes and Ray's workers
are not the driver). The target: the driver's peak for the largest screen at most 1.5x that for the
smallest, on both engines.

Usage::

    python benchmarks/driver_memory.py                          # 10 and 100 plates, local and Ray
    python benchmarks/driver_memory.py --plates 2 4 --engines local   # smoke run
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

CLASSICAL = {"featurizer": "classical", "classical_families": ["shape", "intensity", "correlation"],
             "classical_zernike_degree": -1}


def simulate(folder: str, plates: int, sites: int) -> str:
    from subcell_screen.simulate import simulate_screen

    sim = simulate_screen(folder, style="hpa", preset="smoke", n_plates=plates, sites_per_well=sites, seed=3,
                          workers=os.cpu_count() or 1, progress=False)
    return str(sim.config)


def run_one(config: str, screen: str, engine: str) -> dict:
    from subcell_screen.config import load_config
    from subcell_screen.pipeline import run

    cfg = load_config(config)
    cfg = cfg.model_copy(update={"screen": cfg.screen.model_copy(update={"path": Path(screen)}),
                                 "embedding": cfg.embedding.model_copy(update=CLASSICAL)})
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    result = run(cfg, engine=engine, progress=False)
    wall = time.perf_counter() - t0
    stages = {s.stage: round(s.seconds, 1) for s in result.stages}
    cells = next((s.cells for s in result.stages if s.stage == "embed"), 0)
    return {"wall_s": wall, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "base_mb": base, "stages": stages, "cells": cells}


WORKERS = {"simulate": simulate, "run": run_one}


def _child(args: list) -> object:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = fh.name
    subprocess.run([sys.executable, __file__, "--worker", json.dumps(args), "--out", out], check=True)
    res = json.loads(Path(out).read_text())
    os.unlink(out)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plates", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--engines", nargs="+", default=["local", "ray"], choices=["local", "ray"])
    ap.add_argument("--sites", type=int, default=2, help="sites per well")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        kind, *rest = json.loads(a.worker)
        Path(a.out).write_text(json.dumps(WORKERS[kind](*rest)))
        return
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="driver_memory_"))
    print(f"# driver peak memory vs plates; data in {work}; {os.cpu_count()} CPUs")
    print("| engine | plates | sites | cells | wall s | driver peak RSS MB | vs smallest | stage seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for engine in a.engines:
        first = None
        for n in a.plates:
            sim_dir = work / f"sim_{n}"
            cfg = str(sim_dir / "config.toml")
            if not Path(cfg).exists():
                cfg = _child(["simulate", str(sim_dir), n, a.sites])
            screen = work / f"screen_{engine}_{n}"
            if screen.exists():
                import shutil

                shutil.rmtree(screen)
            r = _child(["run", cfg, str(screen), engine])
            first = first or r["maxrss_mb"]
            print(f"| {engine} | {n} | {n * 4 * a.sites} | {r['cells']:,} | {r['wall_s']:.0f} | {r['maxrss_mb']:.0f} | "
                  f"{r['maxrss_mb'] / first:.2f}x | {r['stages']} |", flush=True)


if __name__ == "__main__":
    main()
