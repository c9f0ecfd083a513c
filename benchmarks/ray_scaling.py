"""Ray engine throughput (sites/s) with 1 and 2 local CPU workers against the local engine, in one run.

A simulated HPA screen (4 wells x ``--sites-per-well`` sites of ``--size``² px, illumination correction on)
goes through the segment + embed stages three ways, each into a fresh screen store:

- ``local``: ``pipeline.run(engine="local")`` in this process (the reference);
- ``ray w=1`` / ``ray w=2``: ``pipeline.run(engine="ray")`` on a local Ray instance started for the
  measurement, where *w workers* means ``w`` segmentation actors (1 CPU each) plus ``w`` CPUs for the load,
  feature and write tasks (``ray.init(num_cpus=2w)``).

Times are end to end (site checks, illumination, Ray Data execution with actor start-up, driver ingest into
the store); ``ray.init`` is reported separately. Every Ray run is checked to store the same cells as the local
run. On the project's 2-core shared box ``w=2`` oversubscribes the cores, so read the ratios, not the
absolute rates; on a real node, scale ``w`` with its cores.

Usage::

    python benchmarks/ray_scaling.py [--sites-per-well 12] [--size 256] [--featurizer classical|subcell-tiny]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from subcell_screen.config import load_config  # noqa: E402
from subcell_screen.pipeline import run  # noqa: E402
from subcell_screen.simulate import simulate_screen  # noqa: E402
from subcell_screen.store import ScreenStore  # noqa: E402


def _config(sim, path: Path, embedding: dict, ray: dict):
    cfg = load_config(sim.config)
    return cfg.model_copy(update={"screen": cfg.screen.model_copy(update={"path": path}),
                                  "embedding": cfg.embedding.model_copy(update=embedding),
                                  "ray": cfg.ray.model_copy(update=ray)})


def _cells(path: Path):
    with ScreenStore.open(path, read_only=True) as store:
        return store.sql("SELECT * FROM cells ORDER BY ALL")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites-per-well", type=int, default=12)
    ap.add_argument("--size", type=int, default=256, help="site side in pixels")
    ap.add_argument("--featurizer", choices=["classical", "subcell-tiny"], default="classical")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="ray_scaling_"))
    sim = simulate_screen(tmp / "sim", style="hpa", preset="smoke", sites_per_well=args.sites_per_well,
                          shape=(args.size, args.size), seed=3)
    if args.featurizer == "classical":
        embedding = {"featurizer": "classical", "classical_families": ["shape", "intensity", "correlation"],
                     "classical_zernike_degree": -1}
        extra: dict = {}
    else:
        from subcell_screen.embed.testing import make_tiny_checkpoint

        make_tiny_checkpoint(tmp / "models", "rybg/MAE-CellS-ProtS-Pool", width=64, depth=2, heads=2)
        embedding = {"featurizer": "subcell", "cache_dir": tmp / "models", "crop_size": 128, "precision": "fp32",
                     "batch_size": 32, "allow_fallback": False}
        extra = {"embed_batch_size": 32}
    print(f"screen: {sim.config.parent}  featurizer: {args.featurizer}  cpu cores: {os.cpu_count()}  "
          f"load average: {os.getloadavg()[0]:.1f}")

    rows = []
    t0 = time.perf_counter()
    res = run(_config(sim, tmp / "local", embedding, {}), stages=("segment", "embed"), progress=False)
    local_s = time.perf_counter() - t0
    n_sites = res.stages[0].ok
    reference = _cells(tmp / "local")
    rows.append(("local", local_s, None))
    print(f"local: {n_sites} sites, {reference.height} cells in {local_s:.1f} s")

    for w in args.workers:
        t0 = time.perf_counter()
        ray.init(num_cpus=2 * w, include_dashboard=False, object_store_memory=1024 ** 3,
                 logging_level=logging.WARNING)
        init_s = time.perf_counter() - t0
        try:
            # SubCell: the embed actors hold CPUs too; half a CPU per actor keeps w CPUs for the tasks
            ray_cfg = {"segment_actors": w, "embed_actors": w, "cpus_per_actor": 1.0 if not extra else 0.5, **extra}
            t0 = time.perf_counter()
            res = run(_config(sim, tmp / f"ray{w}", embedding, ray_cfg), stages=("segment", "embed"),
                      progress=False, engine="ray")
            wall = time.perf_counter() - t0
        finally:
            ray.shutdown()
        same = _cells(tmp / f"ray{w}").equals(reference)
        note = next(m for m in res.stages[0].messages if m.startswith("ray:"))
        rows.append((f"ray w={w}", wall, init_s))
        print(f"ray w={w}: {wall:.1f} s (ray.init {init_s:.1f} s); same cells as local: {same}; {note}")
        if not same:
            raise SystemExit("the Ray engine stored other cells than the local engine")

    print()
    print(f"{'engine':<10} {'seconds':>8} {'sites/s':>8} {'x local':>8}   (ray.init)")
    for name, s, init in rows:
        print(f"{name:<10} {s:8.1f} {n_sites / s:8.2f} {local_s / s:8.2f}   "
              + (f"{init:.1f} s" if init is not None else ""))


if __name__ == "__main__":
    main()
