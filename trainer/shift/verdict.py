"""Per-slice verdicts (``shift_score``, ``shifted``, ``shift_reason``) and the per-call summary.

A reason names each out-of-range column with its value against the training range ("kVp 80 kV vs
120 kV in training"), or says "embedding far from training data" with the distance and threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from trainer.shift.columns import Column
from trainer.shift.reference import ShiftReference

__all__ = ["EMBEDDING_REASON", "SHIFT_COLUMNS", "Verdicts", "judge", "summarise"]

#: The predict CSV's shift columns (empty for quarantined files and runs without a reference).
SHIFT_COLUMNS: tuple[str, ...] = ("shift_score", "shifted", "shift_reason")
EMBEDDING_REASON = "embedding far from training data"


@dataclass(frozen=True)
class Verdicts:
    """The check's outcome for m slices.

    Attributes:
        score: float64 (m,) ``shift_score`` (> 1: shifted); shifted: bool (m,); reasons: m strings ('' when not shifted).
        values: float64 (m, c) the checked feature values; col_flags: bool (m, c) which columns are out of range.
        feature_distance: float64 (m,) the largest column distance (column spreads); embedding_distance: (m,) (NaN: none).
        emb_flags: bool (m,) embedding beyond its threshold.
    """

    score: np.ndarray
    shifted: np.ndarray
    reasons: list[str]
    values: np.ndarray
    col_flags: np.ndarray
    feature_distance: np.ndarray
    embedding_distance: np.ndarray
    emb_flags: np.ndarray


def _g(v: float) -> str:
    return f"{v:.4g}"


def _span(lo: float, hi: float, unit: str) -> str:
    """'120 kV', '0.4-0.5 mm', '-999 to 16 HU'."""
    text = _g(lo) if _g(lo) == _g(hi) else (f"{_g(lo)}-{_g(hi)}" if lo >= 0 else f"{_g(lo)} to {_g(hi)}")
    return f"{text} {unit}".rstrip()


def column_reason(c: Column, low: float, high: float, lo: float, hi: float) -> str:
    """'kVp 80 kV vs 120 kV in training' for new values in [low, high] against the training range [lo, hi]
    ('kVp missing vs ...' when ``low`` is NaN)."""
    shown = "missing" if np.isnan(low) else _span(low, high, c.unit)
    return f"{c.label} {shown} vs {_span(lo, hi, c.unit)} in training"


def judge(ref: ShiftReference, values: np.ndarray, emb: np.ndarray | None) -> Verdicts:
    """The verdicts of m slices: checked feature values (m, c) (:func:`trainer.shift.columns.column_values`)
    and penultimate embeddings (m, d) (None: the feature check alone)."""
    v = np.asarray(values, dtype=np.float64)
    d = ref.feature_distance(v)
    e = ref.embedding_distance(emb, len(v))
    score = ref.shift_score(d, e)
    col_flags = d > ref.feature_threshold
    emb_flags = np.nan_to_num(e, nan=0.0) > ref.embedding_threshold if ref.gaussians is not None else np.zeros(len(v), bool)
    reasons = []
    for i in range(len(v)):
        parts = [column_reason(c, v[i, j], v[i, j], ref.ranges.lo[j], ref.ranges.hi[j])
                 for j, c in enumerate(ref.columns) if col_flags[i, j]]
        if emb_flags[i]:
            parts.append(f"{EMBEDDING_REASON} (distance {e[i]:.1f} vs threshold {ref.embedding_threshold:.1f})")
        reasons.append("; ".join(parts))
    return Verdicts(score=score, shifted=score > 1.0, reasons=reasons, values=v, col_flags=col_flags,
                    feature_distance=np.max(d, axis=1, initial=0.0), embedding_distance=e, emb_flags=emb_flags)


def summarise(ref: ShiftReference | None, verdicts: Verdicts | None, n_files: int) -> dict[str, Any]:
    """The per-call summary (``<out stem>.shift.json``): counts, each reason with its slices' values
    against the training range, and ``message``, the one line ``trainer predict`` prints."""
    if ref is None or verdicts is None:
        return {"reference": False, "n_files": n_files, "n_checked": 0, "n_shifted": None, "checks": [],
                "message": "no distribution-shift reference in this final run (made before the check): not checked"}
    n, k = len(verdicts.score), int(verdicts.shifted.sum())
    checks: list[dict[str, Any]] = []
    for j, c in enumerate(ref.columns):
        hit = verdicts.col_flags[:, j]
        if hit.any():
            vals = verdicts.values[hit, j]
            seen = vals[~np.isnan(vals)]
            checks.append({"check": c.name, "label": c.label, "unit": c.unit, "kind": c.kind, "n": int(hit.sum()),
                           "values": [float(seen.min()), float(seen.max())] if len(seen) else None,
                           "n_missing": int(np.isnan(vals).sum()),
                           "training": [float(ref.ranges.lo[j]), float(ref.ranges.hi[j])],
                           "text": column_reason(c, seen.min() if len(seen) else np.nan, seen.max() if len(seen) else np.nan,
                                                 ref.ranges.lo[j], ref.ranges.hi[j])})
    if verdicts.emb_flags.any():
        checks.append({"check": "embedding", "label": EMBEDDING_REASON, "unit": "", "kind": "embedding",
                       "n": int(verdicts.emb_flags.sum()), "threshold": ref.embedding_threshold,
                       "values": [float(np.nanmin(verdicts.embedding_distance[verdicts.emb_flags])),
                                  float(np.nanmax(verdicts.embedding_distance[verdicts.emb_flags]))],
                       "text": EMBEDDING_REASON})
    checks.sort(key=lambda r: -r["n"])
    parts = [f"{r['text']} ({r['n']} slices)" for r in checks]
    message = f"{k} of {n} slices outside the training distribution" + (": " + "; ".join(parts) if parts else "")
    return {"reference": True, "n_files": n_files, "n_checked": n, "n_shifted": k, "rate": k / n if n else None,
            "alpha": ref.info.get("alpha"), "feature_threshold": ref.feature_threshold,
            "embedding_threshold": ref.embedding_threshold if ref.gaussians is not None else None,
            "checks": checks, "message": message}
