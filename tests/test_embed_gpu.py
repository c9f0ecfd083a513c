"""SubCell on CUDA: bf16 vs fp32 agreement, GPU vs CPU/HF agreement, engine throughput smoke.

Needs a CUDA device (skipped otherwise). Imports nothing beyond torch/numpy at module level, so it also runs on
a minimal GPU box (no polars/duckdb). Run with::

    python -m pytest tests/test_embed_gpu.py -m gpu -q -s
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def full_size():
    from subcell_screen.embed import SubCellModel, get_model_card
    from subcell_screen.embed.testing import random_public_state_dicts

    card = get_model_card("rybg/MAE-CellS-ProtS-Pool")
    enc, clfs = random_public_state_dicts(card.architecture, seed=1, sincos=True)
    fp32 = SubCellModel.from_state_dicts(enc, clfs, card=card, device="cuda", precision="fp32")
    bf16 = SubCellModel(fp32.net, card=card, device=fp32.device, precision="bf16")
    return card, enc, clfs, fp32, bf16


def _hpa_like(data_dir, n, size):
    import tifffile

    from subcell_screen.embed import preprocess

    kaggle = tifffile.imread(data_dir / "hpa" / "hpa_singlecell_rgby_128.tif")
    x = torch.from_numpy(preprocess(kaggle, channel_order=(0, 3, 2, 1)))
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(n - 1, 4, size, size, generator=gen) ** 2
    return torch.cat([x, noise]).cuda()


@pytest.mark.parametrize("size", [448, 640])
def test_bf16_embeddings_cosine_to_fp32(full_size, data_dir, size):
    _, _, _, fp32, bf16 = full_size
    x = _hpa_like(data_dir, 8, size)
    a, b = fp32.forward_device(x), bf16.forward_device(x)
    cos = torch.nn.functional.cosine_similarity(a.embedding, b.embedding)
    print(f"\n{size}²: bf16 vs fp32 min cosine {cos.min().item():.6f}, max |dp| "
          f"{(a.probabilities - b.probabilities).abs().max().item():.2e}")
    assert cos.min().item() >= 0.999


def test_gpu_fp32_matches_cpu_and_hf(full_size):
    from subcell_screen.embed import SubCellModel
    from subcell_screen.embed.testing import hf_reference_model

    card, enc, clfs, fp32, _ = full_size
    x = torch.rand(2, 4, 448, 448, generator=torch.Generator().manual_seed(3))
    cpu = SubCellModel.from_state_dicts(enc, clfs, card=card, device="cpu")
    g, c = fp32(x), cpu(x)
    assert (g.embedding - c.embedding).abs().max().item() < 1e-4
    assert (g.probabilities - c.probabilities).abs().max().item() < 1e-5
    pytest.importorskip("transformers")
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        ref = hf_reference_model(enc, clfs, card.architecture, attn_implementation="sdpa").cuda()
        with torch.inference_mode():
            r = ref(x.cuda())
    finally:
        torch.backends.cudnn.allow_tf32 = old
    assert (g.embedding - r["embedding"].cpu()).abs().max().item() < 1e-4
    assert (g.probabilities - r["probabilities"].cpu()).abs().max().item() < 1e-5


def test_embedder_end_to_end_throughput_smoke(full_size):
    from subcell_screen.embed import Embedder

    _, _, _, _, bf16 = full_size
    rng = np.random.default_rng(0)
    crops = (rng.random((1024, 4, 128, 128), dtype=np.float32) * 4000).astype(np.float32)
    batches = [SimpleNamespace(data=crops[i:i + 64], keys=list(range(i, i + 64)),
                               channel_names=("microtubules", "er", "nucleus", "protein"), mask=None,
                               scale=3.5, out_size=448) for i in range(0, 1024, 64)]
    emb = Embedder(bf16, batch_size=256, num_workers=2, progress=False)
    list(emb.embed_batches(batches[:4]))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = list(emb.embed_batches(batches))
    dt = time.perf_counter() - t0
    print(f"\nEmbedder bf16 e2e 448²: {1024 / dt:.0f} cells/s on {torch.cuda.get_device_name()}")
    assert [len(r) for r in res] == [64] * 16
    assert all(np.isfinite(r.embedding).all() and r.embedding.shape == (64, 1536) for r in res)
    assert res[3].keys == list(range(192, 256))
