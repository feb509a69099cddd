"""Calibration of predicted probabilities: Brier score, reliability diagram, slope and intercept.

* Brier score: ``mean((p - y)²)`` (``sklearn.metrics.brier_score_loss``).
* Reliability diagram: predictions binned (``uniform`` edges on [0, 1] or ``quantile`` edges),
  the observed positive fraction against the mean prediction per non-empty bin -- the same bins
  and values as ``sklearn.calibration.calibration_curve``, plus the count per bin.
* Calibration slope and intercept: the unpenalised logistic regression ``logit P(y=1) = a + b ·
  logit(p)`` (Cox 1958); perfect calibration is ``b = 1, a = 0``. A slope below 1 means the
  predictions are too extreme (over-fitting), above 1 too timid.
* Calibration-in-the-large (``citl``): the intercept of ``logit P(y=1) = a + logit(p)`` (slope
  fixed at 1, logit(p) as an offset); positive when the model under-predicts on average.
* ECE: ``Σ_bins (n_bin / n) · |frac_pos - mean_pred|`` over the diagram's bins.

Probabilities are clipped to [1e-6, 1 - 1e-6] before the logit. A fit that does not converge
(e.g. perfectly separated classes) reports NaN slope/intercept and ``converged: false``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import brier_score_loss  # noqa: E402

__all__ = [
    "STRATEGIES",
    "bin_edges",
    "calibration_summary",
    "calibration_table",
    "logistic_calibration",
    "plot_calibration",
]

STRATEGIES: tuple[str, ...] = ("uniform", "quantile")
EPS: float = 1e-6


def _check(y: Any, prob: Any) -> tuple[np.ndarray, np.ndarray]:
    yy = np.asarray(y).astype(np.float64)
    p = np.asarray(prob, dtype=np.float64)
    if yy.ndim != 1 or yy.shape != p.shape or yy.size == 0:
        raise ValueError(f"y and prob must be non-empty 1-D arrays of equal length, got {yy.shape} and {p.shape}")
    if not np.all(np.isin(yy, (0.0, 1.0))):
        raise ValueError("y must contain only 0 and 1")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ValueError("prob must be finite probabilities in [0, 1]")
    return yy, p


def bin_edges(prob: np.ndarray, n_bins: int = 10, strategy: str = "uniform") -> np.ndarray:
    """Bin edges as ``sklearn.calibration.calibration_curve`` makes them."""
    if strategy not in STRATEGIES:
        raise ValueError(f"calibration strategy {strategy!r} is invalid; allowed: {', '.join(STRATEGIES)}")
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if strategy == "quantile":
        return np.percentile(prob, np.linspace(0, 1, int(n_bins) + 1) * 100)
    return np.linspace(0.0, 1.0, int(n_bins) + 1)


def calibration_table(y: Any, prob: Any, n_bins: int = 10, strategy: str = "uniform") -> list[dict[str, float]]:
    """One dict per non-empty bin: ``lo, hi, n, mean_pred, frac_pos`` (ascending)."""
    yy, p = _check(y, prob)
    edges = bin_edges(p, n_bins, strategy)
    ids = np.searchsorted(edges[1:-1], p)  # sklearn's assignment: bin i holds edges[i] <= p < edges[i+1]
    nb = len(edges) - 1
    cnt = np.bincount(ids, minlength=nb)
    s_pred = np.bincount(ids, weights=p, minlength=nb)
    s_true = np.bincount(ids, weights=yy, minlength=nb)
    rows = []
    for i in np.flatnonzero(cnt):
        rows.append({"lo": float(edges[i]), "hi": float(edges[i + 1]), "n": int(cnt[i]),
                     "mean_pred": float(s_pred[i] / cnt[i]), "frac_pos": float(s_true[i] / cnt[i])})
    return rows


def _fit_logistic(y: np.ndarray, x: np.ndarray | None, offset: np.ndarray, max_iter: int = 100,
                  tol: float = 1e-10) -> tuple[np.ndarray, bool]:
    """Unpenalised logistic regression by Newton-Raphson with step halving; (coef, converged)."""
    cols = [np.ones_like(y)] + ([x] if x is not None else [])
    X = np.column_stack(cols)
    beta = np.zeros(X.shape[1])

    def nll(b: np.ndarray) -> float:
        eta = X @ b + offset
        return float(np.sum(np.logaddexp(0.0, eta) - y * eta))

    cur = nll(beta)
    for _ in range(max_iter):
        eta = X @ beta + offset
        mu = 1.0 / (1.0 + np.exp(-eta))
        wts = mu * (1.0 - mu)
        grad = X.T @ (y - mu)
        hess = X.T @ (X * wts[:, None])
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            return beta, False
        t = 1.0
        while True:
            cand = beta + t * step
            new = nll(cand)
            if new <= cur + 1e-12:
                break
            t /= 2.0
            if t < 1e-8:  # no descent left: at the optimum up to round-off, or stuck
                return beta, bool(np.max(np.abs(grad)) < 1e-6 * max(1.0, y.size))
        beta, cur = cand, new
        if np.max(np.abs(t * step)) < tol * (1.0 + np.max(np.abs(beta))):
            return beta, bool(np.all(np.abs(beta) < 1e3))
    return beta, False


def logistic_calibration(y: Any, prob: Any) -> dict[str, Any]:
    """``slope``, ``intercept`` (logit P = a + b·logit p), ``citl`` (offset fit) and ``converged``."""
    yy, p = _check(y, prob)
    nan = float("nan")
    if np.unique(yy).size < 2:
        return {"slope": nan, "intercept": nan, "citl": nan, "converged": False}
    lp = np.log(np.clip(p, EPS, 1 - EPS) / (1 - np.clip(p, EPS, 1 - EPS)))
    out: dict[str, Any] = {}
    if np.ptp(lp) > 0:
        coef, ok = _fit_logistic(yy, lp, np.zeros_like(yy))
        out.update(intercept=float(coef[0]) if ok else nan, slope=float(coef[1]) if ok else nan, converged=ok)
    else:  # constant predictions: no slope
        out.update(intercept=nan, slope=nan, converged=False)
    coef0, ok0 = _fit_logistic(yy, None, lp)
    out["citl"] = float(coef0[0]) if ok0 else nan
    return out


def calibration_summary(y: Any, prob: Any, n_bins: int = 10, strategy: str = "uniform") -> dict[str, Any]:
    """Brier score, slope, intercept, calibration-in-the-large, ECE and the diagram's bins."""
    yy, p = _check(y, prob)
    bins = calibration_table(yy, p, n_bins, strategy)
    ece = sum(b["n"] / p.size * abs(b["frac_pos"] - b["mean_pred"]) for b in bins)
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


