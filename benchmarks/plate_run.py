"""A whole Cell Painting plate end to end: TIFFs on disk -> ``subcell_screen.run`` -> finished report (issue 21).

What a user waits for is the plate, not a stage: a JUMP-style 384-well plate is 3,456 sites of 1080x1080 px
(9 per well, 5 channels, 0.65 µm/px) and ~650k cells, segmented (Cellpose) and embedded with three SubCell
passes per cell. This script builds such a plate on disk with the simulator, runs every stage of the pipeline on
it and prints (and writes as JSON) the wall time, the time of each stage, sites/s, cells/s and the GPU's busy
fraction.

Steps, timed separately:

1. **simulate** (not part of the run): :func:`subcell_screen.simulate.simulate_screen`, Cell Painting style, Opera
   Phenix naming, the JUMP-Target-1 compound layout (``--wells`` < 384: negative controls in the plate's
   proportion, the planted-effect wells, then others in well order), ``--sites`` per well of ``--size``² px at
   ``--pixel-size`` µm/px, ``--density`` cells/mm² (default 385: ~190 cells per 1080² site at 0.65 µm/px, i.e.
   ~650k cells per 3,456-site plate), zlib-compressed 16-bit TIFFs.
2. **models**: SubCell (the Cell Painting ``ybg`` model, three passes) with *random full-size weights written in
   the public checkpoint layout* and loaded by the real loader, offline (``--subcell tiny``: a 2-layer, 64-wide
   model for CPU smoke runs). Cellpose: ``--cellpose weights`` real Cellpose-SAM weights (``cpsam`` from the local
   cache or ``--cellpose-weights``); ``random`` the Cellpose-SAM architecture (SAM ViT-L, 305 M parameters) with
   random weights whose outputs are replaced by a fixed blob-flow head so that masks are cell-like (the network
   runs in full; see ``segment_throughput.py``); ``blob`` the blob-flow head alone (CPU smoke runs: the Cellpose
   code path without the ViT). ``--segmenter classical`` uses the classical segmenter instead.
3. **run**: :func:`subcell_screen.pipeline.run` with that plan, in two calls so that the GPU can be sampled over
   the per-site part alone: the per-site stages (segment + embed, one pass over the sites) and the table stages
   (profile, score, map, report). The run's wall time is models + per-site + tables.

GPU busy fraction: NVML's utilization (the fraction of each sample period in which a kernel ran) sampled every
0.2 s in a background thread (``pynvml``, else ``nvidia-smi``), averaged over the per-site part and over the
whole run; and the time inside the models' forward passes (CUDA events, :class:`subcell_screen.engine.BusyClock`)
over the per-site wall. Without CUDA both are "n/a" (host time of the forward passes is still given).

Usage::

    # CPU smoke run (seconds to minutes): 4 wells x 2 sites x 256², blob Cellpose head, tiny SubCell
    python benchmarks/plate_run.py --wells 4 --sites 2 --size 256 --cellpose blob --subcell tiny --device cpu
    # GPU: the issue's plate (384 wells x 9 sites x 1080²) or a part of it
    python benchmarks/plate_run.py --wells 24 --cellpose random --working-pixel-size 1.3 --compile \
        --precision bf16-pure --json plate.json

Only what ran is reported as measured; for fewer than 3,456 full-size sites with full-size models, the 3,456-site
figure of the per-site stages is printed as a projection from the measured rate and labelled as such (none for
smaller sites or tiny models).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

PLATE_SITES = 3456  # 384 wells x 9 sites
SUBCELL_MODEL = "ybg/MAE-CellS-ProtS-Pool"
FULL_SUBCELL = {"width": 768, "depth": 12, "heads": 12, "mlp_dim": 3072, "pool_dim": 512,
                "classifier_dims": (512, 256)}
TINY_SUBCELL = {"width": 64, "depth": 2, "heads": 2}


# -- the plate ---------------------------------------------------------------------------------------------

def choose_wells(n: int) -> list[str] | None:
    """``n`` wells of the JUMP-Target-1 compound layout: negcon in the plate's proportion, planted, then others."""
    from subcell_screen.layouts import builtin_layout_path, read_layout
    from subcell_screen.simulate import jump_target1_effects

    lay = read_layout(builtin_layout_path("JUMP-Target-1_compound"))
    if n >= lay.height:
        return None
    neg = lay.filter(lay["control_type"] == "negcon")["well"].to_list()
    planted = {e.perturbation_id for e in jump_target1_effects(lay)}
    eff = lay.filter(lay["perturbation_id"].is_in(sorted(planted)))["well"].to_list()
    n_neg = max(1, round(n * len(neg) / lay.height))
    chosen = neg[:n_neg]
    for w in eff + lay["well"].to_list():
        if len(chosen) >= n:
            break
        if w not in chosen and w not in neg:
            chosen.append(w)
    return chosen


