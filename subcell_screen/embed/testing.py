"""Test helpers: random SubCell checkpoints in the exact public layout, and a Hugging Face reference model.

The public weights cannot be fetched in tests, so tests (here and in other stages, e.g. the pipeline's
end-to-end test) write *synthetic* checkpoints with :func:`make_tiny_checkpoint` and load them through the
real loader (:func:`subcell_screen.embed.load_model`) offline::

    from subcell_screen.embed import load_model
    from subcell_screen.embed.testing import make_tiny_checkpoint

    make_tiny_checkpoint(cache, "ybg/MAE-CellS-ProtS-Pool", width=64, depth=2, heads=2)
    model = load_model("ybg/MAE-CellS-ProtS-Pool", cache_dir=cache, offline=True)

A tiny model is described by ``<encoder stem>.config.json`` next to the encoder (``{"synthetic": true,
"architecture": {...}}``) and its files are recorded in the cache's ``hashes.json`` with ``"source":
"synthetic"``, so the loader accepts them in place of the published files (loudly, and
``model.synthetic`` is True). Outputs of such models are meaningless biologically.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .registry import Architecture, get_model_card

__all__ = ["TinyCheckpoint", "random_public_state_dicts", "make_tiny_checkpoint", "hf_reference_model",
           "sincos_position_embeddings"]


@dataclass(frozen=True)
class TinyCheckpoint:
    """Files written by :func:`make_tiny_checkpoint`."""

    model: str
    directory: Path
    encoder: Path
    classifiers: tuple[Path, ...]
    config: Path
    architecture: Architecture


def sincos_position_embeddings(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings (MAE convention) with a zero CLS row: (1, 1 + grid², dim)."""
    import numpy as np

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gh, gw = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))
    emb = np.concatenate([one_d(dim // 2, gw), one_d(dim // 2, gh)], axis=1)
    emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return torch.from_numpy(emb).float()[None]


def random_public_state_dicts(arch: Architecture, *, seed: int = 0, n_classifiers: int = 1,
                              sincos: bool = False) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Random weights in the public checkpoint layout (encoder file dict, classifier file dicts).

    Linear weights ~ N(0, 0.02) like HF's init, biases and LayerNorm parameters perturbed so that every
    parameter matters; position embeddings random (ViT) or sin-cos (``sincos=True``, MAE).
    """
    from .model import public_state_dict_layout

    gen = torch.Generator().manual_seed(seed)
    enc_layout, clf_layout = public_state_dict_layout(arch)

    def draw(key: str, shape: tuple[int, ...]) -> torch.Tensor:
        if key.endswith("position_embeddings"):
            if sincos:
                return sincos_position_embeddings(arch.hidden_size, arch.grid_size)
            return torch.randn(shape, generator=gen) * 0.5
        if key.endswith("cls_token"):
            return torch.randn(shape, generator=gen) * 0.5
        if "layernorm" in key and key.endswith("weight"):
            return 1.0 + 0.1 * torch.randn(shape, generator=gen)
        if key.endswith("bias"):
            return 0.02 * torch.randn(shape, generator=gen)
        if key.startswith("pool_model.attention."):  # make the pooler's attention non-uniform
            return 0.5 * torch.randn(shape, generator=gen)
        return 0.02 * torch.randn(shape, generator=gen)

    enc = {k: draw(k, s) for k, s in enc_layout.items()}
    clfs = []
    for _ in range(n_classifiers):
        clfs.append({k: (0.05 * torch.randn(s, generator=gen) if k.endswith("weight") else 0.1 * torch.randn(s, generator=gen))
                     for k, s in clf_layout.items()})
    return enc, clfs


def make_tiny_checkpoint(
    directory: str | os.PathLike,
    name: str = "rybg/MAE-CellS-ProtS-Pool",
    *,
    width: int = 64,
    depth: int = 2,
    heads: int = 2,
    mlp_dim: int | None = None,
    pool_dim: int | None = None,
    classifier_dims: Sequence[int] = (32, 16),
    image_size: int = 448,
    patch_size: int = 16,
    seed: int = 0,
    n_classifiers: int = 1,
) -> TinyCheckpoint:
    """Write a random SubCell checkpoint under the public file names of ``name`` into ``directory``.

    The encoder file holds ``encoder.*`` (HF ViT keys) + ``pool_model.attention_{v,u}.1.*`` +
    ``pool_model.attention.*``; each classifier file holds ``0.*``, ``3.*``, ``6.*`` -- exactly the published
    layout. Also writes ``<encoder stem>.config.json`` (architecture, ``"synthetic": true``) and records the
    files' SHA-256 in ``directory/hashes.json`` with ``"source": "synthetic"``.

    Parameters
    ----------
    directory
        Cache folder to write into (created).
    name
        Public model name whose file names and channel count are used.
    width, depth, heads, mlp_dim, pool_dim, classifier_dims, image_size, patch_size
        Architecture (defaults: 64 wide, 2 layers, 2 heads, MLP 4x, pooler 2x width/... , 448 px, 16-px patches).
        ``width=768, depth=12, heads=12, mlp_dim=3072, pool_dim=512, classifier_dims=(512, 256)`` is full size.
    seed
        Random seed.
    n_classifiers
        Number of classifier files; only ``seed_0`` has a public name, extra ones are ``..._seed_<i>.pth``
        (load them with :meth:`SubCellModel.from_state_dicts`).
    """
    from .model import architecture_dict, architecture_sidecar
    from .weights import _update_record, sha256_file

    card = get_model_card(name)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arch = replace(card.architecture, hidden_size=width, num_layers=depth, num_heads=heads,
                   mlp_dim=mlp_dim or 4 * width, pool_dim=pool_dim or max(8, (2 * width) // 3),
                   classifier_dims=tuple(classifier_dims), image_size=image_size, patch_size=patch_size)
    enc, clfs = random_public_state_dicts(arch, seed=seed, n_classifiers=n_classifiers,
                                          sincos=card.family.startswith("MAE"))
    enc_path = directory / card.encoder_file
    torch.save(enc, enc_path)
    clf_paths = []
    for i, sd in enumerate(clfs):
        fname = card.classifier_files[0] if i == 0 else card.classifier_files[0].replace("_seed_0", f"_seed_{i}")
        torch.save(sd, directory / fname)
        clf_paths.append(directory / fname)
    side = architecture_sidecar(enc_path)
    side.write_text(json.dumps({"synthetic": True, "model": card.name, "seed": seed,
                                "architecture": architecture_dict(arch)}, indent=1) + "\n")
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    for p in (enc_path, *clf_paths):
        _update_record(directory, p.name, sha256=sha256_file(p), size=p.stat().st_size, source="synthetic",
                       recorded_at=now)
    return TinyCheckpoint(card.name, directory, enc_path, tuple(clf_paths), side, arch)


# ---------------------------------------------------------------------------------------------------------
# Hugging Face reference (tests and benchmarks only; imports transformers)
# ---------------------------------------------------------------------------------------------------------

def _hf_key_map(hf_keys: set[str], num_layers: int) -> dict[str, str]:
    """Public (transformers 4.x) encoder key -> key of the installed ``ViTModel``."""
    def mp(k: str) -> str:
        if k in hf_keys:
            return k
        # transformers >= 5 renamed ViT modules
        k2 = k.replace("encoder.layer.", "layers.")
        for old, new in ((".attention.attention.query.", ".attention.q_proj."),
                         (".attention.attention.key.", ".attention.k_proj."),
                         (".attention.attention.value.", ".attention.v_proj."),
                         (".attention.output.dense.", ".attention.o_proj."),
                         (".intermediate.dense.", ".mlp.fc1."), (".output.dense.", ".mlp.fc2.")):
            k2 = k2.replace(old, new)
        if k2 not in hf_keys:
            raise KeyError(f"cannot map {k!r} onto the installed transformers ViTModel")
        return k2

    return mp


class _HFReference(nn.Module):
    """HF ``ViTModel`` + SubCellPortable's pooler and classifier (reference semantics, eager)."""

    def __init__(self, vit: nn.Module, arch: Architecture, n_classifiers: int) -> None:
        super().__init__()
        self.vit = vit
        d, p = arch.hidden_size, arch.pool_dim
        self.attention_v = nn.Sequential(nn.Linear(d, p), nn.Tanh())
        self.attention_u = nn.Sequential(nn.Linear(d, p), nn.GELU())
        self.attention = nn.Linear(p, arch.pool_heads)
        dims = (arch.embedding_dim, *arch.classifier_dims, arch.num_classes)
        self.classifiers = nn.ModuleList()
        for _ in range(n_classifiers):
            layers: list[nn.Module] = []
            for j, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
                layers.append(nn.Linear(a, b))
                if j < len(dims) - 2:
                    layers.append(nn.ReLU(inplace=True))
            self.classifiers.append(nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.vit(x, interpolate_pos_encoding=True)
        t = out.last_hidden_state
        attn = self.attention(self.attention_v(t) * self.attention_u(t)).permute(0, 2, 1).softmax(dim=-1)
        pooled = torch.bmm(attn, t)
        pooled = pooled.view(pooled.shape[0], -1)
        res = {"last_hidden_state": t, "embedding": pooled, "pool_attention": attn}
        if len(self.classifiers):
            res["probabilities"] = torch.stack([torch.sigmoid(c(pooled)) for c in self.classifiers], 1).mean(1)
        return res


def hf_reference_model(encoder_sd: Mapping[str, Any], classifier_sds: Sequence[Mapping[str, Any]],
                       arch: Architecture, *, attn_implementation: str = "eager") -> nn.Module:
    """The reference: ``transformers.ViTModel(add_pooling_layer=False)`` + gated pooler + MLP heads.

    Loads the public-layout state dicts the way SubCellPortable does (prefix strip, ``1.`` -> ``0.``,
    0/3/6 -> 0/2/4), strictly; adapts key names to the installed transformers version (4.x or 5.x).
    Call it as ``ref(x)`` -> dict with ``last_hidden_state``, ``embedding``, ``probabilities``.
    """
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(hidden_size=arch.hidden_size, num_hidden_layers=arch.num_layers,
                    num_attention_heads=arch.num_heads, intermediate_size=arch.mlp_dim, hidden_act="gelu",
                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=arch.layer_norm_eps,
                    image_size=arch.image_size, patch_size=arch.patch_size, num_channels=arch.num_channels,
                    qkv_bias=True, attn_implementation=attn_implementation)
    with torch.device("meta"):  # skip HF's random init; every weight is loaded below
        vit = ViTModel(cfg, add_pooling_layer=False)
    hf_keys = set(vit.state_dict())
    mp = _hf_key_map(hf_keys, arch.num_layers)
    enc = {mp(k[len("encoder."):]): v for k, v in encoder_sd.items() if "encoder." in k}
    vit.load_state_dict(enc, strict=True, assign=True)
    with torch.device("meta"):
        ref = _HFReference(vit, arch, len(classifier_sds))
    pool = {k.replace("pool_model.", ""): v for k, v in encoder_sd.items() if "pool_model." in k}
    pool = {k.replace("1.", "0."): v for k, v in pool.items()}
    missing = set(pool) ^ {k for k in ref.state_dict() if not k.startswith(("vit.", "classifiers."))}
    if missing:
        raise KeyError(f"reference pooler keys do not match: {sorted(missing)}")
    ref.load_state_dict({**{f"vit.{k}": v for k, v in vit.state_dict().items()}, **pool,
                         **{f"classifiers.{i}.{k.replace('3.', '2.').replace('6.', '4.')}": v
                            for i, sd in enumerate(classifier_sds) for k, v in sd.items()}}, strict=True, assign=True)
    return ref.eval().requires_grad_(False)
