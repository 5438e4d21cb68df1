"""Evaluation metrics with exactly the semantics of MMSA's ``MetricsTop`` (regression mode).

MOSI / MOSEI (``__eval_mosei_regression``):

* ``acc2_has0`` / ``f1_has0``: binary ``>= 0`` vs ``< 0`` on all samples (negative / non-negative).
* ``acc2_non0`` / ``f1_non0``: samples whose *true* label is exactly 0 are dropped; ``> 0`` vs ``<= 0``.
* F1 is sklearn's weighted F1 with ``y_true`` first (weights = true-class support).
* ``acc7``: ``np.round(np.clip(x, -3, 3))`` on both, exact-equality ratio; ``acc5`` the same with
  ``[-2, 2]``. ``np.round`` rounds half to even (0.5 -> 0, 1.5 -> 2, -2.5 -> -2), as in MMSA.
* ``mae`` on unclipped values; ``corr`` = ``np.corrcoef`` Pearson (NaN if either side is constant).

SIMS (``__eval_sims_regression``): predictions and truths clipped to [-1, 1] first, then binned with
right-closed intervals: Acc-2 ``[-1, 0], (0, 1]``; Acc-3 ``[-1, -0.1], (-0.1, 0.1], (0.1, 1]``; Acc-5
``[-1, -0.7], (-0.7, -0.1], (-0.1, 0.1], (0.1, 0.7], (0.7, 1]``; weighted F1 on the 2-class bins; MAE
and Pearson on the *clipped* values.

MMSA rounds the MOSI/MOSEI numbers to 4 decimals; these functions return full precision unless
``ndigits`` is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Union

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

if TYPE_CHECKING:  # torch is only needed by callers that pass tensors
    import torch

ArrayLike = Union[np.ndarray, Sequence[float], "torch.Tensor"]

# Inputs keep their float precision (float32 tensors -> float32 arrays, like MMSA's
# ``.cpu().detach().numpy()``); Python lists become float64.

MOSI_KEYS = ("acc2_has0", "acc2_non0", "f1_has0", "f1_non0", "acc7", "acc5", "mae", "corr")
SIMS_KEYS = ("acc2", "acc3", "acc5", "f1", "mae", "corr")


def _flat(x: ArrayLike) -> np.ndarray:
    """1-D float array, keeping float32 as float32: MMSA works on the float32 numpy view of its
    tensors, and bin edges such as 0.1 compare differently in float32 and float64."""
    if hasattr(x, "detach"):  # torch.Tensor (half/bfloat16/int -> float32)
        t = x.detach().cpu()
        if str(t.dtype) not in ("torch.float32", "torch.float64"):
            t = t.float()
        x = t.numpy()
    a = np.asarray(x).reshape(-1)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    return a


def _multiclass_acc(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.sum(np.round(pred) == np.round(true)) / float(len(true)))


def _pearson(pred: np.ndarray, true: np.ndarray) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.corrcoef(pred, true)[0][1])


def _finish(d: dict[str, float], ndigits: int | None) -> dict[str, float]:
    if ndigits is None:
        return d
    return {k: (round(v, ndigits) if np.isfinite(v) else v) for k, v in d.items()}


def regression_metrics_mosi(pred: ArrayLike, true: ArrayLike, ndigits: int | None = None) -> dict[str, float]:
    """MMSA ``__eval_mosi_regression`` (same as MOSEI). Keys: :data:`MOSI_KEYS`."""
    p, t = _flat(pred), _flat(true)
    if p.shape != t.shape or p.size == 0:
        raise ValueError(f"pred and true must be non-empty and the same size ({p.size} vs {t.size})")

    mae = float(np.mean(np.absolute(p - t)))
    corr = _pearson(p, t)
    acc7 = _multiclass_acc(np.clip(p, -3.0, 3.0), np.clip(t, -3.0, 3.0))
    acc5 = _multiclass_acc(np.clip(p, -2.0, 2.0), np.clip(t, -2.0, 2.0))

    non_zeros = np.array([i for i, e in enumerate(t) if e != 0], dtype=np.int64)
    if non_zeros.size:
        nz_true = t[non_zeros] > 0
        nz_pred = p[non_zeros] > 0
        acc2_non0 = float(accuracy_score(nz_pred, nz_true))
        f1_non0 = float(f1_score(nz_true, nz_pred, average="weighted"))
    else:  # MMSA would crash; every true label is 0
        acc2_non0 = f1_non0 = float("nan")

    bin_true = t >= 0
    bin_pred = p >= 0
    acc2_has0 = float(accuracy_score(bin_pred, bin_true))
    f1_has0 = float(f1_score(bin_true, bin_pred, average="weighted"))

    return _finish(
        {
            "acc2_has0": acc2_has0,
            "acc2_non0": acc2_non0,
            "f1_has0": f1_has0,
            "f1_non0": f1_non0,
            "acc7": acc7,
            "acc5": acc5,
            "mae": mae,
            "corr": corr,
        },
        ndigits,
    )


def regression_metrics_mosei(pred: ArrayLike, true: ArrayLike, ndigits: int | None = None) -> dict[str, float]:
    """MMSA ``__eval_mosei_regression`` (identical to MOSI)."""
    return regression_metrics_mosi(pred, true, ndigits)


def _bin(x: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """MMSA's right-closed binning: value in (edges[i], edges[i+1]] -> i (on the clipped values)."""
    out = x.copy()
    for i in range(len(edges) - 1):
        out[np.logical_and(x > edges[i], x <= edges[i + 1])] = i
    return out


def regression_metrics_sims(pred: ArrayLike, true: ArrayLike, ndigits: int | None = None) -> dict[str, float]:
    """MMSA ``__eval_sims_regression``. Keys: :data:`SIMS_KEYS`."""
    p, t = _flat(pred), _flat(true)
    if p.shape != t.shape or p.size == 0:
        raise ValueError(f"pred and true must be non-empty and the same size ({p.size} vs {t.size})")
    p = np.clip(p, -1.0, 1.0)
    t = np.clip(t, -1.0, 1.0)
    ms2 = [-1.01, 0.0, 1.01]
    ms3 = [-1.01, -0.1, 0.1, 1.01]
    ms5 = [-1.01, -0.7, -0.1, 0.1, 0.7, 1.01]
    p2, t2 = _bin(p, ms2), _bin(t, ms2)
    p3, t3 = _bin(p, ms3), _bin(t, ms3)
    p5, t5 = _bin(p, ms5), _bin(t, ms5)
    return _finish(
        {
            "acc2": _multiclass_acc(p2, t2),
            "acc3": _multiclass_acc(p3, t3),
            "acc5": _multiclass_acc(p5, t5),
            "f1": float(f1_score(t2, p2, average="weighted")),
            "mae": float(np.mean(np.absolute(p - t))),
            "corr": _pearson(p, t),
        },
        ndigits,
    )


def regression_metrics(dataset: str, pred: ArrayLike, true: ArrayLike, ndigits: int | None = None) -> dict[str, float]:
    """Dispatch by dataset name like ``MetricsTop.getMetics``: mosi, mosei, sims, simsv2."""
    key = dataset.lower()
    if key in ("mosi", "mosei"):
        return regression_metrics_mosi(pred, true, ndigits)
    if key in ("sims", "simsv2"):
        return regression_metrics_sims(pred, true, ndigits)
    raise ValueError(f"unknown dataset {dataset!r} (mosi, mosei, sims, simsv2)")
