"""SubCell embedding throughput: this engine at each precision vs a Hugging Face ``ViTModel`` + pooler reference.

All rows use the same random full-size weights (ViT-B/16, 4 channels, 1536-d pooler, 31-class head) and the
same inputs, on one device, and the variants are **interleaved**: every round times one call of each variant
in turn, rates are medians over rounds and ratios are medians of the per-round ratios, so a shared machine's
changing load hits all variants alike. On CPUs each row also gives cells per CPU-second (this process's CPU
time, which other jobs on the machine hardly change; with ``--threads 1`` it is the cleanest cost ratio on a
busy box) next to wall-clock cells/s, median and best round (other jobs only ever slow a round down). Rows:

* ``engine fp32`` / ``bf16`` / ``bf16-pure`` -- :class:`subcell_screen.embed.SubCellModel` forwards (fp32:
  faithful, no TF32; bf16: autocast with an fp32 residual stream; bf16-pure: bf16 weights and residual
  stream); the row ``precision="auto"`` resolves to on this device is marked ``<- run default``;
* ``HF fp32 reference`` -- ``transformers.ViTModel(add_pooling_layer=False)`` + SubCellPortable's pooler and
  classifier in fp32 (``--hf-attn``: eager on CPUs, as SubCellPortable forces; sdpa on GPUs);
* ``engine <default> e2e`` -- :class:`subcell_screen.embed.Embedder` (``precision="auto"``) from 128² float32
  host crops, resized to the model size, normalised, embedded, copied back;
* ``--compile``: the fp32 and bf16 (and ``--pure``) models under ``torch.compile`` (compile time printed);
* ``--cpu-paths`` (CPU): the other CPU choices -- attention through SDPA's math backend (unfused, as HF eager)
  instead of the fused flash kernel, channels-last input, and bf16 with autocast re-casting the fp32 weights on
  every forward (what ``precision="bf16"`` did before it kept bf16 weight copies);
* ``--threads-vs-procs`` (CPU): one process with T intra-op threads vs T worker processes with one thread
  each (T = the cores this process may use), same cells per round, at the first size.

On CPUs the header prints the CPU model, its ISA flags, torch's kernel capability, the load average (at the
start and the end) and what ``precision="auto"`` picks and why; the footer checks the CPU goals of issue 24
(the run's default >= 0.95x the fastest precision; engine fp32 >= 1.5x HF eager fp32; with native bf16,
bf16 >= 4x HF eager fp32 at cosine >= 0.999). ``--isa-cap AVX2`` caps oneDNN, ATen and MKL at an ISA
(``ONEDNN_MAX_CPU_ISA``, ``ATEN_CPU_CAPABILITY``, ``MKL_ENABLE_INSTRUCTIONS``) to measure, on a CPU with
native bf16, how a CPU without it behaves (same cores, so only indicative of a real AVX2 part).

On GPUs TFLOP/s uses the analytic count of :meth:`Architecture.flops` (157 GFLOPs/crop at 448²) and the
device's dense spec-sheet peak. ``--check`` also reports bf16-vs-fp32 embedding cosine and engine-vs-HF
fp32 differences and exits 1 if cosine < 0.999 or |p_engine - p_HF| > 1e-4.

Usage::

    python benchmarks/embed_throughput.py                        # CPU: 224² and 448², batch 4, 3 rounds
    python benchmarks/embed_throughput.py --cpu-paths --compile --threads-vs-procs --sizes 224
    python benchmarks/embed_throughput.py --isa-cap AVX2          # the same CPU without native bf16
    python benchmarks/embed_throughput.py --threads 1             # busy machine: CPU-time ratios are cleanest
    python benchmarks/embed_throughput.py --device cuda --check --compile   # GPU: 448² and 640², batch 256
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# dense spec-sheet peaks in TFLOP/s: (bf16 tensor core, fp32 non-tensor)
_PEAKS = [("H100 NVL", 835.0, 60.0), ("H100 PCIe", 756.0, 51.2), ("H100", 989.4, 66.9), ("H200", 989.4, 66.9),
          ("GH200", 989.4, 66.9), ("A100", 312.0, 19.5), ("L40S", 362.1, 91.6), ("A10G", 70.0, 31.2),
          ("L4", 121.0, 30.3)]
_MODEL = "rybg/MAE-CellS-ProtS-Pool"


def device_peaks(device) -> tuple[str, float | None, float | None]:
    import torch

    if device.type != "cuda":
        return "CPU", None, None
    name = torch.cuda.get_device_name(device)
    for key, bf16, fp32 in _PEAKS:
        if key in name:
            return name, bf16, fp32
    return name, None, None


def cap_isa(isa: str) -> None:
    """Cap oneDNN, ATen and MKL at ``isa`` (before torch is imported)."""
    if "torch" in sys.modules:
        raise RuntimeError("--isa-cap must be applied before torch is imported")
    os.environ["ONEDNN_MAX_CPU_ISA"] = isa.upper()
    os.environ["ATEN_CPU_CAPABILITY"] = {"AVX2": "avx2", "AVX": "default", "SSE41": "default"}.get(
        isa.upper(), "avx512")
    os.environ["MKL_ENABLE_INSTRUCTIONS"] = "AVX2" if isa.upper().startswith("AVX2") else (
        "AVX512" if isa.upper().startswith("AVX512") else "AVX")


def _load() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def interleaved(variants: list[tuple[str, object, int]], *, rounds: int, warmup: int, sync) -> dict[str, dict]:
    """Time ``variants`` (label, fn, cells per call) round-robin.

    Returns per variant the wall seconds (``sec``) and process CPU seconds (``cpu``) of each round, and the
    last output. CPU time counts only this process's threads, so it hardly moves when other jobs share the
    cores (with one intra-op thread it is the cleanest cost measure on a busy machine).
    """
    out = {label: {"sec": [], "cpu": [], "cells": cells, "out": None} for label, _, cells in variants}
    for _ in range(warmup):
        for label, fn, _ in variants:
            out[label]["out"] = fn()
    sync()
    for _ in range(rounds):
        for label, fn, _ in variants:
            t0, c0 = time.perf_counter(), time.process_time()
            out[label]["out"] = fn()
            sync()
            out[label]["sec"].append(time.perf_counter() - t0)
            out[label]["cpu"].append(time.process_time() - c0)
    return out


def median_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of (rate of a / rate of b) = time b / time a, same round."""
    return statistics.median(tb / ta for ta, tb in zip(a, b))


