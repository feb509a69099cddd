"""Operating points a reader asks for, and the expected calibration error.

* :func:`at_sensitivity` -- "at 90% sensitivity, what specificity and PPV?": the highest threshold
  whose sensitivity reaches the target.
* :func:`at_specificity` -- "at 95% specificity, what sensitivity?": the lowest threshold whose
  specificity reaches the target.
* :func:`expected_calibration_error` -- the count-weighted mean gap between the observed rate and
  the mean predicted probability over probability bins (the bins of
  ``sklearn.calibration.calibration_curve``).

Conventions as :mod:`trainer.evaluation.metrics`: a slice is predicted positive when
``prob >= threshold``; the candidate thresholds are the distinct scores plus ``+inf`` (nothing
positive), the thresholds of ``sklearn.metrics.roc_curve(drop_intermediate=False)``. Each ratio
comes with its Wilson interval (:func:`trainer.evaluation.intervals.wilson_interval`), which
treats slices as independent: with several slices per patient it is too narrow (see
:mod:`trainer.evaluation.sens_bound` for a patient-level bound on sensitivity).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from trainer.evaluation.inputs import check_labels_scores
from trainer.evaluation.intervals import wilson_interval

__all__ = ["STRATEGIES", "TARGETS", "at_sensitivity", "at_specificity", "expected_calibration_error", "operating_points",
           "parse_points"]

#: Allowed values of ``expected_calibration_error(strategy=...)`` (as ``calibration_curve``).
STRATEGIES: tuple[str, ...] = ("uniform", "quantile")
#: The kinds of operating point a reader can ask for (config key ``operating_points: [{sens: 0.9}, {spec: 0.95}]``).
TARGETS: tuple[str, ...] = ("sens", "spec")
#: Tolerance of ``ratio >= target`` (a target of 0.9 with 10 positives is reached by 9/10 = 0.9).
TARGET_TOL: float = 1e-9


def _check_target(target: Any, what: str) -> float:
    try:
        t = float(target)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"The {what} target must be a number in (0, 1], e.g. 0.9; got {target!r}.") from exc
    if not 0.0 < t <= 1.0:
        raise ValueError(f"The {what} target must be in (0, 1], e.g. 0.9; got {target!r}.")
    return t


def _curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """(thresholds (K,) descending: +inf then the distinct scores, tp (K,), fp (K,), n_pos, n_neg)."""
    thr = np.r_[np.inf, np.unique(p)[::-1]]
    pos, neg = np.sort(p[y == 1]), np.sort(p[y == 0])
    tp = np.asarray(pos.size - np.searchsorted(pos, thr, side="left"))
    fp = np.asarray(neg.size - np.searchsorted(neg, thr, side="left"))
    return thr, tp, fp, int(pos.size), int(neg.size)


def _ratio(k: int, n: int, level: float) -> dict[str, Any]:
    lo, hi = wilson_interval(k, n, level)
    return {"estimate": k / n if n else None, "k": int(k), "n": int(n),
            "wilson": [None if math.isnan(lo) else lo, None if math.isnan(hi) else hi]}


def _point(threshold: float, tp: int, fp: int, n_pos: int, n_neg: int, target: float, level: float) -> dict[str, Any]:
    """The operating point's dict: threshold, target, level, confusion counts, sens/spec/ppv with Wilson intervals."""
    fn, tn = n_pos - tp, n_neg - fp
    return {"threshold": float(threshold), "target": target, "level": float(level),
            "tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn),
            "sens": _ratio(tp, n_pos, level), "spec": _ratio(tn, n_neg, level), "ppv": _ratio(tp, tp + fp, level)}


def at_sensitivity(y: Any, prob: Any, target: float, level: float = 0.95) -> dict[str, Any]:
    """The highest threshold whose sensitivity is >= ``target``, and the specificity and PPV there.

    Args:
        y: (n,) labels 0/1, both classes. prob: (n,) probabilities of class 1.
        target: sensitivity to reach, in (0, 1].
        level: level of the Wilson intervals.

    Returns:
        ``{"threshold", "target", "level", "tp", "fp", "tn", "fn", "sens"|"spec"|"ppv": {"estimate",
        "k", "n", "wilson": [lo, hi]}}``. The threshold is a score of a positive slice (the
        highest one at which the target is reached), so the specificity there is the highest
        any threshold reaching the target gives.
    """
    yi, p = check_labels_scores(y, prob, y_name="y", both_classes="for an operating point")
    t = _check_target(target, "sensitivity")
    thr, tp, fp, n_pos, n_neg = _curve(yi, p)
    j = int(np.argmax(tp / n_pos >= t - TARGET_TOL))  # thresholds descend: the first that reaches it
    return _point(thr[j], int(tp[j]), int(fp[j]), n_pos, n_neg, t, level)


