"""Cross-validation ROC and precision-recall curves: per fold on a common grid, their mean and spread.

Per-fold summary values (ROC-AUC / AP) are the exact scikit-learn scores of each fold; their
spread is the *sample* std across folds (``ddof=1``; NaN with a single fold), as in
:mod:`trainer.evaluation.thresholds`. ``cv_metrics.json``'s ``oof_auc_mean`` / ``oof_auc_std`` /
``oof_ap_mean`` / ``oof_ap_std`` come from here; :mod:`trainer.report.plots` only draws them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from trainer.evaluation.inputs import check_frame

__all__ = ["GRID_POINTS", "FoldCurves", "interp_pr", "interp_roc", "mean_pr", "mean_roc"]

#: Number of points of the common FPR / recall grid (0..1 inclusive).
GRID_POINTS: int = 101


@dataclass(frozen=True)
class FoldCurves:
    """Per-fold curves of one kind on a common grid.

    Attributes:
        kind: ``roc`` (TPR at FPR ``grid``) or ``pr`` (interpolated precision at recall ``grid``).
        grid: float64 (G,) in [0, 1].
        folds: fold ids with both classes (single-class folds are skipped with a warning).
        curves: float64 (F, G), one row per fold of ``folds``.
        scores: per-fold ROC-AUC (``roc``) or average precision (``pr``).
        mean, std: mean and sample std (ddof=1; NaN with one fold) of ``scores``.
        prevalence: fraction positive of every OOF row (``pr``; None for ``roc``).
    """

    kind: Literal["roc", "pr"]
    grid: np.ndarray
    folds: tuple[int, ...]
    curves: np.ndarray
    scores: tuple[float, ...]
    mean: float
    std: float
    prevalence: float | None = None

    @property
    def mean_curve(self) -> np.ndarray:
        """float64 (G,): the mean of :attr:`curves` (a ROC curve ends at TPR 1)."""
        m = self.curves.mean(axis=0)
        if self.kind == "roc":
            m[-1] = 1.0
        return m

    @property
    def std_curve(self) -> np.ndarray | None:
        """float64 (G,): sample std of :attr:`curves` per grid point; None with one fold."""
        return self.curves.std(axis=0, ddof=1) if len(self.folds) > 1 else None

    def summary(self) -> dict[str, Any]:
        """``{mean_auc, std_auc, n_folds}`` (roc) or ``{mean_ap, std_ap, prevalence, n_folds}`` (pr)."""
        if self.kind == "roc":
            return {"mean_auc": self.mean, "std_auc": self.std, "n_folds": len(self.folds)}
        return {"mean_ap": self.mean, "std_ap": self.std, "prevalence": self.prevalence, "n_folds": len(self.folds)}


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


def mean_roc(oof: pd.DataFrame) -> FoldCurves:
    """Per-fold ROC curves of the OOF frame (columns ``label, prob, fold``) on a 101-point FPR grid."""
    return _fold_curves(oof, "roc")


def mean_pr(oof: pd.DataFrame) -> FoldCurves:
    """Per-fold interpolated PR curves of the OOF frame on a 101-point recall grid, with its prevalence."""
    return _fold_curves(oof, "pr")


def _fold_curves(oof: pd.DataFrame, kind: Literal["roc", "pr"]) -> FoldCurves:
    _check_oof(oof)
    folds = _iter_valid_folds(oof)
    grid = np.linspace(0.0, 1.0, GRID_POINTS)
    interp, score = (interp_roc, roc_auc_score) if kind == "roc" else (interp_pr, average_precision_score)
    curves = np.vstack([interp(y, p, grid) for _, y, p in folds])
    scores = tuple(float(score(y, p)) for _, y, p in folds)
    mean, std = _mean_std(list(scores))
    prevalence = float(oof["label"].astype(np.float64).mean()) if kind == "pr" else None
    return FoldCurves(kind, grid, tuple(f for f, _, _ in folds), curves, scores, mean, std, prevalence)


def _check_oof(oof: pd.DataFrame) -> pd.DataFrame:
    return check_frame(oof, "oof", ("label", "prob", "fold"))


def _iter_valid_folds(oof: pd.DataFrame) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(fold, y, prob) for every fold with both classes; warns on skipped folds."""
    out = []
    for f in sorted(pd.unique(oof["fold"])):
        sub = oof[oof["fold"] == f]
        y = sub["label"].to_numpy().astype(np.int64)
        p = sub["prob"].to_numpy(dtype=np.float64)
        if np.unique(y).size < 2:
            warnings.warn(f"fold {f} has a single class; it is skipped in the mean curve.", RuntimeWarning, stacklevel=4)
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
