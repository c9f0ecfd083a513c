"""SubCell model: registry, strict checkpoint loading, preprocessing, numerical equality with HF transformers."""

from __future__ import annotations

import types
from dataclasses import replace

import numpy as np
import pytest
import tifffile
import torch

from subcell_screen.embed import (
    CLASS_COLORS,
    CLASS_NAMES,
    CheckpointError,
    ModelError,
    SubCellModel,
    UnknownModelError,
    get_model_card,
    load_model,
    model_names,
    preprocess,
)
from subcell_screen.embed.model import Encoder, public_state_dict_layout
from subcell_screen.embed.registry import BASE_URL, HPA_PIXEL_SIZE_UM
from subcell_screen.embed.testing import hf_reference_model, make_tiny_checkpoint, random_public_state_dicts

transformers = pytest.importorskip("transformers")

TOL = 1e-5


def _tiny_arch(card, **kw):
    base = dict(hidden_size=64, num_layers=2, num_heads=2, mlp_dim=256, pool_dim=48, classifier_dims=(32, 16))
    base.update(kw)
    return replace(card.architecture, **base)


def _compare(model, ref, x):
    out = model(x, hidden_states=True)
    with torch.no_grad():
        r = ref(x)
    return (float((out.last_hidden_state - r["last_hidden_state"]).abs().max()),
            float((out.embedding - r["embedding"]).abs().max()),
            float((out.probabilities - r["probabilities"]).abs().max()), out, r)


# -- registry -----------------------------------------------------------------------------------------------

def test_registry_has_the_eight_public_models_with_documented_files():
    names = model_names()
    assert len(names) == 8
    assert {n.split("/")[0] for n in names} == {"rybg", "rbg", "ybg", "bg"}
    rybg = get_model_card("rybg/MAE-CellS-ProtS-Pool")
    assert rybg.encoder_file == "all_channels_MAE-CellS-ProtS-Pool.pth"
    assert rybg.classifier_files == ("all_channels_MAE_MLP_classifier_seed_0.pth",)
    assert rybg.encoder_url == "https://czi-subcell-public.s3.amazonaws.com/models/all_channels_MAE-CellS-ProtS-Pool.pth"
    assert rybg.classifier_urls[0] == (BASE_URL + "all_channels_MAE_MLP_classifier/"
                                       "all_channels_MAE_MLP_classifier_seed_0.pth")
    bg = get_model_card("bg/vit_supcon_model")
    assert bg.name == "bg/ViT-ProtS-Pool" and bg.channel_names == ("nucleus", "protein")
    assert bg.classifier_urls[0].endswith("models/DNA-Protein_ViT_MLP_classifier/DNA-Protein_ViT_MLP_classifier_seed_0.pth")
    assert get_model_card("RBG/mae").encoder_file == "MT-DNA-Protein_MAE-CellS-ProtS-Pool.pth"
    ybg = get_model_card("ybg/MAE-CellS-ProtS-Pool")
    assert ybg.encoder_sha256 == "ed8c22b42e1b0665b2363e7a1ae56b42a8a93ac93203bb89a13b6be7ad878e51"
    assert sum(c.encoder_sha256 is not None for c in map(get_model_card, names)) == 1
    assert rybg.architecture.embedding_dim == 1536 and rybg.architecture.grid_size == 28
    assert rybg.preprocessing.pixel_size_um == HPA_PIXEL_SIZE_UM
    from subcell_screen.crops import HPA_PIXEL_SIZE_UM as crops_px

    assert HPA_PIXEL_SIZE_UM == crops_px
    # analytic FLOPs (incl. pooler + classifier, ~1.3 GFLOPs) bracket the documented 157-159 / 368-372 GFLOPs
    assert 157 <= rybg.architecture.flops(448) / 1e9 <= 159
    assert 368 <= rybg.architecture.flops(640) / 1e9 <= 372
    with pytest.raises(UnknownModelError, match="rybg/MAE-CellS-ProtS-Pool.*bg/ViT-ProtS-Pool"):
        get_model_card("rgb/MAE")


def test_class_names_and_colours():
    assert len(CLASS_NAMES) == len(CLASS_COLORS) == 31
    assert CLASS_NAMES[0] == "Actin filaments" and CLASS_NAMES[17] == "Mitochondria" and CLASS_NAMES[30] == "Negative"
    assert CLASS_COLORS[30] == "#000000" and all(c.startswith("#") and len(c) == 7 for c in CLASS_COLORS)


# -- tiny checkpoints through the real loader ------------------------------------------------------------------

