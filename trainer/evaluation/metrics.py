"""Binary-classification metrics at a decision threshold.

All functions are pure: numpy/pandas in, numpy/pandas/plain-Python out.

Conventions
-----------
* A sample is predicted positive when ``prob >= threshold``.
* Every ratio whose denominator is zero (``0/0``) is defined as ``0.0``. This
  matches scikit-learn's ``zero_division=0`` for ``precision_score``,
  ``recall_score`` and ``f1_score``. The same rule is applied to specificity,
  NPV and accuracy (accuracy is only ``0/0`` for an empty input, which is
  rejected anyway).
* ``f1 = 2*tp / (2*tp + fp + fn)``, which is what scikit-learn computes
  (it equals the harmonic mean of PPV and sensitivity whenever both are
  defined, and is ``0.0`` when ``tp == 0``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from trainer.evaluation.inputs import check_labels_scores

__all__ = [
    "CONFUSION_COLUMNS",
    "binary_metrics",
    "confusion_at",
    "ranking_scores",
    "threshold_grid",
    "threshold_table",
]

#: Column order of :func:`threshold_table`.
CONFUSION_COLUMNS: tuple[str, ...] = (
    "threshold",
    "tp",
    "fp",
    "tn",
    "fn",
    "sens",
    "spec",
    "ppv",
    "npv",
    "f1",
    "acc",
)


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------
def _check_y_prob(y_true: Any, prob: Any) -> tuple[np.ndarray, np.ndarray]:
    """(bool (n,) labels, True = positive; float64 (n,) probabilities), checked by :func:`check_labels_scores`."""
    y, p = check_labels_scores(y_true, prob)
    return y.astype(bool), p


def _check_thresholds(thresholds: Any) -> np.ndarray:
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim == 0:
        t = t.reshape(1)
    if t.ndim != 1 or t.size == 0:
        raise ValueError(
            "The 'thresholds' parameter must be a non-empty 1-D array of floats; "
            f"got shape {t.shape}."
        )
    if not np.all(np.isfinite(t)):
        raise ValueError("The 'thresholds' parameter must contain only finite values.")
    return t


def _finite_float(value: Any, what: str) -> float:
    """``float(value)``; ValueError "The <what> must be a finite real number" when it is not one."""
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"The {what} must be a finite real number; got {value!r}.") from exc
    if not math.isfinite(v):
        raise ValueError(f"The {what} must be a finite real number; got {value!r}.")
    return v


def _check_threshold(threshold: Any) -> float:
    return _finite_float(threshold, "'threshold' parameter")


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Element-wise ``num / den`` with ``x/0 := 0.0``."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _counts(y: np.ndarray, p: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, ...]:
    """tp, fp, tn, fn for every threshold in ``t`` using sorted cumulative counts.

    ``#{i : p_i >= t}`` among positives equals ``n_pos - #{i : p_i < t}`` and
    ``#{i : p_i < t}`` is ``searchsorted(sorted_p, t, side="left")``.
    """
    pos = np.sort(p[y])
    neg = np.sort(p[~y])
    n_pos, n_neg = pos.size, neg.size
    fn = np.searchsorted(pos, t, side="left").astype(np.int64)
    tn = np.searchsorted(neg, t, side="left").astype(np.int64)
    tp = n_pos - fn
    fp = n_neg - tn
    return tp, fp, tn, fn


def _ratios(
    tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray
) -> dict[str, np.ndarray]:
    return {
        "sens": _safe_div(tp, tp + fn),
        "spec": _safe_div(tn, tn + fp),
        "ppv": _safe_div(tp, tp + fp),
        "npv": _safe_div(tn, tn + fn),
        "f1": _safe_div(2 * tp, 2 * tp + fp + fn),
        "acc": _safe_div(tp + tn, tp + tn + fp + fn),
    }


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------
def confusion_at(y_true: Any, prob: Any, threshold: float) -> dict[str, int | float]:
    """Confusion counts and derived ratios at one threshold.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Binary labels (0/1 or bool).
    prob : array-like of shape (n,)
        Predicted probability of the positive class, in ``[0, 1]``.
    threshold : float
        A sample is predicted positive when ``prob >= threshold``.

    Returns
    -------
    dict
        ``tp, fp, tn, fn`` (int) and ``sens, spec, ppv, npv, f1, acc`` (float).
        Ratios with a zero denominator are ``0.0`` (scikit-learn's
        ``zero_division=0`` convention).
    """
    y, p = _check_y_prob(y_true, prob)
    t = np.array([_check_threshold(threshold)])
    tp, fp, tn, fn = _counts(y, p, t)
    out: dict[str, int | float] = {
        "tp": int(tp[0]),
        "fp": int(fp[0]),
        "tn": int(tn[0]),
        "fn": int(fn[0]),
    }
    for k, v in _ratios(tp, fp, tn, fn).items():
        out[k] = float(v[0])
    return out


def binary_metrics(y_true: Any, prob: Any, threshold: float) -> dict[str, int | float]:
    """Threshold metrics plus threshold-free ranking metrics.

    Returns everything from :func:`confusion_at` plus:

    * ``auc`` -- ``sklearn.metrics.roc_auc_score``; ``NaN`` when ``y_true``
      contains a single class (ROC AUC is undefined).
    * ``ap`` -- ``sklearn.metrics.average_precision_score``; ``NaN`` when there
      is no positive sample (AP is undefined). With no negatives AP is ``1.0``.
    * ``n`` (int), ``n_pos`` (int), ``prevalence`` (float, ``n_pos / n``),
      ``threshold`` (float).
    """
    y, p = _check_y_prob(y_true, prob)
    thr = _check_threshold(threshold)
    out = confusion_at(y, p, thr)
    n = int(y.size)
    n_pos = int(y.sum())
    if 0 < n_pos < n:
        auc = float(roc_auc_score(y, p))
    else:
        auc = float("nan")
    if n_pos > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ap = float(average_precision_score(y, p))
    else:
        ap = float("nan")
    out.update(
        {
            "auc": auc,
            "ap": ap,
            "n": n,
            "n_pos": n_pos,
            "prevalence": n_pos / n,
            "threshold": thr,
        }
    )
    return out


def ranking_scores(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(AUPRC, ROC-AUC) of scores ``p`` against 0/1 labels ``y``; NaN when the rows hold one class only.

    The threshold-free ranking of a model: early stopping, each fold's validation scores, the
    final model's holdout."""
    if len(np.unique(y)) < 2:
        return float("nan"), float("nan")
    return float(average_precision_score(y, p)), float(roc_auc_score(y, p))