def simulate_plate(root: Path, args) -> tuple[object, float]:
    from subcell_screen.simulate import simulate_screen

    t0 = time.perf_counter()
    sim = simulate_screen(root / "input", style="cellpainting", preset="full", layout="JUMP-Target-1_compound",
                          wells=choose_wells(args.wells), n_plates=1, sites_per_well=args.sites,
                          shape=(args.size, args.size), pixel_size_um=args.pixel_size, density_per_mm2=args.density,
                          compression=args.compression, seed=args.seed, workers=args.sim_workers,
                          progress=args.progress)
    return sim, time.perf_counter() - t0


# -- models ------------------------------------------------------------------------------------------------

def write_subcell(cache: Path, kind: str) -> None:
    """SubCell weights in the public checkpoint layout (random), recorded as synthetic in the cache."""
    from subcell_screen.embed.testing import make_tiny_checkpoint

    make_tiny_checkpoint(cache, SUBCELL_MODEL, **(FULL_SUBCELL if kind == "full" else TINY_SUBCELL), seed=0)


def blob_network():
    """The fixed blob-flow head of ``segment_throughput.py`` as a whole Cellpose-compatible network (no ViT)."""
    import torch
    from cellpose.vit import BaseModel
    from segment_throughput import blob_flows_module

    class BlobOnly(BaseModel):
        def __init__(self):
            super().__init__(dtype=torch.float32)
            self.backbone = "sam_vitl"  # 256-px tiles, like Cellpose-SAM
            self.blob = blob_flows_module()

        def forward(self, x):
            return self.blob(x).to(x.dtype), torch.zeros((x.shape[0], 256), device=x.device, dtype=x.dtype)

    return BlobOnly()


def build_cellpose(args, device: str):
    """(CellposeSegmenter, description); raises CellposeWeightsError for ``weights`` without weights."""
    from subcell_screen.segment import CellposeSegmenter, load_cellpose

    settings = {"batch_size": args.cellpose_batch_size, "workers": args.mask_workers,
                "working_pixel_size_um": args.working_pixel_size}
    if args.cellpose == "weights":
        seg = load_cellpose(args.cellpose_weights or "cpsam", device=device, **settings)
        return seg, f"Cellpose-SAM weights {seg.weights_path}"
    import torch

    torch.manual_seed(0)
    if args.cellpose == "random":
        from cellpose.vit import CPSAM
        from segment_throughput import hybrid_network

        net, what = hybrid_network(CPSAM()), ("Cellpose-SAM ARCHITECTURE WITH RANDOM WEIGHTS (SAM ViT-L runs in "
                                              "full; outputs replaced by a fixed blob-flow head: masks are not "
                                              "Cellpose-SAM's)")
    else:
        net, what = blob_network(), "blob-flow head only (no ViT: the Cellpose code path, not its compute)"
    seg = CellposeSegmenter.from_network(net, device=device, name=f"cpsam ({args.cellpose})", **settings)
    return seg, what


