"""How well calibrated a set of predicted probabilities is: Brier score, reliability diagram, slope and intercept.

(The post-hoc maps that *make* a model's probabilities calibrated are :mod:`trainer.evaluation.calibrators`.)

* Brier score: ``mean((p - y)²)`` (``sklearn.metrics.brier_score_loss``).
* Reliability diagram: predictions binned (``uniform`` edges on [0, 1] or ``quantile`` edges),
  the observed positive fraction against the mean prediction per non-empty bin -- the same bins
  and values as ``sklearn.calibration.calibration_curve``, plus the count per bin.
* Calibration slope and intercept: the unpenalised logistic regression ``logit P(y=1) = a + b ·
  logit(p)`` (Cox 1958; fitted by :func:`trainer.evaluation.calibrators.fit_logistic`, the one
  logistic fitter); perfect calibration is ``b = 1, a = 0``. A slope below 1 means the
  predictions are too extreme (over-fitting), above 1 too timid.
* Calibration-in-the-large (``citl``): the intercept of ``logit P(y=1) = a + logit(p)`` (slope
  fixed at 1, logit(p) as an offset); positive when the model under-predicts on average.
* ECE: ``Σ_bins (n_bin / n) · |frac_pos - mean_pred|`` over the diagram's bins
  (:func:`trainer.evaluation.operating_points.expected_calibration_error`).

Probabilities are clipped to [1e-6, 1 - 1e-6] before the logit. A fit that does not converge, or
has no maximum (classes perfectly separated by the predictions), reports NaN slope/intercept and
``converged: false``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

from trainer.evaluation.calibrators import fit_logistic
from trainer.evaluation.inputs import check_labels_scores
from trainer.evaluation.operating_points import expected_calibration_error

__all__ = [
    "BIN_STRATEGIES",
    "bin_edges",
    "calibration_summary",
    "calibration_table",
    "logistic_calibration",
]

#: How the reliability diagram's bin edges are placed (config key ``calibration_strategy``).
BIN_STRATEGIES: tuple[str, ...] = ("uniform", "quantile")
EPS: float = 1e-6


def _check(y: Any, prob: Any) -> tuple[np.ndarray, np.ndarray]:
    """(float64 (n,) 0/1 labels, float64 (n,) probabilities), non-empty."""
    yy, p = check_labels_scores(y, prob, y_name="y")
    return yy.astype(np.float64), p


def bin_edges(prob: np.ndarray, n_bins: int = 10, strategy: str = "uniform") -> np.ndarray:
    """Bin edges as ``sklearn.calibration.calibration_curve`` makes them."""
    if strategy not in BIN_STRATEGIES:
        raise ValueError(f"calibration strategy {strategy!r} is invalid; allowed: {', '.join(BIN_STRATEGIES)}")
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if strategy == "quantile":
        return np.percentile(prob, np.linspace(0, 1, int(n_bins) + 1) * 100)
    return np.linspace(0.0, 1.0, int(n_bins) + 1)


def calibration_table(y: Any, prob: Any, n_bins: int = 10, strategy: str = "uniform") -> list[dict[str, float]]:
    """One dict per non-empty bin: ``lo, hi, n, mean_pred, frac_pos`` (ascending).

    ``mean_pred`` and ``frac_pos`` are ``sklearn.calibration.calibration_curve``'s values; the
    edges (:func:`bin_edges`) and counts are those of its bins (bin i: edges[i] <= p < edges[i+1]),
    which it does not return.
    """
    yy, p = _check(y, prob)
    edges = bin_edges(p, n_bins, strategy)
    cnt = np.bincount(np.searchsorted(edges[1:-1], p), minlength=len(edges) - 1)
    with warnings.catch_warnings():  # a single-class set is a valid (if uninformative) diagram
        warnings.simplefilter("ignore")
        frac_pos, mean_pred = calibration_curve(yy, p, n_bins=int(n_bins), strategy=strategy, pos_label=1)
    return [{"lo": float(edges[i]), "hi": float(edges[i + 1]), "n": int(cnt[i]), "mean_pred": float(mp),
             "frac_pos": float(fp)} for i, mp, fp in zip(np.flatnonzero(cnt), mean_pred, frac_pos)]


def _separated(y: np.ndarray, x: np.ndarray) -> bool:
    """True when a cut on ``x`` puts the classes apart (ties allowed): ``logit P = a + b x`` then has no
    maximum-likelihood fit (the slope grows without bound)."""
    pos, neg = x[y == 1], x[y == 0]
    return bool(pos.min() >= neg.max() or neg.min() >= pos.max())


def logistic_calibration(y: Any, prob: Any) -> dict[str, Any]:
    """``slope``, ``intercept`` (logit P = a + b·logit p), ``citl`` (offset fit) and ``converged``."""
    yy, p = _check(y, prob)
    nan = float("nan")
    if np.unique(yy).size < 2:
        return {"slope": nan, "intercept": nan, "citl": nan, "converged": False}
    lp = np.log(np.clip(p, EPS, 1 - EPS) / (1 - np.clip(p, EPS, 1 - EPS)))
    out: dict[str, Any] = {}
    ones = np.ones_like(yy)
    if np.ptp(lp) > 0:
        coef, ok = fit_logistic(np.column_stack([ones, lp]), yy)
        ok = ok and not _separated(yy, lp)
        out.update(intercept=float(coef[0]) if ok else nan, slope=float(coef[1]) if ok else nan, converged=ok)
    else:  # constant predictions: no slope
        out.update(intercept=nan, slope=nan, converged=False)
    coef0, ok0 = fit_logistic(ones[:, None], yy, offset=lp)  # both classes present: this maximum always exists
    out["citl"] = float(coef0[0]) if ok0 else nan
    return out


def calibration_summary(y: Any, prob: Any, n_bins: int = 10, strategy: str = "uniform") -> dict[str, Any]:
    """Brier score, slope, intercept, calibration-in-the-large, ECE and the diagram's bins."""
    yy, p = _check(y, prob)
    bins = calibration_table(yy, p, n_bins, strategy)
    ece = expected_calibration_error(yy, p, n_bins, strategy)  # over these bins (the one definition)
    return {
        "n": int(p.size),
        "brier": float(brier_score_loss(yy, p)),
        # Brier of always predicting the prevalence, for scale
        "brier_reference": float(yy.mean() * (1 - yy.mean())),
        **logistic_calibration(yy, p),
        "ece": float(ece),
        "n_bins": int(n_bins),
        "strategy": strategy,
        "bins": bins,
    }
