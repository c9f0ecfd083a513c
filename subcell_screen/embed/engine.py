"""Inference engine: :class:`~subcell_screen.crops.CropBatch` stream -> per-cell SubCell embeddings.

For each batch of crops the engine selects and orders channels per model pass (from the
:class:`~subcell_screen.channels.ChannelMap`), resizes on the device when the batch still has to be rescaled
(``scale != 1``; bilinear, half-pixel centres, no antialias -- OpenCV ``INTER_LINEAR`` convention; masks
nearest), applies the cell mask (optional), min-max normalises (``joint`` or ``per_channel``, epsilon) and runs
all passes of all cells as one forward: Cell Painting's three ``ybg`` passes ``[ER, DNA, X]``, X in
(Mito, AGP, RNA), become a ``(3B, 3, H, W)`` batch whose outputs are concatenated per cell in pass order
(4608-d).

Throughput: consecutive small batches with the same geometry are coalesced into forwards of up to
``batch_size`` images and split back; a background thread slices, copies and pins the next batch while the
device works; host->device copies are non-blocking, device->host copies go to pinned buffers and are
collected one forward later, so the device queue never drains between batches. ``precision="bf16"`` runs
matmuls and attention in bfloat16 (SDPA / flash attention) with an fp32 residual stream; ``"fp32"`` is the
faithful mode; ``"auto"`` (the default) picks bf16 where the device has native bf16 and fp32 elsewhere;
``compile=True`` wraps the network in :func:`torch.compile` (batches are then padded to a fixed size to
avoid recompilation; it helps on GPUs, not measurably on CPUs, see ``benchmarks/RESULTS.md``).

Outputs (:class:`EmbeddingResult`, one per input batch, in input order): ``embedding`` (N, 1536 x passes)
float32, ``probabilities`` (N, 31 x passes) float32 (per pass, mean of classifier sigmoids; None without
classifiers), the batch's ``keys`` unchanged, optional pooler attention maps.

This module does not import polars; it only reads the attributes ``data``, ``keys``, ``channel_names``,
``mask``, ``scale`` and ``out_size`` of the batches it is given.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..channels import ChannelMap
from .classes import NUM_CLASSES, probability_columns

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..crops import CropBatch
    from .model import SubCellModel

__all__ = ["EmbeddingResult", "Embedder", "embed_batches", "default_channel_map"]

logger = logging.getLogger(__name__)
_EPS = 1e-6


@dataclass(frozen=True)
class EmbeddingResult:
    """Per-cell SubCell outputs of one batch.

    Attributes
    ----------
    keys : polars.DataFrame or sequence
        The batch's keys (``plate``, ``well``, ``site``, ``cell_id``), unchanged.
    embedding : ndarray, (N, 1536 * P), float32
        Embeddings of the P passes, concatenated in pass order.
    probabilities : ndarray, (N, 31 * P), float32, or None
        Class probabilities per pass (mean of classifier sigmoids), concatenated in pass order.
    pass_names : tuple of str
        Pass names (``("rybg",)``, ``("Mito", "AGP", "RNA")``).
    model : str
        Model name.
    pool_attention : ndarray, (N, P, 2, h, w), float32, or None
        Pooler attention over patches, when requested.
    """

    keys: Any = field(repr=False)
    embedding: np.ndarray = field(repr=False)
    probabilities: np.ndarray | None = field(default=None, repr=False)
    pass_names: tuple[str, ...] = ("pass",)
    model: str = ""
    pool_attention: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.embedding.shape[0])

    @property
    def n_passes(self) -> int:
        return len(self.pass_names)

    @property
    def embedding_dim(self) -> int:
        return int(self.embedding.shape[1])

    def feature_names(self) -> list[str]:
        """``feat0000..`` for one pass, ``<pass>_feat0000..`` for several (as :meth:`ChannelMap.feature_names`)."""
        return self.names_for(self.pass_names, self.embedding_dim)

    @staticmethod
    def names_for(pass_names: Sequence[str], embedding_dim: int) -> list[str]:
        """Feature names of an embedding of ``embedding_dim`` columns from passes ``pass_names``."""
        per = int(embedding_dim) // max(len(pass_names), 1)
        if len(pass_names) == 1:
            return [f"feat{i:04d}" for i in range(per)]
        return [f"{p}_feat{i:04d}" for p in pass_names for i in range(per)]

    def probability_names(self) -> list[str]:
        """``prob00..prob30`` (or ``<pass>_probNN``)."""
        return probability_columns(self.pass_names)

    def pass_embedding(self, which: int | str) -> np.ndarray:
        """Embedding of one pass, (N, 1536)."""
        i = self.pass_names.index(which) if isinstance(which, str) else int(which)
        per = self.embedding_dim // self.n_passes
        return self.embedding[:, i * per:(i + 1) * per]

    @classmethod
    def concat(cls, results: Sequence[EmbeddingResult]) -> EmbeddingResult:
        """Concatenate results of the same model and passes (keys concatenated too)."""
        results = list(results)
        if not results:
            raise ValueError("nothing to concatenate")
        first = results[0]
        for r in results[1:]:
            if r.pass_names != first.pass_names or r.embedding_dim != first.embedding_dim:
                raise ValueError("cannot concatenate results of different passes or widths")
        keys = _concat_keys([r.keys for r in results])
        probs = None if first.probabilities is None else np.concatenate([r.probabilities for r in results])
        att = None
        if first.pool_attention is not None and all(r.pool_attention is not None for r in results):
            att = np.concatenate([r.pool_attention for r in results])
        return cls(keys, np.concatenate([r.embedding for r in results]), probs, first.pass_names, first.model, att)


def _concat_keys(keys: list) -> Any:
    if all(k is None for k in keys):
        return None
    if type(keys[0]).__module__.startswith("polars"):
        import polars as pl

        return pl.concat(keys, how="vertical_relaxed")
    if type(keys[0]).__module__.startswith("pandas"):
        import pandas as pd

        return pd.concat(keys, ignore_index=True)
    out: list = []
    for k in keys:
        out.extend(list(k))
    return out


def default_channel_map(model_channels: str) -> ChannelMap:
    """The HPA channel map for a SubCell channel set (``hpa``, ``hpa-rbg``, ``hpa-ybg``, ``hpa-bg``)."""
    from ..channels import preset

    return preset("hpa" if model_channels == "rybg" else f"hpa-{model_channels}")


@dataclass
class _Slice:
    index: int          # batch number in the input stream
    batch: Any
    start: int
    stop: int
    last: bool          # last slice of this batch


@dataclass
class _Unit:
    slices: list[_Slice]
    host: Any = None     # torch tensor (n, U, H, W), pinned on CUDA
    mask: Any = None
    union: tuple[int, ...] = ()
    passes: list[tuple[int, ...]] = field(default_factory=list)
    out_size: int = 0
    n: int = 0


class Embedder:
    """SubCell inference over a stream of crop batches (see module docs).

    Parameters
    ----------
    model
        A loaded :class:`~subcell_screen.embed.SubCellModel`, or a model name to load with ``cache_dir``,
        ``offline``, ``device``, ``precision`` and ``compile``.
    channel_map
        Which acquired channel feeds each model letter, per pass (default: the HPA map of the model's
        channel set). Its ``model_channels`` must equal the model's.
    normalize
        ``"joint"`` or ``"per_channel"`` (default: the model card's, ``joint``).
    mask
        Multiply crops by the batch's cell mask before normalising (batches must then carry masks).
    batch_size
        Images per forward (a Cell Painting cell is 3 images).
    device, precision, compile, cache_dir, offline
        Used when ``model`` is a name (``precision="auto"``: bf16 where the device has native bf16, fp32
        elsewhere; see :func:`~subcell_screen.embed.resolve_precision`). A loaded model keeps its own.
    num_workers
        Host threads preparing batches (slicing channels, pinning) ahead of the device.
    prefetch
        Prepared work units queued ahead of the device.
    attention
        Also return pooler attention maps (slower; not compiled).
    progress
        tqdm progress over cells (None: only on a terminal).

    Attributes
    ----------
    precision_choice : PrecisionChoice
        The model's resolved precision and the reason (for the run summary and provenance).
    """

    def __init__(
        self,
        model: SubCellModel | str,
        *,
        channel_map: ChannelMap | None = None,
        normalize: str | None = None,
        mask: bool = False,
        batch_size: int = 256,
        device: str = "auto",
        precision: str = "auto",
        compile: bool | str = False,
        cache_dir: Any = None,
        offline: bool | None = None,
        num_workers: int = 1,
        prefetch: int = 2,
        attention: bool = False,
        progress: bool | None = None,
    ) -> None:
        from .model import SubCellModel, load_model
        from .preprocess import NORMALIZATIONS

        if not isinstance(model, SubCellModel):
            model = load_model(model, cache_dir=cache_dir, device=device, precision=precision, offline=offline,
                               compile=compile)
        self.model = model
        self.channel_map = channel_map or default_channel_map(model.channels)
        if self.channel_map.model_channels != model.channels:
            from .._errors import ChannelMapError

            raise ChannelMapError(
                f"channel map {self.channel_map.name!r} fills SubCell letters {self.channel_map.model_channels!r} "
                f"but model {model.name!r} takes {model.channels!r}")
        self.normalize = normalize or model.card.preprocessing.normalize
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {self.normalize!r}; use one of {NORMALIZATIONS}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.mask = bool(mask)
        self.batch_size = int(batch_size)
        self.num_workers = max(1, int(num_workers))
        self.prefetch = max(1, int(prefetch))
        self.attention = bool(attention)
        self.progress = progress
        self.pass_names = tuple(p.name for p in self.channel_map.passes)
        self.stats = {"cells": 0, "images": 0, "seconds": 0.0}
        self._copy_stream = None

    # -- public API ------------------------------------------------------------------------------------------
    @property
    def n_passes(self) -> int:
        return len(self.channel_map.passes)

    @property
    def precision_choice(self) -> Any:
        """The model's :class:`~subcell_screen.embed.PrecisionChoice` (requested, resolved, reason, hardware)."""
        return self.model.precision_choice

    @property
    def embedding_dim(self) -> int:
        return self.model.embedding_dim * self.n_passes

    def feature_names(self) -> list[str]:
        """Names of the embedding columns (``ChannelMap.feature_names``)."""
        return self.channel_map.feature_names()

    def __call__(self, batch: CropBatch) -> EmbeddingResult:
        """Embed one batch (synchronous; e.g. as a Ray Data actor's callable)."""
        return next(iter(self.embed_batches([batch], progress=False)))

    def embed_arrays(self, data: np.ndarray, *, channel_names: Sequence[str], keys: Any = None,
                     mask: np.ndarray | None = None, scale: float = 1.0, out_size: int | None = None) -> EmbeddingResult:
        """Embed raw crops ``(N, C, H, W)`` given their channel names (no CropBatch needed)."""
        from types import SimpleNamespace

        batch = SimpleNamespace(data=data, keys=keys if keys is not None else list(range(len(data))),
                                channel_names=tuple(channel_names), mask=mask, scale=scale,
                                out_size=out_size or data.shape[-1])
        return self(batch)

    def embed_batches(self, batches: Iterable[CropBatch], *, progress: bool | None = None) -> Iterator[EmbeddingResult]:
        """Yield one :class:`EmbeddingResult` per input batch, in order."""
        import torch

        progress = self.progress if progress is None else progress
        bar = None
        if progress or (progress is None and _isatty()):
            try:
                from tqdm.auto import tqdm

                bar = tqdm(unit="cell", desc=f"SubCell {self.model.name}")
            except ImportError:  # pragma: no cover
                bar = None
        t0 = time.perf_counter()
        parts: dict[int, list] = {}
        pending = None
        try:
            for unit in self._prepared_units(batches):
                launched = self._launch(unit) if unit.n else (unit, None)
                if pending is not None:
                    yield from self._finish(pending, parts, bar)
                pending = launched
            if pending is not None:
                yield from self._finish(pending, parts, bar)
        finally:
            if bar is not None:
                bar.close()
            if self.model.device.type == "cuda":
                torch.cuda.synchronize(self.model.device)
            self.stats["seconds"] += time.perf_counter() - t0

    # -- stage 1: group batches into work units (host thread) ------------------------------------------------
    def _units(self, batches: Iterable[Any]) -> Iterator[_Unit]:
        per_unit = max(1, self.batch_size // self.n_passes)
        current: list[_Slice] = []
        cur_sig = None
        cur_n = 0
        for bi, batch in enumerate(batches):
            self._check_batch(batch, bi)
            n = int(batch.data.shape[0])
            sig = (tuple(batch.channel_names), tuple(batch.data.shape[1:]), float(batch.scale), int(batch.out_size),
                   batch.mask is None)
            if n == 0:
                if current:
                    yield _Unit(current)
                    current, cur_n = [], 0
                yield _Unit([_Slice(bi, batch, 0, 0, True)])
                continue
            start = 0
            while start < n:
                if current and (sig != cur_sig or cur_n >= per_unit):
                    yield _Unit(current)
                    current, cur_n = [], 0
                take = min(n - start, per_unit - cur_n)
                current.append(_Slice(bi, batch, start, start + take, start + take == n))
                cur_sig = sig
                cur_n += take
                start += take
        if current:
            yield _Unit(current)

    def _check_batch(self, batch: Any, index: int) -> None:
        for attr in ("data", "channel_names", "scale", "out_size"):
            if not hasattr(batch, attr):
                raise TypeError(f"batch {index}: expected a CropBatch-like object with {attr!r}")
        if batch.data.ndim != 4:
            raise ValueError(f"batch {index}: crops must be (N, C, H, W); got {batch.data.shape}")
        if self.mask and batch.data.shape[0] and getattr(batch, "mask", None) is None:
            raise ValueError(f"batch {index}: mask=True but the batch carries no cell masks")
        p = self.model.architecture.patch_size
        if int(batch.out_size) < p:
            raise ValueError(f"batch {index}: out_size {batch.out_size} is smaller than a {p}-px patch")

    def _prepare(self, unit: _Unit) -> _Unit:
        import torch

        n = sum(s.stop - s.start for s in unit.slices)
        unit.n = n
        if not n:
            return unit
        first = unit.slices[0].batch
        passes = self.channel_map.pass_indices(list(first.channel_names))
        union = tuple(sorted({i for p in passes for i in p}))
        pos = {c: j for j, c in enumerate(union)}
        unit.union = union
        unit.passes = [tuple(pos[i] for i in p) for p in passes]
        unit.out_size = int(first.out_size)
        all_channels = union == tuple(range(first.data.shape[1]))
        chunks = []
        for s in unit.slices:
            d = s.batch.data[s.start:s.stop]
            chunks.append(d if all_channels else d[:, list(union)])
        arr = np.ascontiguousarray(np.concatenate(chunks) if len(chunks) > 1 else chunks[0], dtype=np.float32)
        host = torch.from_numpy(arr)
        masks = None
        if self.mask:
            masks = np.ascontiguousarray(np.concatenate([np.asarray(s.batch.mask[s.start:s.stop]) for s in unit.slices]),
                                         dtype=np.float32)
            masks = torch.from_numpy(masks)
        if self.model.device.type == "cuda":
            host = host.pin_memory()
            masks = masks.pin_memory() if masks is not None else None
        unit.host, unit.mask = host, masks
        return unit

    def _prepared_units(self, batches: Iterable[Any]) -> Iterator[_Unit]:
        """Prepare units in background threads, yielding them in order."""
        if self.num_workers <= 1 and self.prefetch <= 0:  # pragma: no cover - synchronous fallback
            for u in self._units(batches):
                yield self._prepare(u)
            return
        from concurrent.futures import ThreadPoolExecutor

        q: queue.Queue = queue.Queue(maxsize=self.prefetch + self.num_workers)
        stop = threading.Event()
        done = object()

        def producer() -> None:
            try:
                with ThreadPoolExecutor(self.num_workers, thread_name_prefix="subcell-prep") as pool:
                    for u in self._units(batches):
                        fut = pool.submit(self._prepare, u)
                        while not stop.is_set():
                            try:
                                q.put(fut, timeout=0.1)
                                break
                            except queue.Full:
                                continue
                        if stop.is_set():
                            return
            except BaseException as exc:  # noqa: BLE001 - forwarded to the consumer
                q.put(exc)
                return
            q.put(done)

        th = threading.Thread(target=producer, name="subcell-prefetch", daemon=True)
        th.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item.result()
        finally:
            stop.set()
            while th.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    th.join(timeout=0.05)

    # -- stage 2: device work (main thread) ------------------------------------------------------------------
    def _device_input(self, unit: _Unit) -> torch.Tensor:
        """(P*n, C, S, S) normalised model input, pass-major, on the device."""
        import torch

        from .preprocess import min_max, resize_crops

        dev = self.model.device
        if dev.type == "cuda":  # copy on a side stream so it overlaps the previous forward
            if self._copy_stream is None:
                self._copy_stream = torch.cuda.Stream(dev)
            with torch.cuda.stream(self._copy_stream):
                x = unit.host.to(dev, non_blocking=True)
                m = unit.mask.to(dev, non_blocking=True) if unit.mask is not None else None
            main = torch.cuda.current_stream(dev)
            main.wait_stream(self._copy_stream)
            x.record_stream(main)
            if m is not None:
                m.record_stream(main)
        else:
            x = unit.host
            m = unit.mask
        s = unit.out_size
        if tuple(x.shape[-2:]) != (s, s):
            x = resize_crops(x, s)
            if m is not None:
                m = resize_crops(m, s, mode="nearest")
        idx = torch.as_tensor([i for p in unit.passes for i in p], device=dev)
        c = len(unit.passes[0])
        xs = x.index_select(1, idx).reshape(x.shape[0], len(unit.passes), c, s, s).transpose(0, 1)
        xs = xs.reshape(len(unit.passes) * x.shape[0], c, s, s)
        if m is not None:
            xs = xs * (m != 0).to(xs.dtype).repeat(len(unit.passes), 1, 1, 1)
        return min_max(xs, normalize=self.normalize, eps=self.model.card.preprocessing.epsilon)

    def _launch(self, unit: _Unit) -> tuple[_Unit, dict]:
        import torch

        x = self._device_input(unit)
        total = x.shape[0]
        embs, probs, atts = [], [], []
        step = self.batch_size
        for i in range(0, total, step):
            chunk = x[i:i + step]
            pad = 0
            if self.model.compiled and not self.attention and chunk.shape[0] < step:
                pad = step - chunk.shape[0]
                chunk = torch.cat([chunk, chunk[:1].expand(pad, *chunk.shape[1:])])
            out = self.model.forward_device(chunk, attention=self.attention)
            keep = chunk.shape[0] - pad
            embs.append(out.embedding[:keep])
            if out.probabilities is not None:
                probs.append(out.probabilities[:keep])
            if out.pool_attention is not None:
                atts.append(out.pool_attention[:keep])
        p, n = len(unit.passes), unit.n
        emb = torch.cat(embs).reshape(p, n, -1).transpose(0, 1).reshape(n, -1)
        pr = torch.cat(probs).reshape(p, n, -1).transpose(0, 1).reshape(n, -1) if probs else None
        at = torch.cat(atts) if atts else None
        if at is not None:
            at = at.reshape(p, n, *at.shape[1:]).transpose(0, 1)
        res = {"embedding": emb, "probabilities": pr, "attention": at}
        if self.model.device.type == "cuda":  # async copies into pinned buffers, collected next round
            host = {}
            for k, v in res.items():
                if v is None:
                    host[k] = None
                    continue
                buf = torch.empty(v.shape, dtype=v.dtype, pin_memory=True)
                buf.copy_(v, non_blocking=True)
                host[k] = buf
            ev = torch.cuda.Event()
            ev.record()
            res = {"host": host, "event": ev}
        self.stats["images"] += total
        return unit, res

    def _finish(self, launched: tuple[_Unit, dict | None], parts: dict[int, list], bar: Any) -> Iterator[EmbeddingResult]:
        unit, res = launched
        arrays = None
        if res is not None:
            if "event" in res:
                res["event"].synchronize()
                res = res["host"]
            arrays = {k: (None if v is None else v.numpy().astype(np.float32, copy=False)) for k, v in res.items()}
        off = 0
        for s in unit.slices:
            k = s.stop - s.start
            if arrays is not None and k:
                parts.setdefault(s.index, []).append({n: (None if a is None else a[off:off + k]) for n, a in arrays.items()})
            off += k
            if s.last:
                yield self._assemble(s.batch, parts.pop(s.index, []))
        if bar is not None:
            bar.update(unit.n)
        self.stats["cells"] += unit.n

    def _assemble(self, batch: Any, chunks: list[dict]) -> EmbeddingResult:
        d = self.embedding_dim
        has_clf = self.model.has_classifier
        if not chunks:
            emb = np.zeros((0, d), np.float32)
            prob = np.zeros((0, NUM_CLASSES * self.n_passes), np.float32) if has_clf else None
            att = None
        else:
            emb = np.concatenate([c["embedding"] for c in chunks]) if len(chunks) > 1 else chunks[0]["embedding"].copy()
            prob = (np.concatenate([c["probabilities"] for c in chunks]) if chunks[0]["probabilities"] is not None
                    else None)
            att = np.concatenate([c["attention"] for c in chunks]) if chunks[0]["attention"] is not None else None
        return EmbeddingResult(getattr(batch, "keys", None), emb, prob, self.pass_names, self.model.name, att)


def _isatty() -> bool:
    import sys

    return sys.stderr.isatty()


def embed_batches(batches: Iterable[CropBatch], *, model: SubCellModel | str, channel_map: ChannelMap | None = None,
                  **kwargs: Any) -> Iterator[EmbeddingResult]:
    """Functional form of :meth:`Embedder.embed_batches` (keyword arguments as :class:`Embedder`)."""
    yield from Embedder(model, channel_map=channel_map, **kwargs).embed_batches(batches)
