"""trainer.evaluation.thresholds: threshold candidates and selection that cannot degenerate (issue 10)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trainer.evaluation.thresholds import candidate_thresholds, cv_threshold_tables, select_threshold, threshold_spread


def _tiny_oof(seed: int = 0) -> pd.DataFrame:
    """Two folds whose scores all sit below 0.01 (the 96-slice case of issue 10), well ranked."""
    rng = np.random.default_rng(seed)
    rows = []
    for fold in (0, 1):
        y = np.r_[np.zeros(30), np.ones(18)].astype(int)
        prob = np.where(y == 1, rng.uniform(0.004, 0.009, y.size), rng.uniform(0.0005, 0.006, y.size))
        rows.append(pd.DataFrame({"ID": [f"f{fold}_{i}" for i in range(y.size)], "label": y, "prob": prob, "fold": fold}))
    return pd.concat(rows, ignore_index=True)


@pytest.mark.parametrize("pooling", ["pooled", "folds"])
@pytest.mark.parametrize("strategy", ["max_f1", "sens_target"])
def test_scores_below_the_old_grid_get_a_threshold_that_predicts_both_classes(strategy, pooling):
    oof = _tiny_oof()
    old_by_fold, old = cv_threshold_tables(oof, np.round(np.arange(101) * 0.01, 10))
    old_sel = select_threshold(old, "max_f1")
    assert old_sel["threshold"] == 0.0  # the original pipeline's fixed grid: every slice positive

    cand = candidate_thresholds(oof["prob"])
    assert cand.min() > oof["prob"].min() and cand.max() <= oof["prob"].max()
    by_fold, summary = cv_threshold_tables(oof, cand)
    sel = select_threshold(summary, strategy, 0.8 if strategy == "sens_target" else None, pooling=pooling)
    pred = oof["prob"] >= sel["threshold"]
    assert 0 < pred.sum() < len(oof)  # both classes predicted
    spread = threshold_spread(by_fold, sel["threshold"])
    assert [f["fold"] for f in spread["per_fold"]] == [0, 1]
    assert all(0 < f["n_pred_pos"] < f["n"] for f in spread["per_fold"])


def test_grid_candidates_drop_the_degenerate_ends_and_many_scores_are_thinned():
    p = np.r_[np.full(5, 0.2), np.full(5, 0.6)]
    grid = candidate_thresholds(p, source="grid", step=0.1)
    assert grid.min() > 0.2 and grid.max() <= 0.6  # 0.0, 0.1, 0.2 (all positive) and 0.7.. (all negative) dropped
    assert candidate_thresholds(p).tolist() == [0.4]
    many = candidate_thresholds(np.random.default_rng(0).random(100_000))
    assert len(many) <= 2000 and np.all(np.diff(many) > 0)


def test_pooled_columns_are_the_ratios_of_the_summed_counts():
    oof = _tiny_oof(1)
    _, summary = cv_threshold_tables(oof, candidate_thresholds(oof["prob"]))
    tp, fn, tn, fp = (summary[c].to_numpy(float) for c in ("tp_sum", "fn_sum", "tn_sum", "fp_sum"))
    np.testing.assert_allclose(summary["sens_pooled"], tp / (tp + fn))
    np.testing.assert_allclose(summary["spec_pooled"], tn / (tn + fp))


def test_large_fold_spread_is_warned():
    by_fold = pd.DataFrame({"fold": [0, 1, 2], "threshold": 0.5, "tp": [9, 1, 5], "fn": [1, 9, 5], "tn": [5, 5, 5],
                            "fp": [5, 5, 5], "sens": [0.9, 0.1, 0.5], "spec": [0.5] * 3, "ppv": [0.6] * 3, "npv": [0.6] * 3})
    w = threshold_spread(by_fold, 0.5)["warnings"]
    assert any(s.startswith("sens at threshold 0.5 varies across folds") for s in w)
    assert not any(s.startswith("spec") for s in w)
