"""Tests for trainer.report.plots (PNG output, returned summary values, no leaked figures)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from trainer.report.history import plot_histories
from trainer.report.plots import (
    interp_pr,
    plot_confusion,
    plot_mean_pr,
    plot_mean_roc,
    plot_pr,
    plot_roc,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5 * 1024


@pytest.fixture(autouse=True)
def _no_leaked_figures():
    plt.close("all")
    yield
    assert plt.get_fignums() == []


def _oof(k: int = 5, n: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for f in range(k):
        y = (rng.uniform(size=n) < 0.3).astype(int)
        prob = 1 / (1 + np.exp(-(1.5 * y - 0.8 + rng.normal(0, 1, n))))
        parts.append(pd.DataFrame({"ID": np.arange(n) + f * n, "label": y, "prob": prob, "fold": f}))
    return pd.concat(parts, ignore_index=True)


def test_plot_mean_roc(tmp_path: Path) -> None:
    oof = _oof()
    out = plot_mean_roc(oof, tmp_path / "sub" / "roc.png")
    _assert_png(tmp_path / "sub" / "roc.png")
    aucs = [roc_auc_score(s["label"], s["prob"]) for _, s in oof.groupby("fold")]
    assert out["mean_auc"] == pytest.approx(np.mean(aucs))
    assert out["std_auc"] == pytest.approx(np.std(aucs, ddof=1))
    assert out["n_folds"] == 5


def test_plot_mean_roc_single_fold_and_single_class_fold(tmp_path: Path) -> None:
    oof = _oof(k=1)
    out = plot_mean_roc(oof, tmp_path / "roc1.png")
    _assert_png(tmp_path / "roc1.png")
    assert np.isnan(out["std_auc"])
    oof = _oof(k=3)
    oof.loc[oof["fold"] == 2, "label"] = 0
    with pytest.warns(RuntimeWarning, match="fold 2"):
        out = plot_mean_roc(oof, tmp_path / "roc2.png")
    assert out["n_folds"] == 2


def test_plot_mean_pr(tmp_path: Path) -> None:
    oof = _oof()
    out = plot_mean_pr(oof, tmp_path / "pr.png")
    _assert_png(tmp_path / "pr.png")
    aps = [average_precision_score(s["label"], s["prob"]) for _, s in oof.groupby("fold")]
    assert out["mean_ap"] == pytest.approx(np.mean(aps))
    assert out["std_ap"] == pytest.approx(np.std(aps, ddof=1))
    assert out["prevalence"] == pytest.approx(oof["label"].mean())


def test_interp_pr_is_max_precision_to_the_right() -> None:
    y = np.array([1, 0, 1, 0, 0, 1])
    prob = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    # points (recall, precision): (1/3, 1), (1/3, .5), (2/3, 2/3), (2/3, .5), (2/3, .4), (1, .5)
    got = interp_pr(y, prob, np.array([0.0, 0.2, 1 / 3, 0.5, 2 / 3, 0.9, 1.0]))
    np.testing.assert_allclose(got, [1.0, 1.0, 1.0, 2 / 3, 2 / 3, 0.5, 0.5])


def _hist() -> pd.DataFrame:
    rows = []
    for f in range(3):
        for stage, n_ep in (("head", 4), ("ft", 6)):
            for e in range(n_ep):
                rows.append(
                    {
                        "fold": f,
                        "stage": stage,
                        "epoch": e,
                        "train_loss": 0.7 / (1 + e + (4 if stage == "ft" else 0)) + 0.01 * f,
                        "val_loss": 0.75 / (1 + 0.8 * e) + 0.02 * f,
                        "val_auprc": 0.4 + 0.05 * e + 0.01 * f,
                        "val_auc": 0.7 + 0.02 * e,
                    }
                )
    return pd.DataFrame(rows)


def test_plot_histories(tmp_path: Path) -> None:
    hist = _hist()
    out = plot_histories(hist, tmp_path / "hist.png")
    _assert_png(tmp_path / "hist.png")
    assert out == {"n_folds": 3, "n_rows": len(hist)}
    # works without the optional val_auc column
    plot_histories(hist.drop(columns="val_auc"), tmp_path / "hist2.png")
    _assert_png(tmp_path / "hist2.png")
    with pytest.raises(ValueError, match="'stage'.*'warmup'"):
        plot_histories(hist.assign(stage="warmup"), tmp_path / "bad.png")


def test_plot_histories_ft_continues_after_head() -> None:
    from trainer.report.history import _global_epochs

    hist = _hist()
    x = _global_epochs(hist)
    sub = hist[hist["fold"] == 0]
    xs = x.loc[sub.index]
    head_x = xs[sub["stage"] == "head"].to_numpy()
    ft_x = xs[sub["stage"] == "ft"].to_numpy()
    np.testing.assert_array_equal(head_x, [0, 1, 2, 3])
    np.testing.assert_array_equal(ft_x, [4, 5, 6, 7, 8, 9])


def test_plot_roc_and_pr_single(tmp_path: Path) -> None:
    oof = _oof(k=1, n=200, seed=3)
    y, p = oof["label"].to_numpy(), oof["prob"].to_numpy()
    r = plot_roc(y, p, tmp_path / "test_roc.png", "Test ROC")
    _assert_png(tmp_path / "test_roc.png")
    assert r["auc"] == pytest.approx(roc_auc_score(y, p))
    q = plot_pr(y, p, tmp_path / "test_pr.png", "Test PR")
    _assert_png(tmp_path / "test_pr.png")
    assert q["ap"] == pytest.approx(average_precision_score(y, p))
    with pytest.raises(ValueError, match="both classes"):
        plot_roc(np.zeros(5, int), np.linspace(0, 1, 5), tmp_path / "x.png", "x")


def test_plot_confusion(tmp_path: Path) -> None:
    plot_confusion({"tp": 40, "fp": 10, "tn": 120, "fn": 5, "threshold": 0.37}, tmp_path / "cm.png")
    _assert_png(tmp_path / "cm.png")
    with pytest.raises(ValueError, match="'tp'"):
        plot_confusion({"fp": 1, "tn": 1, "fn": 1}, tmp_path / "cm2.png")


def test_missing_columns_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="missing column"):
        plot_mean_roc(_oof().drop(columns="fold"), tmp_path / "r.png")
    with pytest.raises(ValueError, match="missing column"):
        plot_histories(_hist().drop(columns="val_loss"), tmp_path / "h.png")
