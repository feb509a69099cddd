"""The training reference of a final run and the shift score of new slices against it.

:func:`fit_reference` fits the feature ranges (:mod:`trainer.shift.ranges`) and the embedding
Gaussians (:mod:`trainer.shift.mahalanobis`) on the final model's training rows and sets both
thresholds on its inner holdout rows, so that about ``alpha`` of those held-out slices are flagged:
the feature threshold is the upper ``1 - alpha / 2`` quantile of the holdout's feature distances, at
least :data:`MIN_MARGIN` column spreads beyond the training range; the embedding threshold is the
quantile of the holdout's embedding distances (rows the features flag left out) that brings the two
checks together to ``alpha`` of the holdout (the embedding gets at least ``alpha / 2``).

A slice's ``shift_score`` is ``max(feature distance / feature threshold, embedding distance /
embedding threshold)``: ``shifted`` is ``shift_score > 1``. Saved as ``shift_reference.json``
(ranges, thresholds, counts) and ``shift_embedding.npz`` (class means, one precision matrix per class); no images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.runs import files as F
from trainer.runs.folder import RunError
from trainer.shift.columns import COLUMNS, Column
from trainer.shift.mahalanobis import Gaussians, fit_gaussians, mahalanobis
from trainer.shift.ranges import Ranges, exceedance, fit_ranges

__all__ = ["ALPHA", "MIN_MARGIN", "ShiftReference", "fit_reference", "holdout_threshold", "load_reference"]

#: The share of the training pool's held-out slices the two thresholds together flag.
ALPHA = 0.01
#: The feature threshold's floor: a value at most this many column spreads outside the training range is not a shift.
MIN_MARGIN = 1.0
_VERSION = 1


def holdout_threshold(scores: np.ndarray, alpha: float, floor: float = 0.0) -> float:
    """The upper ``1 - alpha`` quantile of held-out ``scores`` (linear interpolation), at least ``floor``.

    Infinite scores (a missing value) count as the largest; an empty ``scores`` gives ``floor``.
    """
    s = np.asarray(scores, dtype=np.float64)
    if not len(s):
        return float(floor)
    s = np.where(np.isfinite(s), s, np.nanmax(np.where(np.isfinite(s), s, -np.inf), initial=floor))
    return float(max(floor, np.quantile(s, 1.0 - alpha)))


@dataclass(frozen=True)
class ShiftReference:
    """A final run's training reference (see the module docstring).

    Attributes:
        columns: the checked feature columns; ``ranges`` their training ranges.
        feature_threshold: in column spreads beyond the range.
        gaussians: the embedding model (None: the feature check only).
        embedding_threshold: in Mahalanobis distance units.
        info: counts and settings, saved as is (``n_fit``, ``n_holdout``, ``alpha``, ``holdout_flag_rate``...).
    """

    columns: tuple[Column, ...]
    ranges: Ranges
    feature_threshold: float
    gaussians: Gaussians | None
    embedding_threshold: float
    info: dict[str, Any]

    def feature_distance(self, values: np.ndarray) -> np.ndarray:
        """Per-column distances (m, c) of feature values (m, c) (:func:`trainer.shift.ranges.exceedance`)."""
        return exceedance(values, self.ranges)

    def embedding_distance(self, emb: np.ndarray | None, m: int) -> np.ndarray:
        """Mahalanobis distances (m,) of embeddings (m, d); NaN without embeddings or Gaussians."""
        if emb is None or self.gaussians is None:
            return np.full(m, np.nan)
        return mahalanobis(emb, self.gaussians)

    def shift_score(self, col_dist: np.ndarray, emb_dist: np.ndarray) -> np.ndarray:
        """``max(feature distance / feature threshold, embedding distance / embedding threshold)`` (m,)."""
        f = np.max(col_dist, axis=1, initial=0.0) / self.feature_threshold
        e = np.nan_to_num(emb_dist / self.embedding_threshold, nan=0.0) if self.gaussians is not None else 0.0
        return np.maximum(f, e)

    def save(self, run: str | Path) -> None:
        """Write ``shift_reference.json`` and (with Gaussians) ``shift_embedding.npz`` into ``run``."""
        cols = [{"name": c.name, "label": c.label, "unit": c.unit, "kind": c.kind, "tol": c.tol,
                 "lo": _num(self.ranges.lo[j]), "hi": _num(self.ranges.hi[j]), "scale": float(self.ranges.scale[j]),
                 "missing_ok": bool(self.ranges.missing_ok[j])} for j, c in enumerate(self.columns)]
        doc = {"version": _VERSION, **self.info, "feature_threshold": self.feature_threshold,
               "embedding_threshold": self.embedding_threshold if self.gaussians is not None else None,
               "embedding_file": F.SHIFT_EMBEDDING if self.gaussians is not None else None, "columns": cols}
        Path(run, F.SHIFT_REFERENCE).write_text(json.dumps(doc, indent=2) + "\n")
        if self.gaussians is not None:
            g = self.gaussians
            np.savez(Path(run, F.SHIFT_EMBEDDING), classes=g.classes, means=g.means, precision=g.precision,
                     shrinkage=np.asarray(g.shrinkage, dtype=np.float64))


def _num(v: float) -> float | None:
    return None if np.isnan(v) else float(v)


def load_reference(run: str | Path) -> ShiftReference | None:
    """A final run's reference, or None for a run made before the check (no ``shift_reference.json``).

    Raises:
        RunError: the reference is unreadable or its embedding file is missing.
    """
    path = Path(run, F.SHIFT_REFERENCE)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        cols = tuple(Column(c["name"], c["label"], c["unit"], float(c["tol"]), c["kind"]) for c in doc["columns"])
        arr = {k: np.array([np.nan if c[k] is None else c[k] for c in doc["columns"]], dtype=np.float64)
               for k in ("lo", "hi", "scale")}
        ranges = Ranges(lo=arr["lo"], hi=arr["hi"], scale=arr["scale"],
                        missing_ok=np.array([bool(c["missing_ok"]) for c in doc["columns"]]))
        g = None
        if doc.get("embedding_file"):
            with np.load(Path(run, doc["embedding_file"]), allow_pickle=False) as z:
                g = Gaussians(classes=z["classes"], means=z["means"], precision=z["precision"],
                              shrinkage=np.asarray(z["shrinkage"], dtype=np.float64))
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise RunError(f"{path} (the distribution-shift reference) cannot be read: {type(e).__name__}: {e}") from e
    info = {k: v for k, v in doc.items() if k not in ("columns", "feature_threshold", "embedding_threshold")}
    return ShiftReference(columns=cols, ranges=ranges, feature_threshold=float(doc["feature_threshold"]), gaussians=g,
                          embedding_threshold=float(doc["embedding_threshold"] or np.nan), info=info)


def fit_reference(
    feat_fit: np.ndarray, emb_fit: np.ndarray | None, y_fit: np.ndarray, feat_ho: np.ndarray, emb_ho: np.ndarray | None,
    *, alpha: float = ALPHA, columns: tuple[Column, ...] = COLUMNS,
) -> ShiftReference:
    """Fit on the training rows (features (n, c), embeddings (n, d), labels (n,)), set thresholds on the
    holdout rows (features (h, c), embeddings (h, d)); without holdout rows, on the training rows."""
    ranges = fit_ranges(feat_fit, np.array([c.tol for c in columns]))
    g = fit_gaussians(emb_fit, y_fit) if emb_fit is not None else None
    on_fit = len(feat_ho) == 0
    if on_fit:
        feat_ho, emb_ho = feat_fit, emb_fit
    checks = 2 if g is not None else 1
    f_ho = np.max(exceedance(feat_ho, ranges), axis=1, initial=0.0)
    t_f = holdout_threshold(f_ho, alpha / checks, floor=MIN_MARGIN)
    t_e, e_ho = float("nan"), np.zeros(len(f_ho))
    if g is not None and emb_ho is not None:
        e_ho = mahalanobis(emb_ho, g)
        by_features = f_ho > t_f
        budget = max(alpha - float(np.mean(by_features)), alpha / 2) if len(f_ho) else alpha
        t_e = holdout_threshold(np.where(by_features, np.min(e_ho, initial=0.0), e_ho), budget)
    flagged = (f_ho > t_f) | (e_ho > t_e if g is not None else False)
    info = {"alpha": alpha, "min_margin": MIN_MARGIN, "n_fit": int(len(feat_fit)), "n_holdout": 0 if on_fit else int(len(feat_ho)),
            "thresholds_from": "training rows (no holdout)" if on_fit else "holdout rows",
            "holdout_flag_rate": float(np.mean(flagged)) if len(flagged) else None,
            "embedding_dim": None if g is None else int(g.means.shape[1]),
            "shrinkage": None if g is None else np.atleast_1d(g.shrinkage).round(4).tolist()}
    return ShiftReference(columns=columns, ranges=ranges, feature_threshold=t_f, gaussians=g, embedding_threshold=t_e, info=info)