def threshold_grid(step: float = 0.01) -> np.ndarray:
    """Evenly spaced thresholds from 0.0 to 1.0 inclusive.

    Values are ``round(i * step, 10)`` so that e.g. ``threshold_grid()[29]`` is
    exactly ``0.29`` (no ``0.29000000000000004`` drift). ``step=0.01`` gives 101
    values. When ``1 / step`` is not an integer, ``1.0`` is appended after the
    last multiple of ``step`` below 1.

    Raises
    ------
    ValueError
        If ``step`` is not in ``(0, 1]``.
    """
    s = _finite_float(step, "'step' parameter of threshold_grid (a float in (0, 1])")
    if not 0.0 < s <= 1.0:
        raise ValueError(
            f"The 'step' parameter of threshold_grid must be a float in (0, 1]; got {step!r}."
        )
    n = math.floor(1.0 / s + 1e-9)
    grid = np.round(np.arange(n + 1, dtype=np.float64) * s, 10)
    grid = grid[grid <= 1.0]
    if grid[-1] < 1.0:
        grid = np.append(grid, 1.0)
    return grid


def threshold_table(y_true: Any, prob: Any, thresholds: Any) -> pd.DataFrame:
    """Confusion counts and ratios at many thresholds (vectorised).

    Counts are obtained from the sorted probabilities of each class with
    ``np.searchsorted`` (O((n + m) log n) for n samples and m thresholds; no
    Python loop).

    Parameters
    ----------
    y_true, prob : array-like of shape (n,)
        As in :func:`confusion_at`.
    thresholds : array-like of shape (m,)
        Thresholds, kept in the given order (see :func:`threshold_grid`).

    Returns
    -------
    pandas.DataFrame
        One row per threshold with columns
        ``threshold, tp, fp, tn, fn, sens, spec, ppv, npv, f1, acc``
        (counts int64, the rest float64; ``0/0 := 0.0``).
    """
    y, p = _check_y_prob(y_true, prob)
    t = _check_thresholds(thresholds)
    tp, fp, tn, fn = _counts(y, p, t)
    data: dict[str, np.ndarray] = {"threshold": t, "tp": tp, "fp": fp, "tn": tn, "fn": fn}
    data.update(_ratios(tp, fp, tn, fn))
    return pd.DataFrame(data, columns=list(CONFUSION_COLUMNS))
