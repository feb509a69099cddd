"""Models that did not learn: a fold (or final) model near chance, or far below its sibling folds.

A model stuck on its initial plateau scores near ROC-AUC 0.5 and drags the CV means down (or,
worse, is averaged away unnoticed); it is reported by name in the CLI summary, ``cv_metrics.json``
(``stuck_folds``) and ``report.html``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["CHANCE_AUC", "OUTLIER_GAP", "chance_warning", "stuck_folds"]

#: A validation ROC-AUC at or below this is "no better than chance" for a screening model.
CHANCE_AUC: float = 0.6
#: A fold whose validation ROC-AUC is this far below the median of the other folds is an outlier.
OUTLIER_GAP: float = 0.15


def stuck_folds(folds: list[dict[str, Any]], key: str = "val_auc") -> list[dict[str, Any]]:
    """The folds (dicts with ``fold`` and ``key``) near chance or far below the others.

    Returns:
        ``[{"fold", key, "others_median", "why"}]`` in fold order; empty when all learned.
    """
    aucs = np.array([np.nan if f.get(key) is None else float(f[key]) for f in folds], dtype=float)
    out = []
    for i, f in enumerate(folds):
        a = aucs[i]
        if not np.isfinite(a):
            continue
        others = np.delete(aucs, i)
        others = others[np.isfinite(others)]
        med = float(np.median(others)) if others.size else float("nan")
        why = None
        if a <= CHANCE_AUC:
            why = f"validation ROC-AUC {a:.3f} <= {CHANCE_AUC} (no better than chance): the model did not learn"
        elif np.isfinite(med) and a < med - OUTLIER_GAP:
            why = (f"validation ROC-AUC {a:.3f} is more than {OUTLIER_GAP} below the other folds' median "
                   f"{med:.3f}: " + _which(folds, i))
        if why:
            out.append({"fold": int(f["fold"]), key: float(a), "others_median": med, "why": why})
    return out


def _which(folds: list[dict[str, Any]], i: int) -> str:
    """Why fold ``i`` scores its validation fold far below the others: its model learned less, or
    (its own holdout scored like the other folds' holdouts) its validation patients are harder."""
    h = np.array([np.nan if f.get("holdout_auc") is None else float(f["holdout_auc"]) for f in folds], dtype=float)
    others = np.delete(h, i)
    others = others[np.isfinite(others)]
    if np.isfinite(h[i]) and others.size and h[i] > CHANCE_AUC and h[i] >= float(np.median(others)) - OUTLIER_GAP:
        return (f"its model scores its own holdout like the others do (ROC-AUC {h[i]:.3f}), so its validation "
                f"patients are harder: patient-to-patient variation a test set of this size will show too")
    return "this fold's model learned much less"


def chance_warning(name: str, auc: float | None) -> str | None:
    """A warning naming ``name`` when its (holdout) ROC-AUC is at or below :data:`CHANCE_AUC`."""
    if auc is None or not np.isfinite(auc) or auc > CHANCE_AUC:
        return None
    return (f"{name}: holdout ROC-AUC {auc:.3f} <= {CHANCE_AUC}: the model is no better than chance "
            f"(more epochs, min_epochs_ft, warmup_epochs or another lr_ft)")
