"""Tests for trainer.evaluation.metrics and trainer.evaluation.thresholds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from trainer.evaluation.metrics import (
    CONFUSION_COLUMNS,
    binary_metrics,
    confusion_at,
    threshold_grid,
    threshold_table,
)
from trainer.evaluation.thresholds import (
    ThresholdUnreachableError,
    cv_threshold_tables,
    select_threshold,
)

THRESHOLDS = [0.0, 0.05, 0.1, 0.25, 0.3, 0.5, 0.7, 0.9, 0.99, 1.0]


def _data(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    prob = np.clip(0.35 * y + rng.uniform(0, 0.65, n), 0, 1)
    prob = np.round(prob, 2)  # create ties exactly at grid thresholds
    return y, prob


def _sk(y: np.ndarray, prob: np.ndarray, t: float) -> dict[str, float]:
    pred = (prob >= t).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return {
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "sens": recall_score(y, pred, zero_division=0),
        "spec": recall_score(1 - y, 1 - pred, zero_division=0),
        "ppv": precision_score(y, pred, zero_division=0),
        "npv": precision_score(1 - y, 1 - pred, zero_division=0),
        "f1": f1_score(y, pred, zero_division=0),
        "acc": accuracy_score(y, pred),
    }


# --------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_threshold_table_matches_sklearn(seed: int) -> None:
    y, prob = _data(seed=seed)
    tab = threshold_table(y, prob, THRESHOLDS)
    assert list(tab.columns) == list(CONFUSION_COLUMNS)
    assert len(tab) == len(THRESHOLDS)
    np.testing.assert_array_equal(tab["threshold"].to_numpy(), THRESHOLDS)
    for _, row in tab.iterrows():
        ref = _sk(y, prob, row["threshold"])
        for k, v in ref.items():
            assert row[k] == pytest.approx(v, abs=1e-12), (row["threshold"], k)
    assert (tab[["tp", "fp", "tn", "fn"]].sum(axis=1) == len(y)).all()
    assert tab["tp"].dtype == np.int64


def test_threshold_table_zero_division_edges() -> None:
    y = np.array([0, 0, 0, 1])
    prob = np.array([0.1, 0.2, 0.3, 0.4])
    tab = threshold_table(y, prob, [1.0]).iloc[0]  # nothing predicted positive
    assert (tab["tp"], tab["fp"], tab["tn"], tab["fn"]) == (0, 0, 3, 1)
    assert tab["ppv"] == 0.0 and tab["f1"] == 0.0 and tab["sens"] == 0.0
    # no positives at all: sens is 0/0 -> 0.0
    tab = threshold_table(np.zeros(4, int), prob, [0.0]).iloc[0]
    assert tab["sens"] == 0.0 and tab["ppv"] == 0.0 and tab["spec"] == 0.0
    assert tab["npv"] == 0.0 and tab["acc"] == 0.0


def test_confusion_at_matches_table_and_types() -> None:
    y, prob = _data()
    for t in (0.3, 0.5, 0.77):
        c = confusion_at(y, prob, t)
        row = threshold_table(y, prob, [t]).iloc[0]
        assert all(isinstance(c[k], int) for k in ("tp", "fp", "tn", "fn"))
        assert all(isinstance(c[k], float) for k in ("sens", "spec", "ppv", "npv", "f1", "acc"))
        for k, v in c.items():
            assert v == pytest.approx(row[k])
        pred = prob >= t
        assert c["tp"] == int((pred & (y == 1)).sum())


def test_binary_metrics_auc_ap() -> None:
    y, prob = _data(seed=5)
    m = binary_metrics(y, prob, 0.5)
    assert m["auc"] == pytest.approx(roc_auc_score(y, prob))
    assert m["ap"] == pytest.approx(average_precision_score(y, prob))
    assert m["n"] == len(y) and m["n_pos"] == int(y.sum())
    assert m["prevalence"] == pytest.approx(y.mean())
    assert m["threshold"] == 0.5
    assert m["f1"] == pytest.approx(f1_score(y, prob >= 0.5))


def test_binary_metrics_single_class_auc_nan() -> None:
    m = binary_metrics(np.zeros(5, int), np.linspace(0, 1, 5), 0.5)
    assert np.isnan(m["auc"]) and np.isnan(m["ap"])
    m = binary_metrics(np.ones(5, int), np.linspace(0, 1, 5), 0.5)
    assert np.isnan(m["auc"]) and m["ap"] == pytest.approx(1.0)


def test_threshold_grid() -> None:
    g = threshold_grid()
    assert g.shape == (101,)
    assert g[0] == 0.0 and g[-1] == 1.0
    assert g[29] == 0.29 and g[57] == 0.57
    np.testing.assert_array_equal(g, np.round(np.arange(101) / 100, 2))
    assert threshold_grid(0.25).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert threshold_grid(0.3).tolist() == [0.0, 0.3, 0.6, 0.9, 1.0]
    with pytest.raises(ValueError, match="'step'"):
        threshold_grid(0.0)


def test_input_validation_messages() -> None:
    with pytest.raises(ValueError, match="same length"):
        threshold_table([0, 1], [0.1], [0.5])
    with pytest.raises(ValueError, match=r"\{0, 1\}"):
        confusion_at([0, 2], [0.1, 0.2], 0.5)
    with pytest.raises(ValueError, match="logits"):
        confusion_at([0, 1], [-1.0, 2.0], 0.5)
    with pytest.raises(ValueError, match="finite"):
        confusion_at([0, 1], [np.nan, 0.2], 0.5)


# --------------------------------------------------------------------------
# cross-validated tables
# --------------------------------------------------------------------------
def _oof(k: int = 4, n_per: int = 80, seed: int = 3) -> pd.DataFrame:
    parts = []
    for f in range(k):
        y, p = _data(n_per, seed=seed + f)
        parts.append(pd.DataFrame({"ID": [f"s{f}_{i}" for i in range(n_per)], "label": y, "prob": p, "fold": f}))
    return pd.concat(parts, ignore_index=True)


def test_cv_threshold_tables_matches_groupby() -> None:
    oof = _oof()
    grid = threshold_grid(0.05)
    train_auc = {0: 0.9, 1: 0.8, 2: 0.95, 3: 0.85}
    by_fold, summary = cv_threshold_tables(oof, grid, train_auc)

    assert len(by_fold) == 4 * len(grid)
    assert len(summary) == len(grid)
    np.testing.assert_array_equal(summary["threshold"].to_numpy(), grid)
    for col in ("fold", "threshold", "tp", "sens", "ap", "auc", "train_auc"):
        assert col in by_fold.columns

    # per-fold rows equal a direct threshold_table / sklearn scores
    for f, sub in oof.groupby("fold"):
        direct = threshold_table(sub["label"], sub["prob"], grid)
        got = by_fold[by_fold["fold"] == f].reset_index(drop=True)
        pd.testing.assert_frame_equal(got[direct.columns], direct)
        assert np.allclose(got["auc"], roc_auc_score(sub["label"], sub["prob"]))
        assert np.allclose(got["ap"], average_precision_score(sub["label"], sub["prob"]))
        assert np.allclose(got["train_auc"], train_auc[f])

    g = by_fold.groupby("threshold")
    for m in ("sens", "spec", "ppv", "npv", "f1", "acc"):
        np.testing.assert_allclose(summary[f"{m}_mean"], g[m].mean().loc[grid].to_numpy())
        np.testing.assert_allclose(summary[f"{m}_std"], g[m].std(ddof=1).loc[grid].to_numpy())
    # one threshold checked by hand with numpy's sample std
    vals = by_fold.loc[by_fold["threshold"] == 0.5, "f1"].to_numpy()
    row = summary[summary["threshold"] == 0.5].iloc[0]
    assert row["f1_std"] == pytest.approx(np.std(vals, ddof=1))
    for c in ("tp", "fp", "tn", "fn"):
        np.testing.assert_array_equal(summary[f"{c}_sum"], g[c].sum().loc[grid].to_numpy())
    # pooled counts: at each threshold they cover every OOF row once
    total = summary[["tp_sum", "fp_sum", "tn_sum", "fn_sum"]].sum(axis=1)
    assert (total == len(oof)).all()
    assert (summary["n_folds"] == 4).all()
    aucs = [roc_auc_score(s["label"], s["prob"]) for _, s in oof.groupby("fold")]
    assert np.allclose(summary["auc_mean"], np.mean(aucs))
    assert np.allclose(summary["train_auc_mean"], np.mean(list(train_auc.values())))


def test_cv_threshold_tables_without_train_auc_and_single_fold() -> None:
    oof = _oof(k=1)
    by_fold, summary = cv_threshold_tables(oof, [0.3, 0.5])
    assert "train_auc" not in by_fold.columns
    assert summary["train_auc_mean"].isna().all()
    assert summary["sens_std"].isna().all()  # ddof=1 with one fold
    assert (summary["n_folds"] == 1).all()


def test_cv_threshold_tables_validation() -> None:
    oof = _oof(k=2)
    with pytest.raises(ValueError, match="missing column"):
        cv_threshold_tables(oof.drop(columns="prob"), [0.5])
    with pytest.raises(ValueError, match=r"fold\(s\) \[1\]"):
        cv_threshold_tables(oof, [0.5], {0: 0.9})
    bad = oof.copy()
    bad.loc[0, "fold"] = -1
    with pytest.raises(ValueError, match="fold=-1"):
        cv_threshold_tables(bad, [0.5])


# --------------------------------------------------------------------------
# threshold selection
# --------------------------------------------------------------------------
def _summary() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "threshold": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
            "sens_mean": [1.0, 0.95, 0.9, 0.9, 0.7, 0.5],
            "ppv_mean": [0.30, 0.40, 0.55, 0.55, 0.80, 0.90],
            "f1_mean": [0.46, 0.60, 0.70, 0.70, 0.75, 0.64],
            "spec_mean": [0.0, 0.3, 0.6, 0.62, 0.9, 0.97],
        }
    )


def test_select_threshold_max_f1() -> None:
    s = _summary()
    out = select_threshold(s, "max_f1")
    assert out["strategy"] == "max_f1"
    assert out["threshold"] == 0.5
    assert out["f1_mean"] == s["f1_mean"].max()
    assert out["sens_target"] is None
    assert isinstance(out["sens_mean"], float) and out["sens_mean"] == 0.7


def test_select_threshold_max_f1_tie_takes_lowest_threshold() -> None:
    s = _summary()
    s.loc[s["threshold"] == 0.5, "f1_mean"] = 0.70  # now 0.3, 0.4, 0.5 tie
    assert select_threshold(s, "max_f1")["threshold"] == 0.3
    # deterministic regardless of row order
    assert select_threshold(s.iloc[::-1], "max_f1")["threshold"] == 0.3


def test_select_threshold_sens_target() -> None:
    s = _summary()
    # rows meeting 0.9: thresholds 0.1..0.4; best ppv 0.55 tied at 0.3 / 0.4 -> highest threshold
    out = select_threshold(s, "sens_target", sens_target=0.9)
    assert out["threshold"] == 0.4
    assert out["sens_target"] == 0.9
    assert out["ppv_mean"] == 0.55 and out["spec_mean"] == 0.62
    assert select_threshold(s, "sens_target", sens_target=0.95)["threshold"] == 0.2
    assert select_threshold(s, "sens_target", sens_target=0.6)["threshold"] == 0.5
    # float round-off in a fold average still counts as meeting the target
    s2 = s.copy()
    s2.loc[2, "sens_mean"] = np.mean([0.9, 0.9, 0.9]) - 1e-15
    s2.loc[3, "sens_mean"] = 0.85
    assert select_threshold(s2, "sens_target", sens_target=0.9)["threshold"] == 0.3


def test_select_threshold_unreachable() -> None:
    s = _summary()
    s["sens_mean"] = s["sens_mean"] * 0.8  # best is 0.8 at threshold 0.1
    with pytest.raises(ThresholdUnreachableError) as ei:
        select_threshold(s, "sens_target", sens_target=0.95)
    msg = str(ei.value)
    assert "0.95" in msg and "0.8000" in msg and "threshold=0.1" in msg
    assert "sens_target" in msg and "max_f1" in msg
    assert isinstance(ei.value, ValueError)


def test_select_threshold_bad_arguments() -> None:
    s = _summary()
    with pytest.raises(ValueError, match="must be one of") as ei:
        select_threshold(s, "youden")
    assert "max_f1" in str(ei.value) and "sens_target" in str(ei.value) and "youden" in str(ei.value)
    with pytest.raises(ValueError, match="required"):
        select_threshold(s, "sens_target")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        select_threshold(s, "sens_target", sens_target=1.5)


def test_end_to_end_cv_then_select() -> None:
    _, summary = cv_threshold_tables(_oof(), threshold_grid())
    best = select_threshold(summary, "max_f1")
    assert best["f1_mean"] == pytest.approx(summary["f1_mean"].max())
    sel = select_threshold(summary, "sens_target", sens_target=0.9)
    ok = summary[summary["sens_mean"] >= 0.9 - 1e-9]
    assert sel["ppv_mean"] == pytest.approx(ok["ppv_mean"].max())
    assert sel["sens_mean"] >= 0.9 - 1e-9
