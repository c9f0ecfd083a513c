#!/usr/bin/env bash
# One-shot GPU check for a lent accelerator (H100/H200): embedding throughput and accuracy, GPU tests,
# Cellpose batching throughput, mAP on the GPU at a size copairs cannot hold in memory.
# Needs wheels for what the GPU image lacks in .whl/ (polars, cellpose and its small deps, platformdirs), or
# .whl/plate_deps.tar.xz from benchmarks/plate_deps.sh (those plus duckdb and pydantic, for the plate section;
# carry .whl holding that file alone: with the repo it just fits the device's 64 MiB transfer).
# Usage (repo root):  OUT=/some/dir bash benchmarks/gpu_run.sh [all|plate]
#   -> $OUT/gpu_log.txt, $OUT/embed{448,640}.json, $OUT/plate.json
#   all (default): every section; plate: the device lines, then section 5 alone (issue 21, ~6 min).
set -u
SECTIONS=${1:-all}
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
LOG="$OUT/gpu_log.txt"
exec > >(tee "$LOG") 2>&1
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    mkdir -p /tmp/site
    if ls .whl/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl || echo "wheel install failed"
    fi
    if [ -f .whl/plate_deps.tar.xz ]; then
        tar -C /tmp/site -xJf .whl/plate_deps.tar.xz || echo "plate_deps unpack failed"
    fi
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
echo "== device"; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
python3 -c "import torch, transformers, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'numpy', numpy.__version__, torch.cuda.get_device_name(0))"
t0=$(date +%s)
if [ "$SECTIONS" = "all" ]; then
echo "== 1a. SubCell embedding throughput at 448 (bf16 / fp32 / HF reference, batch 256, torch.compile)"
timeout 170 python3 benchmarks/embed_throughput.py --device cuda --sizes 448 --batch 256 --check --compile \
    --json "$OUT/embed448.json"
echo "[embed 448 rc=$? after $(( $(date +%s) - t0 )) s]"
echo "== 1b. SubCell embedding throughput at 640 (authors' HPA convention), no compile"
timeout 90 python3 benchmarks/embed_throughput.py --device cuda --sizes 640 --batch 128 --check \
    --json "$OUT/embed640.json"
echo "[embed 640 rc=$? after $(( $(date +%s) - t0 )) s]"
echo "== 2. GPU tests"
timeout 75 python3 -m pytest -q -p no:cacheprovider -m gpu -rs tests/test_embed_gpu.py tests/test_score_map.py tests/test_segment_cellpose.py tests/test_distributed_gpu.py
echo "[gpu tests rc=$? after $(( $(date +%s) - t0 )) s]"
echo "== 3. Cellpose-SAM throughput (random ViT-L weights: no weights on this offline box), batched vs cellpose eval"
timeout 90 python3 benchmarks/segment_throughput.py --skip-classical --gpu-sites 8 --reference-sites 2
echo "[segment benchmark rc=$? after $(( $(date +%s) - t0 )) s]"
echo "== 4a. mAP torch (GPU) backend vs numpy backend on a 3-plate design"
timeout 60 python3 - <<'PY'
import numpy as np, polars as pl
from subcell_screen.score import average_precision
rng = np.random.default_rng(0)
n = 3 * 384
pert = np.array(["DMSO" if i % 384 < 32 else f"c{i % 384}" for i in range(n)])
meta = pl.DataFrame({"Metadata_pert": pert, "Metadata_Plate": np.repeat(["P1", "P2", "P3"], 384),
                     "Metadata_Reference_Index": np.where(pert == "DMSO", np.arange(n), -1)})
feats = rng.normal(size=(n, 1536)).astype(np.float32) + (pert != "DMSO")[:, None] * rng.normal(size=(1, 1536)) * 0.3
kw = dict(pos_sameby=["Metadata_pert", "Metadata_Reference_Index"], pos_diffby=[], neg_sameby=[],
          neg_diffby=["Metadata_pert", "Metadata_Reference_Index"])
a = average_precision(meta, feats, **kw, backend="numpy")["average_precision"].to_numpy()
b = average_precision(meta, feats, **kw, backend="torch")["average_precision"].to_numpy()
ok = np.isfinite(a)
print("torch vs numpy AP: max abs diff", float(np.nanmax(np.abs(a[ok] - b[ok]))), "rows", int(ok.sum()))
PY
echo "== 4. mAP (phenotypic activity) on the GPU: 200 plates x 384 wells x 1536 features"
timeout 60 python3 benchmarks/map_vs_copairs.py --worker ours --plates 200 --features 1536 --null-size 10000 \
    --backend torch --out /tmp/map200 && cat /tmp/map200; echo
echo "[map rc=$? after $(( $(date +%s) - t0 )) s]"
fi  # all

echo "== 5. Issue 21: a Cell Painting plate end to end (TIFFs -> report), random full-size Cellpose-SAM + SubCell"
echo "== 5a. Cellpose-SAM at a working pixel size (1.2 um/px = 2x the site's 0.598): sites/s vs full resolution"
timeout 150 python3 benchmarks/segment_throughput.py --skip-classical --gpu-sites 8 --reference-sites 1 \
    --working-pixel-size 1.2
echo "[segment working-resolution rc=$? after $(( $(date +%s) - t0 )) s]"
echo "== 5b. plate: 16 wells x 9 sites of 1080^2 at 0.65 um/px (144 sites), Cellpose at 1.3 um/px, SubCell bf16-pure"
echo "   compiled at 448^2, 3 passes per cell; GPU utilization sampled (NVML); 3,456-site figure is a projection"
timeout 420 python3 benchmarks/plate_run.py --wells 16 --sites 9 --cellpose random --working-pixel-size 1.3 \
    --precision bf16-pure --compile --sim-workers 16 --out /tmp/plate16 --json "$OUT/plate.json"
echo "[plate rc=$? after $(( $(date +%s) - t0 )) s]"