def test_tiny_checkpoint_has_public_layout_and_loads_offline(tmp_path):
    tc = make_tiny_checkpoint(tmp_path, "rybg/MAE-CellS-ProtS-Pool", width=64, depth=2, heads=2)
    assert tc.encoder.name == "all_channels_MAE-CellS-ProtS-Pool.pth"
    assert tc.classifiers[0].name == "all_channels_MAE_MLP_classifier_seed_0.pth"
    enc = torch.load(tc.encoder, weights_only=True)
    clf = torch.load(tc.classifiers[0], weights_only=True)
    assert all(k.startswith(("encoder.", "pool_model.")) for k in enc)
    assert "pool_model.attention_v.1.weight" in enc and "pool_model.attention.weight" in enc
    assert "encoder.encoder.layer.1.attention.attention.query.weight" in enc
    assert sorted(clf) == ["0.bias", "0.weight", "3.bias", "3.weight", "6.bias", "6.weight"]
    assert tuple(clf["6.weight"].shape) == (31, 16)

    model = load_model("rybg/MAE-CellS-ProtS-Pool", cache_dir=tmp_path, offline=True, device="cpu")
    assert model.synthetic and model.architecture.hidden_size == 64 and model.architecture.num_heads == 2
    assert set(model.sha256) == {tc.encoder.name, tc.classifiers[0].name} == set(model.files.to_dict())
    x = torch.rand(3, 4, 64, 64)
    out = model(x)
    assert out.embedding.shape == (3, 128) and out.probabilities.shape == (3, 31)
    assert out.embedding.device.type == "cpu" and out.embedding.dtype == torch.float32
    assert torch.all((out.probabilities > 0) & (out.probabilities < 1))
    # same weights through the HF reference: the loader's remaps are the reference's
    ref = hf_reference_model(enc, [clf], tc.architecture)
    dt, de, dp, _, _ = _compare(model, ref, x)
    assert dt < TOL and de < TOL and dp < TOL
    with pytest.raises(ModelError, match=r"expects float32 crops \(N, 4, H, W\)"):
        model(torch.rand(1, 3, 64, 64))
    # embeddings only: no classifier file needed, probabilities None
    emb_only = load_model("rybg/MAE-CellS-ProtS-Pool", cache_dir=tmp_path, offline=True, device="cpu",
                          classifiers=False)
    assert emb_only(x).probabilities is None
    assert torch.allclose(emb_only(x).embedding, out.embedding)


@pytest.mark.parametrize("size", [(448, 448), (640, 640), (320, 448), (448, 455), (128, 128)])
def test_tiny_model_matches_hf_vit_with_interpolated_positions(size):
    card = get_model_card("ybg/ViT-ProtS-Pool")
    arch = _tiny_arch(card)
    enc, clfs = random_public_state_dicts(arch, seed=3, n_classifiers=2)
    model = SubCellModel.from_state_dicts(enc, clfs, card=card, architecture=arch, device="cpu")
    ref = hf_reference_model(enc, clfs, arch, attn_implementation="eager")
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1))
    dt, de, dp, out, r = _compare(model, ref, x)
    assert dt < TOL and de < TOL and dp < TOL, (dt, de, dp)
    # probabilities are the mean of the two heads' sigmoids
    assert out.probabilities.shape == (2, 31)


