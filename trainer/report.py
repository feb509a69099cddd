"""Plots for cross-validation and test-set reports (PNG, Agg backend).

Every function saves one PNG (dpi 120, parent directories created) and always
closes its figure, also on error, so no figure leaks in long runs.

Cross-validation curves (:func:`plot_mean_roc`, :func:`plot_mean_pr`) take the
out-of-fold frame with columns ``label, prob, fold``. Per-fold summary values
(AUC / AP) are the exact scikit-learn scores of each fold; their spread is the
*sample* std across folds (``ddof=1``; NaN with a single fold), consistent
with :mod:`trainer.thresholds`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

__all__ = [
    "GRID_POINTS",
    "interp_pr",
    "interp_roc",
    "plot_confusion",
    "plot_histories",
    "plot_mean_pr",
    "plot_mean_roc",
    "plot_pr",
    "plot_roc",
]

#: Number of points of the common FPR / recall grid (0..1 inclusive).
GRID_POINTS: int = 101
DPI: int = 120

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _save(fig: Any, path: PathLike) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=DPI, bbox_inches="tight", format="png")


def _check_binary(y: Any, prob: Any, name: str = "y") -> tuple[np.ndarray, np.ndarray]:
    y_arr = np.asarray(y)
    p_arr = np.asarray(prob, dtype=np.float64)
    if y_arr.ndim != 1 or p_arr.ndim != 1 or y_arr.shape != p_arr.shape:
        raise ValueError(
            f"The '{name}' and 'prob' parameters must be 1-D arrays of equal length; "
            f"got shapes {y_arr.shape} and {p_arr.shape}."
        )
    if not np.all(np.isin(y_arr, (0, 1))):
        raise ValueError(f"The '{name}' parameter must contain only the values {{0, 1}}.")
    if not np.all(np.isfinite(p_arr)):
        raise ValueError("The 'prob' parameter must contain only finite values.")
    y_int = y_arr.astype(np.int64)
    if np.unique(y_int).size < 2:
        raise ValueError(
            f"The '{name}' parameter must contain both classes 0 and 1 to draw a curve; "
            f"got only {np.unique(y_int).tolist()}."
        )
    return y_int, p_arr


def _check_oof(oof: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(oof, pd.DataFrame):
        raise TypeError(f"The 'oof' parameter must be a pandas DataFrame; got {type(oof).__name__}.")
    missing = [c for c in ("label", "prob", "fold") if c not in oof.columns]
    if missing:
        raise ValueError(
            f"The 'oof' DataFrame is missing column(s) {missing}; "
            f"required: ['label', 'prob', 'fold'], got {list(oof.columns)}."
        )
    if len(oof) == 0:
        raise ValueError("The 'oof' DataFrame is empty.")
    return oof


def _iter_valid_folds(oof: pd.DataFrame) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(fold, y, prob) for every fold with both classes; warns on skipped folds."""
    out = []
    for f in sorted(pd.unique(oof["fold"])):
        sub = oof[oof["fold"] == f]
        y = sub["label"].to_numpy().astype(np.int64)
        p = sub["prob"].to_numpy(dtype=np.float64)
        if np.unique(y).size < 2:
            warnings.warn(
                f"fold {f} has a single class; it is skipped in the mean curve.",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        out.append((int(f), y, p))
    if not out:
        raise ValueError("No fold of 'oof' contains both classes; cannot draw curves.")
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if arr.size > 1 else float("nan")
    return mean, std


def interp_roc(y: np.ndarray, prob: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """TPR of the ROC curve linearly interpolated at FPR values ``grid``.

    The value at FPR 0 is forced to 0 so every curve starts at the origin.
    """
    fpr, tpr, _ = roc_curve(y, prob)
    out = np.interp(grid, fpr, tpr)
    out[grid == 0.0] = 0.0
    return out


def interp_pr(y: np.ndarray, prob: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Interpolated precision at recall values ``grid``.

    Uses the standard (PASCAL VOC) interpolation ``p(r) = max_{r' >= r}
    precision(r')``, which is well defined although the PR curve has several
    precisions at the same recall.
    """
    precision, recall, _ = precision_recall_curve(y, prob)
    # sklearn returns recall decreasing; make it increasing.
    rec = recall[::-1]
    prec = precision[::-1]
    prec_max = np.maximum.accumulate(prec[::-1])[::-1]  # max over recall >= r
    idx = np.searchsorted(rec, grid, side="left")
    idx = np.clip(idx, 0, rec.size - 1)
    return prec_max[idx]


# --------------------------------------------------------------------------
# cross-validation curves
# --------------------------------------------------------------------------
def plot_mean_roc(oof: pd.DataFrame, path: PathLike) -> dict[str, float]:
    """Per-fold ROC curves, their mean and a +/-1 std band.

    Each fold's ROC curve is interpolated on a common FPR grid (0..1, 101
    points); the band is mean +/- sample std of the interpolated TPR (clipped
    to [0, 1]; no band with a single fold). Folds with a single class are
    skipped with a ``RuntimeWarning``.

    Returns
    -------
    dict
        ``mean_auc`` / ``std_auc``: mean and sample std (ddof=1) of the
        per-fold ``roc_auc_score``; ``n_folds``: folds used.
    """
    _check_oof(oof)
    folds = _iter_valid_folds(oof)
    grid = np.linspace(0.0, 1.0, GRID_POINTS)
    tprs, aucs = [], []
    fig, ax = plt.subplots(figsize=(6, 6))
    try:
        for f, y, p in folds:
            tpr = interp_roc(y, p, grid)
            auc = float(roc_auc_score(y, p))
            tprs.append(tpr)
            aucs.append(auc)
            ax.plot(grid, tpr, lw=1, alpha=0.35, label=f"fold {f} (AUC={auc:.3f})")
        mean_auc, std_auc = _mean_std(aucs)
        tpr_arr = np.vstack(tprs)
        mean_tpr = tpr_arr.mean(axis=0)
        mean_tpr[-1] = 1.0
        ax.plot(grid, mean_tpr, color="C0", lw=2.2, label=f"mean (AUC={mean_auc:.3f})")
        if len(tprs) > 1:
            std_tpr = tpr_arr.std(axis=0, ddof=1)
            ax.fill_between(
                grid,
                np.clip(mean_tpr - std_tpr, 0, 1),
                np.clip(mean_tpr + std_tpr, 0, 1),
                color="C0",
                alpha=0.2,
                label="±1 std",
            )
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1.02),
            xlabel="False positive rate",
            ylabel="True positive rate",
            title=f"Cross-validated ROC: AUC = {mean_auc:.3f} ± {std_auc:.3f}",
        )
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        _save(fig, path)
    finally:
        plt.close(fig)
    return {"mean_auc": mean_auc, "std_auc": std_auc, "n_folds": len(folds)}


def plot_mean_pr(oof: pd.DataFrame, path: PathLike) -> dict[str, float]:
    """Per-fold precision-recall curves, their mean and a +/-1 std band.

    Precision is interpolated (:func:`interp_pr`) on a common recall grid
    (0..1, 101 points). The baseline is the prevalence of ``oof``. Folds with a
    single class are skipped with a ``RuntimeWarning``.

    Returns
    -------
    dict
        ``mean_ap`` / ``std_ap``: mean and sample std (ddof=1) of the per-fold
        ``average_precision_score``; ``prevalence``; ``n_folds``.
    """
    _check_oof(oof)
    folds = _iter_valid_folds(oof)
    grid = np.linspace(0.0, 1.0, GRID_POINTS)
    precs, aps = [], []
    prevalence = float(oof["label"].astype(np.float64).mean())
    fig, ax = plt.subplots(figsize=(6, 6))
    try:
        for f, y, p in folds:
            prec = interp_pr(y, p, grid)
            ap = float(average_precision_score(y, p))
            precs.append(prec)
            aps.append(ap)
            ax.plot(grid, prec, lw=1, alpha=0.35, label=f"fold {f} (AP={ap:.3f})")
        mean_ap, std_ap = _mean_std(aps)
        prec_arr = np.vstack(precs)
        mean_prec = prec_arr.mean(axis=0)
        ax.plot(grid, mean_prec, color="C0", lw=2.2, label=f"mean (AP={mean_ap:.3f})")
        if len(precs) > 1:
            std_prec = prec_arr.std(axis=0, ddof=1)
            ax.fill_between(
                grid,
                np.clip(mean_prec - std_prec, 0, 1),
                np.clip(mean_prec + std_prec, 0, 1),
                color="C0",
                alpha=0.2,
                label="±1 std",
            )
        ax.axhline(prevalence, ls="--", color="grey", lw=1, label=f"prevalence ({prevalence:.3f})")
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1.02),
            xlabel="Recall (sensitivity)",
            ylabel="Precision (PPV)",
            title=f"Cross-validated PR: AP = {mean_ap:.3f} ± {std_ap:.3f}",
        )
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
        _save(fig, path)
    finally:
        plt.close(fig)
    return {"mean_ap": mean_ap, "std_ap": std_ap, "prevalence": prevalence, "n_folds": len(folds)}


# --------------------------------------------------------------------------
# training histories
# --------------------------------------------------------------------------
_HIST_COLUMNS = ("fold", "stage", "epoch", "train_loss", "val_loss", "val_auprc")
_STAGES = ("head", "ft")


def _global_epochs(hist: pd.DataFrame) -> pd.Series:
    """x position per row: fine-tune epochs continue after the head epochs of the same fold."""
    x = hist["epoch"].astype(np.float64).copy()
    for _, sub in hist.groupby("fold", sort=False):
        head = sub[sub["stage"] == "head"]
        ft = sub[sub["stage"] == "ft"]
        if len(head) and len(ft):
            offset = head["epoch"].max() + 1 - ft["epoch"].min()
            x.loc[ft.index] = ft["epoch"].astype(np.float64) + offset
    return x


def plot_histories(hist: pd.DataFrame, path: PathLike) -> dict[str, int]:
    """Training curves of all folds.

    ``hist`` has columns ``fold, stage ('head' | 'ft'), epoch, train_loss,
    val_loss, val_auprc`` (and optionally ``val_auc``). Subplots: loss
    (train solid, val dashed), ``val_auprc`` and, when present, ``val_auc``.
    One colour per fold; the head stage is drawn with circles, the fine-tune
    stage with triangles and its epochs continue after the last head epoch of
    the same fold (a dotted vertical line marks the switch).

    Returns
    -------
    dict
        ``n_folds`` and ``n_rows`` plotted.
    """
    if not isinstance(hist, pd.DataFrame):
        raise TypeError(f"The 'hist' parameter must be a pandas DataFrame; got {type(hist).__name__}.")
    missing = [c for c in _HIST_COLUMNS if c not in hist.columns]
    if missing:
        raise ValueError(
            f"The 'hist' DataFrame is missing column(s) {missing}; "
            f"required: {list(_HIST_COLUMNS)}, got {list(hist.columns)}."
        )
    if len(hist) == 0:
        raise ValueError("The 'hist' DataFrame is empty.")
    bad = sorted(set(hist["stage"]) - set(_STAGES))
    if bad:
        raise ValueError(
            f"The 'stage' column of 'hist' must contain only {list(_STAGES)}; got {bad}."
        )
    h = hist.reset_index(drop=True)
    h = h.assign(_x=_global_epochs(h))
    metrics = ["loss", "val_auprc"] + (["val_auc"] if "val_auc" in h.columns else [])
    folds = sorted(pd.unique(h["fold"]))
    markers = {"head": "o", "ft": "^"}
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.5), squeeze=False)
    try:
        for ci, f in enumerate(folds):
            color = f"C{ci % 10}"
            sub_f = h[h["fold"] == f]
            for stage in _STAGES:
                sub = sub_f[sub_f["stage"] == stage].sort_values("_x")
                if sub.empty:
                    continue
                lab = f"fold {f} {stage}"
                kw = dict(color=color, marker=markers[stage], ms=3, lw=1.2)
                for ai, m in enumerate(metrics):
                    ax = axes[0, ai]
                    if m == "loss":
                        ax.plot(sub["_x"], sub["train_loss"], ls="-", label=f"{lab} train", **kw)
                        ax.plot(sub["_x"], sub["val_loss"], ls="--", label=f"{lab} val", **kw)
                    else:
                        ax.plot(sub["_x"], sub[m], ls="-", label=lab, **kw)
            head = sub_f[sub_f["stage"] == "head"]
            if len(head) and (sub_f["stage"] == "ft").any():
                switch = float(head["_x"].max()) + 0.5
                for ax in axes[0]:
                    ax.axvline(switch, color=color, ls=":", lw=0.8, alpha=0.6)
        titles = {"loss": "Loss (train —, val --)", "val_auprc": "Validation AUPRC", "val_auc": "Validation ROC AUC"}
        for ai, m in enumerate(metrics):
            ax = axes[0, ai]
            ax.set(title=titles[m], xlabel="epoch (head, then fine-tune)", ylabel=m)
            ax.grid(alpha=0.3)
        # the loss panel's line styles are explained in its title; one legend
        # (fold x stage) on the AUPRC panel keeps the figure readable.
        axes[0, 1].legend(fontsize=7, ncol=2)
        fig.tight_layout()
        _save(fig, path)
    finally:
        plt.close(fig)
    return {"n_folds": len(folds), "n_rows": int(len(h))}


# --------------------------------------------------------------------------
# single-curve (test set) plots
# --------------------------------------------------------------------------
def plot_roc(y: Any, prob: Any, path: PathLike, title: str = "ROC") -> dict[str, float]:
    """ROC curve of one set of predictions; returns ``{"auc": roc_auc_score}``."""
    y_arr, p = _check_binary(y, prob)
    fpr, tpr, _ = roc_curve(y_arr, p)
    auc = float(roc_auc_score(y_arr, p))
    fig, ax = plt.subplots(figsize=(6, 6))
    try:
        ax.plot(fpr, tpr, color="C0", lw=2, label=f"ROC (AUC = {auc:.3f})")
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="False positive rate",
               ylabel="True positive rate", title=title)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        _save(fig, path)
    finally:
        plt.close(fig)
    return {"auc": auc}


def plot_pr(y: Any, prob: Any, path: PathLike, title: str = "Precision-recall") -> dict[str, float]:
    """PR curve of one set of predictions; returns ``{"ap": ..., "prevalence": ...}``."""
    y_arr, p = _check_binary(y, prob)
    precision, recall, _ = precision_recall_curve(y_arr, p)
    ap = float(average_precision_score(y_arr, p))
    prevalence = float(y_arr.mean())
    fig, ax = plt.subplots(figsize=(6, 6))
    try:
        ax.step(recall, precision, where="post", color="C0", lw=2, label=f"PR (AP = {ap:.3f})")
        ax.axhline(prevalence, ls="--", color="grey", lw=1, label=f"prevalence ({prevalence:.3f})")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="Recall (sensitivity)",
               ylabel="Precision (PPV)", title=title)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left")
        _save(fig, path)
    finally:
        plt.close(fig)
    return {"ap": ap, "prevalence": prevalence}


def plot_confusion(
    cm: Mapping[str, Any],
    path: PathLike,
    title: str | None = None,
    class_names: tuple[str, str] = ("negative", "positive"),
) -> None:
    """2x2 confusion matrix (rows = true class, columns = predicted class).

    ``cm`` needs ``tp, fp, tn, fn`` (e.g. from :func:`trainer.metrics.confusion_at`);
    if it has ``threshold`` it is shown in the default title. Each cell shows
    the count and the row percentage.
    """
    missing = [k for k in ("tp", "fp", "tn", "fn") if k not in cm]
    if missing:
        raise ValueError(
            f"The 'cm' parameter is missing key(s) {missing}; required: ['tp', 'fp', 'tn', 'fn']."
        )
    mat = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]], dtype=np.int64)
    if (mat < 0).any():
        raise ValueError(f"The 'cm' counts must be non-negative; got {mat.tolist()}.")
    row_tot = mat.sum(axis=1, keepdims=True)
    frac = np.divide(mat, row_tot, out=np.zeros(mat.shape), where=row_tot != 0)
    if title is None:
        title = "Confusion matrix"
        if "threshold" in cm:
            title += f" (threshold = {float(cm['threshold']):.2f})"
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    try:
        im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
        for i in range(2):
            for j in range(2):
                ax.text(j, i, f"{mat[i, j]}\n({frac[i, j]:.1%})", ha="center", va="center",
                        color="white" if frac[i, j] > 0.5 else "black", fontsize=11)
        ax.set_xticks([0, 1], labels=[f"pred {c}" for c in class_names])
        ax.set_yticks([0, 1], labels=[f"true {c}" for c in class_names])
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="row fraction")
        fig.tight_layout()
        _save(fig, path)
    finally:
        plt.close(fig)