# -- threads vs processes --------------------------------------------------------------------------------------

def _proc_worker(conn, size: int, batch: int, precision: str) -> None:  # pragma: no cover - child process
    import torch

    torch.set_num_threads(1)
    from subcell_screen.embed import SubCellModel, get_model_card
    from subcell_screen.embed.testing import random_public_state_dicts

    card = get_model_card(_MODEL)
    enc, clfs = random_public_state_dicts(card.architecture, seed=0, sincos=True)
    model = SubCellModel.from_state_dicts(enc, clfs, card=card, device="cpu", precision=precision)
    x = torch.rand(batch, 4, size, size, generator=torch.Generator().manual_seed(1))
    model.forward_device(x)  # warm-up
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg == "stop":
            return
        for _ in range(int(msg)):
            model.forward_device(x)
        conn.send("done")


def threads_vs_processes(model, *, size: int, batch: int, rounds: int) -> dict:
    """One process x T threads vs T processes x 1 thread; T forwards of ``batch`` per round for each."""
    import multiprocessing as mp

    import torch

    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    for _ in range(n):
        a, b = ctx.Pipe()
        p = ctx.Process(target=_proc_worker, args=(b, size, batch, model.precision), daemon=True)
        p.start()
        pipes.append(a)
        procs.append(p)
    for a in pipes:
        a.recv()
    x = torch.rand(batch, 4, size, size, generator=torch.Generator().manual_seed(1))
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    model.forward_device(x)
    t_thr, t_proc = [], []
    try:
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(n):
                model.forward_device(x)
            t_thr.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for a in pipes:
                a.send(1)
            for a in pipes:
                a.recv()
            t_proc.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
        for a in pipes:
            a.send("stop")
        for p in procs:
            p.join(timeout=30)
    cells = n * batch
    return {"cores": n, "size": size, "batch": batch, "precision": model.precision,
            "threads_cells_per_s": cells / statistics.median(t_thr),
            "procs_cells_per_s": cells / statistics.median(t_proc),
            "procs_vs_threads": median_ratio(t_proc, t_thr)}


