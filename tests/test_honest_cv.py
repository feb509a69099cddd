"""Honest cross-validation (issue 10): inner holdouts, calibration, non-degenerate thresholds, stuck models,
promise vs delivery, ImageNet weights by default and their start-up check."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from _tiny_runs import TINY_BASE
from scipy.special import expit
from sklearn.calibration import _sigmoid_calibration
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import roc_auc_score

import trainer.cv as cv_mod
import trainer.folds as folds_mod
from trainer.evaluation.calibrators import Calibrator, fit_calibrator, to_logit
from trainer.cli import main as trainer_main
from trainer.config import load_config
from trainer.evaluation.fold_health import CHANCE_AUC, stuck_folds
from trainer.evaluation.metrics import ranking_scores
from trainer.loops import lr_factor
from trainer.evaluation.promise import format_promise, promise_vs_delivery
from trainer.split import make_split
from trainer.evaluation.thresholds import candidate_thresholds, cv_threshold_tables, select_threshold, threshold_spread

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# 1. each fold model is made as final makes its model
# ------------------------------------------------------------------------------------------------
def _fake_data(n_patients: int = 30, per: int = 5, seed: int = 0) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"P{i:03d}" for i in range(n_patients)], per)
    labels = np.zeros(groups.size, dtype=np.int64)
    for i in range(n_patients):  # half of the patients carry a lesion on a run of slices
        if i % 2:
            start = rng.integers(0, per - 1)
            labels[i * per + start: i * per + per] = 1
    ids = np.array([f"ID_{i:05d}" for i in range(groups.size)])
    return SimpleNamespace(labels=labels, groups=groups, table=pd.DataFrame({"ID": ids}), device="cpu")


def _split(data: SimpleNamespace, k: int = 3) -> pd.DataFrame:
    is_test, fold = make_split(data.labels, data.groups, test_size=0.2, k_folds=k, seed=3)
    return pd.DataFrame({"ID": data.table["ID"], "group": data.groups, "label": data.labels, "test": is_test, "fold": fold})


def test_inner_holdout_is_carved_from_the_training_folds_only():
    data = _fake_data()
    split = _split(data)
    cfg = load_config(sets=["holdout_frac=0.25"])
    for k in range(3):
        tr, va = folds_mod.fold_rows(split, k)
        fit, hold = folds_mod.inner_holdout(data, tr, cfg, seed=cfg.seed + k)
        assert set(fit) | set(hold) == set(tr) and not set(fit) & set(hold)
        assert not set(hold) & set(va) and not set(fit) & set(va)  # never the validation fold
        assert not set(hold) & set(np.flatnonzero(split["test"]))  # never the test set
        # no patient straddles fit / holdout / validation
        g = data.groups
        assert not set(g[fit]) & set(g[hold]) and not set(g[hold]) & set(g[va]) and not set(g[fit]) & set(g[va])
        assert set(data.labels[hold]) == {0, 1} and set(data.labels[fit]) == {0, 1}
        assert 0.1 < len(hold) / len(tr) < 0.45


def test_run_fold_scores_its_validation_fold_once_with_a_model_that_never_saw_it(monkeypatch):
    data = _fake_data()
    split = _split(data)
    cfg = load_config(sets=["holdout_frac=0.25"])
    seen: dict[str, list] = {"train": [], "stop": [], "predict": []}

    def fake_train(d, train_idx, val_idx, c, *, seed, on_epoch=None):
        seen["train"].append(set(train_idx.tolist()))
        seen["stop"].append(set(val_idx.tolist()))
        return "model", [{"stage": "ft", "epoch": 1}], 0.5

    def fake_predict(model, d, idx, tf, c):
        seen["predict"].append(idx.tolist())
        return np.linspace(0.01, 0.99, len(idx))

    monkeypatch.setattr(folds_mod, "train_model", fake_train)
    monkeypatch.setattr(folds_mod, "predict", fake_predict)
    monkeypatch.setattr(folds_mod, "make_transform", lambda c: None)
    res = folds_mod.collect_folds([folds_mod.run_fold(data, split, cfg, k) for k in folds_mod.fold_ids(split)])
    oof = res.oof
    pool_ids = split.loc[~split["test"], "ID"]
    assert sorted(oof["ID"]) == sorted(pool_ids) and oof["ID"].is_unique  # every pool row exactly once, no test row
    id_row = {i: r for r, i in enumerate(split["ID"])}
    for k, (trained, stopped) in enumerate(zip(seen["train"], seen["stop"])):
        va = {id_row[i] for i in oof.loc[oof["fold"] == k, "ID"]}
        assert not va & trained and not va & stopped  # neither trained nor early-stopped/calibrated on it
        assert sum(sorted(p) == sorted(va) for p in seen["predict"]) == 1  # scored once
    # the seed's way stays available: the validation fold is the early-stopping set
    seen["stop"].clear()
    cfg_seed = load_config(sets=["cv_early_stopping=val_fold"])
    folds_mod.run_fold(data, split, cfg_seed, 0)
    assert seen["stop"][0] == set(folds_mod.fold_rows(split, 0)[1].tolist())


# ------------------------------------------------------------------------------------------------
# 2. calibration against scikit-learn / scipy
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# 3. thresholds that cannot degenerate
# ------------------------------------------------------------------------------------------------
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
    assert old_sel["threshold"] == 0.0  # the seed's fixed grid: every slice positive

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


# ------------------------------------------------------------------------------------------------
# 4. training that does not stop before it starts; models stuck at chance are reported
# ------------------------------------------------------------------------------------------------
def test_lr_factor_warmup_then_cosine():
    assert [lr_factor(e, 5, warmup=1, schedule="cosine") for e in (1, 2)] == [0.5, 1.0]
    f = [lr_factor(e, 10, warmup=2, schedule="cosine") for e in range(1, 11)]
    assert f[:3] == pytest.approx([1 / 3, 2 / 3, 1.0]) and all(a > b for a, b in zip(f[2:], f[3:])) and 0 < f[-1] < 0.05
    assert [lr_factor(e, 4) for e in range(1, 5)] == [1.0] * 4


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


def test_min_epochs_keeps_training_past_patience(trainer_store, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        **TINY_BASE, "epochs_head": 0, "epochs_ft": 5, "patience_ft": 0, "min_epochs_ft": 3,
        "min_delta": 1.0,  # no epoch can count as better: only min_epochs_ft + patience keep it going
        "threads": 2, "n_boot": 0}))
    assert trainer_main(["cv", "--store", str(trainer_store), "--config", str(cfg), "--out", str(tmp_path), "--quiet"]) == 0
    run = sorted(tmp_path.glob("run_*_cv*"))[-1]
    hist = pd.read_csv(run / "cv_histories.csv")
    # min_epochs_ft=3 epochs are never counted; the 4th is the first bad one and ends the stage (patience 0)
    assert hist.groupby("fold")["epoch"].max().tolist() == [4, 4]


# ------------------------------------------------------------------------------------------------
# 5. promise vs delivery
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# 6. the seed's transfer learning by default, and a clear start-up error offline
# ------------------------------------------------------------------------------------------------
def test_default_config_is_imagenet_and_demo_is_offline():
    assert yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())["weights"] == "imagenet"
    assert yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())["weights"] == "none"


def test_imagenet_offline_fails_before_any_split(trainer_store, tmp_path, monkeypatch, capsys):
    import torch
    import torchvision.models._api as tv_api

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*a, **k):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    out = tmp_path / "out"
    # the default config (imagenet) on the test store's preprocessing: the store passes its (cheaper) check first
    rc = trainer_main(["cv", "--store", str(trainer_store), "--config", str(ROOT / "configs" / "default.yaml"),
                       "--set", "preprocess.size=64", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in err
    assert "weights: none" in err and "state_dict" in err
    assert not out.exists() or not list(out.glob("run_*"))  # nothing written: no split, no run folder


def test_split_and_holdouts_do_not_depend_on_the_stores_hash_key():
    """Two builds of the same folder hash patients with different random keys: same split, same holdouts."""
    a = _fake_data()
    rng = np.random.default_rng(5)
    relabel = {g: f"{rng.integers(1 << 60):016x}" for g in np.unique(a.groups)}  # another key's hashes
    b = SimpleNamespace(**{**vars(a), "groups": np.array([relabel[g] for g in a.groups])})
    cfg = load_config(sets=["k_folds=3", "holdout_frac=0.25"])
    sa, sb = folds_mod.split_table(a, cfg), folds_mod.split_table(b, cfg)
    pd.testing.assert_frame_equal(sa[["ID", "label", "test", "fold"]], sb[["ID", "label", "test", "fold"]])
    for k in range(3):
        tr, _ = folds_mod.fold_rows(sa, k)
        ha, hb = folds_mod.inner_holdout(a, tr, cfg, 7)[1], folds_mod.inner_holdout(b, tr, cfg, 7)[1]
        np.testing.assert_array_equal(ha, hb)
