"""Post-hoc calibration maps: fitted on a model's own holdout, applied to every score it makes.

Each fold model of ``trainer cv`` and the final model of ``trainer final`` is calibrated on the
holdout it early-stopped on (never on the rows it is scored on), so a probability means the same
for every model and one threshold chosen on the pooled out-of-fold scores transfers to the final
model. Methods (config key ``calibration``):

``platt`` (default)
    ``p = sigmoid(a * z + b)`` with ``z = logit(p_raw)``, fitted by maximum likelihood on Platt's
    (1999) smoothed targets ``(n_pos + 1) / (n_pos + 2)`` and ``1 / (n_neg + 2)`` -- the same fit
    as scikit-learn's sigmoid calibration. Two parameters: the intercept undoes the prevalence
    shift of the class-balanced sampler, the slope the over/under-confidence; the smoothed targets
    keep both finite on a small, perfectly separated holdout. Monotone, so ROC-AUC is unchanged.
``temperature``
    ``p = sigmoid(z / T)`` (Guo et al. 2017), one parameter: robust on tiny holdouts, but it
    cannot move the 0.5 point, so it leaves the sampler's prevalence shift in place.
``isotonic``
    scikit-learn's ``IsotonicRegression(out_of_bounds="clip")`` on ``p_raw``: non-parametric,
    needs a few hundred holdout slices per class, and its steps tie scores (coarser thresholds).
``none``
    the identity.

A calibrator is a small frozen value (:class:`Calibrator`) that round-trips through JSON
(``model_card.json["calibration"]``, ``cv_metrics.json["per_fold"][k]["calibration"]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit, logit

__all__ = ["METHODS", "Calibrator", "fit_calibrator", "fit_logistic", "to_logit"]

METHODS: tuple[str, ...] = ("platt", "temperature", "isotonic", "none")
#: Probabilities are clipped to [EPS, 1 - EPS] before the logit (float64 sigmoid saturates near 37).
EPS: float = 1e-15


def to_logit(prob: Any) -> np.ndarray:
    """logit of probabilities clipped to [EPS, 1 - EPS]; float64 array of prob's shape."""
    p = np.clip(np.asarray(prob, dtype=np.float64), EPS, 1.0 - EPS)
    return logit(p)


@dataclass(frozen=True)
class Calibrator:
    """A fitted calibration map ``p_raw -> p``.

    Attributes:
        method: one of :data:`METHODS`.
        params: the fitted parameters (JSON-serialisable): ``{"a", "b"}`` (platt), ``{"T"}``
            (temperature), ``{"x", "y"}`` knots (isotonic), ``{}`` (none).
        n_fit, n_pos_fit: slices (and positive slices) it was fitted on.
        note: why it fell back to the identity, when it did.
    """

    method: str
    params: dict[str, Any] = field(default_factory=dict)
    n_fit: int = 0
    n_pos_fit: int = 0
    note: str = ""

    def __call__(self, prob: Any) -> np.ndarray:
        """Calibrated probabilities, float64, same shape as ``prob``."""
        p = np.asarray(prob, dtype=np.float64)
        if self.method == "none":
            return p.copy()
        if self.method == "isotonic":
            return np.interp(p, np.asarray(self.params["x"], float), np.asarray(self.params["y"], float))
        z = to_logit(p)
        if self.method == "platt":
            return expit(float(self.params["a"]) * z + float(self.params["b"]))
        if self.method == "temperature":
            return expit(z / float(self.params["T"]))
        raise ValueError(f"unknown calibration method {self.method!r}; allowed: {', '.join(METHODS)}")

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "params": self.params, "n_fit": self.n_fit, "n_pos_fit": self.n_pos_fit,
                "note": self.note}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Calibrator:
        """The inverse of :meth:`to_dict`; ``None`` (a run made without calibration) is the identity."""
        if not d:
            return cls("none", note="no calibration recorded")
        if d.get("method") not in METHODS:
            raise ValueError(f"calibration method {d.get('method')!r} is unknown; allowed: {', '.join(METHODS)}")
        return cls(d["method"], dict(d.get("params") or {}), int(d.get("n_fit", 0)), int(d.get("n_pos_fit", 0)),
                   str(d.get("note", "")))


