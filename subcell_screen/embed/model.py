"""The SubCell network in plain PyTorch, strict checkpoint loading, and :func:`load_model`.

Architecture (identical for the 8 public models; see ``docs``/subcell-model.md §1):

* encoder: Hugging Face ``ViTModel`` semantics -- 16-px patch embedding, CLS token, position embeddings
  (bicubically interpolated for inputs other than 448² exactly like ``ViTModel(..., interpolate_pos_encoding=
  True)``), 12 pre-LN blocks (LayerNorm eps 1e-12, exact GELU, qkv bias), final LayerNorm, no HF pooler;
  attention through :func:`torch.nn.functional.scaled_dot_product_attention` with a fused QKV projection;
* gated attention pooler over **all** tokens including CLS: ``v = tanh(W_v T)``, ``u = GELU(W_u T)``,
  ``a = softmax_tokens(W_a (v * u))`` (2 heads), output ``a @ T`` flattened head-major -> 1536-d;
* classifier: Linear 1536->512, ReLU, Linear 512->256, ReLU, Linear 256->31 per loaded head; probabilities are
  the mean over heads of per-class sigmoids.

Position-embedding interpolation: ``transformers`` 4.45.1 (the SubCell reference pin) and 5.x use the same
code (size-based bicubic, ``align_corners=False``, no interpolation when the patch count matches *and*
``height == width``; the pre-4.45 ``scale_factor`` + 0.1 offset variant is not used by either). This module
reproduces it bit for bit; tests compare against the installed ``transformers``.

Checkpoints (public layout, ``torch.save`` state dicts): the encoder file holds ``encoder.*`` (HF ViT keys)
and ``pool_model.attention_{v,u}.1.*`` / ``pool_model.attention.*``; classifier files hold ``0.*``, ``3.*``,
``6.*``. Loading strips ``encoder.``, maps the pooler's ``.1.`` -> ``.0.`` slot and the classifier's 0/3/6 ->
0/2/4 (then to this module's names, fusing query/key/value), and is strict: any missing, unexpected or
mis-shaped key raises :class:`~subcell_screen.embed.CheckpointError` naming the file and keys.

The architecture comes from the model card; a ``<encoder stem>.config.json`` file next to the encoder
(``{"architecture": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, ...}}``) overrides it -- this is how
tiny test models (:func:`subcell_screen.embed.testing.make_tiny_checkpoint`) are described. Fields not
visible in tensor shapes (``num_heads``, ``layer_norm_eps``) can only come from there.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._errors import CheckpointError, ModelError
from .precision import PrecisionChoice, resolve_precision
from .registry import Architecture, ModelCard, get_model_card

__all__ = [
    "SubCellNet",
    "SubCellModel",
    "SubCellOutput",
    "load_model",
    "select_device",
    "public_state_dict_layout",
    "infer_architecture",
    "convert_checkpoint",
    "load_checkpoint_file",
    "with_cast_linears",
    "architecture_sidecar",
]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------
# network
# ---------------------------------------------------------------------------------------------------------

class PatchEmbed(nn.Module):
    """16x16 patch embedding as one matmul (same result as HF's stride-16 ``Conv2d``, no cuDNN TF32)."""

    def __init__(self, channels: int, dim: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.weight = nn.Parameter(torch.zeros(dim, channels, patch, patch))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        b, c, hh, ww = x.shape
        p = self.patch
        h, w = hh // p, ww // p
        x = x[:, :, : h * p, : w * p].reshape(b, c, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w, c * p * p)
        return F.linear(x, self.weight.reshape(self.weight.shape[0], -1), self.bias), h, w


class Block(nn.Module):
    """Pre-LN transformer block (HF ``ViTLayer``) with fused QKV and SDPA."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor, need_cls_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, n, d = x.shape
        hd = d // self.heads
        qkv = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        o = F.scaled_dot_product_attention(q, k, v)
        cls_attn = None
        if need_cls_attention:  # last-layer CLS -> token attention (what SubCellPortable returns)
            scores = torch.matmul(q[:, :, :1].float(), k.float().transpose(-1, -2)) * hd ** -0.5
            cls_attn = scores.softmax(dim=-1)[:, :, 0]  # (B, heads, N)
        x = x + self.proj(o.transpose(1, 2).reshape(b, n, d))
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return x, cls_attn


class Encoder(nn.Module):
    """ViT encoder with HF-identical position-embedding interpolation."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        d = arch.hidden_size
        self.patch_size = arch.patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, arch.grid_size ** 2 + 1, d))
        self.patch_embed = PatchEmbed(arch.num_channels, d, arch.patch_size)
        self.blocks = nn.ModuleList(Block(d, arch.num_heads, arch.mlp_dim, arch.layer_norm_eps)
                                    for _ in range(arch.num_layers))
        self.norm = nn.LayerNorm(d, eps=arch.layer_norm_eps)

    def position_embeddings(self, n_patches: int, height: int, width: int) -> torch.Tensor:
        """Position embeddings for an input of ``height`` x ``width`` pixels (HF ``interpolate_pos_encoding``)."""
        num_positions = self.pos_embed.shape[1] - 1
        if n_patches == num_positions and height == width:
            return self.pos_embed
        dim = self.pos_embed.shape[-1]
        side = int(num_positions ** 0.5)
        grid = self.pos_embed[:, 1:].float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(height // self.patch_size, width // self.patch_size), mode="bicubic",
                             align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(self.pos_embed.dtype)
        return torch.cat((self.pos_embed[:, :1], grid), dim=1)

    def forward(self, x: torch.Tensor, need_cls_attention: bool = False
                ) -> tuple[torch.Tensor, int, int, torch.Tensor | None]:
        height, width = x.shape[-2:]
        tokens, h, w = self.patch_embed(x)
        # residual stream in the parameters' dtype (fp32), also under autocast
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens.to(self.cls_token.dtype)), dim=1)
        tokens = tokens + self.position_embeddings(h * w, height, width)
        cls_attn = None
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            tokens, a = blk(tokens, need_cls_attention and i == last)
            cls_attn = a if a is not None else cls_attn
        return self.norm(tokens), h, w, cls_attn


