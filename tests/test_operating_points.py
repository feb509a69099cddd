"""trainer.evaluation.operating_points: operating points against sklearn's roc_curve / confusion_matrix, ECE."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import confusion_matrix, roc_curve

from trainer.evaluation.intervals import wilson_interval
from trainer.evaluation.operating_points import at_sensitivity, at_specificity, expected_calibration_error


def _data(seed: int = 0, n: int = 400, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    p = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 1.5 * y - 0.8)))
    if ties:
        p = np.round(p, 1)
    return y, p


def _confusion(y, p, t):
    tn, fp, fn, tp = confusion_matrix(y, (p >= t).astype(int), labels=[0, 1]).ravel()
    return int(tp), int(fp), int(tn), int(fn)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 1.0])
def test_at_sensitivity_is_roc_curves_highest_threshold_reaching_the_target(target, ties):
    y, p = _data(1, ties=ties)
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    j = np.flatnonzero(tpr >= target - 1e-12)[0]  # roc_curve's thresholds descend
    r = at_sensitivity(y, p, target)
    assert r["threshold"] == thr[j]
    tp, fp, tn, fn = _confusion(y, p, r["threshold"])
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (tp, fp, tn, fn)
    assert r["sens"]["estimate"] == pytest.approx(tpr[j]) and r["sens"]["estimate"] >= target
    assert r["spec"]["estimate"] == pytest.approx(1 - fpr[j])
    assert r["ppv"]["estimate"] == pytest.approx(tp / (tp + fp))
    assert r["spec"]["wilson"] == pytest.approx(list(wilson_interval(tn, tn + fp)))
    assert r["ppv"]["wilson"] == pytest.approx(list(wilson_interval(tp, tp + fp)))
    # no higher score reaches the target
    higher = np.unique(p)[np.unique(p) > r["threshold"]]
    assert all(((p >= h) & (y == 1)).sum() / (y == 1).sum() < target for h in higher)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 1.0])
def test_at_specificity_is_roc_curves_lowest_threshold_reaching_the_target(target, ties):
    y, p = _data(2, ties=ties)
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    j = np.flatnonzero(1 - fpr >= target - 1e-12)[-1]
    r = at_specificity(y, p, target)
    assert r["threshold"] == thr[j]
    tp, fp, tn, fn = _confusion(y, p, r["threshold"])
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (tp, fp, tn, fn)
    assert r["spec"]["estimate"] == pytest.approx(1 - fpr[j]) and r["spec"]["estimate"] >= target
    assert r["sens"]["estimate"] == pytest.approx(tpr[j])
    assert r["sens"]["wilson"] == pytest.approx(list(wilson_interval(tp, tp + fn)))


def test_hand_example_of_both_operating_points():
    y = [0, 0, 0, 0, 1, 0, 1, 1]
    p = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.9]
    r = at_sensitivity(y, p, 2 / 3)  # 2 of 3 positives: p >= 0.7
    assert (r["threshold"], r["tp"], r["fp"], r["spec"]["estimate"], r["ppv"]["estimate"]) == (0.7, 2, 0, 1.0, 1.0)
    r = at_sensitivity(y, p, 0.9)  # all three: p >= 0.5, one negative (0.6) above
    assert (r["threshold"], r["spec"]["estimate"], r["ppv"]["estimate"]) == (0.5, 0.8, 0.75)
    r = at_specificity(y, p, 0.8)  # 4 of 5 negatives below: lowest such threshold is 0.5
    assert (r["threshold"], r["sens"]["estimate"]) == (0.5, 1.0)
    r = at_specificity(y, [0.1, 0.2, 0.3, 0.4, 0.5, 0.95, 0.7, 0.9], 1.0)  # the top score is a negative
    assert r["threshold"] == np.inf and r["sens"]["estimate"] == 0.0
    assert r["ppv"] == {"estimate": None, "k": 0, "n": 0, "wilson": [None, None]}


def test_operating_points_refuse_bad_targets_and_one_class():
    y, p = _data(3)
    for bad in (0, 1.2, "x"):
        with pytest.raises(ValueError, match="target"):
            at_sensitivity(y, p, bad)
    with pytest.raises(ValueError, match="both classes"):
        at_specificity(np.zeros(5, dtype=int), np.linspace(0, 1, 5), 0.9)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_ece_equals_calibration_curve_bins(strategy):
    y, p = _data(4, n=1000)
    n_bins = 10
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy=strategy)
    edges = np.linspace(0, 1, n_bins + 1) if strategy == "uniform" else np.percentile(p, np.linspace(0, 100, n_bins + 1))
    counts = np.bincount(np.searchsorted(edges[1:-1], p), minlength=n_bins)
    if strategy == "uniform":  # no score on an edge: numpy's histogram gives the same counts
        np.testing.assert_array_equal(counts, np.histogram(p, edges)[0])
    nonzero = counts[counts > 0]
    assert nonzero.size == prob_true.size
    want = float(np.sum(nonzero / len(p) * np.abs(prob_true - prob_pred)))
    assert expected_calibration_error(y, p, n_bins, strategy) == pytest.approx(want, abs=1e-12)


def test_ece_hand_example():
    # bins [0, .5] and (.5, 1]: |0 - 0.2| * 2/4 + |1 - 0.75| * 2/4 = 0.225
    assert expected_calibration_error([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.9], n_bins=2) == pytest.approx(0.225)
    # perfectly calibrated bins: 1 of 4 positive at p = 0.25 each
    assert expected_calibration_error([1, 0, 0, 0], [0.25] * 4, n_bins=4) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="strategy"):
        expected_calibration_error([0, 1], [0.2, 0.8], strategy="equal")
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error([0, 1], [0.2, 0.8], n_bins=0)


def test_operating_points_list_of_a_prediction_set_and_its_config_key():
    from neurocache.config import ConfigError
    from trainer.config import load_config
    from trainer.evaluation.operating_points import operating_points, parse_points

    y, p = _data(3)
    pts = operating_points(y, p, [{"sens": 0.9}, {"spec": 0.95}])
    assert [q["kind"] for q in pts] == ["sens", "spec"]
    assert pts[0] == {"kind": "sens", **at_sensitivity(y, p, 0.9)} and pts[1] == {"kind": "spec", **at_specificity(y, p, 0.95)}
    assert operating_points(np.zeros(5, int), np.linspace(0, 1, 5), [{"sens": 0.9}])[0]["note"].startswith("needs both")
    assert operating_points(y, p, []) == [] and parse_points(None) == ()
    cfg = load_config(sets=["operating_points=[{sens: 0.9}, {spec: 0.95}]"])
    assert cfg.operating_points == ({"sens": 0.9}, {"spec": 0.95})
    assert cfg.to_dict()["operating_points"] == [{"sens": 0.9}, {"spec": 0.95}]
    assert type(cfg).from_dict(cfg.to_dict()) == cfg
    for bad in ("[{ppv: 0.9}]", "[{sens: 1.5}]", "[{sens: 0.9, spec: 0.9}]", "0.9"):
        with pytest.raises(ConfigError, match="operating_points"):
            load_config(sets=[f"operating_points={bad}"])


def test_the_evaluation_reports_operating_points_and_ece_beside_brier():
    from trainer.config import load_config
    from trainer.evaluation import evaluate_predictions

    y, p = _data(4)
    cfg = load_config(sets=["operating_points=[{sens: 0.8}]", "n_boot=0"])
    ev = evaluate_predictions([str(i) for i in range(len(y))], y, p, np.arange(len(y)) // 4, 0.5, cfg)
    assert ev["operating_points"] == [{"kind": "sens", **at_sensitivity(y, p, 0.8)}]
    assert ev["calibration"]["ece"] == pytest.approx(expected_calibration_error(y, p, 10, "uniform"), abs=1e-15)
    assert list(ev["evaluation"]["operating_points"]) == [{"sens": 0.8}]
