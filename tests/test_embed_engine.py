"""SubCell inference engine, store/AnnData/CSV exports and the SubCellPortable-compatible entry (tiny models)."""

from __future__ import annotations

import csv

import numpy as np
import polars as pl
import pytest
import tifffile
import torch
import torch.nn.functional as F

from subcell_screen._errors import ChannelMapError
from subcell_screen.channels import custom_channel_map, preset
from subcell_screen.cli import main
from subcell_screen.crops import CropBatch
from subcell_screen.embed import (
    CLASS_NAMES,
    Embedder,
    EmbeddingResult,
    load_model,
    preprocess,
    write_embeddings,
)
from subcell_screen.embed.export import attention_map_image, result_table, top_classes, write_h5ad
from subcell_screen.embed.testing import make_tiny_checkpoint
from subcell_screen.store import ScreenStore

CP_CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")


@pytest.fixture(scope="module")
def ybg_model(tmp_path_factory):
    cache = tmp_path_factory.mktemp("ybg")
    make_tiny_checkpoint(cache, "ybg/MAE-CellS-ProtS-Pool", width=64, depth=2, heads=2, seed=11)
    return load_model("ybg/MAE-CellS-ProtS-Pool", cache_dir=cache, offline=True, device="cpu")


@pytest.fixture(scope="module")
def rybg_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("rybg")
    make_tiny_checkpoint(cache, "rybg/MAE-CellS-ProtS-Pool", width=64, depth=2, heads=2, seed=12)
    return cache