class GatedAttentionPooler(nn.Module):
    """Gated attention pooling over all tokens (CLS included) -> ``heads * dim`` features."""

    def __init__(self, dim: int, int_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.attention_v = nn.Linear(dim, int_dim)
        self.attention_u = nn.Linear(dim, int_dim)
        self.attention = nn.Linear(int_dim, heads)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = torch.tanh(self.attention_v(tokens))
        u = F.gelu(self.attention_u(tokens))
        logits = self.attention(v * u).transpose(1, 2)  # (B, heads, N)
        with torch.autocast(tokens.device.type, enabled=False):
            attn = logits.float().softmax(dim=-1)
            pooled = torch.bmm(attn, tokens.float())  # (B, heads, D), fp32
        return pooled.reshape(pooled.shape[0], -1), attn


def _make_classifier(in_dim: int, dims: Sequence[int], num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    prev = in_dim
    for d in dims:
        layers += [nn.Linear(prev, d), nn.ReLU()]
        prev = d
    layers.append(nn.Linear(prev, num_classes))
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class SubCellOutput:
    """Outputs of a SubCell forward pass.

    Attributes
    ----------
    embedding : torch.Tensor, (N, 1536), float32
        Pooled embedding (head 0 = dims 0-767, head 1 = 768-1535).
    probabilities : torch.Tensor, (N, 31), float32, or None
        Mean over classifier heads of per-class sigmoids (None without classifiers).
    pool_attention : torch.Tensor, (N, 2, h, w), float32, or None
        Pooler attention over patch tokens (CLS column dropped), when requested.
    cls_attention : torch.Tensor, (N, heads, h, w), float32, or None
        Last encoder layer's CLS -> patch attention, when requested.
    last_hidden_state : torch.Tensor, (N, 1 + h*w, 768), float32, or None
        Tokens after the final LayerNorm, when requested.
    """

    embedding: torch.Tensor
    probabilities: torch.Tensor | None = None
    pool_attention: torch.Tensor | None = None
    cls_attention: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None


class SubCellNet(nn.Module):
    """Encoder + pooler + classifier heads (device-side module; see :class:`SubCellModel` for the API)."""

    def __init__(self, arch: Architecture, n_classifiers: int = 1) -> None:
        super().__init__()
        self.arch = arch
        self.encoder = Encoder(arch)
        self.pooler = GatedAttentionPooler(arch.hidden_size, arch.pool_dim, arch.pool_heads)
        self.classifiers = nn.ModuleList(
            _make_classifier(arch.embedding_dim, arch.classifier_dims, arch.num_classes) for _ in range(n_classifiers))

    def forward(self, x: torch.Tensor, attention: bool = False, hidden_states: bool = False
                ) -> tuple[torch.Tensor, ...]:
        """Returns ``(embedding, probabilities | None, pool_attention | None, cls_attention | None, tokens | None)``."""
        tokens, h, w, cls_attn = self.encoder(x, need_cls_attention=attention)
        emb, pool_attn = self.pooler(tokens)
        probs = None
        if len(self.classifiers):
            with torch.autocast(x.device.type, enabled=False):
                probs = torch.stack([torch.sigmoid(c(emb)) for c in self.classifiers], dim=1).mean(dim=1)
        b = x.shape[0]
        pa = pool_attn[:, :, 1:].reshape(b, -1, h, w) if attention else None
        ca = cls_attn[:, :, 1:].reshape(b, -1, h, w) if attention and cls_attn is not None else None
        return emb, probs, pa, ca, (tokens.float() if hidden_states else None)


# ---------------------------------------------------------------------------------------------------------
# checkpoint layout, strict conversion
# ---------------------------------------------------------------------------------------------------------

def public_state_dict_layout(arch: Architecture) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """Expected keys and shapes of the public encoder file and of one classifier file.

    Returns
    -------
    encoder, classifier : dict
        Key -> shape, in the published layout (``encoder.*``/``pool_model.*``; ``0.*``/``3.*``/``6.*``).
    """
    d, c, p, m = arch.hidden_size, arch.num_channels, arch.patch_size, arch.mlp_dim
    enc: dict[str, tuple[int, ...]] = {
        "encoder.embeddings.cls_token": (1, 1, d),
        "encoder.embeddings.position_embeddings": (1, arch.grid_size ** 2 + 1, d),
        "encoder.embeddings.patch_embeddings.projection.weight": (d, c, p, p),
        "encoder.embeddings.patch_embeddings.projection.bias": (d,),
    }
    for i in range(arch.num_layers):
        pre = f"encoder.encoder.layer.{i}."
        for name in ("query", "key", "value"):
            enc[f"{pre}attention.attention.{name}.weight"] = (d, d)
            enc[f"{pre}attention.attention.{name}.bias"] = (d,)
        enc[f"{pre}attention.output.dense.weight"] = (d, d)
        enc[f"{pre}attention.output.dense.bias"] = (d,)
        enc[f"{pre}intermediate.dense.weight"] = (m, d)
        enc[f"{pre}intermediate.dense.bias"] = (m,)
        enc[f"{pre}output.dense.weight"] = (d, m)
        enc[f"{pre}output.dense.bias"] = (d,)
        for ln in ("layernorm_before", "layernorm_after"):
            enc[f"{pre}{ln}.weight"] = (d,)
            enc[f"{pre}{ln}.bias"] = (d,)
    enc["encoder.layernorm.weight"] = (d,)
    enc["encoder.layernorm.bias"] = (d,)
    for gate in ("attention_v", "attention_u"):
        enc[f"pool_model.{gate}.1.weight"] = (arch.pool_dim, d)
        enc[f"pool_model.{gate}.1.bias"] = (arch.pool_dim,)
    enc["pool_model.attention.weight"] = (arch.pool_heads, arch.pool_dim)
    enc["pool_model.attention.bias"] = (arch.pool_heads,)
    clf: dict[str, tuple[int, ...]] = {}
    dims = (arch.embedding_dim, *arch.classifier_dims, arch.num_classes)
    for j, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        clf[f"{3 * j}.weight"] = (b, a)
        clf[f"{3 * j}.bias"] = (b,)
    return enc, clf


def infer_architecture(encoder_sd: Mapping[str, Any], classifier_sd: Mapping[str, Any] | None = None, *,
                       num_heads: int | None = None, layer_norm_eps: float = 1e-12) -> Architecture:
    """Architecture implied by the tensor shapes of a public-layout checkpoint.

    ``num_heads`` is not visible in shapes; by default ``hidden_size // 64`` (12 for ViT-B).

    Raises
    ------
    CheckpointError
        If a key needed to read a shape is absent.
    """
    def need(key: str) -> tuple[int, ...]:
        if key not in encoder_sd:
            raise CheckpointError(f"cannot infer the architecture: key {key!r} is missing")
        return tuple(encoder_sd[key].shape)

    d, c, p, _ = need("encoder.embeddings.patch_embeddings.projection.weight")
    n_pos = need("encoder.embeddings.position_embeddings")[1] - 1
    layers = {int(m.group(1)) for k in encoder_sd if (m := re.match(r"encoder\.encoder\.layer\.(\d+)\.", k))}
    mlp = need("encoder.encoder.layer.0.intermediate.dense.weight")[0]
    pool_dim = need("pool_model.attention_v.1.weight")[0]
    pool_heads = need("pool_model.attention.weight")[0]
    arch = Architecture(num_channels=c, hidden_size=d, num_layers=max(layers) + 1 if layers else 0,
                        num_heads=num_heads or max(1, d // 64), mlp_dim=mlp, patch_size=p,
                        image_size=int(round(n_pos ** 0.5)) * p, layer_norm_eps=layer_norm_eps,
                        pool_dim=pool_dim, pool_heads=pool_heads)
    if classifier_sd:
        idx = sorted(int(k.split(".")[0]) for k in classifier_sd if k.split(".")[0].isdigit() and k.endswith(".weight"))
        if idx:
            dims = [tuple(classifier_sd[f"{i}.weight"].shape)[0] for i in idx]
            arch = replace(arch, classifier_dims=tuple(dims[:-1]), num_classes=dims[-1])
    return arch


def _diff(actual: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]]) -> tuple[list, list, list]:
    missing = [k for k in expected if k not in actual]
    unexpected = [k for k in actual if k not in expected]
    shaped = [f"{k}: {tuple(actual[k].shape)} != expected {expected[k]}" for k in expected
              if k in actual and tuple(actual[k].shape) != tuple(expected[k])]
    return missing, unexpected, shaped


def _raise_mismatch(source: str, missing: list, unexpected: list, shaped: list, hint: str = "") -> None:
    def fmt(items: list) -> str:
        head = ", ".join(items[:8])
        return head + (f", ... ({len(items)} in all)" if len(items) > 8 else "")

    parts = []
    if missing:
        parts.append(f"missing keys: {fmt(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {fmt(unexpected)}")
    if shaped:
        parts.append(f"mis-shaped keys: {fmt(shaped)}")
    raise CheckpointError(f"{source}: checkpoint does not match the SubCell layout; " + "; ".join(parts) + hint)


def convert_checkpoint(
    encoder_sd: Mapping[str, Any],
    classifier_sds: Sequence[Mapping[str, Any]],
    arch: Architecture,
    *,
    encoder_source: str = "encoder state dict",
    classifier_sources: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Strictly check public-layout state dicts and convert them to :class:`SubCellNet` keys.

    Applies the reference remaps (encoder prefix strip; pooler ``1.`` -> ``0.``; classifier 0/3/6 -> 0/2/4)
    and fuses query/key/value into one projection.

    Raises
    ------
    CheckpointError
        Naming the source and every missing, unexpected or mis-shaped key.
    """
    exp_enc, exp_clf = public_state_dict_layout(arch)
    missing, unexpected, shaped = _diff(encoder_sd, exp_enc)
    if missing or unexpected or shaped:
        hint = ""
        try:
            seen = infer_architecture(encoder_sd)
            if seen.hidden_size != arch.hidden_size or seen.num_layers != arch.num_layers:
                hint = (f" (the checkpoint looks like width {seen.hidden_size}, {seen.num_layers} layers, "
                        f"{seen.num_channels} channels; the expected architecture is width {arch.hidden_size}, "
                        f"{arch.num_layers} layers, {arch.num_channels} channels -- describe a non-standard model "
                        "in a '<encoder stem>.config.json' file)")
        except CheckpointError:
            pass
        _raise_mismatch(encoder_source, missing, unexpected, shaped, hint)
    classifier_sources = list(classifier_sources or [f"classifier state dict {i}" for i in range(len(classifier_sds))])
    for sd, src in zip(classifier_sds, classifier_sources):
        m2, u2, s2 = _diff(sd, exp_clf)
        if m2 or u2 or s2:
            _raise_mismatch(src, m2, u2, s2)

    def t(sd: Mapping[str, Any], key: str) -> torch.Tensor:
        v = sd[key]
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{encoder_source}: value of {key!r} is {type(v).__name__}, not a tensor")
        if not v.is_floating_point():
            raise CheckpointError(f"{encoder_source}: tensor {key!r} has dtype {v.dtype}, expected floating point")
        return v.detach().to(torch.float32)

    out: dict[str, torch.Tensor] = {}
    e = {k[len("encoder."):]: k for k in encoder_sd if k.startswith("encoder.")}  # prefix strip
    out["encoder.cls_token"] = t(encoder_sd, e["embeddings.cls_token"])
    out["encoder.pos_embed"] = t(encoder_sd, e["embeddings.position_embeddings"])
    out["encoder.patch_embed.weight"] = t(encoder_sd, e["embeddings.patch_embeddings.projection.weight"])
    out["encoder.patch_embed.bias"] = t(encoder_sd, e["embeddings.patch_embeddings.projection.bias"])
    for i in range(arch.num_layers):
        pre, dst = f"encoder.layer.{i}.", f"encoder.blocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"qkv.{kind}"] = torch.cat(
                [t(encoder_sd, e[f"{pre}attention.attention.{n}.{kind}"]) for n in ("query", "key", "value")])
            out[dst + f"proj.{kind}"] = t(encoder_sd, e[f"{pre}attention.output.dense.{kind}"])
            out[dst + f"fc1.{kind}"] = t(encoder_sd, e[f"{pre}intermediate.dense.{kind}"])
            out[dst + f"fc2.{kind}"] = t(encoder_sd, e[f"{pre}output.dense.{kind}"])
            out[dst + f"norm1.{kind}"] = t(encoder_sd, e[f"{pre}layernorm_before.{kind}"])
            out[dst + f"norm2.{kind}"] = t(encoder_sd, e[f"{pre}layernorm_after.{kind}"])
    for kind in ("weight", "bias"):
        out[f"encoder.norm.{kind}"] = t(encoder_sd, e[f"layernorm.{kind}"])
    # pooler: strip prefix, Dropout slot "1." -> "0.", then our module names
    pool = {k[len("pool_model."):].replace("1.", "0."): k for k in encoder_sd if k.startswith("pool_model.")}
    for k, src in pool.items():
        out["pooler." + k.replace(".0.", ".")] = t(encoder_sd, src)
    # classifiers: Linear positions 0/3/6 -> 0/2/4 (regex on the leading index)
    remap = {str(3 * j): str(2 * j) for j in range(len(arch.classifier_dims) + 1)}
    for ci, sd in enumerate(classifier_sds):
        for k in sd:
            head, rest = k.split(".", 1)
            out[f"classifiers.{ci}.{remap[head]}.{rest}"] = t(sd, k)
    return out


def load_checkpoint_file(path: str | os.PathLike, *, trusted: bool = False) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` a state dict: tensors and plain containers only, never other objects.

    No file is ever fully unpickled, whatever its hash: a hash (even a recorded one) says nothing about what a
    pickle runs. ``trusted`` is accepted for compatibility and has no effect.

    Raises
    ------
    CheckpointError
        The file holds anything but a mapping of tensors (e.g. pickled objects), naming the file.
    """
    del trusted  # a matching hash never makes unpickling arbitrary objects safe
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - UnpicklingError and friends
        lines = str(exc).splitlines()
        why = next((ln.strip() for ln in lines if "WeightsUnpickler error" in ln), lines[0] if lines else "")
        raise CheckpointError(
            f"{path}: not a plain state dict of tensors; torch.load(weights_only=True) refused it ({why}). "
            "Weight files are never unpickled as arbitrary objects. Use the published file (`subcell-screen "
            "models download`), or re-save yours as a state dict of tensors.") from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict (mapping of tensors), got {type(obj).__name__}")
    return dict(obj)


def architecture_sidecar(encoder_path: str | os.PathLike) -> Path:
    """Path of the optional architecture description next to an encoder file (``<stem>.config.json``)."""
    p = Path(encoder_path)
    return p.with_name(p.stem + ".config.json")


def _read_sidecar(encoder_path: Path) -> dict:
    side = architecture_sidecar(encoder_path)
    if not side.exists():
        return {}
    try:
        data = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{side}: unreadable architecture description ({exc})") from exc
    arch = data.get("architecture", {})
    known = {f.name for f in fields(Architecture)}
    bad = sorted(set(arch) - known)
    if bad:
        raise CheckpointError(f"{side}: unknown architecture field(s) {bad}; known: {sorted(known)}")
    return data


def _arch_from(card_arch: Architecture, overrides: Mapping[str, Any]) -> Architecture:
    kw = dict(overrides)
    if "classifier_dims" in kw:
        kw["classifier_dims"] = tuple(kw["classifier_dims"])
    arch = replace(card_arch, **kw)
    if arch.hidden_size % arch.num_heads:
        raise CheckpointError(f"hidden size {arch.hidden_size} is not divisible by {arch.num_heads} heads")
    return arch


# ---------------------------------------------------------------------------------------------------------
# user-facing model
# ---------------------------------------------------------------------------------------------------------

def select_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:<i>"`` or a torch device.

    Raises
    ------
    ModelError
        When CUDA is requested but unavailable, or the index does not exist.
    """
    if isinstance(device, torch.device):
        dev = device
    else:
        name = (device or "auto").strip().lower()
        if name == "auto":
            return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        try:
            dev = torch.device(name)
        except RuntimeError as exc:
            raise ModelError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:<index>") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"device {str(dev)!r} requested but CUDA is not available; use device='cpu' or 'auto'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelError(f"device {str(dev)!r} does not exist; {torch.cuda.device_count()} CUDA device(s)")
    return dev


def with_cast_linears(net: SubCellNet, dtype: torch.dtype) -> SubCellNet:
    """A copy of ``net`` whose encoder and pooler matmul weights (linear layers, patch embedding) are ``dtype``.

    Autocast casts these weights to bf16 (fp16) on *every* forward: under ``inference_mode`` it keeps no cast
    cache, so each call reads the fp32 weights and writes a bf16 copy (85 M parameters for ViT-B) -- on CPUs a
    visible share of a small batch's time. Casting once gives bit-identical results (the same round-to-nearest
    conversion) and halves the weight memory. Everything else -- position embeddings, CLS token, LayerNorms
    (the fp32 residual stream), classifier heads -- is shared with ``net``, which is left unchanged.
    """
    casts = set()
    for prefix, module in (("encoder.", net.encoder), ("pooler.", net.pooler)):
        for name, sub in module.named_modules():
            if isinstance(sub, (nn.Linear, PatchEmbed)):
                casts.update(f"{prefix}{name}.{p}" for p, _ in sub.named_parameters(recurse=False))
    sd = {k: (v.detach().to(dtype) if k in casts else v) for k, v in net.state_dict(keep_vars=True).items()}
    with torch.device("meta"):
        out = SubCellNet(net.arch, n_classifiers=len(net.classifiers))
    out.load_state_dict(sd, strict=True, assign=True)
    return out.eval().requires_grad_(False)


class SubCellModel:
    """A loaded SubCell model on a device, with a precision policy.

    Call it on preprocessed float32 crops ``(N, C, H, W)`` (channels in the card's letter order, min-max
    normalised, H and W multiples of 16) to get a :class:`SubCellOutput` of CPU float32 tensors.

    Attributes
    ----------
    card : ModelCard
    architecture : Architecture
    device : torch.device
    precision : str
        What runs: ``"fp32"`` (faithful; no TF32), ``"bf16"`` (autocast: bf16 matmuls/attention, fp32
        residual stream, LayerNorm, softmax, pooling and classifier), ``"bf16-pure"`` or ``"fp16"``.
        Constructed with ``precision="auto"``, the device decides (see
        :func:`~subcell_screen.embed.resolve_precision`).
    precision_choice : PrecisionChoice
        The requested and resolved precision, the reason and the hardware it was decided on
        (``precision_choice.to_dict()`` for run summaries and provenance).
    net : SubCellNet
        The torch module (eval mode, no grad).
    sha256 : dict
        File name -> SHA-256 of the loaded files (empty for in-memory weights).
    synthetic : bool
        True for test checkpoints written by :func:`~subcell_screen.embed.testing.make_tiny_checkpoint`.
    files : ModelFiles or None
        The weight files (set by :func:`load_model`; None for in-memory weights); ``files.to_dict()`` gives
        file name -> SHA-256.
    """

    files: Any = None

    def __init__(self, net: SubCellNet, *, card: ModelCard, device: str | torch.device,
                 precision: str | PrecisionChoice = "fp32", sha256: Mapping[str, str] | None = None,
                 synthetic: bool = False, compile: bool | str = False) -> None:
        device = select_device(device)
        self.precision_choice = resolve_precision(precision, device)
        self.card = card
        self.architecture = net.arch
        self.device = device
        self.precision = self.precision_choice.precision
        self.net = net.to(device).eval().requires_grad_(False)
        if self.precision == "bf16-pure":
            # encoder and pooler weights and activations in bf16 (residual stream included: less memory traffic
            # than autocast's fp32 residual stream); pooling softmax/weighted sum and classifier stay fp32
            self.net.encoder.to(torch.bfloat16)
            self.net.pooler.to(torch.bfloat16)
        elif self.precision in ("bf16", "fp16"):
            self.net = with_cast_linears(self.net, torch.bfloat16 if self.precision == "bf16" else torch.float16)
        self.sha256 = dict(sha256 or {})
        self.synthetic = synthetic
        self._compiled = None
        if compile:
            self.compile(mode=compile if isinstance(compile, str) else None)
        if self.precision == "fp32" and device.type == "cuda" and torch.get_float32_matmul_precision() != "highest":
            logger.warning("torch float32 matmul precision is %r (TF32); fp32 results are not faithful",
                           torch.get_float32_matmul_precision())

    # -- properties ------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.card.name

    @property
    def channels(self) -> str:
        """Letters of the input channels in order (e.g. ``"rybg"``)."""
        return self.card.channels

    @property
    def embedding_dim(self) -> int:
        return self.architecture.embedding_dim

    @property
    def has_classifier(self) -> bool:
        return len(self.net.classifiers) > 0

    def __repr__(self) -> str:
        return (f"SubCellModel({self.card.name!r}, device={str(self.device)!r}, precision={self.precision!r}"
                f"{', synthetic' if self.synthetic else ''})")

    # -- construction ----------------------------------------------------------------------------------------
    @classmethod
    def from_state_dicts(cls, encoder_sd: Mapping[str, Any], classifier_sds: Sequence[Mapping[str, Any]] = (), *,
                         card: ModelCard | str, architecture: Architecture | None = None,
                         device: str | torch.device = "auto", precision: str | PrecisionChoice = "fp32",
                         encoder_source: str = "encoder state dict", classifier_sources: Sequence[str] | None = None,
                         sha256: Mapping[str, str] | None = None, synthetic: bool = False,
                         compile: bool | str = False) -> SubCellModel:
        """Build from in-memory public-layout state dicts (strict; see :func:`convert_checkpoint`)."""
        card = get_model_card(card)
        arch = architecture or card.architecture
        if arch.num_channels != len(card.channels):
            raise CheckpointError(f"model {card.name!r} takes {len(card.channels)} channels ({card.channels}) but "
                                  f"the architecture has {arch.num_channels}")
        sd = convert_checkpoint(encoder_sd, classifier_sds, arch, encoder_source=encoder_source,
                                classifier_sources=classifier_sources)
        with torch.device("meta"):  # no random init: every parameter is assigned from the checkpoint
            net = SubCellNet(arch, n_classifiers=len(classifier_sds))
        result = net.load_state_dict(sd, strict=True, assign=True)
        assert not result.missing_keys and not result.unexpected_keys  # convert_checkpoint guarantees it
        return cls(net, card=card, device=select_device(device), precision=precision, sha256=sha256,
                   synthetic=synthetic, compile=compile)

    def compile(self, *, mode: str | None = None) -> SubCellModel:
        """Compile the forward pass with :func:`torch.compile` (static shapes; the engine pads batches)."""
        self._compiled = torch.compile(self.net, mode=mode, dynamic=False)
        return self

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    # -- inference -------------------------------------------------------------------------------------------
    def autocast(self) -> Any:
        """The autocast context of this model's precision (a no-op context for fp32)."""
        if self.precision in ("fp32", "bf16-pure"):
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def check_input(self, x: torch.Tensor | np.ndarray) -> None:
        """Raise :class:`ModelError` unless ``x`` is (N, C, H, W) with this model's C and H, W >= patch size."""
        shape = tuple(x.shape)
        c = self.architecture.num_channels
        if len(shape) != 4 or shape[1] != c:
            raise ModelError(
                f"model {self.card.name!r} expects float32 crops (N, {c}, H, W) with channels "
                f"{', '.join(f'{k}={n}' for k, n in zip(self.card.channels, self.card.channel_names))}; got shape {shape}")
        p = self.architecture.patch_size
        if shape[2] < p or shape[3] < p:
            raise ModelError(f"crops of {shape[2]}x{shape[3]} px are smaller than one {p}-px patch")

    def forward_device(self, x: torch.Tensor, *, attention: bool = False, hidden_states: bool = False) -> SubCellOutput:
        """Forward a float32 tensor already on :attr:`device`; outputs stay on the device (float32)."""
        fn = self._compiled if (self._compiled is not None and not attention and not hidden_states) else self.net
        if self.precision == "bf16-pure":
            x = x.to(torch.bfloat16)
        with torch.inference_mode(), self.autocast():
            emb, probs, pa, ca, tok = fn(x, attention, hidden_states) if fn is self.net else fn(x)
        return SubCellOutput(emb.float(), None if probs is None else probs.float(),
                             None if pa is None else pa.float(), None if ca is None else ca.float(), tok)

    def __call__(self, x: torch.Tensor | np.ndarray, *, batch_size: int | None = None, attention: bool = False,
                 hidden_states: bool = False) -> SubCellOutput:
        """Embed preprocessed crops.

        Parameters
        ----------
        x : torch.Tensor or ndarray, (N, C, H, W) or (C, H, W), float32
            Preprocessed crops (see :func:`subcell_screen.embed.preprocess`).
        batch_size
            Forward at most this many crops at a time (default: all).
        attention
            Also return pooler and last-layer CLS attention maps.
        hidden_states
            Also return the final tokens.

        Returns
        -------
        SubCellOutput
            CPU float32 tensors: ``embedding`` (N, 1536), ``probabilities`` (N, 31) or None.
        """
        t = torch.as_tensor(x)
        if t.ndim == 3:
            t = t.unsqueeze(0)
        self.check_input(t)
        if not t.is_floating_point():
            raise ModelError(f"crops must be float32 in [0, 1] (preprocessed); got dtype {t.dtype}")
        t = t.to(torch.float32)
        n = t.shape[0]
        step = batch_size or max(n, 1)
        parts = []
        for i in range(0, n, step):
            chunk = t[i:i + step].to(self.device, non_blocking=True)
            out = self.forward_device(chunk, attention=attention, hidden_states=hidden_states)
            parts.append(SubCellOutput(*(None if v is None else v.cpu() for v in
                                         (out.embedding, out.probabilities, out.pool_attention, out.cls_attention,
                                          out.last_hidden_state))))
        if not parts:
            d = self.embedding_dim
            return SubCellOutput(torch.zeros(0, d), torch.zeros(0, self.architecture.num_classes)
                                 if self.has_classifier else None)

        def cat(name: str) -> torch.Tensor | None:
            vals = [getattr(p, name) for p in parts]
            return None if vals[0] is None else torch.cat(vals)

        return SubCellOutput(cat("embedding"), cat("probabilities"), cat("pool_attention"), cat("cls_attention"),
                             cat("last_hidden_state"))


def load_model(
    name: str | ModelCard,
    *,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    precision: str | PrecisionChoice = "fp32",
    offline: bool | None = None,
    classifiers: bool = True,
    compile: bool | str = False,
    base_url: str | None = None,
    progress: bool | None = None,
) -> SubCellModel:
    """Load a public SubCell model (downloading and verifying its files unless offline).

    Parameters
    ----------
    name
        Model name, e.g. ``"rybg/MAE-CellS-ProtS-Pool"`` (see :mod:`subcell_screen.embed.registry`).
    cache_dir
        Weights folder (default ``$SUBCELL_SCREEN_MODELS``, else the user cache dir); files keep their public
        names. A ``<encoder stem>.config.json`` there overrides the architecture (tiny test models).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:<i>"``.
    precision
        ``"fp32"`` (faithful), ``"bf16"`` (fast path on hardware with native bf16), ``"bf16-pure"``, or
        ``"auto"``: bf16 on GPUs with bf16 tensor cores and on CPUs with native bf16 matmul (AMX-BF16,
        AVX512-BF16, Arm BF16), fp32 elsewhere. The choice and its reason are in
        ``model.precision_choice`` (:func:`~subcell_screen.embed.resolve_precision`).
    offline
        Never download (default ``$SUBCELL_SCREEN_OFFLINE``).
    classifiers
        Load the classifier head(s) (False: embeddings only; probabilities are then None).
    compile
        :func:`torch.compile` the forward pass (True or a compile mode such as ``"max-autotune"``).
    base_url
        Download mirror (default ``$SUBCELL_SCREEN_MODELS_URL``).
    progress
        Download progress bar: None (default) when stderr is a terminal, True always, False never.

    Returns
    -------
    SubCellModel

    Raises
    ------
    UnknownModelError, WeightsNotFoundError, ChecksumError, DownloadError, CheckpointError
    """
    from .weights import ensure_model_files

    card = get_model_card(name)
    files = ensure_model_files(card, cache_dir=cache_dir, offline=offline, classifiers=classifiers,
                               base_url=base_url, progress=progress)
    side = _read_sidecar(files.encoder)
    arch = _arch_from(card.architecture, side.get("architecture", {}))
    synthetic = bool(side.get("synthetic")) or "synthetic" in files.verified.values()
    enc_sd = load_checkpoint_file(files.encoder)
    clf_sds = [load_checkpoint_file(p) for p in files.classifiers]
    model = SubCellModel.from_state_dicts(
        enc_sd, clf_sds, card=card, architecture=arch, device=device, precision=precision,
        encoder_source=str(files.encoder), classifier_sources=[str(p) for p in files.classifiers],
        sha256=files.sha256, synthetic=synthetic, compile=compile)
    model.files = files
    logger.info("loaded %s on %s, precision %s%s", card.name, model.device, model.precision_choice,
                " [SYNTHETIC test weights]" if synthetic else "")
    return model


def architecture_dict(arch: Architecture) -> dict:
    """JSON-friendly dict of an :class:`Architecture` (for sidecars and provenance)."""
    d = asdict(arch)
    d["classifier_dims"] = list(d["classifier_dims"])
    return d
