"""Site loading speed: subcell_screen's reader with prefetching vs a plain sequential ``tifffile.imread`` loop.

Writes ``--sites`` Cell-Painting-like sites (5 channels, 1080x1080 uint16, 12-bit content: background, cells,
shot noise; LZW-compressed, Phenix naming) to a temporary folder, then times, in the same run and on the same
(page-cached) files:

- reference: ``np.stack([tifffile.imread(p) for p in channel_paths])`` site after site;
- subcell_screen: ``read_plate`` + ``iter_sites(index, workers=W, prefetch=P)``.

Each is run ``--repeats`` times alternately and the best time is kept. Prints sites/s (and CPU-ms per site)
for both and their ratio, first for loading alone, then with ``--work-ms`` of simulated per-site consumer work
that does not use the CPU (a pipeline waiting on the GPU), which the prefetching loader overlaps with loading.
Parallel decoding needs free cores: on a busy 2-core machine the loading-only ratio stays near 1.

Usage::

    python benchmarks/read_sites.py [--sites 40] [--workers N] [--prefetch N] [--repeats 3] [--work-ms 100]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from subcell_screen.io import iter_sites, read_plate

CHANNELS = {"1": "DNA", "2": "ER", "3": "RNA", "4": "AGP", "5": "Mito"}


def make_sites(folder: Path, n_sites: int, *, size: int = 1080, seed: int = 0) -> None:
    """Write ``n_sites`` 5-channel sites in Phenix naming (LZW)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = []
    for _ in CHANNELS:
        img = np.full((size, size), 250.0, np.float32)
        for _ in range(60):  # cells
            cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(12, 30)
            img += rng.uniform(300, 2500) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        base.append(img)
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(n_sites):
        row, col, field = 1 + s // 36, 1 + (s // 9) % 4, 1 + s % 9
        shift = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        for ch, img in zip(CHANNELS, base):
            noisy = rng.poisson(np.roll(img, shift, axis=(0, 1))).clip(0, 4095).astype(np.uint16)
            tifffile.imwrite(folder / f"r{row:02d}c{col:02d}f{field:02d}p01-ch{ch}sk1fk1fl1.tiff", noisy,
                             compression="lzw")


def _reference(paths: list[list[str]], work_s: float) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    total = 0
    for site in paths:
        data = np.stack([tifffile.imread(p) for p in site])
        total += int(data[0, 0, 0])
        if work_s:
            time.sleep(work_s)
    return time.perf_counter() - t0, time.process_time() - c0


def _ours(index, workers: int | None, prefetch: int | None, work_s: float) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    total = 0
    for _rec, img in iter_sites(index, workers=workers, prefetch=prefetch, progress=False):
        if isinstance(img, Exception):
            raise img
        total += int(img.data[0, 0, 0])
        if work_s:
            time.sleep(work_s)
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", type=int, default=40)
    ap.add_argument("--workers", type=int, default=None, help="loader threads (default min(4, cpu_count))")
    ap.add_argument("--prefetch", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work-ms", type=float, default=100.0,
                    help="also measure with this much simulated (non-CPU, e.g. GPU-wait) consumer work per site; "
                         "0 to skip")
    ap.add_argument("--dir", type=Path, default=None, help="reuse/keep images here instead of a temp dir")
    args = ap.parse_args()

    tmp = args.dir or Path(tempfile.mkdtemp(prefix="subcell_read_sites_"))
    try:
        plate_dir = tmp / "BENCH" / "Images"
        if not plate_dir.is_dir() or len(list(plate_dir.glob("*.tiff"))) < 5 * args.sites:
            t0 = time.perf_counter()
            make_sites(plate_dir, args.sites)
            print(f"wrote {args.sites} sites x 5 channels (1080x1080 uint16, LZW) in "
                  f"{time.perf_counter() - t0:.1f} s to {plate_dir}")
        t0 = time.perf_counter()
        index = read_plate(tmp, reader="phenix", channel_names=CHANNELS)
        t_index = time.perf_counter() - t0
        index = type(index)(records=index.records[: args.sites], reader=index.reader, source=index.source)
        paths = [list(r.channels.values()) for r in index]
        n = len(paths)
        mb = sum(os.path.getsize(p) for s in paths for p in s) / 1e6
        print(f"{n} sites, {mb:.0f} MB compressed on disk; read_plate indexed them in {t_index * 1e3:.1f} ms; "
              f"cpu_count={os.cpu_count()}")
        for p in [p for s in paths for p in s]:  # warm the page cache for both contenders
            Path(p).read_bytes()
        workers = args.workers if args.workers is not None else min(4, os.cpu_count() or 1)
        prefetch = args.prefetch or 2 * max(workers, 1)
        print(f"loader: workers={workers}, prefetch={prefetch}; best of {args.repeats} alternating runs each")
        for work_ms in dict.fromkeys([0.0, args.work_ms]):
            work_s = work_ms / 1e3
            ref_t, our_t = [], []
            for _ in range(args.repeats):
                ref_t.append(_reference(paths, work_s))
                our_t.append(_ours(index, args.workers, args.prefetch, work_s))
            (ref_wall, ref_cpu), (our_wall, our_cpu) = min(ref_t), min(our_t)
            ref, ours = n / ref_wall, n / our_wall
            label = "loading only" if not work_ms else f"loading + {work_ms:g} ms consumer work per site"
            print(f"[{label}]")
            print(f"  tifffile.imread sequential loop : {ref:7.2f} sites/s  {ref_cpu / n * 1e3:6.1f} CPU-ms/site")
            print(f"  subcell_screen iter_sites       : {ours:7.2f} sites/s  {our_cpu / n * 1e3:6.1f} CPU-ms/site")
            print(f"  ratio subcell_screen / tifffile : {ours / ref:7.2f}x")
    finally:
        if args.dir is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
