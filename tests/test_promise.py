"""trainer.evaluation.promise: what cross-validation promised beside what the test delivered (issue 10)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from trainer.evaluation.calibrators import Calibrator
from trainer.evaluation.promise import format_promise, promise_vs_delivery


def test_promise_table_flags_a_test_value_outside_the_cv_interval():
    cv_oof = {"metrics": {"sens": 0.85, "spec": 0.68, "ppv": 0.7, "npv": 0.8, "auc": 0.92, "ap": 0.9},
              "intervals": {"sens": {"bootstrap": [0.78, 0.91], "wilson": [0.8, 0.9]},
                            "spec": {"bootstrap": [None, None], "wilson": [0.6, 0.75]},
                            "ppv": {"bootstrap": [0.6, 0.8]}, "npv": {"bootstrap": [0.7, 0.9]},
                            "auc": {"bootstrap": [0.88, 0.95], "delong": [0.89, 0.94]}, "ap": {"bootstrap": [0.85, 0.94]}}}
    test = {"sens": 0.41, "spec": 0.70, "ppv": 0.75, "npv": 0.6, "auc": 0.69, "ap": 0.9}
    t = promise_vs_delivery(cv_oof, test, None, 0.9)
    rows = {r["metric"]: r for r in t["rows"]}
    assert t["outside"] == ["sens", "npv", "auc"] and t["n_outside"] == 3
    assert rows["spec"]["cv_interval"] == "wilson" and rows["spec"]["cv_lo"] == 0.6  # no bootstrap -> Wilson
    assert rows["sens"]["diff"] == pytest.approx(0.41 - 0.85)
    assert [rows[m]["verdict"] for m in ("sens", "spec", "ppv", "npv", "auc", "ap")] == [
        "worse", "held", "held", "worse", "worse", "held"]  # no test intervals: the test value is its interval
    assert t["worse"] == ["sens", "npv", "auc"] and t["n_better"] == 0 and t["n_degenerate"] == 0
    text = format_promise(t)
    assert "sensitivity" in text and "<- WORSE than promised" in text
    assert "3 of 6 worse than promised (sensitivity, NPV, ROC-AUC); 0 better than promised; 0 degenerate" in text
    assert all(r["cv_fold_mean"] is None and r["diff_fold_mean"] is None for r in t["rows"])  # no fold stats given


def _table(cv: dict[str, tuple[float, float, float]], test: dict[str, tuple[float, float, float]]) -> dict:
    """promise_vs_delivery of hand values: {metric: (estimate, lo, hi)} for CV (bootstrap) and test."""
    cv_oof = {"metrics": {m: v[0] for m, v in cv.items()}, "intervals": {m: {"bootstrap": [v[1], v[2]]} for m, v in cv.items()}}
    test_iv = {m: {"bootstrap": [v[1], v[2]]} for m, v in test.items()}
    return promise_vs_delivery(cv_oof, {m: v[0] for m, v in test.items()}, test_iv, 0.5)


def test_promise_verdicts_from_hand_values():
    # the run: CV intervals of 1.000-1.000 (nothing varied) and tests better than promised
    t = _table(cv={"sens": (1.0, 1.0, 1.0), "spec": (0.95, 0.93, 0.97), "ppv": (0.80, 0.70, 0.88),
                   "npv": (0.990, 0.980, 0.996), "auc": (1.0, 1.0, 1.0), "ap": (0.90, 0.85, 0.94)},
               test={"sens": (0.972, 0.910, 1.000), "spec": (0.90, 0.86, 0.92), "ppv": (0.60, 0.50, 0.72),
                     "npv": (0.999, 0.997, 1.000), "auc": (0.998, 0.992, 1.000), "ap": (0.97, 0.95, 0.99)})
    v = {r["metric"]: r["verdict"] for r in t["rows"]}
    # a degenerate CV interval is never "worse", though sens 0.972 and ROC-AUC 0.998 lie outside 1.000-1.000
    assert v == {"sens": "degenerate", "spec": "worse", "ppv": "held", "npv": "better", "auc": "degenerate", "ap": "better"}
    assert t["outside"] == ["sens", "spec", "ppv", "npv", "auc", "ap"]  # the old flag (the test value), kept: not the verdict
    assert (t["worse"], t["better"], t["degenerate"]) == (["spec"], ["npv", "ap"], ["sens", "auc"])
    text = format_promise(t)
    assert "CV interval degenerate (1.000-1.000): nothing to compare" in text
    assert "1 of 6 worse than promised (specificity); 2 better than promised (NPV, AUPRC); 2 degenerate (sensitivity, ROC-AUC)" in text
    assert text.count("<- WORSE than promised") == 1 and text.count("better than promised") == 3  # 2 rows + summary
    # intervals that only touch overlap: held; n/a without a test value or a CV interval
    t2 = _table(cv={"sens": (0.9, 0.85, 0.95), "spec": (0.8, 0.7, 0.9)}, test={"sens": (0.8, 0.7, 0.85)})
    v2 = {r["metric"]: r["verdict"] for r in t2["rows"]}
    assert v2["sens"] == "held" and v2["spec"] == "n/a" and v2["auc"] == "n/a"
    assert "0 of 6 worse than promised; 0 better than promised; 0 degenerate" in format_promise(t2)


def test_promise_table_states_the_sensitivity_bound():
    cv_oof = {"metrics": {"sens": 0.93}, "intervals": {"sens": {"bootstrap": [0.88, 0.97]}}}
    bound = {"sens_lower_bound": 0.86, "level": 0.95, "sens_target": 0.85, "method": "bca", "n_boot": 1000}
    t = promise_vs_delivery(cv_oof, {"sens": 0.9}, None, 0.31, None, bound)
    sens = t["rows"][0]
    assert (sens["cv_lower_bound"], sens["cv_bound_level"], sens["sens_target"]) == (0.86, 0.95, 0.85)
    assert "(CV promise: 95% lower bound 0.860 >= target 0.850)" in format_promise(t)
    assert "cv_lower_bound" not in t["rows"][1]


def test_promise_table_sets_the_fold_mean_beside_the_pooled_ranking_metrics():
    cv_oof = {"metrics": {"sens": 0.85, "spec": 0.9, "auc": 0.945, "ap": 0.93},
              "intervals": {"auc": {"bootstrap": [0.91, 0.97]}}}
    test = {"sens": 0.9, "spec": 1.0, "auc": 1.0, "ap": 1.0}
    t = promise_vs_delivery(cv_oof, test, None, 0.5, {"auc": (0.963, 0.026), "ap": (0.953, float("nan")),
                                                      "sens": (0.1, 0.1)})
    rows = {r["metric"]: r for r in t["rows"]}
    assert rows["auc"]["cv_fold_mean"] == 0.963 and rows["auc"]["cv_fold_sd"] == 0.026
    assert rows["auc"]["diff_fold_mean"] == pytest.approx(1.0 - 0.963) and rows["auc"]["diff"] == pytest.approx(0.055)
    assert rows["ap"]["cv_fold_sd"] is None  # a NaN sd (one fold) is no number
    assert rows["sens"]["cv_fold_mean"] is None  # threshold rows have no fold mean, whatever is passed
    assert t["outside"] == ["auc"]  # the flag is still the pooled interval's
    text = format_promise(t)
    assert "0.963 ± 0.026" in text and "CV fold mean" in text


def test_final_run_stores_and_prints_promise_vs_delivery(trainer_store, tmp_path, capsys):
    from _tiny_runs import tiny_runs

    runs = tiny_runs(trainer_store, tmp_path / "runs")
    m = json.loads((runs["final"] / "test_metrics.json").read_text())
    cvm = json.loads((runs["cv"] / "cv_metrics.json").read_text())
    rows = {r["metric"]: r for r in m["promised"]["rows"]}
    assert set(rows) == {"sens", "spec", "ppv", "npv", "auc", "ap"}
    assert rows["sens"]["cv"] == pytest.approx(cvm["oof"]["metrics"]["sens"])
    assert rows["sens"]["test"] == pytest.approx(m["sens"]) and rows["auc"]["test"] == pytest.approx(m["auc"])
    fold_auc = [roc_auc_score(g["label"], g["prob"]) for _, g in
                pd.read_csv(runs["cv"] / "cv_oof_predictions.csv").groupby("fold")]
    assert rows["auc"]["cv_fold_mean"] == pytest.approx(np.mean(fold_auc))  # each fold model's own ranking
    assert rows["auc"]["cv_fold_sd"] == pytest.approx(np.std(fold_auc, ddof=1))
    assert rows["ap"]["cv_fold_mean"] == pytest.approx(cvm["oof_ap_mean"]) and rows["sens"]["cv_fold_mean"] is None
    card = json.loads((runs["final"] / "model_card.json").read_text())
    pred = pd.read_csv(runs["final"] / "test_predictions.csv")
    # prob is the calibration map of the model card applied to prob_raw
    np.testing.assert_allclose(pred["prob"], Calibrator.from_dict(card["calibration"])(pred["prob_raw"]), atol=1e-12)
    page = (runs["final"] / "report.html").read_text()
    assert page.index('id="promise"') < page.index('id="summary"')
    verdicts = [r["verdict"] for r in m["promised"]["rows"]]
    words = {"worse": "worse than promised</span>", "better": "better than promised</span>", "held": ">held</span>",
             "degenerate": "nothing to compare</span>"}
    assert sum(page.count(words[v]) for v in set(verdicts) if v in words) == sum(v in words for v in verdicts)
    assert sum(v in words for v in verdicts) == 6 - verdicts.count("n/a")  # one verdict per metric with a test value
    if m["promised"]["n_worse"]:
        assert 'class="fail">worse than promised' in page
    assert "CV fold mean ± sd" in page and f"{rows['auc']['cv_fold_mean']:.3f} ± " in page