# -- main ------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--sizes", default=None, help="comma-separated crop sides (default: 224,448 on CPU, 448,640 on GPU)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default: 4 on CPU, 256 on GPU)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default: 3 on CPU, 5 on GPU)")
    ap.add_argument("--iters", type=int, default=None, help="calls per variant per round (default: 1 CPU, 10 GPU)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd fp32 and bf16")
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers reference")
    ap.add_argument("--pure", action="store_true", help="also time bf16-pure on GPUs (always on CPUs)")
    ap.add_argument("--hf-attn", default=None, choices=["sdpa", "eager"], help="default: eager on CPU, sdpa on GPU")
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end Embedder row")
    ap.add_argument("--cpu-paths", action="store_true", help="CPU: also time math-backend attention, channels-last")
    ap.add_argument("--threads-vs-procs", action="store_true", help="CPU: T threads in one process vs T processes")
    ap.add_argument("--isa-cap", default=None, help="CPU: cap oneDNN/ATen/MKL at this ISA (e.g. AVX2)")
    ap.add_argument("--threads", type=int, default=None, help="CPU: torch intra-op threads (default: torch's)")
    ap.add_argument("--check", action="store_true", help="accuracy checks (bf16 cosine, HF agreement)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = ap.parse_args(argv)
    if args.isa_cap:
        cap_isa(args.isa_cap)

    import numpy as np
    import torch

    from subcell_screen.embed import (
        Embedder,
        SubCellModel,
        cpu_info,
        get_model_card,
        resolve_precision,
        select_device,
    )
    from subcell_screen.embed.testing import hf_reference_model, random_public_state_dicts

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = select_device(args.device)
    gpu = dev.type == "cuda"
    sizes = [int(s) for s in (args.sizes or ("448,640" if gpu else "224,448")).split(",")]
    batch = args.batch or (256 if gpu else 4)
    rounds = args.rounds or (5 if gpu else 3)
    iters = args.iters or (10 if gpu else 1)
    hf_attn = args.hf_attn or ("sdpa" if gpu else "eager")
    sync = (lambda: torch.cuda.synchronize(dev)) if gpu else (lambda: None)
    if gpu:
        torch.backends.cudnn.allow_tf32 = False  # faithful fp32 for the HF reference's Conv2d too
        torch.backends.cuda.matmul.allow_tf32 = False
    name, peak_bf16, peak_fp32 = device_peaks(dev)
    choice = resolve_precision("auto", dev)
    cpu = cpu_info()
    load_start = _load()
    print(f"CPU: {cpu.describe()}; flags: {' '.join(cpu.flags) or 'none'}; torch capability "
          f"{torch.backends.cpu.get_cpu_capability()}; torch threads {torch.get_num_threads()}; load average "
          f"{load_start}" + (f"; ISA capped at {args.isa_cap}" if args.isa_cap else ""), file=sys.stderr)
    print(f"device: {name}; precision='auto' -> {choice.precision}: {choice.reason}", file=sys.stderr)

    card = get_model_card(_MODEL)
    arch = card.architecture
    t = time.perf_counter()
    enc, clfs = random_public_state_dicts(arch, seed=0, sincos=True)
    fp32 = SubCellModel.from_state_dicts(enc, clfs, card=card, device=dev, precision="fp32")
    bf16 = SubCellModel(fp32.net, card=card, device=dev, precision="bf16")
    models = {"fp32": fp32, "bf16": bf16}
    if args.pure or not gpu:  # bf16 weights and residual stream (own copy of the network)
        import copy

        models["bf16-pure"] = SubCellModel(copy.deepcopy(fp32.net), card=card, device=dev, precision="bf16-pure")
    compiled = {}
    if args.compile:
        for p, m in models.items():
            compiled[p] = SubCellModel(m.net, card=card, device=dev, precision=p, compile=True)
    hf = None
    if not args.no_hf:
        try:
            hf = hf_reference_model(enc, clfs, arch, attn_implementation=hf_attn).to(dev)
        except ImportError:
            print("transformers not installed: skipping the HF reference", file=sys.stderr)
    default = models[choice.precision]
    print(f"setup {time.perf_counter() - t:.1f} s; batch {batch}, {rounds} interleaved rounds of {iters} call(s) "
          f"after {args.warmup} warm-up round(s)", file=sys.stderr)

    rows, checks, extra, failed = [], [], {}, False
    gen = torch.Generator().manual_seed(0)
    hf_label = f"HF fp32 reference ({hf_attn})"
    for size in sizes:
        flops = arch.flops(size)
        x = torch.rand(batch, arch.num_channels, size, size, generator=gen).to(dev)

        def calls(fn, x=x):
            def run():
                out = None
                for _ in range(iters):
                    out = fn(x)
                return out
            return run

        variants, label_of = [], {}
        for p, m in models.items():
            label_of[p] = f"engine {p}" + (" <- run default" if m is default else "")
            variants.append((label_of[p], calls(m.forward_device), batch * iters))
        for p, m in compiled.items():
            t0 = time.perf_counter()
            m.forward_device(x)
            sync()
            extra[f"compile {p} @ {size}"] = time.perf_counter() - t0
            variants.append((f"engine {p} compiled", calls(m.forward_device), batch * iters))
        if args.cpu_paths and not gpu:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            def math_attention(m):
                def fn(inp):
                    with sdpa_kernel(SDPBackend.MATH):
                        return m.forward_device(inp)
                return fn

            for p in ("fp32", "bf16"):
                variants.append((f"engine {p}, SDPA math backend (unfused)", calls(math_attention(models[p])),
                                 batch * iters))
            # the pre-issue-24 bf16: autocast re-casting the fp32 weights on every forward
            recast = SubCellModel(fp32.net, card=card, device=dev, precision="bf16")
            recast.net = fp32.net
            variants.append(("engine bf16, weights re-cast every forward", calls(recast.forward_device),
                             batch * iters))
            xcl = x.contiguous(memory_format=torch.channels_last)
            variants.append(("engine fp32, channels-last input", lambda xcl=xcl: fp32.forward_device(xcl), batch))
        if hf is not None:
            def run_hf(x):
                with torch.inference_mode():
                    return hf(x)
            variants.append((hf_label, calls(run_hf), batch * iters))
        if not args.no_e2e:
            n_cells = batch * iters
            rng = np.random.default_rng(0)
            crops = (rng.random((n_cells, 4, 128, 128), dtype=np.float32) * 4000).astype(np.float32)
            per = 64 if gpu else batch
            batches = [SimpleNamespace(data=crops[i:i + per], keys=list(range(i, min(i + per, n_cells))),
                                       channel_names=("microtubules", "er", "nucleus", "protein"), mask=None,
                                       scale=size / 128, out_size=size) for i in range(0, n_cells, per)]
            e2e = Embedder(compiled.get(choice.precision) or default, batch_size=batch, num_workers=2,
                           normalize="joint", progress=False)
            variants.append((f"engine {choice.precision} e2e (128² host crops, run default)",
                             lambda e2e=e2e, batches=batches: list(e2e.embed_batches(batches)), n_cells))
        timed = interleaved(variants, rounds=rounds, warmup=args.warmup, sync=sync)
        hf_sec = timed[hf_label]["sec"] if hf_label in timed else None
        for label, rec in timed.items():
            rate = rec["cells"] / statistics.median(rec["sec"])
            tf = rate * flops / 1e12
            peak = peak_fp32 if ("fp32" in label and "bf16" not in label) else peak_bf16
            rows.append({"size": size, "engine": label, "batch": batch, "cells_per_s": rate,
                         "best_cells_per_s": rec["cells"] / min(rec["sec"]),
                         "cells_per_cpu_s": rec["cells"] / statistics.median(rec["cpu"]),
                         "ms_per_batch": 1e3 * statistics.median(rec["sec"]) * batch / rec["cells"], "tflops": tf,
                         "peak_fraction": (tf / peak) if peak else None,
                         "vs_hf": median_ratio(rec["sec"], hf_sec) if hf_sec else None,
                         "vs_hf_cpu": median_ratio(rec["cpu"], timed[hf_label]["cpu"]) if hf_sec else None,
                         "seconds": rec["sec"], "cpu_seconds": rec["cpu"], "device": name})
        # accuracy from the timed calls' outputs (same input for every model row)
        ref = timed[label_of["fp32"]]["out"]
        rec = {"size": size}
        for p in models:
            if p == "fp32":
                continue
            o = timed[label_of[p]]["out"]
            rec[f"{p}_vs_fp32_min_cosine"] = torch.nn.functional.cosine_similarity(o.embedding, ref.embedding).min().item()
            rec[f"{p}_vs_fp32_max_abs_prob"] = (o.probabilities - ref.probabilities).abs().max().item()
        if hf_label in timed:
            r = timed[hf_label]["out"]
            rec["fp32_vs_hf_max_abs_embedding"] = (ref.embedding - r["embedding"]).abs().max().item()
            rec["fp32_vs_hf_max_abs_prob"] = (ref.probabilities - r["probabilities"]).abs().max().item()
        if args.check:
            failed |= rec.get("bf16_vs_fp32_min_cosine", 1.0) < 0.999
            failed |= rec.get("fp32_vs_hf_max_abs_prob", 0.0) > 1e-4
        checks.append(rec)
        if args.threads_vs_procs and not gpu and size == sizes[0]:
            extra["threads_vs_procs"] = threads_vs_processes(default, size=size, batch=batch, rounds=rounds)

    load_end = _load()
    print(f"\n### SubCell embedding throughput on {name} (torch {torch.__version__}, batch {batch}, "
          f"{rounds} interleaved rounds)\n")
    if not gpu:
        print(f"CPU: {cpu.describe()}; flags: {' '.join(cpu.flags) or 'none'}; torch threads "
              f"{torch.get_num_threads()}; load average at start {load_start}, at end {load_end}"
              + (f"; ISA capped at {args.isa_cap}" if args.isa_cap else ""))
        print(f"precision='auto' -> {choice.precision}: {choice.reason}\n")
        print("| crop | engine | cells/s (wall, median) | cells/s (best round) | cells per CPU-s | x HF fp32 (wall) "
              "| x HF fp32 (CPU time) |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for r in rows:
            vs = f"{r['vs_hf']:.2f}" if r["vs_hf"] is not None else "n/a"
            vc = f"{r['vs_hf_cpu']:.2f}" if r["vs_hf_cpu"] is not None else "n/a"
            print(f"| {r['size']}² | {r['engine']} | {r['cells_per_s']:.2f} | {r['best_cells_per_s']:.2f} | "
                  f"{r['cells_per_cpu_s']:.2f} | {vs} | {vc} |")
    else:
        print("| crop | engine | cells/s | ms/batch | TFLOP/s | % of peak | x HF fp32 |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for r in rows:
            pf = f"{100 * r['peak_fraction']:.1f}%" if r["peak_fraction"] is not None else "n/a"
            vs = f"{r['vs_hf']:.2f}" if r["vs_hf"] is not None else "n/a"
            print(f"| {r['size']}² | {r['engine']} | {r['cells_per_s']:.2f} | {r['ms_per_batch']:.1f} | "
                  f"{r['tflops']:.2f} | {pf} | {vs} |")
    print("\nGFLOPs per crop: " + ", ".join(f"{s}²: {arch.flops(s) / 1e9:.1f}" for s in sizes)
          + f"; peaks (dense spec): bf16 {peak_bf16 or 'n/a'} TF, fp32 {peak_fp32 or 'n/a'} TF")
    print("\n| crop | " + " | ".join(k for k in checks[0] if k != "size") + " |")
    print("|---|" + "---:|" * (len(checks[0]) - 1))
    for c in checks:
        print(f"| {c['size']}² | " + " | ".join(f"{v:.6f}" if "cosine" in k else f"{v:.2e}"
                                                 for k, v in c.items() if k != "size") + " |")
    for k, v in extra.items():
        if k.startswith("compile"):
            print(f"\n{k}: first call (compilation) {v:.1f} s")
    if "threads_vs_procs" in extra:
        tp = extra["threads_vs_procs"]
        print(f"\nthreads vs processes ({tp['precision']}, {tp['size']}², batch {tp['batch']}, {tp['cores']} cores): "
              f"1 process x {tp['cores']} threads {tp['threads_cells_per_s']:.2f} cells/s, {tp['cores']} processes x 1 "
              f"thread {tp['procs_cells_per_s']:.2f} cells/s (processes / threads = {tp['procs_vs_threads']:.2f}x)")
    if not gpu:
        failed |= _cpu_goals(rows, checks, choice, hf_label, models)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "checks": checks, "extra": extra,
                                         "precision_choice": choice.to_dict(), "load_start": load_start,
                                         "load_end": load_end}, indent=1))
    if failed and args.check:
        print("\nCHECK FAILED", file=sys.stderr)
        return 1
    return 0