def test_position_embeddings_equal_hf_interpolation_bitwise():
    from transformers import ViTConfig
    from transformers.models.vit.modeling_vit import ViTEmbeddings

    card = get_model_card("rybg/MAE-CellS-ProtS-Pool")
    arch = _tiny_arch(card)
    enc = Encoder(arch)
    torch.nn.init.normal_(enc.pos_embed)
    hf = ViTEmbeddings(ViTConfig(hidden_size=64, image_size=448, patch_size=16, num_channels=4))
    hf.position_embeddings.data.copy_(enc.pos_embed.data)
    for h, w in [(448, 448), (640, 640), (448, 455), (320, 640), (128, 128), (464, 448), (500, 500)]:
        n = (h // 16) * (w // 16)
        ours = enc.position_embeddings(n, h, w)
        theirs = hf.interpolate_pos_encoding(torch.zeros(1, n + 1, 64), h, w)
        assert torch.equal(ours, theirs), (h, w)
    # 448x448 uses the stored table as is; 448x455 (same 28x28 grid, non-square pixels) is re-interpolated
    assert torch.equal(enc.position_embeddings(784, 448, 448), enc.pos_embed)


def test_strict_loading_rejects_missing_unexpected_and_misshaped_keys(tmp_path):
    card = get_model_card("rybg/MAE-CellS-ProtS-Pool")
    arch = _tiny_arch(card)
    enc, clfs = random_public_state_dicts(arch, seed=0)

    def build(e, c, **kw):
        return SubCellModel.from_state_dicts(e, c, card=card, architecture=arch, device="cpu",
                                             encoder_source="enc.pth", classifier_sources=["clf.pth"], **kw)

    build(enc, clfs)  # the intact dicts load
    bad = dict(enc)
    del bad["encoder.encoder.layer.1.attention.attention.key.bias"]
    with pytest.raises(CheckpointError, match=r"enc.pth.*missing keys: encoder.encoder.layer.1.attention.attention.key.bias"):
        build(bad, clfs)
    bad = dict(enc, **{"encoder.pooler.dense.weight": torch.zeros(64, 64)})
    with pytest.raises(CheckpointError, match="unexpected keys: encoder.pooler.dense.weight"):
        build(bad, clfs)
    bad = dict(enc, **{"pool_model.attention_u.1.weight": torch.zeros(48, 65)})
    with pytest.raises(CheckpointError, match=r"mis-shaped keys: pool_model.attention_u.1.weight: \(48, 65\)"):
        build(bad, clfs)
    bad_clf = {k.replace("3.", "2."): v for k, v in clfs[0].items()}  # already remapped: not the public layout
    with pytest.raises(CheckpointError, match=r"clf.pth.*missing keys: 3.weight"):
        build(enc, [bad_clf])
    # a 3-channel checkpoint for the 4-channel card
    enc3, _ = random_public_state_dicts(replace(arch, num_channels=3), seed=0)
    with pytest.raises(CheckpointError, match=r"patch_embeddings.projection.weight: \(64, 3, 16, 16\)"):
        build(enc3, clfs)
    # a full-size card against a tiny checkpoint without a sidecar: explained
    with pytest.raises(CheckpointError, match=r"looks like width 64, 2 layers, 4 channels.*config.json"):
        SubCellModel.from_state_dicts(enc, clfs, card=card, device="cpu")

    # through files: a tiny checkpoint whose encoder lost a key is rejected by load_model, naming the file
    tc = make_tiny_checkpoint(tmp_path / "c", "bg/ViT-ProtS-Pool")
    sd = torch.load(tc.encoder, weights_only=True)
    sd.pop("encoder.layernorm.bias")
    torch.save(sd, tc.encoder)
    from subcell_screen.embed.weights import _update_record, sha256_file

    _update_record(tmp_path / "c", tc.encoder.name, sha256=sha256_file(tc.encoder), source="synthetic")
    with pytest.raises(CheckpointError, match=r"DNA-Protein_ViT-ProtS-Pool.pth.*missing keys: encoder.layernorm.bias"):
        load_model("bg/ViT-ProtS-Pool", cache_dir=tmp_path / "c", offline=True, device="cpu")


def test_untrusted_pickle_is_not_unpickled(tmp_path):
    from subcell_screen.embed.model import load_checkpoint_file

    p = tmp_path / "odd.pth"
    torch.save({"x": types.SimpleNamespace(a=1)}, p)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint_file(p)
    with pytest.raises(CheckpointError, match="never unpickled"):  # issue 17: no hash makes it safe
        load_checkpoint_file(p, trusted=True)


def test_public_layout_key_count_matches_hf_vit():
    arch = get_model_card("rybg/MAE-CellS-ProtS-Pool").architecture
    enc, clf = public_state_dict_layout(arch)
    assert len([k for k in enc if k.startswith("encoder.")]) == 4 + 12 * 16 + 2
    n_params = sum(int(np.prod(s)) for s in enc.values()) + sum(int(np.prod(s)) for s in clf.values())
    # encoder + pooler 87.24M for 4 channels, classifier 0.93M (subcell-model.md §1.1)
    assert round(sum(int(np.prod(s)) for s in enc.values()) / 1e6, 2) == 87.24
    assert round((n_params - sum(int(np.prod(s)) for s in enc.values())) / 1e6, 2) == 0.93


# -- preprocessing ----------------------------------------------------------------------------------------

def test_preprocess_joint_and_per_channel_semantics():
    x = np.zeros((2, 3, 4, 4), np.float32)
    x[0, 0] = np.arange(16).reshape(4, 4)       # 0..15
    x[0, 1] = 5.0                               # constant channel
    x[0, 2] = np.arange(16).reshape(4, 4) * 2   # 0..30
    x[1] = 7.0                                  # constant crop
    j = preprocess(x, normalize="joint")
    assert j.dtype == np.float32 and np.isfinite(j).all()
    np.testing.assert_allclose(j[0, 0], x[0, 0] / (30 + 1e-6), rtol=1e-6)
    np.testing.assert_allclose(j[0, 1], 5 / (30 + 1e-6), rtol=1e-6)
    assert np.all(j[1] == 0)
    pc = preprocess(x, normalize="per_channel")
    np.testing.assert_allclose(pc[0, 0], x[0, 0] / (15 + 1e-6), rtol=1e-6)
    assert np.all(pc[0, 1] == 0) and np.all(pc[1] == 0)   # constant -> zeros, never NaN
    np.testing.assert_allclose(pc[0, 2], x[0, 2] / (30 + 1e-6), rtol=1e-6)
    # torch path gives the same numbers and keeps the input untouched
    t = torch.from_numpy(x.copy())
    np.testing.assert_allclose(preprocess(t, normalize="per_channel").numpy(), pc, atol=1e-7)
    assert np.array_equal(t.numpy(), x)
    # mask multiplies before normalising: outside pixels become the minimum (0)
    m = np.zeros((2, 1, 4, 4), np.float32)
    m[:, :, 1:3, 1:3] = 1
    jm = preprocess(x + 100, normalize="joint", mask=m)
    assert np.all(jm[0][:, 0, :] == 0) and jm[0].max() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"crop\(s\) \[1\] contain NaN"):
        bad = x.copy()
        bad[1, 0, 0, 0] = np.nan
        preprocess(bad)
    with pytest.raises(ValueError, match="mask shape"):
        preprocess(x, mask=np.ones((2, 1, 3, 3)))
    with pytest.raises(ValueError, match="unknown normalization"):
        preprocess(x, normalize="zscore")


