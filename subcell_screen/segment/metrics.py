"""Instance-segmentation accuracy: match predicted objects to ground truth by IoU.

The conventions follow the 2018 Data Science Bowl / StarDist ``matching`` definitions: a predicted object
and a true object match when their intersection over union exceeds the threshold (for thresholds >= 0.5 a
match is necessarily unique); precision, recall and F1 count matched pairs; ``mean_matched_iou`` is the
mean IoU over matched pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MatchResult", "match_labels", "iou_matrix"]


@dataclass(frozen=True)
class MatchResult:
    """Outcome of matching one predicted label image to a ground-truth one.

    Attributes
    ----------
    iou_threshold : float
        Matching threshold.
    n_true, n_pred, tp, fp, fn : int
        Object counts; ``tp`` matched pairs.
    precision, recall, f1 : float
        ``tp / n_pred``, ``tp / n_true``, ``2 tp / (n_true + n_pred)`` (1.0 when both are empty).
    mean_matched_iou : float
        Mean IoU of the matched pairs (NaN when there are none).
    """

    iou_threshold: float
    n_true: int
    n_pred: int
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    mean_matched_iou: float

    def to_dict(self) -> dict:
        """Plain dict of the fields."""
        return dict(self.__dict__)


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, int]:
    ids, inv = np.unique(labels, return_inverse=True)
    inv = inv.reshape(labels.shape)
    if ids[0] != 0:  # no background present: shift so that 0 stays background
        return inv + 1, len(ids)
    return inv, len(ids) - 1


def iou_matrix(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """IoU of every (true, predicted) object pair.

    Parameters
    ----------
    pred, true : ndarray of int, same shape
        Label images (0 = background); ids need not be contiguous.

    Returns
    -------
    ndarray, shape (n_true, n_pred), float64
        Row ``i`` is the i-th smallest true id, column ``j`` the j-th smallest predicted id.
    """
    if pred.shape != true.shape:
        raise ValueError(f"label images differ in shape: predicted {pred.shape}, true {true.shape}")
    p, n_p = _relabel(np.asarray(pred))
    t, n_t = _relabel(np.asarray(true))
    if n_p == 0 or n_t == 0:
        return np.zeros((n_t, n_p))
    counts = np.bincount(t.ravel().astype(np.int64) * (n_p + 1) + p.ravel(),
                         minlength=(n_t + 1) * (n_p + 1)).reshape(n_t + 1, n_p + 1)
    inter = counts[1:, 1:].astype(np.float64)
    area_t = counts[1:, :].sum(axis=1, keepdims=True)
    area_p = counts[:, 1:].sum(axis=0, keepdims=True)
    union = area_t + area_p - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_labels(pred: np.ndarray, true: np.ndarray, *, iou_threshold: float = 0.5) -> MatchResult:
    """Match predicted objects to true objects at an IoU threshold.

    Parameters
    ----------
    pred, true : ndarray of int, same 2-D shape
        Predicted and ground-truth label images (0 = background).
    iou_threshold : float
        Minimum IoU (strictly greater than) for a match; must be >= 0.5 so that matches are unique.

    Returns
    -------
    MatchResult
    """
    if iou_threshold < 0.5:
        raise ValueError(f"iou_threshold must be >= 0.5 for unique matching, got {iou_threshold}")
    iou = iou_matrix(pred, true)
    n_true, n_pred = iou.shape
    matched = iou > iou_threshold
    tp = int(matched.sum())
    fp, fn = n_pred - tp, n_true - tp
    precision = tp / n_pred if n_pred else (1.0 if n_true == 0 else 0.0)
    recall = tp / n_true if n_true else (1.0 if n_pred == 0 else 0.0)
    f1 = 2 * tp / (n_true + n_pred) if (n_true + n_pred) else 1.0
    miou = float(iou[matched].mean()) if tp else float("nan")
    return MatchResult(iou_threshold=iou_threshold, n_true=n_true, n_pred=n_pred, tp=tp, fp=fp, fn=fn,
                       precision=precision, recall=recall, f1=f1, mean_matched_iou=miou)