def plot_calibration(
    sets: dict[str, tuple[Any, Any]],
    path: str | os.PathLike[str],
    *,
    n_bins: int = 10,
    strategy: str = "uniform",
    title: str = "Calibration",
) -> dict[str, dict[str, Any]]:
    """Reliability diagram (top) and prediction histograms (bottom) for one or more sets.

    Args:
        sets: ``{name: (y, prob)}``, e.g. ``{"test": (y, p)}`` or ``{"OOF": ..., "test": ...}``.
        path: PNG to write (parent folders created).

    Returns:
        ``{name: calibration_summary(...)}``.
    """
    out: dict[str, dict[str, Any]] = {}
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(6, 7.5), gridspec_kw={"height_ratios": [3, 1.2]}, sharex=True)
    try:
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
        for i, (name, (y, prob)) in enumerate(sets.items()):
            s = calibration_summary(y, prob, n_bins, strategy)
            out[name] = s
            xs = [b["mean_pred"] for b in s["bins"]]
            ys = [b["frac_pos"] for b in s["bins"]]
            sizes = [20 + 180 * b["n"] / s["n"] for b in s["bins"]]
            color = f"C{i}"
            slope = "n/a" if not np.isfinite(s["slope"]) else f"{s['slope']:.2f}"
            ax.plot(xs, ys, "-", color=color, lw=1.5,
                    label=f"{name}: Brier {s['brier']:.3f}, slope {slope}, n={s['n']}")
            ax.scatter(xs, ys, s=sizes, color=color, zorder=3)
            yy, p = _check(y, prob)
            edges = np.linspace(0, 1, 21)
            axh.hist(p[yy == 0], bins=edges, histtype="step", color=color, ls="-", label=f"{name} label 0")
            axh.hist(p[yy == 1], bins=edges, histtype="step", color=color, ls="--", label=f"{name} label 1")
        ax.set(xlim=(0, 1), ylim=(-0.02, 1.02), ylabel="observed fraction positive", title=title)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
        axh.set(xlabel=f"predicted probability ({strategy} bins, {n_bins})", ylabel="count")
        axh.legend(fontsize=7)
        fig.tight_layout()
        p_out = Path(path)
        p_out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p_out, dpi=110, format="png")
    finally:
        plt.close(fig)
    return out
