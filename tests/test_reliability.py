"""Calibration: Brier, reliability bins, logistic slope/intercept, the plot (trainer.evaluation.reliability)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from scipy.optimize import minimize
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

from trainer.evaluation.reliability import calibration_summary, calibration_table, logistic_calibration
from trainer.report.plots import plot_calibration


@pytest.fixture(autouse=True)
def _no_leaked_figures():
    plt.close("all")
    yield
    assert plt.get_fignums() == []


def _sim(n: int, a: float, b: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Predictions p and outcomes with true P(y=1) = sigmoid(a + b * logit(p))."""
    rng = np.random.default_rng(seed)
    p = 1 / (1 + np.exp(-rng.normal(0, 1.5, n)))
    lp = np.log(p / (1 - p))
    y = (rng.random(n) < 1 / (1 + np.exp(-(a + b * lp)))).astype(int)
    return y, p


def _ml_fit(y: np.ndarray, p: np.ndarray, with_slope: bool) -> np.ndarray:
    """Independent maximum likelihood with scipy (BFGS on the negative log-likelihood)."""
    lp = np.log(p / (1 - p))

    def nll(beta: np.ndarray) -> float:
        eta = beta[0] + (beta[1] * lp if with_slope else lp)
        return float(np.sum(np.logaddexp(0, eta) - y * eta))

    x0 = np.zeros(2 if with_slope else 1)
    return minimize(nll, x0, method="BFGS", options={"gtol": 1e-10}).x


def test_brier_and_bins_match_sklearn():
    y, p = _sim(2000, 0.2, 0.8, seed=1)
    s = calibration_summary(y, p, n_bins=10, strategy="uniform")
    assert s["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-15)
    for strategy in ("uniform", "quantile"):
        bins = calibration_table(y, p, n_bins=8, strategy=strategy)
        frac, mean = calibration_curve(y, p, n_bins=8, strategy=strategy)
        assert [b["frac_pos"] for b in bins] == pytest.approx(list(frac), abs=1e-12)
        assert [b["mean_pred"] for b in bins] == pytest.approx(list(mean), abs=1e-12)
        assert sum(b["n"] for b in bins) == len(y)
    ece = sum(b["n"] / len(y) * abs(b["frac_pos"] - b["mean_pred"]) for b in s["bins"])
    assert s["ece"] == pytest.approx(ece)


def test_slope_and_intercept_match_an_independent_ml_fit():
    y, p = _sim(1500, -0.4, 0.6, seed=2)
    c = logistic_calibration(y, p)
    a, b = _ml_fit(y, p, with_slope=True)
    assert c["converged"]
    assert c["intercept"] == pytest.approx(a, abs=1e-5) and c["slope"] == pytest.approx(b, abs=1e-5)
    (a0,) = _ml_fit(y, p, with_slope=False)
    assert c["citl"] == pytest.approx(a0, abs=1e-5)


def test_slope_recovers_known_miscalibration():
    y, p = _sim(40000, 0.0, 1.0, seed=3)  # perfectly calibrated
    c = logistic_calibration(y, p)
    assert c["slope"] == pytest.approx(1.0, abs=0.05) and c["intercept"] == pytest.approx(0.0, abs=0.05)
    assert c["citl"] == pytest.approx(0.0, abs=0.05)
    y, p = _sim(40000, 0.5, 0.5, seed=4)  # over-confident predictions, under-predicting on average
    c = logistic_calibration(y, p)
    assert c["slope"] == pytest.approx(0.5, abs=0.05) and c["intercept"] == pytest.approx(0.5, abs=0.06)


def test_degenerate_inputs_do_not_crash():
    y = np.array([0, 0, 0, 1, 1, 1])
    separated = logistic_calibration(y, np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]))
    assert not separated["converged"] and math.isnan(separated["slope"])
    const = logistic_calibration(y, np.full(6, 0.4))
    assert math.isnan(const["slope"]) and math.isfinite(const["citl"])
    one_class = logistic_calibration(np.zeros(5), np.linspace(0.1, 0.5, 5))
    assert math.isnan(one_class["slope"]) and math.isnan(one_class["citl"])
    extreme = calibration_summary(y, np.array([0.0, 0.0, 0.5, 1.0, 1.0, 1.0]))  # exact 0/1 are clipped
    assert math.isfinite(extreme["brier"])
    with pytest.raises(ValueError):
        calibration_summary(y, np.array([0.1, 0.2, 0.3, 0.7, 0.8, 1.5]))
    with pytest.raises(ValueError, match="strategy"):
        calibration_table(y, np.linspace(0, 1, 6), strategy="kmeans")


def test_plot_calibration_writes_a_png(tmp_path: Path):
    y1, p1 = _sim(300, 0.0, 1.0, seed=5)
    y2, p2 = _sim(200, 0.3, 0.7, seed=6)
    out = plot_calibration({"OOF": (y1, p1), "test": (y2, p2)}, tmp_path / "sub" / "cal.png", n_bins=8)
    data = (tmp_path / "sub" / "cal.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert set(out) == {"OOF", "test"} and out["test"]["n"] == 200
    assert out["OOF"]["brier"] == pytest.approx(brier_score_loss(y1, p1))
