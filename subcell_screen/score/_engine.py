"""Streaming average-precision engine (copairs pair semantics without materialising pairs).

How it works
------------
copairs enumerates every positive and negative pair with a DuckDB self-join, computes one similarity per pair and
sorts one giant rank list. Here the pair rules are evaluated on the fly:

1. Rows are grouped into *signatures* (unique tuples of the pair-rule columns). Whether two rows pair is a
   function of their signatures only (plus ``i != j``), so per-row pair counts come from a small
   signature x signature relation, never from a pair list.
2. Query rows with at least one positive pair are processed in blocks (sorted by signature so that a block's
   candidates are compact). For a block, the union of its candidate columns is gathered, one similarity matrix
   block is computed (float64 matmul / cdist), rounded to float32 exactly as copairs stores similarities, and
   turned into the copairs sort key ``float32(1) - sim``.
3. AP per query: with positives ranked before negatives on equal keys (copairs' stable ``lexsort`` puts the
   positive pair list first), the m-th positive (in key order) sits at rank ``m + nb`` where ``nb`` is the number
   of negatives with a strictly smaller key, so ``AP = (1/P) * sum_m m / (m + nb_m)``. ``nb`` comes from one
   sort of the block's negative keys and a batched ``searchsorted``.

Memory is O(block_rows x candidates + N x D); time is dominated by one block matmul per block.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__: list[str] = []

_SENT = np.int64(1) << np.int64(33)  # larger than any ordered float32 key (< 2**32 + 1)
_NAN_KEY = np.int64(1) << np.int64(32)
_ROW_OFF = np.int64(1) << np.int64(35)

BUILTIN_SIMILARITIES = ("cosine", "abs_cosine", "correlation", "euclidean", "manhattan", "chebyshev")


@dataclass(frozen=True)
class PairRule:
    """Pair rule on encoded columns: ``same``/``diff`` are column indices into the code matrix.

    ``ml`` says how the multilabel column takes part: ``None`` (not at all), ``"same"`` (labels shared; for
    positives this is *per label*, as in copairs) or ``"diff"`` (label sets disjoint).
    """

    same: tuple[int, ...]
    diff: tuple[int, ...]
    ml: str | None = None


@dataclass(frozen=True)
class EngineResult:
    """Per query unit: row index, label index (-1 when single-label), AP, positive and negative counts."""

    row: np.ndarray  # (Q,) int64
    label: np.ndarray  # (Q,) int64
    ap: np.ndarray  # (Q,) float64, NaN when n_pos == 0
    n_pos: np.ndarray  # (Q,) int64
    n_neg: np.ndarray  # (Q,) int64


# ----------------------------------------------------------------------------------------------------------------
# backend selection


def _cuda_maybe_present() -> bool:
    if "torch" in sys.modules:
        try:
            return bool(sys.modules["torch"].cuda.is_available())
        except Exception:  # pragma: no cover - broken torch
            return False
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")


def resolve_backend(backend: str, device: Any) -> tuple[str, Any]:
    """Pick ``("numpy", None)`` or ``("torch", torch.device)``.

    ``backend="auto"``: torch on CUDA when a CUDA device is present (torch is imported only then), numpy
    otherwise. ``backend="torch"`` with ``device=None`` uses CUDA when available, else the CPU.
    """
    if backend not in ("auto", "numpy", "torch"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'torch', got {backend!r}")
    if backend == "numpy" or (backend == "auto" and device is not None and str(device) == "cpu"):
        return "numpy", None
    if backend == "auto" and device is None and not _cuda_maybe_present():
        return "numpy", None
    import torch

    if device is None:
        if torch.cuda.is_available():
            return "torch", torch.device("cuda")
        if backend == "auto":
            return "numpy", None
        return "torch", torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    return "torch", dev


# ----------------------------------------------------------------------------------------------------------------
# similarities (all pairs between a query block and a candidate block), float64


def _row_normalise(x: np.ndarray) -> np.ndarray:
    # the same expression copairs uses per pair batch (np.linalg.norm over rows), so row norms match bitwise
    return x / np.linalg.norm(x, axis=1)[:, np.newaxis]


def _sim_numpy(xq: np.ndarray, xc: np.ndarray, distance: str | Callable) -> np.ndarray:
    if callable(distance):
        return _sim_callable(xq, xc, distance)
    if distance in ("cosine", "abs_cosine", "correlation"):
        if distance == "correlation":
            xq = xq - xq.mean(axis=1, keepdims=True)
            xc = xc - xc.mean(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = _row_normalise(xq) @ _row_normalise(xc).T
        return np.abs(s) if distance == "abs_cosine" else s
    from scipy.spatial.distance import cdist

    metric = {"manhattan": "cityblock"}.get(distance, distance)
    d = cdist(xq, xc, metric=metric)
    if distance in ("jaccard", "hamming"):
        return 1.0 - d
    return 1.0 / (1.0 + d)


def _sim_callable(xq: np.ndarray, xc: np.ndarray, fn: Callable) -> np.ndarray:
    """copairs-style callable ``fn(x_sample, y_sample) -> (n,)`` on row pairs, evaluated over all block pairs."""
    b, c = len(xq), len(xc)
    out = np.empty((b, c), dtype=np.float64)
    step = max(1, (1 << 20) // max(c, 1))
    for s in range(0, b, step):
        e = min(b, s + step)
        xa = np.repeat(xq[s:e], c, axis=0)
        xb = np.tile(xc, (e - s, 1))
        out[s:e] = np.asarray(fn(xa, xb), dtype=np.float64).reshape(e - s, c)
    return out


def _sim_torch(xq: Any, xc: Any, distance: str) -> Any:
    import torch

    if distance in ("cosine", "abs_cosine", "correlation"):
        if distance == "correlation":
            xq = xq - xq.mean(dim=1, keepdim=True)
            xc = xc - xc.mean(dim=1, keepdim=True)
        xq = xq / torch.linalg.vector_norm(xq, dim=1, keepdim=True)
        xc = xc / torch.linalg.vector_norm(xc, dim=1, keepdim=True)
        s = xq @ xc.T
        return s.abs() if distance == "abs_cosine" else s
    p = {"euclidean": 2.0, "manhattan": 1.0, "chebyshev": float("inf")}[distance]
    d = torch.cdist(xq, xc, p=p, compute_mode="donot_use_mm_for_euclid_dist")
    return 1.0 / (1.0 + d)


def validate_distance(distance: str | Callable) -> None:
    if callable(distance):
        return
    if not isinstance(distance, str):
        raise ValueError("distance must be a string or a callable")
    if distance in BUILTIN_SIMILARITIES:
        return
    from scipy.spatial.distance import _METRICS_NAMES

    if distance not in _METRICS_NAMES:
        raise ValueError(f"unsupported distance {distance!r}; use one of {BUILTIN_SIMILARITIES} or a scipy "
                         "cdist metric name or a callable")


# ----------------------------------------------------------------------------------------------------------------
# the AP kernel


def _ordered_keys_numpy(sim: np.ndarray) -> np.ndarray:
    """copairs' sort key ``float32(1) - float32(sim)`` mapped to an order-preserving int64 (NaN last)."""
    key = np.float32(1) - sim.astype(np.float32)
    key += np.float32(0)  # -0.0 -> +0.0
    bits = key.view(np.int32).astype(np.int64)
    mag = bits & np.int64(0x7FFFFFFF)
    out = np.where(bits >= 0, bits + (np.int64(1) << np.int64(31)), (np.int64(1) << np.int64(31)) - 1 - mag)
    out[np.isnan(key)] = _NAN_KEY
    return out