def fit_logistic(
    x: np.ndarray, t: np.ndarray, *, offset: np.ndarray | None = None, start: np.ndarray | None = None
) -> tuple[np.ndarray, bool]:
    """Unpenalised maximum-likelihood logistic regression: the trainer's one logistic fitter.

    Minimises the cross-entropy of ``sigmoid(x @ w + offset)`` against targets ``t`` in [0, 1]
    (0/1 labels, or Platt's smoothed targets) with scipy's L-BFGS-B and the analytic gradient.
    Used by Platt's calibration map here and by the calibration slope / intercept of
    :func:`trainer.evaluation.reliability.logistic_calibration`.

    Args:
        x: (n, k) float64 design matrix (include a column of ones for an intercept).
        t: (n,) float64 targets.
        offset: (n,) a term added with coefficient 1 (e.g. logit(p) for calibration-in-the-large).
        start: (k,) the starting coefficients (default zeros).

    Returns:
        (w: (k,) coefficients, converged: finite, and scipy reports success or the gradient is
        below 1e-6 per row). Where no maximum exists (separated classes) the coefficients run off
        and may still be reported as converged: callers that can meet separation check for it.
    """
    k = x.shape[1]

    def nll(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = w[0] * x[:, 0]
        for j in range(1, k):
            s = s + w[j] * x[:, j]
        if offset is not None:
            s = s + offset
        # -[t log sigmoid(s) + (1-t) log(1-sigmoid(s))] = logaddexp(0, s) - t s, numerically stable
        loss = np.logaddexp(0.0, s) - t * s
        g = expit(s) - t
        return float(loss.sum()), np.array([float((g * x[:, j]).sum()) for j in range(k)])

    x0 = np.zeros(k) if start is None else np.asarray(start, dtype=np.float64)
    res = minimize(nll, x0, jac=True, method="L-BFGS-B", options={"gtol": 1e-10, "ftol": 1e-15})
    w = np.asarray(res.x, dtype=np.float64)
    small_gradient = bool(np.max(np.abs(res.jac)) < 1e-6 * max(1.0, float(t.size)))
    return w, bool(np.all(np.isfinite(w))) and (bool(res.success) or small_gradient)


def _platt(z: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Platt's fit: ``sigmoid(a z + b)`` by :func:`fit_logistic` against the smoothed targets."""
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    t = np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    prior = np.log((n_pos + 1.0) / (n_neg + 1.0))
    w, _ = fit_logistic(np.column_stack([z, np.ones_like(z)]), t, start=np.array([1.0, prior]))
    return {"a": float(w[0]), "b": float(w[1])}


def _temperature(z: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """T minimising the negative log-likelihood of sigmoid(z / T), searched over log T in [-6, 6]."""

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        return float((np.logaddexp(0.0, s) - y * s).sum())

    res = minimize_scalar(nll, bounds=(-6.0, 6.0), method="bounded", options={"xatol": 1e-8})
    return {"T": float(np.exp(res.x))}


def _isotonic(p: np.ndarray, y: np.ndarray) -> dict[str, list[float]]:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(p, y)
    return {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}


def fit_calibrator(method: str, y: Any, prob: Any) -> Calibrator:
    """Fit ``method`` on holdout labels ``y`` (0/1, shape (n,)) and raw probabilities ``prob`` (n,).

    A holdout with one class only cannot be calibrated: the identity is returned with a ``note``
    saying so (the caller reports it).

    Raises:
        ValueError: unknown method, or ``y``/``prob`` of different lengths.
    """
    if method not in METHODS:
        raise ValueError(f"calibration={method!r} is invalid; allowed: {', '.join(METHODS)}")
    yy = np.asarray(y).astype(np.float64).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    if yy.shape != p.shape:
        raise ValueError(f"y and prob must have the same length, got {yy.shape} and {p.shape}")
    n, n_pos = int(yy.size), int(yy.sum())
    if method == "none":
        return Calibrator("none", {}, n, n_pos)
    if n == 0 or n_pos in (0, n):
        return Calibrator("none", {}, n, n_pos, note=f"{method} not fitted: the holdout has {n_pos} positive "
                                                     f"of {n} slices (needs both classes); identity used")
    if method == "platt":
        params: dict[str, Any] = _platt(to_logit(p), yy)
    elif method == "temperature":
        params = _temperature(to_logit(p), yy)
    else:
        params = _isotonic(p, yy)
    return Calibrator(method, params, n, n_pos)
