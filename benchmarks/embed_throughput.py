"""SubCell embedding throughput: this engine (bf16, fp32) vs a Hugging Face ``ViTModel`` + pooler reference.

All rows use the same random full-size weights (ViT-B/16, 4 channels, 1536-d pooler, 31-class head) and the
same inputs, measured in one run on one device:

* ``engine bf16``         -- :class:`subcell_screen.embed.SubCellModel` forward, bf16 autocast, SDPA;
* ``engine bf16 compiled``-- the same under ``torch.compile`` (``--compile``);
* ``engine fp32``         -- faithful fp32 (no TF32);
* ``HF fp32 reference``   -- ``transformers.ViTModel(add_pooling_layer=False)`` + SubCellPortable's pooler and
  classifier in fp32 (``--hf-attn``: sdpa by default; SubCellPortable 2025 forces eager);
* ``engine bf16 e2e``     -- :class:`subcell_screen.embed.Embedder` from host crops (128² float32 crops,
  4 channels, 64 cells per batch) resized on the device to the model size, normalised, embedded, copied back.

Model rows time forwards of device-resident batches (CUDA-synchronised); TFLOP/s uses the analytic count of
:meth:`Architecture.flops` (157 GFLOPs/crop at 448²) and the device's dense spec-sheet peak (bf16 tensor-core
peak for bf16 rows, plain fp32 peak for fp32 rows). ``--check`` also reports bf16-vs-fp32 embedding cosine
and engine-vs-HF fp32 differences and exits 1 if cosine < 0.999 or |p_engine - p_HF| > 1e-4.

Usage::

    python benchmarks/embed_throughput.py                      # CPU: 224², batch 2, full-size random weights
    python benchmarks/embed_throughput.py --device cuda --check --compile   # GPU: 448² and 640², batch 256
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# dense spec-sheet peaks in TFLOP/s: (bf16 tensor core, fp32 non-tensor)
_PEAKS = [("H100 NVL", 835.0, 60.0), ("H100 PCIe", 756.0, 51.2), ("H100", 989.4, 66.9), ("H200", 989.4, 66.9),
          ("GH200", 989.4, 66.9), ("A100", 312.0, 19.5), ("L40S", 362.1, 91.6), ("A10G", 70.0, 31.2),
          ("L4", 121.0, 30.3)]


def device_peaks(device) -> tuple[str, float | None, float | None]:
    import torch

    if device.type != "cuda":
        return "CPU", None, None
    name = torch.cuda.get_device_name(device)
    for key, bf16, fp32 in _PEAKS:
        if key in name:
            return name, bf16, fp32
    return name, None, None


def timeit(fn, *, iters: int, warmup: int, sync) -> float:
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - t0) / iters


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--sizes", default=None, help="comma-separated crop sides (default: 224 on CPU, 448,640 on GPU)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default: 2 on CPU, 256 on GPU)")
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd bf16")
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers reference")
    ap.add_argument("--pure", action="store_true", help="also time precision='bf16-pure' (bf16 residual stream)")
    ap.add_argument("--hf-attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end Embedder row")
    ap.add_argument("--check", action="store_true", help="accuracy checks (bf16 cosine, HF agreement)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from subcell_screen.embed import Embedder, SubCellModel, get_model_card, select_device
    from subcell_screen.embed.testing import hf_reference_model, random_public_state_dicts

    dev = select_device(args.device)
    gpu = dev.type == "cuda"
    sizes = [int(s) for s in (args.sizes or ("448,640" if gpu else "224")).split(",")]
    batch = args.batch or (256 if gpu else 2)
    iters = args.iters or (10 if gpu else 2)
    warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    sync = (lambda: torch.cuda.synchronize(dev)) if gpu else (lambda: None)
    if gpu:
        torch.backends.cudnn.allow_tf32 = False  # faithful fp32 for the HF reference's Conv2d too
        torch.backends.cuda.matmul.allow_tf32 = False
    name, peak_bf16, peak_fp32 = device_peaks(dev)
    card = get_model_card("rybg/MAE-CellS-ProtS-Pool")
    arch = card.architecture
    t = time.perf_counter()
    enc, clfs = random_public_state_dicts(arch, seed=0, sincos=True)
    fp32 = SubCellModel.from_state_dicts(enc, clfs, card=card, device=dev, precision="fp32")
    bf16 = SubCellModel(fp32.net, card=card, device=dev, precision="bf16")
    compiled = SubCellModel(fp32.net, card=card, device=dev, precision="bf16", compile=True) if args.compile else None
    pure = pure_c = None
    if args.pure:  # bf16 weights and residual stream (own copy of the network)
        import copy

        pure = SubCellModel(copy.deepcopy(fp32.net), card=card, device=dev, precision="bf16-pure")
        if args.compile:
            pure_c = SubCellModel(pure.net, card=card, device=dev, precision="bf16-pure", compile=True)
    hf = None
    if not args.no_hf:
        try:
            hf = hf_reference_model(enc, clfs, arch, attn_implementation=args.hf_attn).to(dev)
        except ImportError:
            print("transformers not installed: skipping the HF reference", file=sys.stderr)
    print(f"device: {name}; torch {torch.__version__}; setup {time.perf_counter() - t:.1f} s; batch {batch}, "
          f"{iters} iters after {warmup} warm-up", file=sys.stderr)

    rows, checks, failed = [], [], False
    gen = torch.Generator().manual_seed(0)
    for size in sizes:
        flops = arch.flops(size)
        x = torch.rand(batch, arch.num_channels, size, size, generator=gen).to(dev)
        cands = [("engine bf16", lambda x=x: bf16.forward_device(x), peak_bf16)]
        if compiled is not None:
            cands.append(("engine bf16 compiled", lambda x=x: compiled.forward_device(x), peak_bf16))
        if pure is not None:
            cands.append(("engine bf16-pure", lambda x=x: pure.forward_device(x), peak_bf16))
        if pure_c is not None:
            cands.append(("engine bf16-pure compiled", lambda x=x: pure_c.forward_device(x), peak_bf16))
        cands.append(("engine fp32", lambda x=x: fp32.forward_device(x), peak_fp32))
        if hf is not None:
            def run_hf(x=x):
                with torch.inference_mode():
                    return hf(x)
            cands.append((f"HF fp32 reference ({args.hf_attn})", run_hf, peak_fp32))
        hf_rate = None
        size_rows = []
        for label, fn, peak in cands:
            try:
                sec = timeit(fn, iters=iters, warmup=warmup, sync=sync)
            except torch.OutOfMemoryError:
                print(f"{label} @ {size}: out of memory at batch {batch}", file=sys.stderr)
                torch.cuda.empty_cache()
                continue
            rate = batch / sec
            tf = rate * flops / 1e12
            row = {"size": size, "engine": label, "batch": batch, "cells_per_s": rate, "ms_per_batch": 1e3 * sec,
                   "tflops": tf, "peak_fraction": (tf / peak) if peak else None, "device": name}
            if label.startswith("HF"):
                hf_rate = rate
            size_rows.append(row)
        for row in size_rows:
            row["vs_hf"] = row["cells_per_s"] / hf_rate if hf_rate else None
        rows += size_rows
        if not args.no_e2e:
            n_cells = batch * (4 if gpu else 1)
            per = 64 if gpu else max(1, batch)
            rng = np.random.default_rng(0)
            crops = (rng.random((n_cells, 4, 128, 128), dtype=np.float32) * 4000).astype(np.float32)
            batches = [SimpleNamespace(data=crops[i:i + per], keys=list(range(i, min(i + per, n_cells))),
                                       channel_names=("microtubules", "er", "nucleus", "protein"), mask=None,
                                       scale=size / 128, out_size=size) for i in range(0, n_cells, per)]
            emb = Embedder(compiled or bf16, batch_size=batch, num_workers=2, normalize="joint", progress=False)
            list(emb.embed_batches(batches[:2]))  # warm-up
            sync()
            t0 = time.perf_counter()
            got = sum(len(r) for r in emb.embed_batches(batches))
            sec = time.perf_counter() - t0
            rate = got / sec
            tf = rate * flops / 1e12
            rows.append({"size": size, "engine": "engine bf16 e2e (128² host crops)", "batch": batch,
                         "cells_per_s": rate, "ms_per_batch": 1e3 * sec * batch / got, "tflops": tf,
                         "peak_fraction": (tf / peak_bf16) if peak_bf16 else None,
                         "vs_hf": rate / hf_rate if hf_rate else None, "device": name})
        if args.check:
            nb = min(batch, 16)
            xc = (torch.rand(nb, arch.num_channels, size, size, generator=gen) ** 2).to(dev)
            o32 = fp32.forward_device(xc)
            o16 = bf16.forward_device(xc)
            cos = torch.nn.functional.cosine_similarity(o16.embedding, o32.embedding).min().item()
            dp16 = (o16.probabilities - o32.probabilities).abs().max().item()
            rec = {"size": size, "bf16_vs_fp32_min_cosine": cos, "bf16_vs_fp32_max_abs_prob": dp16}
            failed |= cos < 0.999
            if pure is not None:
                op = pure.forward_device(xc)
                rec["bf16_pure_vs_fp32_min_cosine"] = torch.nn.functional.cosine_similarity(
                    op.embedding, o32.embedding).min().item()
                rec["bf16_pure_vs_fp32_max_abs_prob"] = (op.probabilities - o32.probabilities).abs().max().item()
            if hf is not None:
                with torch.inference_mode():
                    r = hf(xc)
                rec["fp32_vs_hf_max_abs_embedding"] = (o32.embedding - r["embedding"]).abs().max().item()
                rec["fp32_vs_hf_max_abs_prob"] = (o32.probabilities - r["probabilities"]).abs().max().item()
                failed |= rec["fp32_vs_hf_max_abs_prob"] > 1e-4
            if compiled is not None:
                oc = compiled.forward_device(xc[:1].expand(batch, -1, -1, -1).contiguous())
                rec["compiled_vs_fp32_min_cosine"] = torch.nn.functional.cosine_similarity(
                    oc.embedding[:1], o32.embedding[:1]).min().item()
            checks.append(rec)

    print(f"\n### SubCell embedding throughput on {name} (torch {torch.__version__}, batch {batch})\n")
    print("| crop | engine | cells/s | ms/batch | TFLOP/s | % of peak | x HF fp32 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        pf = f"{100 * r['peak_fraction']:.1f}%" if r["peak_fraction"] is not None else "n/a"
        vs = f"{r['vs_hf']:.2f}" if r["vs_hf"] is not None else "n/a"
        print(f"| {r['size']}² | {r['engine']} | {r['cells_per_s']:.1f} | {r['ms_per_batch']:.1f} | "
              f"{r['tflops']:.2f} | {pf} | {vs} |")
    print("\nGFLOPs per crop: " + ", ".join(f"{s}²: {arch.flops(s) / 1e9:.1f}" for s in sizes)
          + f"; peaks (dense spec): bf16 {peak_bf16 or 'n/a'} TF, fp32 {peak_fp32 or 'n/a'} TF")
    if checks:
        print("\n| crop | bf16 vs fp32 min cosine | bf16 vs fp32 max abs prob | fp32 vs HF max abs emb | fp32 vs HF max abs prob |")
        print("|---|---:|---:|---:|---:|")
        for c in checks:
            print(f"| {c['size']}² | {c['bf16_vs_fp32_min_cosine']:.6f} | {c['bf16_vs_fp32_max_abs_prob']:.2e} | "
                  f"{c.get('fp32_vs_hf_max_abs_embedding', float('nan')):.2e} | "
                  f"{c.get('fp32_vs_hf_max_abs_prob', float('nan')):.2e} |")
        for c in checks:
            if "bf16_pure_vs_fp32_min_cosine" in c:
                print(f"\n{c['size']}²: bf16-pure vs fp32 min cosine {c['bf16_pure_vs_fp32_min_cosine']:.6f}, "
                      f"max abs prob {c['bf16_pure_vs_fp32_max_abs_prob']:.2e}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "checks": checks}, indent=1))
    if failed:
        print("\nCHECK FAILED", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
