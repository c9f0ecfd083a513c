"""Crop preprocessing for SubCell: optional mask, min-max normalisation with epsilon, resize, channel order.

Two normalisations (model card default ``"joint"``):

* ``"joint"`` -- per cell, min and max over (C, H, W): ``(x - min) / (max - min + eps)``; what SubCell was
  trained with (subcell-embed ``MinMaxNormalize``) and what SubCellPortable 2024 did;
* ``"per_channel"`` -- per cell and channel, over (H, W); SubCellPortable 2025 and the JUMP analyses.

Both use ``eps`` (1e-6) in the denominator, so a constant crop or channel gives zeros, never NaN. A mask
(1 inside the dilated cell) multiplies the crop *before* normalising, as in training (background zeros then
define the minimum). ``"none"`` passes data through (already in [0, 1]).

All functions accept numpy arrays or torch tensors (any device) and return the same kind; they never modify
their input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["NORMALIZATIONS", "preprocess", "min_max", "reorder_channels", "resize_crops"]

NORMALIZATIONS = ("joint", "per_channel", "none")


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def min_max(x: Any, *, normalize: str = "joint", eps: float = 1e-6) -> Any:
    """Min-max normalise crops ``(N, C, H, W)`` per cell (``joint``) or per cell and channel (``per_channel``).

    Returns float32 of the same kind (numpy / torch) and device as ``x``.
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalize!r}; use one of {NORMALIZATIONS}")
    if _is_torch(x):
        import torch

        x = x.to(torch.float32)
        if normalize == "none":
            return x.clone()
        dims = (1, 2, 3) if normalize == "joint" else (2, 3)
        lo = x.amin(dim=dims, keepdim=True)
        hi = x.amax(dim=dims, keepdim=True)
        return (x - lo) / (hi - lo + eps)
    x = np.asarray(x, dtype=np.float32)
    if normalize == "none":
        return x.copy()
    axes = (1, 2, 3) if normalize == "joint" else (2, 3)
    lo = x.min(axis=axes, keepdims=True)
    hi = x.max(axis=axes, keepdims=True)
    return ((x - lo) / (hi - lo + np.float32(eps))).astype(np.float32, copy=False)


def preprocess(
    crops: Any,
    *,
    normalize: str = "joint",
    mask: Any | None = None,
    eps: float = 1e-6,
    channel_order: Sequence[int] | None = None,
) -> Any:
    """Turn raw crops into SubCell input.

    Parameters
    ----------
    crops : ndarray or torch.Tensor, (N, C, H, W) or (C, H, W), any real dtype
        Raw intensities, channels in the model's letter order (or give ``channel_order``).
    normalize
        ``"joint"`` (training), ``"per_channel"`` (SubCellPortable 2025 / JUMP) or ``"none"``.
    mask : array, (N, 1, H, W), (N, H, W) or (H, W), optional
        Cell mask (non-zero inside); crops are multiplied by it before normalising.
    eps
        Denominator epsilon.
    channel_order
        Indices selecting and ordering the channels first (e.g. HPA Kaggle [r, g, b, y] -> ``(0, 3, 2, 1)``).

    Returns
    -------
    ndarray or torch.Tensor, (N, C', H, W) float32
        Same kind as ``crops``; a (C, H, W) input gives a (1, C', H, W) output.

    Raises
    ------
    ValueError
        Wrong dimensions, mask shape, or non-finite values (numpy input; names the crop index).
    """
    torch_in = _is_torch(crops)
    x = crops
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"crops must be (N, C, H, W) or (C, H, W); got shape {tuple(crops.shape)}")
    if channel_order is not None:
        x = reorder_channels(x, channel_order)
    if not torch_in:
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
            raise ValueError(f"crops must be real numbers; got dtype {x.dtype}")
        finite = np.isfinite(x).reshape(x.shape[0], -1).all(axis=1)
        if not finite.all():
            raise ValueError(f"crop(s) {np.flatnonzero(~finite)[:10].tolist()} contain NaN or infinite values")
        x = x.astype(np.float32)
    if mask is not None:
        m = mask
        if m.ndim == 2:
            m = m[None, None]
        elif m.ndim == 3:
            m = m[:, None]
        if m.ndim != 4 or m.shape[1] != 1 or tuple(m.shape[2:]) != tuple(x.shape[2:]) or m.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not fit crops {tuple(x.shape)}")
        if torch_in:
            import torch

            x = x.to(torch.float32) * (m != 0).to(device=x.device, dtype=torch.float32)
        else:
            x = x * (np.asarray(m) != 0).astype(np.float32)
    return min_max(x, normalize=normalize, eps=eps)


def reorder_channels(x: Any, order: Sequence[int]) -> Any:
    """Select/reorder the channel axis (axis 1 of (N, C, H, W)); returns a new array/tensor."""
    order = list(order)
    c = x.shape[1]
    bad = [i for i in order if not -c <= i < c]
    if bad:
        raise ValueError(f"channel indices {bad} out of range for {c} channels")
    if _is_torch(x):
        import torch

        return x.index_select(1, torch.as_tensor(order, device=x.device, dtype=torch.long))
    return np.ascontiguousarray(np.asarray(x)[:, order])


def resize_crops(x: Any, size: int | tuple[int, int], *, mode: str = "bilinear") -> Any:
    """Resize crops ``(N, C, H, W)`` to ``size`` (torch, on the input's device).

    ``bilinear`` uses half-pixel centres without antialiasing (the same convention as OpenCV ``INTER_LINEAR``
    used by SubCell's training crops); use ``mode="nearest"`` for masks.
    """
    import torch
    import torch.nn.functional as F

    size = (size, size) if isinstance(size, int) else tuple(size)
    t = x if _is_torch(x) else torch.from_numpy(np.ascontiguousarray(x))
    if tuple(t.shape[-2:]) == size:
        out = t.to(torch.float32)
    elif mode == "nearest":
        out = F.interpolate(t.to(torch.float32), size=size, mode="nearest")
    else:
        out = F.interpolate(t.to(torch.float32), size=size, mode=mode, align_corners=False, antialias=False)
    return out if _is_torch(x) else out.numpy()