def _cpu_goals(rows: list[dict], checks: list[dict], choice, hf_label: str, models: dict) -> bool:
    """Print issue 24's CPU goals per crop size (wall and CPU-time ratios); True if a wall-time goal is missed."""
    missed = False
    print("\nCPU goals (issue 24), medians of per-round ratios, wall time [CPU time]:")
    for size in sorted({r["size"] for r in rows}):
        by = {r["engine"].split(" <-")[0]: r for r in rows if r["size"] == size}
        wall = {p: by[f"engine {p}"]["seconds"] for p in models}
        cpu = {p: by[f"engine {p}"]["cpu_seconds"] for p in models}
        fastest = min(wall, key=lambda p: statistics.median(wall[p]))
        fastest_cpu = min(cpu, key=lambda p: statistics.median(cpu[p]))
        ratio = median_ratio(wall[choice.precision], wall[fastest])
        ratio_cpu = median_ratio(cpu[choice.precision], cpu[fastest_cpu])
        missed |= ratio < 0.95
        print(f"  {size}²: run default ({choice.precision}) / fastest precision = {ratio:.2f} ({fastest}) "
              f"[{ratio_cpu:.2f} ({fastest_cpu})] (goal >= 0.95: {'met' if ratio >= 0.95 else 'MISSED'} "
              f"[{'met' if ratio_cpu >= 0.95 else 'MISSED'}])")
        hf = by.get(hf_label)
        if hf is None:
            continue
        v, vc = by["engine fp32"]["vs_hf"], by["engine fp32"]["vs_hf_cpu"]
        missed |= v < 1.5
        print(f"  {size}²: engine fp32 / {hf_label} = {v:.2f} [{vc:.2f}] (goal >= 1.5: "
              f"{'met' if v >= 1.5 else 'MISSED'} [{'met' if vc >= 1.5 else 'MISSED'}])")
        if choice.native_bf16:
            b, bc = by["engine bf16"]["vs_hf"], by["engine bf16"]["vs_hf_cpu"]
            cos = next(c for c in checks if c["size"] == size)["bf16_vs_fp32_min_cosine"]
            print(f"  {size}²: native bf16 ({choice.bf16_unit}): engine bf16 / {hf_label} = {b:.2f} [{bc:.2f}] at "
                  f"cosine {cos:.6f} (goal >= 4 at >= 0.999: {'met' if b >= 4 and cos >= 0.999 else 'MISSED'} "
                  f"[{'met' if bc >= 4 and cos >= 0.999 else 'MISSED'}])")
        else:
            print(f"  {size}²: no native bf16 on this CPU: the '>= 4x HF eager with native bf16' goal cannot be "
                  f"measured here")
    return missed


if __name__ == "__main__":
    sys.exit(main())