def at_specificity(y: Any, prob: Any, target: float, level: float = 0.95) -> dict[str, Any]:
    """The lowest threshold whose specificity is >= ``target``, and the sensitivity (and PPV) there.

    Same arguments and dict as :func:`at_sensitivity`. The threshold is the lowest candidate
    (distinct score, or ``+inf`` when only calling nothing positive reaches the target) at which
    enough negatives score below it, so the sensitivity there is the highest the target allows.
    The PPV's estimate is None (interval [None, None]) when nothing is called positive.
    """
    yi, p = check_labels_scores(y, prob, y_name="y", both_classes="for an operating point")
    t = _check_target(target, "specificity")
    thr, tp, fp, n_pos, n_neg = _curve(yi, p)
    ok = (n_neg - fp) / n_neg >= t - TARGET_TOL
    j = int(np.flatnonzero(ok).max())  # +inf (index 0) always reaches it: specificity 1
    return _point(thr[j], int(tp[j]), int(fp[j]), n_pos, n_neg, t, level)


def expected_calibration_error(y: Any, prob: Any, n_bins: int = 10, strategy: str = "uniform") -> float:
    """ECE: ``sum_b (n_b / n) |mean(y in b) - mean(prob in b)|`` over the non-empty bins.

    Args:
        y: (n,) labels 0/1. prob: (n,) probabilities of class 1.
        n_bins: number of bins.
        strategy: ``"uniform"``: ``n_bins`` equal-width bins on [0, 1]; ``"quantile"``: edges at the
            quantiles of ``prob`` (about equal counts). A probability on an inner edge falls in the
            bin below it, as in ``sklearn.calibration.calibration_curve``.

    Returns:
        The ECE in [0, 1] (probability units; 0 for a perfectly calibrated model on these bins).
    """
    yi, p = check_labels_scores(y, prob, y_name="y")
    if int(n_bins) != n_bins or int(n_bins) < 1:
        raise ValueError(f"n_bins must be a positive integer, e.g. 10; got {n_bins!r}.")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}; got {strategy!r}.")
    n_bins = int(n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1) if strategy == "uniform" else np.percentile(p, np.linspace(0, 100, n_bins + 1))
    ids = np.searchsorted(edges[1:-1], p)
    count = np.bincount(ids, minlength=n_bins).astype(np.float64)
    gap = np.abs(np.bincount(ids, weights=yi, minlength=n_bins) - np.bincount(ids, weights=p, minlength=n_bins))
    return float(gap.sum() / count.sum())  # sum_b n_b |rate_b - mean_b| / n = sum_b |sum y - sum p| / n


def parse_points(points: Any) -> tuple[dict[str, float], ...]:
    """Config key ``operating_points``: ``[{sens: 0.9}, {spec: 0.95}]`` -> ``({"sens": 0.9}, {"spec": 0.95})``.

    Raises:
        ValueError: not a list of one-key mappings with a key in :data:`TARGETS` and a value in (0, 1]
            (the message shows the entry and the form).
    """
    if points is None:
        return ()
    if isinstance(points, (str, bytes)) or not isinstance(points, (list, tuple)):
        raise ValueError(f"operating_points={points!r} must be a list like [{{sens: 0.9}}, {{spec: 0.95}}]")
    out = []
    for p in points:
        if not (isinstance(p, dict) and len(p) == 1 and next(iter(p)) in TARGETS):
            raise ValueError(f"operating_points entry {p!r} must be one mapping {{sens: X}} or {{spec: X}} "
                             f"(kinds: {', '.join(TARGETS)})")
        kind, value = next(iter(p.items()))
        try:
            out.append({kind: _check_target(value, "sensitivity" if kind == "sens" else "specificity")})
        except ValueError as e:
            raise ValueError(f"operating_points entry {p!r}: {e}") from None
    return tuple(out)


def operating_points(y: Any, prob: Any, points: Any, level: float = 0.95) -> list[dict[str, Any]]:
    """Each requested operating point (:func:`parse_points`' form) of one prediction set.

    Returns:
        One dict per point, in order: ``{"kind": "sens"|"spec", **at_sensitivity / at_specificity}``;
        ``{"kind", "target", "note"}`` instead where ``y`` lacks a class (no operating point exists).
    """
    yi = np.asarray(y)
    out: list[dict[str, Any]] = []
    for p in parse_points(points):
        kind, target = next(iter(p.items()))
        if np.unique(yi).size < 2:
            out.append({"kind": kind, "target": target, "note": "needs both classes among the labels"})
            continue
        at = at_sensitivity if kind == "sens" else at_specificity
        out.append({"kind": kind, **at(y, prob, target, level)})
    return out
