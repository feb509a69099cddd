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
    text = format_promise(t)
    assert "sensitivity" in text and "outside the CV interval" in text and "3 of 6" in text
    assert all(r["cv_fold_mean"] is None and r["diff_fold_mean"] is None for r in t["rows"])  # no fold stats given


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
    n_flags = page.count("outside the CV interval</span>") + page.count(">within</span>")
    assert n_flags == 6  # one verdict per metric of the table
    assert "CV fold mean ± sd" in page and f"{rows['auc']['cv_fold_mean']:.3f} ± " in page