def _batch(rng, n, *, site=1, well="A01", size=32, scale=1.0, out_size=32, mask=False, channels=CP_CHANNELS):
    data = (rng.random((n, len(channels), size, size)) * 3000).astype(np.float32)
    keys = pl.DataFrame({"plate": ["P1"] * n, "well": [well] * n, "site": [site] * n,
                         "cell_id": list(range(1, n + 1))})
    m = None
    if mask:
        m = np.zeros((n, 1, size, size), np.float32)
        m[:, :, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    return CropBatch(data, keys, tuple(channels), mask=m, scale=scale, out_size=out_size)


def _manual_passes(model, data, names, *, normalize, out_size=None, mask=None):
    x = torch.from_numpy(data)
    m = torch.from_numpy(mask) if mask is not None else None
    if out_size and x.shape[-1] != out_size:
        x = F.interpolate(x, size=(out_size, out_size), mode="bilinear", align_corners=False)
        if m is not None:
            m = F.interpolate(m, size=(out_size, out_size), mode="nearest")
    embs, probs = [], []
    for other in ("Mito", "AGP", "RNA"):
        idx = [names.index("ER"), names.index("DNA"), names.index(other)]
        out = model(preprocess(x[:, idx], normalize=normalize, mask=m))
        embs.append(out.embedding.numpy())
        probs.append(out.probabilities.numpy())
    return np.concatenate(embs, 1), np.concatenate(probs, 1)


def test_cell_painting_three_passes_concatenate_in_pass_order(ybg_model):
    rng = np.random.default_rng(0)
    b = _batch(rng, 6)
    emb = Embedder(ybg_model, channel_map=preset("cellpainting"), precision="fp32", normalize="per_channel",
                   batch_size=64)
    (res,) = list(emb.embed_batches([b]))
    d = ybg_model.embedding_dim
    assert res.pass_names == ("Mito", "AGP", "RNA") and res.embedding.shape == (6, 3 * d)
    assert res.probabilities.shape == (6, 93) and res.keys.equals(b.keys)
    ref_e, ref_p = _manual_passes(ybg_model, b.data, list(CP_CHANNELS), normalize="per_channel")
    np.testing.assert_allclose(res.embedding, ref_e, atol=1e-5)
    np.testing.assert_allclose(res.probabilities, ref_p, atol=1e-6)
    # pass blocks are distinct and in order: block 0 is Mito, block 2 is RNA
    np.testing.assert_allclose(res.pass_embedding("Mito"), ref_e[:, :d], atol=1e-5)
    np.testing.assert_allclose(res.pass_embedding(2), ref_e[:, 2 * d:], atol=1e-5)
    assert np.abs(res.pass_embedding(0) - res.pass_embedding(1)).max() > 1e-3
    assert res.feature_names()[0] == "Mito_feat0000" and res.probability_names()[31] == "AGP_prob00"
    # the channel order of the crops does not matter, only names
    perm = [4, 2, 0, 3, 1]
    b2 = CropBatch(b.data[:, perm], b.keys, tuple(CP_CHANNELS[i] for i in perm), out_size=32)
    (res2,) = list(emb.embed_batches([b2]))
    np.testing.assert_allclose(res2.embedding, res.embedding, atol=1e-6)


def test_coalescing_and_splitting_preserve_order_and_values(ybg_model):
    rng = np.random.default_rng(1)
    batches = [_batch(rng, n, site=i) for i, n in enumerate([3, 0, 1, 7, 2, 5], start=1)]
    cmap = preset("cellpainting")
    small = Embedder(ybg_model, channel_map=cmap, precision="fp32", batch_size=6, num_workers=2)  # 2 cells/forward
    big = Embedder(ybg_model, channel_map=cmap, precision="fp32", batch_size=300)                 # all coalesced
    a = list(small.embed_batches(batches))
    b = list(big.embed_batches(batches))
    assert [len(r) for r in a] == [3, 0, 1, 7, 2, 5] == [len(r) for r in b]
    for ra, rb, src in zip(a, b, batches):
        assert ra.keys.equals(src.keys)
        np.testing.assert_allclose(ra.embedding, rb.embedding, atol=1e-5)
    assert a[1].embedding.shape == (0, 3 * ybg_model.embedding_dim)
    assert small.stats["cells"] == 18 and small.stats["images"] == 54
    # one batch through __call__ (Ray-style callable)
    np.testing.assert_allclose(small(batches[3]).embedding, a[3].embedding, atol=1e-5)


def test_resize_on_device_and_mask(ybg_model):
    rng = np.random.default_rng(2)
    b = _batch(rng, 4, size=20, scale=1.6, out_size=32, mask=True)
    emb = Embedder(ybg_model, channel_map=preset("cellpainting"), precision="fp32", normalize="joint", mask=True)
    (res,) = list(emb.embed_batches([b]))
    ref_e, _ = _manual_passes(ybg_model, b.data, list(CP_CHANNELS), normalize="joint", out_size=32, mask=b.mask)
    np.testing.assert_allclose(res.embedding, ref_e, atol=1e-5)
    unmasked = Embedder(ybg_model, channel_map=preset("cellpainting"), precision="fp32", normalize="joint")
    assert np.abs(unmasked(b).embedding - res.embedding).max() > 1e-3
    with pytest.raises(ValueError, match="mask=True but the batch carries no cell masks"):
        emb(_batch(rng, 2))


def test_engine_errors_name_the_problem(ybg_model):
    with pytest.raises(ChannelMapError, match="fills SubCell letters 'rybg'.*takes 'ybg'"):
        Embedder(ybg_model, channel_map=preset("hpa"))
    rng = np.random.default_rng(3)
    emb = Embedder(ybg_model, channel_map=preset("cellpainting"))
    with pytest.raises(ChannelMapError, match="'Mito'"):
        emb(_batch(rng, 2, channels=("DNA", "ER", "RNA", "AGP", "Brightfield")))


def test_bf16_engine_close_to_fp32(ybg_model):
    rng = np.random.default_rng(4)
    b = _batch(rng, 3)
    cmap = preset("cellpainting")
    r32 = Embedder(ybg_model, channel_map=cmap, precision="fp32")(b)
    from subcell_screen.embed import SubCellModel

    m16 = SubCellModel(ybg_model.net, card=ybg_model.card, device=ybg_model.device, precision="bf16")
    r16 = Embedder(m16, channel_map=cmap)(b)
    for i in range(3):
        a, c = r32.pass_embedding(i), r16.pass_embedding(i)
        cos = (a * c).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(c, axis=1)
        assert cos.min() >= 0.999


def test_write_embeddings_to_store(ybg_model, tmp_path):
    rng = np.random.default_rng(5)
    emb = Embedder(ybg_model, channel_map=preset("cellpainting"), precision="fp32")
    res = list(emb.embed_batches([_batch(rng, 4, site=1), _batch(rng, 3, site=2), _batch(rng, 2, site=1, well="B02")]))
    with ScreenStore.create(tmp_path / "screen") as store:
        paths = write_embeddings(store, res, feature_set="subcell", model_sha256=ybg_model.sha256,
                                 sites=[("P1", "C03", 1)])
        assert len(paths) == 4
        fs = store.feature_set("subcell")
        assert fs["kind"] == "subcell" and fs["n_features"] == 3 * ybg_model.embedding_dim
        assert fs["feature_names"][:2] == ["Mito_feat0000", "Mito_feat0001"]
        df = store.read_cell_features("subcell").sort(["well", "site", "cell_id"])
        assert df.height == 9
        assert df.schema["features"] == pl.Array(pl.Float32, 3 * ybg_model.embedding_dim)
        assert df.schema["probabilities"] == pl.Array(pl.Float32, 93)
        a01_s2 = df.filter((pl.col("well") == "A01") & (pl.col("site") == 2))
        np.testing.assert_array_equal(np.stack(a01_s2["features"].to_numpy()), res[1].embedding)
        empty = pl.read_parquet(store.cells_dir("subcell", "P1") / "C03_s1.parquet")
        assert empty.height == 0 and "features" in empty.columns
        write_embeddings(store, res[0], feature_set="subcell16", dtype="float16")
        d16 = store.read_cell_features("subcell16")
        assert d16.schema["features"] == pl.Array(pl.Float16, 3 * ybg_model.embedding_dim)
        np.testing.assert_allclose(np.stack(d16["features"].to_numpy()).astype(np.float32), res[0].embedding,
                                   rtol=1e-3, atol=1e-3)
    # a split site must be written whole: concat keeps everything
    both = EmbeddingResult.concat(res)
    assert len(both) == 9 and both.keys.height == 9


def test_anndata_and_result_csv_exports(ybg_model, tmp_path):
    ad = pytest.importorskip("anndata")
    rng = np.random.default_rng(6)
    res = Embedder(ybg_model, channel_map=preset("cellpainting"), precision="fp32")(_batch(rng, 5))
    p = write_h5ad(tmp_path / "cells.h5ad", res.embedding, probabilities=res.probabilities, obs=res.keys,
                   var_names=res.feature_names(), uns={"model": res.model})
    a = ad.read_h5ad(p)
    np.testing.assert_array_equal(a.X, res.embedding)
    np.testing.assert_array_equal(a.obsm["probabilities"], res.probabilities)
    assert list(a.obs_names[:2]) == ["P1_A01_1_1", "P1_A01_1_2"] and a.var_names[0] == "Mito_feat0000"
    assert a.uns["model"] == "ybg/MAE-CellS-ProtS-Pool"
    probs = np.full((2, 31), 0.1, np.float32)
    probs[0, [5, 17, 2]] = [0.9, 0.8, 0.7]
    probs[1, [30, 0]] = [0.95, 0.95]                              # tie: lower index first
    emb = np.arange(2 * 1536, dtype=np.float32).reshape(2, 1536)
    t = result_table(["cell_a", "sub/cell_b"], emb, probs)
    assert t.columns[:5] == ["id", "top_class_name", "top_class", "top_3_classes_names", "top_3_classes"]
    assert t.columns[5] == "prob00" and t.columns[35] == "prob30" and t.columns[36] == "feat0000"
    assert t.columns[-1] == "feat1535" and t.width == 5 + 31 + 1536
    assert t.row(0)[:5] == ("cell_a", "Cytokinetic bridge", 5, "Cytokinetic bridge,Mitochondria,Cell Junctions", "5,17,2")
    assert t["top_class"][1] == 0 and t["top_3_classes"][1].startswith("0,30,")
    assert top_classes(probs, 1)[:, 0].tolist() == [5, 0]


def test_attention_map_image_matches_subcellportable_layout():
    att = np.zeros((2, 4, 4), np.float32)
    att[0, 0, 0] = 1.0
    att[1] = np.arange(16).reshape(4, 4)
    img = attention_map_image(att, (32, 32))
    assert img.shape == (32, 64, 3) and img.dtype == np.uint8
    assert img[..., :32, 0].max() == 255 and img[..., :32, 0].min() == 0      # each head scaled separately
    assert img[..., 32:, 0].max() == 255 and img[0, 32, 0] == 0
    assert np.array_equal(img[..., 0], img[..., 2])


def _write_portable_inputs(tmp_path, data_dir, *, legacy=False):
    kaggle = tifffile.imread(data_dir / "hpa" / "hpa_singlecell_rgby_128.tif")  # r, g, b, y
    letters = {"r": kaggle[0], "g": kaggle[1], "b": kaggle[2], "y": kaggle[3]}
    rows = []
    for i, crop in enumerate([slice(0, 128), slice(0, 64), slice(64, 128)]):
        paths = {}
        for c, img in letters.items():
            p = tmp_path / "imgs" / f"cell{i}_{c}.tif"
            p.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(p, img[crop, crop].astype(np.uint16))
            paths[c] = f"imgs/{p.name}"                           # relative to the CSV folder
        rows.append(paths)
    csv_path = tmp_path / "path_list.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        head = ["r_image", "y_image", "b_image", "g_image"] + (["output_folder"] if legacy else []) + ["output_prefix"]
        w.writerow(["#" + head[0]] + head[1:])
        for i, p in enumerate(rows):
            if i == 1:
                fh.write("# a commented-out row\n")
            extra = [str(tmp_path / "legacy")] if legacy else []
            w.writerow([p["r"], p["y"], p["b"], p["g"]] + extra + [f"plate1/cell{i}"])
    return csv_path, letters


def test_portable_entry_produces_subcellportable_outputs(rybg_cache, tmp_path, data_dir, monkeypatch):
    ad = pytest.importorskip("anndata")
    csv_path, letters = _write_portable_inputs(tmp_path, data_dir)
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path / "imgs")   # relative paths resolve against the CSV folder
    rc = main(["portable", "--path_list", str(csv_path), "-c", "rybg", "-m", "mae_contrast_supcon_model",
               "-o", str(out), "-csv", "--output_format", "combined", "-g", "-1", "-b", "2",
               "--cache-dir", str(rybg_cache), "--save_attention_maps"])
    assert rc == 0
    table = pl.read_csv(out / "result.csv")
    assert table["id"].to_list() == ["plate1/cell0", "plate1/cell1", "plate1/cell2"]
    model = load_model("rybg/MAE-CellS-ProtS-Pool", cache_dir=rybg_cache, device="cpu")
    x0 = np.stack([letters[c].astype(np.uint16).astype(np.float32) for c in "rybg"])
    ref = model(preprocess(x0, normalize="per_channel"))
    feats = table.select([f"feat{i:04d}" for i in range(model.embedding_dim)]).to_numpy()
    probs = table.select([f"prob{i:02d}" for i in range(31)]).to_numpy()
    np.testing.assert_allclose(feats[0], ref.embedding[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(probs[0], ref.probabilities[0].numpy(), atol=1e-6)
    assert table["top_class_name"][0] == CLASS_NAMES[int(np.argmax(probs[0]))]
    a = ad.read_h5ad(out / "embeddings.h5ad")
    assert list(a.obs_names) == table["id"].to_list() and a.obsm["probabilities"].shape == (3, 31)
    np.testing.assert_allclose(a.X, feats, atol=1e-6)
    assert (out / "plate1" / "cell1_attention_map.png").exists()
    log = (out / "log.txt").read_text()
    assert "- Saved results for plate1/cell2, locations predicted [" in log and "images/s" in log
    # individual format + legacy output_folder column + softmax probabilities
    csv2, _ = _write_portable_inputs(tmp_path / "legacy_in", data_dir, legacy=True)
    rc = main(["portable", "--path_list", str(csv2), "-c", "rybg", "-g", "-1", "--cache-dir", str(rybg_cache),
               "--probabilities", "softmax"])
    assert rc == 0
    legacy = tmp_path / "legacy_in" / "legacy"
    e = np.load(legacy / "plate1" / "cell0_embedding.npy")
    p = np.load(legacy / "plate1" / "cell0_probabilities.npy")
    assert e.shape == (model.embedding_dim,) and p.shape == (31,) and p.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(e, ref.embedding[0].numpy(), atol=1e-5)


def test_portable_rejects_bad_path_list(rybg_cache, tmp_path, capsys):
    bad = tmp_path / "path_list.csv"
    bad.write_text("r_image,y_image,b_image,output_prefix\na.png,b.png,c.png,x\n")
    assert main(["portable", "--path_list", str(bad), "-o", str(tmp_path / "o"), "--cache-dir", str(rybg_cache)]) != 0
    assert "g_image" in capsys.readouterr().err
    bad.write_text("r_image,y_image,b_image,g_image,output_prefix\na.png,,c.png,d.png,x\n")
    assert main(["portable", "--path_list", str(bad), "-o", str(tmp_path / "o"), "--cache-dir", str(rybg_cache)]) != 0
    err = capsys.readouterr().err
    assert str(bad) in err and "line 2" in err and "'y_image'" in err


def test_custom_channel_map_single_pass(tmp_path):
    cache = tmp_path / "c"
    make_tiny_checkpoint(cache, "bg/ViT-ProtS-Pool", width=32, depth=1, heads=2)
    model = load_model("bg/ViT-ProtS-Pool", cache_dir=cache, device="cpu")
    cmap = custom_channel_map(channels=["Hoechst", "GFP"], model_channels="bg", slots={"b": "Hoechst", "g": "GFP"},
                              nucleus="Hoechst")
    rng = np.random.default_rng(7)
    data = rng.random((3, 2, 32, 32)).astype(np.float32)
    res = Embedder(model, channel_map=cmap, precision="fp32").embed_arrays(data, channel_names=["GFP", "Hoechst"])
    ref = model(preprocess(data[:, [1, 0]], normalize="joint"))
    np.testing.assert_allclose(res.embedding, ref.embedding.numpy(), atol=1e-6)
    assert res.feature_names()[0] == "feat0000" and res.keys == [0, 1, 2]
