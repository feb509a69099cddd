"""Figures of a run (PNG, Agg backend): cross-validation and test curves, confusion matrix, calibration.

Every function saves one PNG (dpi 120 unless stated, parent directories created) and always closes
its figure, also on error, so no figure leaks in long runs. The numbers in titles and legends are
computed in :mod:`trainer.evaluation` (:func:`~trainer.evaluation.curves.mean_roc`,
:func:`~trainer.evaluation.reliability.calibration_summary`); these functions only draw.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from trainer.evaluation.reliability import calibration_summary
from trainer.evaluation.curves import (
    FoldCurves,
    interp_pr,
    interp_roc,
    mean_pr,
    mean_roc,
)
from trainer.evaluation.inputs import check_labels_scores

__all__ = [
    "interp_pr",
    "interp_roc",
    "plot_calibration",
    "plot_confusion",
    "plot_mean_pr",
    "plot_mean_roc",
    "plot_pr",
    "plot_roc",
    "save_figure",
]

DPI: int = 120

PathLike = str | os.PathLike[str]


def save_figure(fig: Any, path: PathLike, dpi: int = DPI, **kw: Any) -> None:
    """Save ``fig`` as PNG at ``path`` (parent folders created); ``kw`` goes to ``savefig``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=dpi, format="png", **kw)


def _save(fig: Any, path: PathLike) -> None:
    save_figure(fig, path, bbox_inches="tight")


# --------------------------------------------------------------------------
# cross-validation curves
# --------------------------------------------------------------------------
def _draw_fold_curves(ax: Any, c: FoldCurves, label: str) -> None:
    """The per-fold curves, their mean and the +/-1 std band (clipped to [0, 1]) of ``c`` on ``ax``."""
    for f, curve, score in zip(c.folds, c.curves, c.scores):
        ax.plot(c.grid, curve, lw=1, alpha=0.35, label=f"fold {f} ({label}={score:.3f})")
    mean = c.mean_curve
    ax.plot(c.grid, mean, color="C0", lw=2.2, label=f"mean ({label}={c.mean:.3f})")
    std = c.std_curve
    if std is not None:
        ax.fill_between(c.grid, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1), color="C0", alpha=0.2,
                        label="±1 std")


def _curve_figure(path: PathLike, draw: Callable[[Any], Any], xlabel: str, ylabel: str, title: str, legend: str,
                  fontsize: float | None = None) -> None:
    """A 6x6 in curve figure on the unit square: ``draw(ax)`` then axes, grid, legend; saved to ``path``."""
    fig, ax = plt.subplots(figsize=(6, 6))
    try:
        draw(ax)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=xlabel, ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
        ax.legend(loc=legend, fontsize=fontsize)
        _save(fig, path)
    finally:
        plt.close(fig)


def _chance(ax: Any) -> None:
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")


def _prevalence(ax: Any, prevalence: float) -> None:
    ax.axhline(prevalence, ls="--", color="grey", lw=1, label=f"prevalence ({prevalence:.3f})")


def _plot_cv_curves(c: FoldCurves, path: PathLike, score: str, reference: Callable[[Any], Any], xlabel: str,
                    ylabel: str, kind: str, legend: str) -> None:
    """The cross-validation figure: per-fold curves, mean, band, a reference line; saved to ``path``."""
    _curve_figure(path, lambda ax: (_draw_fold_curves(ax, c, score), reference(ax)), xlabel, ylabel,
                  f"Cross-validated {kind}: {score} = {c.mean:.3f} ± {c.std:.3f}", legend, fontsize=8)


def plot_mean_roc(oof: pd.DataFrame | FoldCurves, path: PathLike) -> dict[str, float]:
    """Per-fold ROC curves, their mean and a +/-1 std band.

    ``oof``: the curves from :func:`trainer.evaluation.curves.mean_roc`, or the OOF frame
    (``label, prob, fold``) to compute them from (folds with a single class are skipped with a
    ``RuntimeWarning``). Returns :meth:`FoldCurves.summary`: ``mean_auc``, ``std_auc``, ``n_folds``.
    """
    c = oof if isinstance(oof, FoldCurves) else mean_roc(oof)
    _plot_cv_curves(c, path, "AUC", _chance, "False positive rate", "True positive rate", "ROC", "lower right")
    return c.summary()