def _ap_from_keys_numpy(o: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    b, c = o.shape
    n_pos = pos.sum(axis=1)
    pmax = int(n_pos.max()) if b else 0
    if pmax == 0:
        return np.full(b, np.nan)
    pk = np.where(pos, o, _SENT)
    if pmax < c:
        pk = np.partition(pk, pmax - 1, axis=1)[:, :pmax]
    pk.sort(axis=1)
    nk = np.where(neg, o, _SENT)
    nk.sort(axis=1)
    off = np.arange(b, dtype=np.int64) * _ROW_OFF
    flat = (nk + off[:, None]).ravel()
    nb = np.searchsorted(flat, (pk + off[:, None]).ravel(), side="left").reshape(b, pmax)
    nb -= (np.arange(b, dtype=np.int64) * c)[:, None]
    m = np.arange(1, pmax + 1, dtype=np.float64)
    terms = np.where(m[None, :] <= n_pos[:, None], m[None, :] / (m[None, :] + nb), 0.0)
    if pmax <= 64:
        acc = np.zeros(b, dtype=np.float64)
        for j in range(pmax):  # sequential over ranks, like copairs' sum over a short rank list
            acc += terms[:, j]
    else:
        acc = terms.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return acc / n_pos


def _ap_block_torch(sim: Any, pos: Any, neg: Any) -> Any:
    import torch

    key = 1.0 - sim.to(torch.float32)
    key = key + 0.0
    bits = key.view(torch.int32).to(torch.int64)
    mag = bits & 0x7FFFFFFF
    o = torch.where(bits >= 0, bits + (1 << 31), (1 << 31) - 1 - mag)
    o = torch.where(torch.isnan(key), torch.full_like(o, int(_NAN_KEY)), o)
    sent = torch.full_like(o, int(_SENT))
    n_pos = pos.sum(dim=1)
    pmax = int(n_pos.max().item()) if o.shape[0] else 0
    if pmax == 0:
        return torch.full((o.shape[0],), float("nan"), dtype=torch.float64, device=o.device)
    pk = torch.where(pos, o, sent)
    if pmax < o.shape[1]:
        pk = torch.topk(pk, pmax, dim=1, largest=False, sorted=True).values
    else:
        pk = torch.sort(pk, dim=1).values
    nk = torch.sort(torch.where(neg, o, sent), dim=1).values
    nb = torch.searchsorted(nk, pk.contiguous(), right=False).to(torch.float64)
    m = torch.arange(1, pmax + 1, dtype=torch.float64, device=o.device)
    terms = torch.where(m[None, :] <= n_pos[:, None], m[None, :] / (m[None, :] + nb), torch.zeros_like(nb))
    if pmax <= 64:
        acc = torch.zeros(o.shape[0], dtype=torch.float64, device=o.device)
        for j in range(pmax):
            acc += terms[:, j]
    else:
        acc = terms.sum(dim=1)
    return acc / n_pos.to(torch.float64)


# ----------------------------------------------------------------------------------------------------------------
# signatures and relations


class _Relations:
    """Pair relations between signatures (unique code tuples)."""

    def __init__(self, codes: np.ndarray, labelset: np.ndarray | None, label_sets: np.ndarray | None) -> None:
        n = codes.shape[0]
        key = codes if labelset is None else np.column_stack([codes, labelset])
        if key.shape[1] == 0:
            key = np.zeros((n, 1), dtype=np.int64)
        self.sig_codes, self.row_sig, self.count = np.unique(key, axis=0, return_inverse=True, return_counts=True)
        self.row_sig = self.row_sig.reshape(-1).astype(np.int64)
        self.k = codes.shape[1]
        self.n_sig = len(self.sig_codes)
        # rows grouped by signature (CSR)
        self.rows_by_sig = np.argsort(self.row_sig, kind="stable")
        self.sig_start = np.zeros(self.n_sig + 1, dtype=np.int64)
        np.cumsum(self.count, out=self.sig_start[1:])
        if labelset is not None:
            assert label_sets is not None
            self.sig_ls = self.sig_codes[:, -1].astype(np.int64)
            ls = label_sets.astype(np.float32)
            self.ls_intersect = (ls @ ls.T) > 0  # (S, S)
            self.sig_member = label_sets[self.sig_ls]  # (U, L) bool
        else:
            self.sig_ls = None
            self.ls_intersect = None
            self.sig_member = None

    def relation(self, a: np.ndarray, b: np.ndarray | None, rule: PairRule) -> np.ndarray:
        """(len(a), len(b)) bool: signatures a and b pair under ``rule`` (ignoring the per-label positive part)."""
        sa = self.sig_codes[a]
        sb = self.sig_codes if b is None else self.sig_codes[b]
        out = np.ones((len(sa), len(sb)), dtype=bool)
        for c in rule.same:
            out &= sa[:, c][:, None] == sb[:, c][None, :]
        for c in rule.diff:
            out &= sa[:, c][:, None] != sb[:, c][None, :]
        if rule.ml in ("diff", "same_any"):
            la = self.sig_ls[a]
            lb = self.sig_ls if b is None else self.sig_ls[b]
            inter = self.ls_intersect[np.ix_(la, lb)]
            out &= ~inter if rule.ml == "diff" else inter
        return out

    def rows_of(self, sigs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows belonging to signatures ``sigs`` (concatenated) and the position in ``sigs`` of each row."""
        starts = self.sig_start[sigs]
        ends = self.sig_start[sigs + 1]
        lens = ends - starts
        total = int(lens.sum())
        if total == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        which = np.repeat(np.arange(len(sigs)), lens)
        offs = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)
        return self.rows_by_sig[np.repeat(starts, lens) + offs], which


def run_engine(
    feats: np.ndarray,
    codes: np.ndarray,
    pos: PairRule,
    neg: PairRule,
    *,
    labelset: np.ndarray | None = None,
    label_sets: np.ndarray | None = None,
    distance: str | Callable = "cosine",
    batch_size: int | None = None,
    backend: str = "auto",
    device: Any = None,
    memory_budget: int = 1 << 22,
    progress: bool | None = None,
) -> EngineResult:
    """Compute AP for every query unit.

    Parameters
    ----------
    feats : (N, D) float ndarray
    codes : (N, K) int64 ndarray
        Encoded pair-rule columns (positive ``same`` columns first gives compact blocks).
    pos, neg : PairRule
    labelset : (N,) int64, optional
        Multilabel: index of each row's label set in ``label_sets``.
    label_sets : (S, L) bool, optional
        Membership of each unique label set.
    batch_size : int, optional
        Query units per block; default from ``memory_budget`` (elements per block array).
    progress : bool, optional
        Progress bar over query rows: None (default) when stderr is a terminal, True always, False never.

    Returns
    -------
    EngineResult
        Single-label: one unit per row (``label == -1``). Multilabel: one unit per (row, label of the row) with
        at least one positive pair (copairs' multilabel output rows).
    """
    n = feats.shape[0]
    multilabel = labelset is not None
    rel = _Relations(codes, labelset, label_sets)
    u = rel.n_sig
    sig_block = max(1, min(u, memory_budget // max(u, 1)))

    # ---- counts per signature (per (signature, label) for multilabel positives) ----
    n_neg_sig = np.zeros(u, dtype=np.int64)
    if multilabel:
        n_lab = label_sets.shape[1]
        n_pos_sig_lab = np.zeros((u, n_lab), dtype=np.int64)
    else:
        n_pos_sig = np.zeros(u, dtype=np.int64)
    cnt = rel.count.astype(np.int64)
    for s in range(0, u, sig_block):
        a = np.arange(s, min(u, s + sig_block))
        rn = rel.relation(a, None, neg)
        n_neg_sig[a] = rn.astype(np.int64) @ cnt - rn[np.arange(len(a)), a]
        rp = rel.relation(a, None, pos)
        if multilabel:
            w = (rp * cnt[None, :]).astype(np.float64)
            tot = np.rint(w @ rel.sig_member.astype(np.float64)).astype(np.int64)  # (a, L)
            tot -= rp[np.arange(len(a)), a][:, None].astype(np.int64)  # a row is not its own pair
            n_pos_sig_lab[a] = np.where(rel.sig_member[a], tot, 0)
        else:
            n_pos_sig[a] = rp.astype(np.int64) @ cnt - rp[np.arange(len(a)), a]

    # ---- query units ----
    order = rel.rows_by_sig  # rows sorted by signature
    if multilabel:
        per_row = n_pos_sig_lab[rel.row_sig[order]]  # (N, L) in signature order
        r_idx, l_idx = np.nonzero(per_row > 0)
        q_row = order[r_idx]
        q_lab = l_idx.astype(np.int64)
        q_npos = per_row[r_idx, l_idx]
    else:
        q_npos_all = n_pos_sig[rel.row_sig[order]]
        keep = q_npos_all > 0
        q_row = order[keep]
        q_lab = np.full(len(q_row), -1, dtype=np.int64)
        q_npos = q_npos_all[keep]
    q_nneg = n_neg_sig[rel.row_sig[q_row]]
    n_q = len(q_row)
    ap = np.full(n_q, np.nan)

    kind, dev = resolve_backend(backend, device)
    if kind == "torch" and not (isinstance(distance, str) and distance in BUILTIN_SIMILARITIES):
        logger.info("distance %r has no torch implementation; using numpy", distance)
        kind, dev = "numpy", None
    if kind == "torch":
        import torch

        x_dev = torch.as_tensor(feats, device=dev)
    if kind == "torch" and dev.type == "cuda":
        memory_budget = max(memory_budget, 1 << 25)
        cap = 8192
    else:
        cap = 512
    # block rows: fixed when batch_size is given, else adapted to the candidate count of the previous block
    block = batch_size or max(16, min(cap, memory_budget // max(n, 1)))
    block = max(1, min(block, max(n_q, 1)))
    bar = None
    if progress is not False:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_q, desc="average precision", unit="row",
                   disable=None if progress is None else not progress)
    logger.info("AP: %d rows, %d signatures, %d query units, first block %d, backend %s", n, u, n_q, block, kind)
    s = 0
    while s < n_q:
        e = min(n_q, s + block)
        rows = q_row[s:e]
        labs = q_lab[s:e]
        qsig = rel.row_sig[rows]
        ua, a_of = np.unique(qsig, return_inverse=True)
        rp = rel.relation(ua, None, pos)  # (ua, U)
        rn = rel.relation(ua, None, neg)
        if multilabel:
            # candidate signatures per unit: base positive relation restricted to signatures holding the label
            cand_pos = rp[a_of] & rel.sig_member[:, labs].T  # (B, U)
            cand = cand_pos.any(axis=0) | rn.any(axis=0)
        else:
            cand = rp.any(axis=0) | rn.any(axis=0)
        csig = np.flatnonzero(cand)
        col_rows, col_which = rel.rows_of(csig)
        col_sig = csig[col_which]
        pm = rp[np.ix_(a_of, col_sig)] if not multilabel else cand_pos[:, col_sig]
        nm = rn[np.ix_(a_of, col_sig)]
        notself = rows[:, None] != col_rows[None, :]
        pm &= notself
        nm &= notself
        urows, r_of = np.unique(rows, return_inverse=True)
        if len(urows) == len(rows):  # single-label: rows are distinct, keep block order
            urows, r_of = rows, np.arange(len(rows))
        if kind == "numpy":
            xq = np.asarray(feats[urows], dtype=np.float64)
            xc = np.asarray(feats[col_rows], dtype=np.float64)
            sim = _sim_numpy(xq, xc, distance)
            if len(urows) != len(rows):
                sim = sim[r_of]
            o = _ordered_keys_numpy(sim)
            ap[s:e] = _ap_from_keys_numpy(o, pm, nm)
        else:
            t_u = torch.as_tensor(urows, device=dev)
            t_c = torch.as_tensor(col_rows, device=dev)
            sim = _sim_torch(x_dev[t_u].to(torch.float64), x_dev[t_c].to(torch.float64), distance)
            if len(urows) != len(rows):
                sim = sim[torch.as_tensor(r_of, device=dev)]
            res = _ap_block_torch(sim, torch.as_tensor(pm, device=dev), torch.as_tensor(nm, device=dev))
            ap[s:e] = res.cpu().numpy()
        if bar is not None:
            bar.update(e - s)
        s = e
        if not batch_size:
            block = max(16, min(cap, memory_budget // max(len(col_rows), 1)))
    if bar is not None:
        bar.close()
    if not multilabel:
        # every row is reported (copairs keeps rows without positives: AP NaN, counts as found)
        all_ap = np.full(n, np.nan)
        all_ap[q_row] = ap
        all_pos = n_pos_sig[rel.row_sig]
        all_neg = n_neg_sig[rel.row_sig]
        return EngineResult(row=np.arange(n, dtype=np.int64), label=np.full(n, -1, dtype=np.int64), ap=all_ap,
                            n_pos=all_pos, n_neg=all_neg)
    return EngineResult(row=q_row.astype(np.int64), label=q_lab, ap=ap, n_pos=q_npos, n_neg=q_nneg)
