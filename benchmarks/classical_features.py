"""Throughput of the classical featurizer: cells/s per feature family and in total.

Sites
-----
* ``synthetic``: 1080 x 1080, 5 channels (uint16), ~200 touching cells with nuclei (seeded Voronoi cells
  limited to a radius, nuclei as discs around the seeds), channels with cell-to-cell and sub-cellular
  variation. Built deterministically here; no data files.
* ``examplehuman``: CellProfiler's ExampleHuman image (512 x 512, 3 channels uint8, 289 cells) with the
  objects rebuilt from CellProfiler's own segmentation (``tests/data/examplehuman_labels``).

Reference
---------
When ``cp_measure`` (CellProfiler's measurement code as a library) is importable, the same families are
timed with it on the same site and the ratio is printed (``pip install cp-measure``; it needs
``centrosome``, which pins ``pillow<12``, so install it in a separate environment or with ``--no-deps``
into a ``--target`` folder on ``PYTHONPATH``). cp_measure has no nucleus-centred radial distribution or
nuclear/cytoplasmic ratio; its radial family is timed with object-centred rings.

Usage::

    python benchmarks/classical_features.py [--repeat 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _set_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = str(n)


def synthetic_site(n_cells: int = 200, size: int = 1080, channels: int = 5, seed: int = 0):
    """``(pixels (C, H, W) uint16, nuclei, cells)`` of a crowded synthetic site."""
    import numpy as np
    import scipy.ndimage as ndi

    rng = np.random.default_rng(seed)
    # seeds on a jittered grid so cells touch like a confluent monolayer
    g = int(np.ceil(np.sqrt(n_cells)))
    step = size / g
    yy, xx = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
    pts = np.stack([(yy.ravel() + 0.5) * step, (xx.ravel() + 0.5) * step], axis=1)
    pts = pts[rng.permutation(len(pts))[:n_cells]] + rng.uniform(-0.3, 0.3, (n_cells, 2)) * step
    pts = np.clip(pts, 5, size - 6)
    markers = np.zeros((size, size), np.int32)
    markers[pts[:, 0].astype(int), pts[:, 1].astype(int)] = np.arange(1, n_cells + 1)
    dist, (iy, ix) = ndi.distance_transform_edt(markers == 0, return_indices=True)
    cells = markers[iy, ix]
    cells[dist > 0.62 * step] = 0
    nuc_r = 0.22 * step * rng.uniform(0.8, 1.2, n_cells + 1)
    nuclei = np.where(dist <= nuc_r[cells], cells, 0)
    nuclei[cells == 0] = 0
    # shape irregularity: carve random holes out of the cytoplasm border
    noise = ndi.gaussian_filter(rng.standard_normal((size, size)), 6)
    cells[(dist > 0.45 * step) & (noise > 0.05)] = 0
    nuclei[cells == 0] = 0
    pixels = np.empty((channels, size, size), np.uint16)
    for c in range(channels):
        level = rng.uniform(500, 4000, n_cells + 1)
        tex = ndi.gaussian_filter(rng.standard_normal((size, size)), 1.5 + c)
        img = 200 + level[cells] * (cells > 0) * (1 + 0.8 * tex)
        if c == 0:  # a nuclear stain
            img = 200 + 6000 * (nuclei > 0) * (1 + 0.5 * tex)
        img += rng.normal(0, 30, (size, size))
        pixels[c] = np.clip(img, 0, 65535).astype(np.uint16)
    return pixels, nuclei, cells


def examplehuman_site():
    import numpy as np
    import tifffile

    data = REPO / "tests" / "data"
    pixels = np.stack([tifffile.imread(data / "examplehuman" / f"AS_09125_050116030001_D03f00d{i}.tif")
                       for i in range(3)])
    labels = np.load(data / "examplehuman_labels" / "labels.npz")
    return pixels, labels["nuclei"], labels["cells"], labels["cytoplasm"]


def _time(fn, repeat: int) -> tuple[float, float]:
    """Best wall-clock and best CPU (process) seconds over ``repeat`` runs."""
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        fn()
        best = min(best, time.perf_counter() - t)
        best_cpu = min(best_cpu, time.process_time() - c)
    return best, best_cpu


def _cp_measure_timings(pixels, nuclei, cells, cytoplasm, repeat: int) -> dict[str, float] | None:
    try:
        from cp_measure.bulk import get_core_measurements, get_correlation_measurements
    except ImportError:
        return None
    import numpy as np

    core = get_core_measurements(legacy=True)
    corr = get_correlation_measurements()
    scaled = pixels.astype(np.float64) / np.iinfo(pixels.dtype).max
    comps = (nuclei, cytoplasm, cells)

    def run(names):
        def f():
            for lab in comps:
                for name in names:
                    if name in ("sizeshape", "zernike"):
                        core[name](lab, scaled[0])
                    elif name == "pearson":
                        for i in range(len(scaled)):
                            for j in range(i + 1, len(scaled)):
                                corr["pearson"](scaled[i], scaled[j], lab)
                    elif name == "radial_distribution":
                        if lab is cells:
                            for ch in scaled:
                                core[name](lab, ch)
                    else:
                        for ch in scaled:
                            core[name](lab, ch)
        return f

    fam = {"shape": ["sizeshape", "zernike"], "intensity": ["intensity"], "texture": ["texture"],
           "correlation": ["pearson"], "radial": ["radial_distribution"]}
    out = {k: _time(run(v), repeat)[0] for k, v in fam.items()}
    out["total"] = sum(out.values())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="BLAS/OpenMP threads (default 2)")
    ap.add_argument("--no-reference", action="store_true", help="skip cp_measure even if importable")
    args = ap.parse_args(argv)
    _set_threads(args.threads)
    sys.path.insert(0, str(REPO))
    import numpy as np

    from subcell_screen.features import FAMILIES, cytoplasm_labels, measure_cells

    sites = {}
    px, nu, ce = synthetic_site()
    sites["synthetic 1080x1080x5 uint16"] = (px, nu, ce, cytoplasm_labels(nu, ce), [f"ch{i}" for i in range(5)])
    try:
        px, nu, ce, cy = examplehuman_site()
        sites["ExampleHuman 512x512x3 uint8"] = (px, nu, ce, cy, ["DNA", "PH3", "cellbody"])
    except FileNotFoundError:
        pass

    print(f"threads={args.threads}  cpus={os.cpu_count()}  repeat=best of {args.repeat}  "
          f"load average at start={os.getloadavg()[0]:.1f}")
    print("cells/s from wall-clock time; cpu s = CPU time of this process (less sensitive to other load)")
    for title, (pixels, nuclei, cells, cyto, names) in sites.items():
        n = int(np.unique(cells[cells > 0]).size)
        print(f"\n{title}: {n} cells")
        print(f"{'family':<12} {'wall s':>8} {'cpu s':>7} {'cells/s':>9} {'features':>9}"
              + (f" {'cp_measure s':>13} {'speed-up':>9}" if not args.no_reference else ""))
        ours = {}
        widths = {}
        for fam in (*FAMILIES, "total"):
            fams = FAMILIES if fam == "total" else (fam,)

            def run(fams=fams, pixels=pixels, nuclei=nuclei, cells=cells, cyto=cyto, names=names):
                return measure_cells(pixels, nuclei, cells, channel_names=names, cytoplasm=cyto, families=fams)

            widths[fam] = run().width - 1
            ours[fam] = _time(run, args.repeat)
        ref = None if args.no_reference else _cp_measure_timings(pixels, nuclei, cells, cyto, max(1, args.repeat - 2))
        for fam in (*FAMILIES, "total"):
            wall, cpu = ours[fam]
            line = f"{fam:<12} {wall:8.2f} {cpu:7.2f} {n / wall:9.0f} {widths[fam]:9d}"
            if ref is not None:
                line += f" {ref[fam]:13.2f} {ref[fam] / wall:8.1f}x"
            print(line)
        if ref is None and not args.no_reference:
            print("(cp_measure not importable: no reference timing)")
        print(f"load average now {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
