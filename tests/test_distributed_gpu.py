"""The Ray engine's GPU path (crops on CPU tasks, SubCell on a GPU actor) against the local engine on CUDA."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from subcell_screen.config import load_config
from subcell_screen.pipeline import run
from subcell_screen.simulate import simulate_screen
from subcell_screen.store import ScreenStore

pytestmark = [pytest.mark.ray, pytest.mark.gpu]
KEYS = ["plate", "well", "site", "cell_id"]


@pytest.fixture(scope="module")
def ray_gpu(ray_start_env):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with ray_start_env():  # keeps Ray's own processes off the network (tests/conftest.py)
        ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, object_store_memory=1024 ** 3,
                 logging_level=logging.WARNING)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_subcell_on_a_gpu_actor_matches_the_local_engine_on_cuda(ray_gpu, tmp_path):
    from subcell_screen.embed.testing import make_tiny_checkpoint

    sim = simulate_screen(tmp_path / "sim", style="hpa", preset="smoke", sites_per_well=3, seed=2)
    make_tiny_checkpoint(tmp_path / "models", "rybg/MAE-CellS-ProtS-Pool", width=32, depth=1, heads=2)
    base = load_config(sim.config)
    emb = base.embedding.model_copy(update={"featurizer": "subcell", "cache_dir": tmp_path / "models",
                                            "crop_size": 128, "precision": "fp32", "batch_size": 16,
                                            "allow_fallback": False})
    tables = {}
    for name, engine, device, ray in (("local", "local", "cuda", {}),
                                      ("ray", "ray", "auto", {"gpus_per_actor": 0.5, "embed_batch_size": 16})):
        cfg = base.model_copy(update={"screen": base.screen.model_copy(update={"path": tmp_path / name}),
                                      "embedding": emb, "device": device,
                                      "ray": base.ray.model_copy(update=ray)})
        result = run(cfg, stages=("segment", "embed"), progress=False, engine=engine)
        assert [(s.ok, s.failed) for s in result.stages] == [(12, 0), (12, 0)]
        if engine == "ray":
            assert any("actors on cuda" in m for m in result.stages[0].messages)
        with ScreenStore.open(cfg.screen.path, read_only=True) as store:
            fs = store.sql("SELECT feature_set FROM feature_sets")["feature_set"][0]
            tables[name] = (store.sql("SELECT * FROM cells ORDER BY ALL"), store.read_cell_features(fs).sort(KEYS))
    (cells_a, fa), (cells_b, fb) = tables["local"], tables["ray"]
    assert cells_a.equals(cells_b) and fa.select(KEYS).equals(fb.select(KEYS)) and fa.height > 0
    for col in ("features", "probabilities"):
        np.testing.assert_allclose(np.stack(fa[col].to_numpy()), np.stack(fb[col].to_numpy()), rtol=1e-4,
                                   atol=1e-5, err_msg=col)