def make_config(sim, root: Path, cache: Path, args):
    from subcell_screen.config import load_config

    cfg = load_config(sim.config)
    seg = {"method": "classical" if args.segmenter == "classical" else "cellpose", "allow_fallback": False,
           "working_pixel_size_um": args.working_pixel_size, "batch_size": args.cellpose_batch_size}
    if args.cellpose == "weights" and args.cellpose_weights:
        seg["weights"] = Path(args.cellpose_weights).resolve()
    emb = {"featurizer": "subcell", "model": SUBCELL_MODEL, "cache_dir": cache, "offline": True,
           "allow_fallback": False, "crop_size": args.crop_size, "precision": args.precision,
           "compile": args.compile, "batch_size": args.embed_batch_size}
    return cfg.model_copy(update={
        "screen": cfg.screen.model_copy(update={"path": (root / "screen").resolve(), "name": "plate benchmark"}),
        "report": cfg.report.model_copy(update={"out": (root / "reports").resolve()}),
        "segmentation": cfg.segmentation.model_copy(update=seg),
        "embedding": cfg.embedding.model_copy(update=emb),
        "device": args.device,
    })


def make_plan(cfg, args):
    """The run plan with the models loaded; Cellpose from ``build_cellpose`` (the loader cannot build the random
    or blob networks), SubCell through the real loader."""
    from subcell_screen.pipeline import plan_run

    if cfg.segmentation.method == "classical" or args.cellpose == "weights":
        plan = plan_run(cfg)
        what = "classical" if cfg.segmentation.method == "classical" else "Cellpose-SAM weights"
        return plan, what
    planning = cfg.model_copy(update={"segmentation": cfg.segmentation.model_copy(update={"method": "classical"})})
    plan = plan_run(planning)
    seg, what = build_cellpose(args, plan.device)
    return replace(plan, segmenter=f"cellpose:{seg.name}", cellpose_model=seg), what


# -- GPU sampling ------------------------------------------------------------------------------------------

