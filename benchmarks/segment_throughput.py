"""Segmentation throughput in sites per second for 1080x1080 sites.

Classical segmenter (CPU): nuclei + cells + per-cell table of the real pediatric Cell Painting site
(tests/data, DNA + AGP at 0.598 µm/px), repeated.

Cellpose (only where CUDA is available, or with --cellpose-cpu): Cellpose-SAM (``cpsam``) from the local
cache when its weights are present; otherwise -- as on an offline GPU box -- the Cellpose-SAM architecture
(SAM ViT-L encoder, 304.6 M parameters) is built in-process with random weights. Random flows would make
mask building meaningless, so in that case the network's output is replaced by a fixed head (flows = the
normalised gradient of the blurred first channel, which converge on bright blobs) while the ViT-L still
runs in full: network time is real and mask building sees cell-like flows. The benchmark says which it
used.
It compares, in the same run:

- reference: cellpose's own ``CellposeModel.eval`` on a list of sites (cellpose runs them one by one);
- subcell_screen: ``CellposeSegmenter.segment_many`` (same-size sites stacked into one array so their tiles
  share network batches; masks built by worker threads while the network runs the next batch);
- the network alone on the same stacked tiles (a lower bound for the pipeline).

Usage::

    python benchmarks/segment_throughput.py [--sites 6] [--gpu-sites 8] [--batch-size 72] [--cellpose-cpu]
        [--working-pixel-size 1.2]

``--working-pixel-size`` also times ``segment_many`` with the sites segmented at that pixel size
(``[segmentation].working_pixel_size_um``; labels returned at 1080²) and prints the F1@0.5 of those masks
against the full-resolution ones (an accuracy figure only with real weights).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from subcell_screen.segment import cells_table, segment_cells  # noqa: E402

# SUBCELL_SCREEN_SITE_DIR: an uncompressed copy of the site for machines without the zstd codec
SITE = Path(os.environ.get("SUBCELL_SCREEN_SITE_DIR", REPO / "tests" / "data" / "cellpainting" / "pediatric_site_full"))
PIXEL_UM = 0.598


def load_site() -> tuple[np.ndarray, np.ndarray]:
    dna = tifffile.imread(SITE / "r03c03f03p01-ch5sk1fk1fl1.tiff")
    agp = tifffile.imread(SITE / "r03c03f03p01-ch3sk1fk1fl1.tiff")
    assert dna.shape == (1080, 1080)
    return dna, agp


def sites_like(dna: np.ndarray, agp: np.ndarray, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """n distinct 1080x1080 sites: the real site rolled by different offsets (same content statistics)."""
    out = []
    for i in range(n):
        shift = (97 * i % 1080, 211 * i % 1080)
        out.append((np.roll(dna, shift, (0, 1)), np.roll(agp, shift, (0, 1))))
    return out


def bench_classical(n: int) -> None:
    dna, agp = load_site()
    sites = sites_like(dna, agp, n)
    segment_cells(*sites[0], pixel_size_um=PIXEL_UM)  # warm-up (imports)
    t_seg = t_tab = 0.0
    cells_total = 0
    for nuc, cyto in sites:
        t0 = time.perf_counter()
        nuclei, cells = segment_cells(nuc, cyto, pixel_size_um=PIXEL_UM)
        t1 = time.perf_counter()
        table = cells_table(nuclei, cells, pixel_size_um=PIXEL_UM)
        t2 = time.perf_counter()
        t_seg += t1 - t0
        t_tab += t2 - t1
        cells_total += table.height
    total = t_seg + t_tab
    print(f"classical (CPU, 1 process): {n} sites of 1080x1080, {cells_total / n:.0f} cells/site")
    print(f"  segmentation {t_seg / n:.2f} s/site, per-cell table {t_tab / n:.2f} s/site -> "
          f"{n / total:.2f} sites/s per process")
    bench_crops(nuclei, cells)


def bench_crops(nuclei: np.ndarray, cells: np.ndarray) -> None:
    """Crops of the last site at SubCell scale: 5 channels, 640 px, CPU resampling vs deferred windows."""
    from subcell_screen.crops import iter_crops
    from subcell_screen.io import SiteImage, SiteRecord
    from subcell_screen.segment import Segmentation, segmentation_qc

    dna, agp = load_site()
    names = ("DNA", "ER", "RNA", "AGP", "Mito")
    rec = SiteRecord(plate="P", well="A01", site=1, channels={c: "" for c in names}, pixel_size_um=PIXEL_UM,
                     reader="bench")
    site = SiteImage(data=np.stack([dna, agp, dna, agp, dna]), channel_names=names, pixel_size_um=PIXEL_UM,
                     record=rec)
    table = cells_table(nuclei, cells, pixel_size_um=PIXEL_UM, plate="P", well="A01", site=1)
    seg = Segmentation(plate="P", well="A01", site=1, nuclei=nuclei, cells=cells, cells_table=table,
                       qc=segmentation_qc(table), method="classical", pixel_size_um=PIXEL_UM)
    for mode in ("cpu", "defer"):
        t0 = time.perf_counter()
        n = sum(len(b) for b in iter_crops(site, seg, rescale=mode, mask=True, batch_size=32))
        dt = time.perf_counter() - t0
        print(f"  crops ({mode:5s}, 5 channels, 640 px at 0.0801 µm/px, masked): {1000 * dt / n:6.2f} ms/cell, "
              f"{n / dt:7.0f} cells/s per process")


def blob_flows_module():
    """A fixed (untrained) Cellpose-compatible head: flows = normalised gradient of the Gaussian-blurred
    first channel, cell probability = its blurred intensity above 0.3 (of the 1-99 % range). Segments bright
    blobs; used to give mask building cell-like flows when no real weights exist."""
    import torch
    import torch.nn as nn

    class BlobFlows(nn.Module):
        def __init__(self, sigma: float = 4.0, radius: int = 12):
            super().__init__()
            r = np.arange(-radius, radius + 1, dtype=np.float64)
            g = np.exp(-r ** 2 / (2 * sigma ** 2))
            g /= g.sum()
            dg = r / sigma ** 2 * g
            g1 = np.exp(-r ** 2 / 2)
            g1 /= g1.sum()
            k = np.stack([np.outer(dg, g), np.outer(g, dg), np.outer(g1, g1)])[:, None]
            self.conv = nn.Conv2d(1, 3, 2 * radius + 1, padding=radius, bias=False)
            with torch.no_grad():
                self.conv.weight.copy_(torch.tensor(k, dtype=torch.float32))

        def forward(self, x):
            # float32 head even when the segmenter casts the whole network to bf16 on the GPU
            f = torch.nn.functional.conv2d(x[:, :1].float(), self.conv.weight.float(), padding=self.conv.padding)
            g = f[:, :2]
            flows = 5 * g / torch.sqrt((g ** 2).sum(1, keepdim=True) + 1e-4)
            return torch.cat([flows, 20 * (f[:, 2:] - 0.3)], 1)

    return BlobFlows()


def hybrid_network(sam):
    """Cellpose-SAM (random weights, full compute) whose outputs are replaced by :func:`blob_flows_module`."""
    import torch
    from cellpose.vit import BaseModel

    class Hybrid(BaseModel):
        def __init__(self):
            super().__init__(dtype=torch.float32)
            self.backbone = "sam_vitl"
            self.sam = sam
            self.blob = blob_flows_module()

        def forward(self, x):
            y_sam, style = self.sam(x)
            y = self.blob(x).to(y_sam.dtype)
            return y + 0 * y_sam, style  # keep the network's compute on the critical path

    return Hybrid()


def build_cellpose(args):
    import torch

    from subcell_screen.segment import CellposeSegmenter, CellposeWeightsError, load_cellpose

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        seg = load_cellpose("cpsam", device=device, batch_size=args.batch_size, workers=args.workers)
        return seg, "Cellpose-SAM weights 'cpsam' from the local cache"
    except CellposeWeightsError as exc:
        from cellpose.vit import CPSAM

        print(f"cpsam weights absent ({str(exc).splitlines()[0]})")
        torch.manual_seed(0)
        net = hybrid_network(CPSAM())
        seg = CellposeSegmenter.from_network(net, device=device, name="cpsam (random weights)",
                                             batch_size=args.batch_size, workers=args.workers)
        return seg, ("Cellpose-SAM ARCHITECTURE WITH RANDOM WEIGHTS (no weights offline): the SAM ViT-L "
                     "network runs in full, but its outputs are replaced by a fixed blob-flow head so that mask "
                     "building works on cell-like flows; masks are not Cellpose-SAM's")


def bench_cellpose(args) -> None:
    import torch

    seg, what = build_cellpose(args)
    dev = seg.device
    n_params = sum(p.numel() for p in seg.net.parameters()) / 1e6
    print(f"\nCellpose on {dev} ({torch.cuda.get_device_name(0) if dev.type == 'cuda' else 'CPU'}): {what}; "
          f"{n_params:.1f} M parameters, batch_size {seg.batch_size} tiles, {seg.workers} mask workers")
    dna, agp = load_site()
    sites = sites_like(dna, agp, args.gpu_sites)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    # warm-up (cuDNN / kernels)
    seg.segment_many([sites[0]], pixel_size_um=PIXEL_UM)
    sync()

    # network alone, on the stacked nuclear and cell inputs of all sites
    stack_n = np.stack([s[0].astype(np.float32)[..., None] for s in sites])
    stack_c = np.stack([np.stack([s[1], s[0]], -1).astype(np.float32) for s in sites])
    t0 = time.perf_counter()
    for stack, diam in ((stack_n, seg.nucleus_diameter_um), (stack_c, seg.cell_diameter_um)):
        for i in range(0, len(stack), max(1, seg.batch_size // 36)):
            seg._flows(stack[i:i + max(1, seg.batch_size // 36)], seg.rescale_for(diam, PIXEL_UM))
    sync()
    t_net = time.perf_counter() - t0

    # reference: cellpose's own eval, one site after the other (nuclei pass + cell pass)
    m = seg.model
    n_ref = min(len(sites), args.reference_sites)
    t0 = time.perf_counter()
    for nuc, cyto in sites[:n_ref]:
        m.eval(nuc, normalize={"normalize": True}, diameter=None, batch_size=seg.batch_size)
        m.eval(np.stack([cyto, nuc], -1), channel_axis=-1, normalize={"normalize": True}, diameter=None,
               batch_size=seg.batch_size)
    sync()
    t_ref = (time.perf_counter() - t0) / n_ref

    # subcell_screen: batched + overlapped
    t0 = time.perf_counter()
    out = seg.segment_many(sites, pixel_size_um=PIXEL_UM)
    sync()
    t_ours = (time.perf_counter() - t0) / len(sites)
    failed = sum(1 for o in out if not isinstance(o, tuple))
    print(f"  network only (stacked tiles)       {t_net / len(sites):6.3f} s/site  {len(sites) / t_net:6.2f} sites/s")
    print(f"  reference: cellpose eval per site  {t_ref:6.3f} s/site  {1 / t_ref:6.2f} sites/s  ({n_ref} sites)")
    print(f"  subcell_screen segment_many        {t_ours:6.3f} s/site  {1 / t_ours:6.2f} sites/s  "
          f"({len(sites)} sites, {failed} failed)")
    print(f"  speed-up over cellpose eval: {t_ref / t_ours:.2f}x; network share of the pipeline: "
          f"{t_net / len(sites) / t_ours:.0%}")
    if args.working_pixel_size:
        bench_working_resolution(seg, sites, out, t_ours, args.working_pixel_size, sync)
    if dev.type == "cuda":
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def bench_working_resolution(seg, sites, full_out, t_full: float, working: float, sync) -> None:
    """The same sites segmented at ``working`` µm/px (labels returned at 1080²), and their agreement with the
    full-resolution masks (meaningful with real weights only)."""
    from subcell_screen.segment import match_labels, working_shape

    small = working_shape((1080, 1080), pixel_size_um=PIXEL_UM, working_pixel_size_um=working)
    seg.working_pixel_size_um = working
    try:
        seg.segment_many([sites[0]], pixel_size_um=PIXEL_UM)  # warm-up at the new tile count
        sync()
        t0 = time.perf_counter()
        out = seg.segment_many(sites, pixel_size_um=PIXEL_UM)
        sync()
        t = (time.perf_counter() - t0) / len(sites)
    finally:
        seg.working_pixel_size_um = None
    f1n, f1c = [], []
    for a, b in zip(out, full_out):
        if isinstance(a, tuple) and isinstance(b, tuple):
            f1n.append(match_labels(a[0], b[0]).f1)
            f1c.append(match_labels(a[1], b[1]).f1)
    print(f"  segment_many at {working} µm/px ({small[0]}x{small[1]} px) {t:6.3f} s/site  {1 / t:6.2f} sites/s  "
          f"({t_full / t:.2f}x the full-resolution rate); F1@0.5 vs full resolution: nuclei "
          f"{np.mean(f1n):.3f}, cells {np.mean(f1c):.3f} (min {min(f1n):.3f} / {min(f1c):.3f})")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sites", type=int, default=6, help="sites for the classical benchmark")
    ap.add_argument("--gpu-sites", type=int, default=8, help="sites for the Cellpose benchmark")
    ap.add_argument("--reference-sites", type=int, default=4, help="sites for cellpose's own eval")
    ap.add_argument("--batch-size", type=int, default=72,
                    help="Cellpose batch size in 256-px tiles (a 1080x1080 site is 36 tiles)")
    ap.add_argument("--workers", type=int, default=4, help="mask-building threads")
    ap.add_argument("--cellpose-cpu", action="store_true", help="run the Cellpose benchmark without CUDA")
    ap.add_argument("--skip-classical", action="store_true")
    ap.add_argument("--working-pixel-size", type=float, default=None,
                    help="also time Cellpose at this working pixel size (µm/px; the site is 0.598)")
    args = ap.parse_args(argv)
    if not args.skip_classical:
        bench_classical(args.sites)
    try:
        import torch
    except ImportError:
        print("\nCellpose: torch not installed")
        return
    if torch.cuda.is_available() or args.cellpose_cpu:
        bench_cellpose(args)
    else:
        print("\nCellpose: skipped (no CUDA device; pass --cellpose-cpu to time it on the CPU, slowly)")


if __name__ == "__main__":
    main()
