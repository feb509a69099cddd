"""trainer.evaluation.sens_bound: the patient-bootstrap lower bound on sensitivity covers a known truth.

The simulated datasets: 60 patients of 6-14 slices, half of them with a run of 2-6 positive slices;
a positive slice's score is ``expit(MU + u_patient + e_slice)`` with ``u ~ N(0, SU)``, ``e ~ N(0, SE)``,
so its marginal law is known and the threshold where the true sensitivity is 0.85 is exact.

Coverage of the nominal 95% bound, measured with 1000 such datasets (n_boot 300), two runs of
different seeds: strong patient effect (SU 1.0, SE 0.7): BCa 0.915 / 0.931, percentile 0.881 /
0.897, a slice bootstrap (BCa) 0.831 / 0.860; milder (SU 0.5, SE 1.0): BCa 0.937, percentile 0.925.
The coverage test below (milder, 200 datasets) sees BCa 0.935 (percentile 0.915 would fail it).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit
from scipy.stats import bootstrap, norm
from sklearn.metrics import recall_score

from trainer.evaluation.sens_bound import (
    SensBoundUnreachableError,
    draw_counts,
    positive_counts,
    resampled_sensitivity,
    select_with_confidence,
    sens_lower_bounds,
)

TRUTH = 0.85


def _true_threshold(mu: float, su: float, se: float) -> float:
    """The threshold where P(expit(mu + u + e) >= t) = TRUTH, u ~ N(0, su), e ~ N(0, se)."""
    return float(expit(mu - norm.ppf(TRUTH) * np.hypot(su, se)))


def _dataset(rng: np.random.Generator, su: float, se: float, mu: float = 2.0, patients: int = 60):
    ys, ps, gs = [], [], []
    for g in range(patients):
        n = int(rng.integers(6, 15))
        y = np.zeros(n, dtype=int)
        if rng.random() < 0.5:
            k = int(rng.integers(2, 7))
            s = int(rng.integers(0, n - k + 1))
            y[s : s + k] = 1
        u = rng.normal(0.0, su)
        p = np.where(y == 1, expit(mu + u + rng.normal(0.0, se, n)), expit(-1.5 + rng.normal(0.0, 1.2, n)))
        ys.append(y)
        ps.append(p)
        gs.append(np.full(n, f"P{g:03d}"))
    return np.concatenate(ys), np.concatenate(ps), np.concatenate(gs)


def _coverage(su: float, se: float, n_sets: int, seed: int, slice_bootstrap: bool = False, **kw) -> float:
    t = _true_threshold(2.0, su, se)
    rng = np.random.default_rng(seed)
    hits = []
    for i in range(n_sets):
        y, p, g = _dataset(rng, su, se)
        units = np.arange(y.size) if slice_bootstrap else g
        hits.append(sens_lower_bounds(y, p, units, [t], n_boot=300, seed=i, **kw)[0] <= TRUTH)
    return float(np.mean(hits))


def test_bound_covers_the_true_sensitivity_at_the_nominal_level():
    n_sets, level = 200, 0.95
    cov = _coverage(0.5, 1.0, n_sets, seed=2024)
    assert cov >= level - 2 * np.sqrt(level * (1 - level) / n_sets), cov


def test_patients_not_slices_are_resampled():
    """With a strong patient effect, resampling slices claims more than the data show."""
    patients = _coverage(1.0, 0.7, 120, seed=7)
    slices = _coverage(1.0, 0.7, 120, seed=7, slice_bootstrap=True)
    assert patients > slices + 0.03, (patients, slices)


def test_bounds_are_non_increasing_in_the_threshold():
    y, p, g = _dataset(np.random.default_rng(1), 1.0, 0.7)
    t = np.random.default_rng(2).permutation(np.linspace(0.0, 1.0, 301))  # any order in, same order out
    for method in ("bca", "percentile"):
        b = sens_lower_bounds(y, p, g, t, n_boot=200, method=method)
        assert np.all(np.diff(b[np.argsort(t)]) <= 0), method
        assert np.all((b >= 0) & (b <= 1))


def test_percentile_bound_equals_a_naive_loop_over_resamples():
    y, p, g = _dataset(np.random.default_rng(3), 0.5, 1.0, patients=20)
    t = np.array([0.3, 0.6, 0.75, 0.9])
    b = sens_lower_bounds(y, p, g, t, n_boot=50, seed=11, method="percentile", max_cells=64)  # many chunks
    names = np.unique(g)
    sens = []
    for counts in draw_counts(names.size, 50, seed=11):
        rows = np.concatenate([np.repeat(np.flatnonzero(g == n), c) for n, c in zip(names, counts)])
        if y[rows].any():
            sens.append([recall_score(y[rows], (p[rows] >= tj).astype(int)) for tj in t])
    np.testing.assert_allclose(b, np.quantile(np.array(sens), 0.05, axis=0), atol=1e-12)


def test_bca_bound_agrees_with_scipy_bootstrap_over_patients():
    y, p, g = _dataset(np.random.default_rng(4), 1.0, 0.7)
    t = _true_threshold(2.0, 1.0, 0.7)
    counts = positive_counts(y, p, g, [t])
    tp, pos = np.zeros(counts.n_groups), np.zeros(counts.n_groups)  # patients without positives are resampled too
    tp[counts.members], pos[counts.members] = counts.tp[:, 0], counts.pos
    assert counts.n_groups == 60 and counts.members.size < 60
    ref = bootstrap((tp, pos), lambda a, b, axis=-1: a.sum(axis) / b.sum(axis), paired=True, vectorized=True,
                    n_resamples=5000, method="BCa", confidence_level=0.95, alternative="greater", random_state=1)
    ours = sens_lower_bounds(y, p, g, [t], n_boot=5000, seed=1)[0]
    assert abs(ours - ref.confidence_interval.low) < 0.02, (ours, ref.confidence_interval.low)


def test_a_patient_drawn_twice_counts_twice():
    y = np.array([1, 1, 0, 1, 1, 1, 0, 1])
    p = np.array([0.9, 0.2, 0.1, 0.8, 0.3, 0.4, 0.7, 0.95])
    g = np.array(["a", "a", "a", "b", "b", "c", "c", "d"])
    t = [0.25, 0.5]
    _, members, tp, pos = positive_counts(y, p, g, t)
    assert members.tolist() == [0, 1, 2, 3]
    w = np.array([[1, 2, 1, 0]])  # a once, b twice, c once, d not drawn
    rows = np.r_[0:3, 3:5, 3:5, 5:7]
    want = [recall_score(y[rows], (p[rows] >= tj).astype(int)) for tj in t]
    np.testing.assert_allclose(resampled_sensitivity(tp, pos, w)[0], want)
    assert want != [recall_score(y[np.r_[0:7]], (p[np.r_[0:7]] >= tj).astype(int)) for tj in t]


def test_draws_do_not_depend_on_chunking():
    whole = draw_counts(7, 20, seed=3)
    parts = np.vstack([draw_counts(7, 20, 3, 0, 6), draw_counts(7, 20, 3, 6, 20)])
    np.testing.assert_array_equal(whole, parts)
    assert (whole.sum(axis=1) == 7).all()


def test_select_with_confidence_picks_the_highest_threshold_whose_bound_reaches_the_target():
    y, p, g = _dataset(np.random.default_rng(5), 0.5, 1.0)
    cand = np.linspace(0.05, 0.95, 91)
    res = select_with_confidence(y, p, g, cand, 0.8, level=0.9, n_boot=300, seed=0)
    bounds = sens_lower_bounds(y, p, g, cand, level=0.9, n_boot=300, seed=0)
    assert res["threshold"] == cand[bounds >= 0.8].max()
    assert res["sens_lower_bound"] == pytest.approx(bounds[cand == res["threshold"]][0])
    assert res["sens"] == pytest.approx(recall_score(y, (p >= res["threshold"]).astype(int)))
    assert res["sens"] >= res["sens_lower_bound"] >= 0.8
    assert {k: res[k] for k in ("level", "n_boot", "n_groups")} == {"level": 0.9, "n_boot": 300, "n_groups": 60}


def test_select_with_confidence_refuses_an_unreachable_target():
    y, p, g = _dataset(np.random.default_rng(6), 0.5, 1.0)
    with pytest.raises(SensBoundUnreachableError, match=r"0\.95 lower confidence bound .* sens_target 0\.999.*best bound reached is 0\.\d+") as e:
        select_with_confidence(y, p, g, [0.5, 0.6, 0.7], 0.999, level=0.95, n_boot=200)
    assert isinstance(e.value, ValueError)


def test_bad_inputs_are_refused():
    y, p, g = np.array([0, 1, 1]), np.array([0.2, 0.7, 0.4]), np.array(["a", "b", "b"])
    with pytest.raises(ValueError, match="positive slices"):
        sens_lower_bounds(np.zeros(3, dtype=int), p, g, [0.5])
    with pytest.raises(ValueError, match="one patient key per row"):
        sens_lower_bounds(y, p, g[:2], [0.5])
    with pytest.raises(ValueError, match="confidence level"):
        sens_lower_bounds(y, p, g, [0.5], level=95)
    with pytest.raises(ValueError, match="method"):
        sens_lower_bounds(y, p, g, [0.5], method="basic")