class GpuSampler:
    """NVML GPU utilization (%) and memory (GiB) every ``interval`` s in a background thread."""

    def __init__(self, interval: float = 0.2, index: int = 0) -> None:
        self.interval, self.index = interval, index
        self.samples: list[tuple[float, float, float]] = []  # (time, utilization %, memory GiB)
        self.source = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc = None

    def start(self) -> GpuSampler:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            self.source = "pynvml"

            def poll():
                while not self._stop.is_set():
                    u = pynvml.nvmlDeviceGetUtilizationRates(handle)
                    m = pynvml.nvmlDeviceGetMemoryInfo(handle)
                    self.samples.append((time.perf_counter(), float(u.gpu), m.used / 2**30))
                    self._stop.wait(self.interval)
        except Exception:  # noqa: BLE001 - no NVML bindings: nvidia-smi's loop mode
            if shutil.which("nvidia-smi") is None:
                return self
            self.source = "nvidia-smi"
            self._proc = subprocess.Popen(
                ["nvidia-smi", f"--id={self.index}", "--query-gpu=utilization.gpu,memory.used",
                 "--format=csv,noheader,nounits", f"-lms={int(self.interval * 1000)}"],
                stdout=subprocess.PIPE, text=True)

            def poll():
                for line in self._proc.stdout:
                    try:
                        u, m = (float(x) for x in line.split(","))
                    except ValueError:
                        continue
                    self.samples.append((time.perf_counter(), u, m / 1024))
        self._thread = threading.Thread(target=poll, name="gpu-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def mean(self, t0: float, t1: float) -> dict | None:
        rows = [s for s in self.samples if t0 <= s[0] <= t1]
        if not rows:
            return None
        return {"utilization_mean_pct": sum(r[1] for r in rows) / len(rows),
                "busy_sample_fraction": sum(1 for r in rows if r[1] > 0) / len(rows),
                "memory_max_gib": max(r[2] for r in rows), "samples": len(rows)}


def device_info(device: str) -> dict:
    import torch

    info = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cpu_count": os.cpu_count()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
            info["nvidia_smi"] = out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    else:
        info["gpu"] = None
    return info


# -- the run -----------------------------------------------------------------------------------------------

def run_plate(args) -> dict:
    import torch

    from subcell_screen.engine import BusyClock
    from subcell_screen.pipeline import run

    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="plate_run_"))
    root.mkdir(parents=True, exist_ok=True)
    if (root / "input").exists() or (root / "screen").exists():
        raise SystemExit(f"{root} already holds a plate run; pass a new --out")
    try:
        sim, t_sim = simulate_plate(root, args)
        meta = json.loads((root / "input" / "simulation.json").read_text())
        print(f"simulated {meta['n_sites']} sites ({args.wells} wells x {args.sites} sites of {args.size}² px at "
              f"{args.pixel_size} µm/px), {meta['n_cells']} cells, in {t_sim:.1f} s (not part of the run)",
              flush=True)
        cache = root / "subcell_models"
        write_subcell(cache, args.subcell)
        cfg = make_config(sim, root, cache, args)

        sampler = GpuSampler().start() if torch.cuda.is_available() else None
        t0 = time.perf_counter()
        plan, seg_what = make_plan(cfg, args)
        t1 = time.perf_counter()
        for line in plan.lines():
            print("  " + line)
        print(f"  segmentation model: {seg_what}", flush=True)
        clock = BusyClock(plan.device)
        net = getattr(plan.cellpose_model, "net", None)
        with clock.timing(net, "forward", "segment"), clock.timing(plan.subcell_model, "forward_device", "embed"):
            per_site = run(cfg, stages=("segment", "embed"), plan=plan, progress=args.progress)
        busy = clock.seconds()
        calls = clock.calls()
        t2 = time.perf_counter()
        tables = run(cfg, stages=("profile", "score", "map", "report"), plan=plan, progress=args.progress)
        t3 = time.perf_counter()
        if sampler is not None:
            sampler.stop()
    finally:
        if not args.keep and not args.out:
            shutil.rmtree(root, ignore_errors=True)

    stages = {s.stage: {"seconds": s.seconds, "ok": s.ok, "failed": s.failed, "skipped": s.skipped,
                        "cells": s.cells} for s in (*per_site.stages, *tables.stages)}
    n_sites = meta["n_sites"]
    seg_ok = stages.get("segment", {}).get("ok", 0)
    cells = stages.get("embed", {}).get("cells", 0)
    per_site_wall = t2 - t1
    out = {
        "kind": "GPU run" if plan.device.startswith("cuda") else "CPU smoke run (not a GPU result)",
        "device": device_info(plan.device),
        "plate": {"wells": args.wells, "sites_per_well": args.sites, "sites": n_sites, "size_px": args.size,
                  "pixel_size_um": args.pixel_size, "density_per_mm2": args.density,
                  "simulated_cells": meta["n_cells"], "compression": args.compression},
        "models": {"segmenter": plan.segmenter, "segmentation_model": seg_what, "subcell": args.subcell,
                   "featurizer": plan.featurizer, "working_pixel_size_um": args.working_pixel_size,
                   "crop_size": args.crop_size, "precision": args.precision, "compile": args.compile,
                   "notes": list(plan.notes)},
        "seconds": {"simulate_not_in_run": t_sim, "models": t1 - t0, "per_site_stages": per_site_wall,
                    "table_stages": t3 - t2, "run_total": t3 - t0},
        "stages": stages,
        "rates": {"sites_per_s": seg_ok / per_site_wall if per_site_wall > 0 else None,
                  "cells_per_s": cells / per_site_wall if per_site_wall > 0 else None,
                  "cells_embedded": cells, "sites_segmented": seg_ok},
        "model_forward": {stage: {"seconds": s, "calls": calls.get(stage, 0),
                                  "fraction_of_per_site_wall": s / per_site_wall if per_site_wall > 0 else None,
                                  "timer": "CUDA events" if clock.cuda else "host clock"}
                          for stage, s in busy.items()},
        "gpu_utilization": None if sampler is None else {
            "source": sampler.source, "per_site_stages": sampler.mean(t1, t2), "whole_run": sampler.mean(t0, t3)},
        "messages": [m for s in (*per_site.stages, *tables.stages) for m in s.messages if "forward passes" in m],
    }
    realistic = (args.size == 1080 and args.subcell == "full"
                 and (args.segmenter == "classical" or args.cellpose != "blob"))
    if n_sites < PLATE_SITES and seg_ok and realistic:  # small or tiny-model runs say nothing about a plate
        out["projection_not_measured"] = {
            "per_site_stages_for_3456_sites_min": per_site_wall * PLATE_SITES / seg_ok / 60,
            "basis": f"measured per-site rate on {seg_ok} sites; table stages not projected"}
    return out