def plot_mean_pr(oof: pd.DataFrame | FoldCurves, path: PathLike) -> dict[str, float]:
    """Per-fold precision-recall curves, their mean, a +/-1 std band and the prevalence line.

    ``oof``: the curves from :func:`trainer.evaluation.curves.mean_pr`, or the OOF frame to
    compute them from. Returns ``mean_ap``, ``std_ap``, ``prevalence``, ``n_folds``.
    """
    c = oof if isinstance(oof, FoldCurves) else mean_pr(oof)
    _plot_cv_curves(c, path, "AP", lambda ax: _prevalence(ax, c.prevalence), "Recall (sensitivity)", "Precision (PPV)",
                    "PR", "lower left")
    return c.summary()


# --------------------------------------------------------------------------
# single-curve (test set) plots
# --------------------------------------------------------------------------
def plot_roc(y: Any, prob: Any, path: PathLike, title: str = "ROC") -> dict[str, float]:
    """ROC curve of one set of predictions; returns ``{"auc": roc_auc_score}``."""
    y_arr, p = check_labels_scores(y, prob, y_name="y", both_classes="to draw a curve")
    fpr, tpr, _ = roc_curve(y_arr, p)
    auc = float(roc_auc_score(y_arr, p))
    _curve_figure(path, lambda ax: (ax.plot(fpr, tpr, color="C0", lw=2, label=f"ROC (AUC = {auc:.3f})"), _chance(ax)),
                  "False positive rate", "True positive rate", title, "lower right")
    return {"auc": auc}


def plot_pr(y: Any, prob: Any, path: PathLike, title: str = "Precision-recall") -> dict[str, float]:
    """PR curve of one set of predictions; returns ``{"ap": ..., "prevalence": ...}``."""
    y_arr, p = check_labels_scores(y, prob, y_name="y", both_classes="to draw a curve")
    precision, recall, _ = precision_recall_curve(y_arr, p)
    ap = float(average_precision_score(y_arr, p))
    prevalence = float(y_arr.mean())
    _curve_figure(path, lambda ax: (ax.step(recall, precision, where="post", color="C0", lw=2, label=f"PR (AP = {ap:.3f})"),
                                    _prevalence(ax, prevalence)),
                  "Recall (sensitivity)", "Precision (PPV)", title, "lower left")
    return {"ap": ap, "prevalence": prevalence}


def plot_confusion(
    cm: Mapping[str, Any],
    path: PathLike,
    title: str | None = None,
    class_names: tuple[str, str] = ("negative", "positive"),
) -> None:
    """2x2 confusion matrix (rows = true class, columns = predicted class).

    ``cm`` needs ``tp, fp, tn, fn`` (e.g. from :func:`trainer.evaluation.metrics.confusion_at`);
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


def plot_calibration(
    sets: dict[str, tuple[Any, Any]],
    path: str | os.PathLike[str],
    *,
    n_bins: int = 10,
    strategy: str = "uniform",
    title: str = "Calibration",
) -> dict[str, dict[str, Any]]:
    """Reliability diagram (top) and prediction histograms (bottom) for one or more sets.

    Args:
        sets: ``{name: (y, prob)}``, e.g. ``{"test": (y, p)}`` or ``{"OOF": ..., "test": ...}``.
        path: PNG to write (parent folders created).

    Returns:
        ``{name: calibration_summary(...)}`` (:mod:`trainer.evaluation.reliability`).
    """
    out: dict[str, dict[str, Any]] = {}
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(6, 7.5), gridspec_kw={"height_ratios": [3, 1.2]}, sharex=True)
    try:
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
        for i, (name, (y, prob)) in enumerate(sets.items()):
            s = calibration_summary(y, prob, n_bins, strategy)
            out[name] = s
            xs = [b["mean_pred"] for b in s["bins"]]
            ys = [b["frac_pos"] for b in s["bins"]]
            sizes = [20 + 180 * b["n"] / s["n"] for b in s["bins"]]
            color = f"C{i}"
            slope = "n/a" if not np.isfinite(s["slope"]) else f"{s['slope']:.2f}"
            ax.plot(xs, ys, "-", color=color, lw=1.5,
                    label=f"{name}: Brier {s['brier']:.3f}, ECE {s['ece']:.3f}, slope {slope}, n={s['n']}")
            ax.scatter(xs, ys, s=sizes, color=color, zorder=3)
            yy, p = check_labels_scores(y, prob, y_name="y")
            edges = np.linspace(0, 1, 21)
            axh.hist(p[yy == 0], bins=edges, histtype="step", color=color, ls="-", label=f"{name} label 0")
            axh.hist(p[yy == 1], bins=edges, histtype="step", color=color, ls="--", label=f"{name} label 1")
        ax.set(xlim=(0, 1), ylim=(-0.02, 1.02), ylabel="observed fraction positive", title=title)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
        axh.set(xlabel=f"predicted probability ({strategy} bins, {n_bins})", ylabel="count")
        axh.legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)
    return out