# -- full-size architecture ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def full_size():
    card = get_model_card("rybg/MAE-CellS-ProtS-Pool")
    enc, clfs = random_public_state_dicts(card.architecture, seed=7, sincos=True)
    model = SubCellModel.from_state_dicts(enc, clfs, card=card, device="cpu", precision="fp32")
    ref = hf_reference_model(enc, clfs, card.architecture, attn_implementation="eager")
    return model, ref


def _hpa_crop_rybg(data_dir):
    kaggle = tifffile.imread(data_dir / "hpa" / "hpa_singlecell_rgby_128.tif")  # [red MT, green protein, blue DNA, yellow ER]
    return kaggle, preprocess(kaggle, normalize="joint", channel_order=(0, 3, 2, 1))


def test_real_hpa_crop_through_full_size_architecture(full_size, data_dir):
    model, ref = full_size
    kaggle, x = _hpa_crop_rybg(data_dir)
    assert x.shape == (1, 4, 128, 128)
    # reorder: tensor order r, y, b, g = kaggle channels 0, 3, 2, 1, jointly normalised
    np.testing.assert_allclose(x[0, 1], kaggle[3] / (kaggle.max() - kaggle.min() + 1e-6), rtol=1e-6)
    np.testing.assert_allclose(x[0, 3], kaggle[1] / (kaggle.max() - kaggle.min() + 1e-6), rtol=1e-6)
    xt = torch.from_numpy(x)
    dt, de, dp, out, r = _compare(model, ref, xt)          # 8x8 patch grid: interpolated positions
    assert dt < TOL and de < TOL and dp < TOL, (dt, de, dp)
    assert out.embedding.shape == (1, 1536) and out.probabilities.shape == (1, 31)
    assert torch.isfinite(out.embedding).all()
    full = model(xt, attention=True)
    assert full.pool_attention.shape == (1, 2, 8, 8) and full.cls_attention.shape == (1, 12, 8, 8)
    # pooler attention over patches sums to 1 minus the CLS share
    assert float(full.pool_attention.sum(dim=(2, 3)).max()) <= 1.0 + 1e-6
    # the pooled embedding is the attention-weighted mean of the final tokens (head-major)
    att = r["pool_attention"]
    np.testing.assert_allclose(out.embedding[0, :768].numpy(), (att[0, 0] @ r["last_hidden_state"][0]).numpy(),
                               atol=1e-5)


def test_full_size_matches_hf_at_448(full_size):
    model, ref = full_size
    x = torch.rand(1, 4, 448, 448, generator=torch.Generator().manual_seed(0))
    dt, de, dp, out, _ = _compare(model, ref, x)
    assert out.last_hidden_state.shape == (1, 785, 768)
    assert dt < TOL and de < TOL and dp < TOL, (dt, de, dp)