def print_summary(r: dict) -> None:
    s, rates = r["seconds"], r["rates"]
    print(f"\n== plate run: {r['kind']} on {r['device']['gpu'] or 'CPU'} (torch {r['device']['torch']})")
    p = r["plate"]
    print(f"plate: {p['wells']} wells x {p['sites_per_well']} sites = {p['sites']} sites of {p['size_px']}² px, "
          f"{p['simulated_cells']} simulated cells")
    print(f"wall time {s['run_total']:.1f} s = models {s['models']:.1f} + per-site stages {s['per_site_stages']:.1f} "
          f"+ table stages {s['table_stages']:.1f} (simulation {s['simulate_not_in_run']:.1f} s, not counted)")
    for name, st in r["stages"].items():
        print(f"  {name:<8} {st['seconds']:8.1f} s  ok {st['ok']} failed {st['failed']}  cells {st['cells']}")
    print("  (segment / embed seconds are each stage's compute summed over sites; they overlap in one pass)")
    print(f"rates: {rates['sites_per_s']:.3f} sites/s, {rates['cells_per_s']:.1f} cells/s "
          f"({rates['cells_embedded']} cells embedded)")
    for stage, f in r["model_forward"].items():
        print(f"model forward passes, {stage}: {f['seconds']:.1f} s in {f['calls']} calls = "
              f"{f['fraction_of_per_site_wall']:.0%} of the per-site wall ({f['timer']})")
    gpu = r["gpu_utilization"]
    if gpu is None or gpu["per_site_stages"] is None:
        print("GPU busy fraction: n/a (no CUDA device)" if gpu is None else "GPU busy fraction: n/a (no samples)")
    else:
        a, b = gpu["per_site_stages"], gpu["whole_run"]
        print(f"GPU utilization ({gpu['source']}): per-site stages {a['utilization_mean_pct']:.0f} % "
              f"(max memory {a['memory_max_gib']:.1f} GiB), whole run {b['utilization_mean_pct']:.0f} %")
    if "projection_not_measured" in r:
        pr = r["projection_not_measured"]
        print(f"PROJECTION (not measured): per-site stages of a 3,456-site plate at this rate "
              f"{pr['per_site_stages_for_3456_sites_min']:.1f} min ({pr['basis']})")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="working folder (default: a temporary folder, deleted at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--wells", type=int, default=384)
    ap.add_argument("--sites", type=int, default=9, help="sites per well")
    ap.add_argument("--size", type=int, default=1080, help="site side, px")
    ap.add_argument("--pixel-size", type=float, default=0.65, help="µm per pixel")
    ap.add_argument("--density", type=float, default=385.0, help="cells per mm² of untreated inner wells")
    ap.add_argument("--compression", default="zlib", help="TIFF compression of the simulated images")
    ap.add_argument("--sim-workers", type=int, default=os.cpu_count() or 1, help="simulation processes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--segmenter", choices=("cellpose", "classical"), default="cellpose")
    ap.add_argument("--cellpose", choices=("weights", "random", "blob"), default="random",
                    help="real Cellpose-SAM weights, random full-size Cellpose-SAM, or the blob head alone")
    ap.add_argument("--cellpose-weights", default=None, help="Cellpose weights file (--cellpose weights)")
    ap.add_argument("--cellpose-batch-size", type=int, default=72, help="Cellpose batch, 256-px tiles")
    ap.add_argument("--mask-workers", type=int, default=4, help="Cellpose mask-building threads")
    ap.add_argument("--working-pixel-size", type=float, default=None,
                    help="[segmentation].working_pixel_size_um (segment at this µm/px)")
    ap.add_argument("--subcell", choices=("full", "tiny"), default="full", help="SubCell size (random weights)")
    ap.add_argument("--crop-size", type=int, default=448, help="[embedding].crop_size")
    ap.add_argument("--precision", default="auto", help="[embedding].precision")
    ap.add_argument("--compile", action="store_true", help="[embedding].compile")
    ap.add_argument("--embed-batch-size", type=int, default=256, help="[embedding].batch_size")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--progress", action="store_true", help="progress bars")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    result = run_plate(args)
    print_summary(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
