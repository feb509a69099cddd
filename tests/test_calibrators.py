"""trainer.evaluation.calibrators: the post-hoc calibration maps against scikit-learn / scipy (issue 10)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import expit
from sklearn.calibration import _sigmoid_calibration
from sklearn.isotonic import IsotonicRegression

from trainer.evaluation.calibrators import Calibrator, fit_calibrator, to_logit


def _scores(n: int = 300, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    p = expit(rng.normal(2.0 * y - 0.5, 1.3))
    return y, p


def test_platt_equals_sklearn_sigmoid_calibration():
    for y, p in (_scores(), (np.r_[np.zeros(10), np.ones(5)], np.r_[np.linspace(1e-4, 4e-3, 10), np.linspace(6e-3, 9e-3, 5)])):
        cal = fit_calibrator("platt", y, p)
        a, b = _sigmoid_calibration(to_logit(p), y)  # sklearn: p = 1 / (1 + exp(a f + b))
        ref = 1.0 / (1.0 + np.exp(a * to_logit(p) + b))
        np.testing.assert_allclose(cal(p), ref, atol=1e-6)
        assert np.isfinite(cal.params["a"]) and cal.params["a"] > 0  # finite on a perfectly separated holdout


def test_isotonic_equals_sklearn():
    y, p = _scores()
    cal = fit_calibrator("isotonic", y, p)
    ref = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(p, y)
    q = np.linspace(0, 1, 101)
    np.testing.assert_allclose(cal(q), ref.predict(q), atol=1e-12)


def test_temperature_minimises_the_nll():
    y, p = _scores()
    cal = fit_calibrator("temperature", y, p)
    z = to_logit(p)

    def nll(t: float) -> float:
        q = np.clip(expit(z / t), 1e-15, 1 - 1e-15)
        return float(-(y * np.log(q) + (1 - y) * np.log(1 - q)).sum())

    grid = np.exp(np.linspace(-3, 3, 6001))
    best = grid[np.argmin([nll(t) for t in grid])]
    assert cal.params["T"] == pytest.approx(best, rel=2e-3)
    assert nll(cal.params["T"]) <= min(nll(t) for t in grid) + 1e-6


def test_calibrator_round_trips_and_one_class_holdout_is_identity():
    y, p = _scores()
    for m in ("platt", "temperature", "isotonic", "none"):
        cal = fit_calibrator(m, y, p)
        again = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
        np.testing.assert_array_equal(again(p), cal(p))
    one = fit_calibrator("platt", np.zeros(5), np.linspace(0.1, 0.5, 5))
    assert one.method == "none" and "both classes" in one.note
    np.testing.assert_array_equal(one(np.array([0.2, 0.7])), [0.2, 0.7])
    with pytest.raises(ValueError, match="calibration='beta'"):
        fit_calibrator("beta", y, p)
