"""trainer.evaluation.fold_health: models stuck at chance are named, in cv_metrics.json and the report (issue 10)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from scipy.special import expit

import trainer.cv as cv_mod
import trainer.folds as folds_mod
from trainer.config import load_config
from trainer.evaluation.fold_health import CHANCE_AUC, stuck_folds
from trainer.evaluation.metrics import ranking_scores


def test_stuck_folds_names_chance_and_outlier_folds():
    folds = [{"fold": 0, "val_auc": 0.96}, {"fold": 1, "val_auc": 0.55}, {"fold": 2, "val_auc": 0.97},
             {"fold": 3, "val_auc": 0.75}, {"fold": 4, "val_auc": None}]
    got = {f["fold"]: f["why"] for f in stuck_folds(folds)}
    assert set(got) == {1, 3}
    assert f"<= {CHANCE_AUC}" in got[1] and "below the other folds' median" in got[3]
    assert "learned much less" in got[3]  # no holdout scores to tell otherwise


def test_an_outlier_fold_whose_holdout_is_fine_has_harder_patients():
    folds = [{"fold": 0, "val_auc": 0.93, "holdout_auc": 0.95}, {"fold": 1, "val_auc": 0.65, "holdout_auc": 0.93},
             {"fold": 2, "val_auc": 0.94, "holdout_auc": 0.94}, {"fold": 3, "val_auc": 0.70, "holdout_auc": 0.62}]
    got = {f["fold"]: f["why"] for f in stuck_folds(folds)}
    assert set(got) == {1, 3}
    assert "validation patients are harder" in got[1] and "0.930" in got[1]  # it learned: its holdout is like the others'
    assert "learned much less" in got[3]  # its own holdout is poor too (0.62 < 0.94 - 0.15)


def test_a_stuck_fold_is_reported_in_cv_metrics_and_the_report(tmp_path):
    rng = np.random.default_rng(0)
    parts = []
    for k, sep in ((0, 3.0), (1, 3.0), (2, 0.0)):  # fold 2's model is no better than chance
        y = np.r_[np.zeros(40), np.ones(20)].astype(int)
        p = expit(rng.normal(sep * (y - 0.5), 1.0))
        parts.append({"oof": {"ID": [f"{k}_{i}" for i in range(60)], "label": y.tolist(), "prob": p.tolist(),
                              "prob_raw": p.tolist(), "fold": [k] * 60},
                      "history": [{"stage": "ft", "epoch": 1, "train_loss": 0.7, "val_loss": 0.7, "val_auprc": 0.5}],
                      "fold": {"fold": k, "best_val_auprc": 0.5, "val_auc": ranking_scores(y, p)[1], "train_auc": 0.9,
                               "n_train": 100, "n_val": 60}})
    res = folds_mod.collect_folds(parts)
    split = pd.DataFrame({"ID": res.oof["ID"], "group": res.oof["ID"], "label": res.oof["label"],
                          "test": False, "fold": res.oof["fold"]})
    cfg = load_config(sets=["k_folds=3", "n_boot=50"])
    m = cv_mod.write_cv_outputs(tmp_path, split, res, cfg)
    assert [f["fold"] for f in m.stuck_folds] == [2]
    assert any(w.startswith("fold 2: validation ROC-AUC") for w in m.warnings)
    saved = json.loads((tmp_path / "cv_metrics.json").read_text())
    assert saved["stuck_folds"][0]["fold"] == 2
    (tmp_path / "effective_config.json").write_text(json.dumps(cfg.to_dict()))
    from trainer.report.html import build_report

    page, _ = build_report(tmp_path)
    assert "fold 2: validation ROC-AUC" in page and "fold 2 did not learn" in page