@pytest.mark.slow
def test_full_size_matches_hf_at_640(full_size):
    model, ref = full_size
    x = torch.rand(1, 4, 640, 640, generator=torch.Generator().manual_seed(0))
    dt, de, dp, out, _ = _compare(model, ref, x)
    assert out.last_hidden_state.shape == (1, 1601, 768)
    assert dt < TOL and de < TOL and dp < TOL, (dt, de, dp)


def test_bf16_cpu_autocast_close_to_fp32(tmp_path):
    card = get_model_card("rybg/ViT-ProtS-Pool")
    arch = _tiny_arch(card, hidden_size=128, num_heads=2, num_layers=3)
    enc, clfs = random_public_state_dicts(arch, seed=5)
    m32 = SubCellModel.from_state_dicts(enc, clfs, card=card, architecture=arch, device="cpu")
    m16 = SubCellModel(m32.net, card=card, device=m32.device, precision="bf16")
    x = torch.rand(4, 4, 128, 128, generator=torch.Generator().manual_seed(2))
    a, b = m32(x), m16(x)
    cos = torch.nn.functional.cosine_similarity(a.embedding, b.embedding)
    assert float(cos.min()) >= 0.999
    assert float((a.embedding - b.embedding).abs().max()) > 0   # bf16 really ran
    assert b.embedding.dtype == torch.float32


@pytest.mark.parametrize("size", [128, 144])  # 144: interpolated positions in bf16
def test_bf16_pure_close_to_fp32_and_leaves_the_fp32_model_alone(size):
    import copy

    card = get_model_card("rybg/ViT-ProtS-Pool")
    arch = _tiny_arch(card, hidden_size=128, num_heads=2, num_layers=3)
    enc, clfs = random_public_state_dicts(arch, seed=5)
    m32 = SubCellModel.from_state_dicts(enc, clfs, card=card, architecture=arch, device="cpu")
    pure = SubCellModel(copy.deepcopy(m32.net), card=card, device=m32.device, precision="bf16-pure")
    assert next(pure.net.encoder.parameters()).dtype == torch.bfloat16
    assert next(pure.net.classifiers.parameters()).dtype == torch.float32
    assert next(m32.net.encoder.parameters()).dtype == torch.float32
    x = torch.rand(4, 4, size, size, generator=torch.Generator().manual_seed(2))
    a, b = m32(x), pure(x)
    cos = torch.nn.functional.cosine_similarity(a.embedding, b.embedding)
    assert float(cos.min()) >= 0.999, float(cos.min())
    assert float((a.embedding - b.embedding).abs().max()) > 0
    assert b.embedding.dtype == torch.float32 and float((a.probabilities - b.probabilities).abs().max()) < 0.02


@pytest.mark.parametrize("size", [128, 144])
def test_bf16_casts_weights_once_bit_identical_to_per_forward_autocast(size):
    """precision='bf16' keeps bf16 copies of the matmul weights instead of letting autocast re-cast the fp32
    weights on every forward (a visible share of a small CPU batch); results must not change by one bit."""
    card = get_model_card("rybg/ViT-ProtS-Pool")
    arch = _tiny_arch(card, hidden_size=128, num_heads=2, num_layers=3)
    enc, clfs = random_public_state_dicts(arch, seed=5)
    m32 = SubCellModel.from_state_dicts(enc, clfs, card=card, architecture=arch, device="cpu")
    before = {k: v.clone() for k, v in m32.net.state_dict().items()}
    m16 = SubCellModel(m32.net, card=card, device=m32.device, precision="bf16")
    assert m16.net is not m32.net
    qkv = m16.net.encoder.blocks[0].qkv
    assert qkv.weight.dtype == torch.bfloat16 and qkv.bias.dtype == torch.bfloat16
    assert m16.net.encoder.patch_embed.weight.dtype == torch.bfloat16
    assert m16.net.encoder.norm.weight.dtype == torch.float32  # fp32 residual stream / LayerNorm
    assert m16.net.encoder.pos_embed.dtype == torch.float32
    assert m16.net.classifiers[0][0].weight.dtype == torch.float32
    assert m16.net.encoder.pos_embed is m32.net.encoder.pos_embed  # shared, not copied
    x = torch.rand(3, 4, size, size, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):  # autocast on the fp32 weights
        ref = m32.net(x, True, True)
    got = m16.forward_device(x, attention=True, hidden_states=True)
    for a, b in zip((got.embedding, got.probabilities, got.pool_attention, got.cls_attention, got.last_hidden_state),
                    ref):
        assert torch.equal(a, b.float())
    assert all(torch.equal(v, m32.net.state_dict()[k]) for k, v in before.items())  # fp32 model untouched
    assert not torch.equal(got.embedding, m32(x).embedding)  # bf16 really ran
