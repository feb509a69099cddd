"""Feature ranges: how far a value lies outside the training values of its column (pure numpy).

The distance of a value ``v`` from the training range ``[lo, hi]`` of its column is
``max(lo - v, v - hi, 0) / scale``: 0 inside the range, else in units of the column's spread
(``scale = max(training std, Column.tol)``). A missing value (NaN) is infinitely far when the
column was never missing in training, and 0 when it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Ranges", "exceedance", "fit_ranges"]


@dataclass(frozen=True)
class Ranges:
    """Per-column training ranges, float64 arrays of shape (c,).

    Attributes:
        lo, hi: the smallest and largest training value (NaN when every value was missing).
        scale: the unit distances are measured in: the training std, at least the column's ``tol``.
        missing_ok: whether some training value was missing (then a missing value is not a shift).
    """

    lo: np.ndarray
    hi: np.ndarray
    scale: np.ndarray
    missing_ok: np.ndarray


def fit_ranges(values: np.ndarray, tol: np.ndarray) -> Ranges:
    """The ranges of training values (n, c) (NaN = missing) with the per-column floors ``tol`` (c,)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] == 0:
        raise ValueError(f"values must be a non-empty (n, c) array, got shape {v.shape}")
    seen = ~np.isnan(v)
    any_seen = seen.any(axis=0)
    filled = np.where(seen, v, 0.0)
    lo = np.where(any_seen, np.nanmin(np.where(seen, v, np.inf), axis=0), np.nan)
    hi = np.where(any_seen, np.nanmax(np.where(seen, v, -np.inf), axis=0), np.nan)
    n = np.maximum(seen.sum(axis=0), 1)
    mean = filled.sum(axis=0) / n
    std = np.sqrt((np.where(seen, v - mean, 0.0) ** 2).sum(axis=0) / n)
    return Ranges(lo=lo, hi=hi, scale=np.maximum(std, np.asarray(tol, dtype=np.float64)),
                  missing_ok=np.asarray(~seen.all(axis=0)))


def exceedance(values: np.ndarray, r: Ranges) -> np.ndarray:
    """Distances (m, c) of values (m, c) outside the training ranges, in units of ``r.scale`` (0 inside).

    A column without any training value (``lo`` NaN) is not checked (0).
    """
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        d = np.maximum(np.maximum(r.lo - v, v - r.hi), 0.0) / r.scale
    missing = np.isnan(v)
    d = np.where(missing, np.where(r.missing_ok, 0.0, np.inf), d)
    return np.where(np.isnan(r.lo), 0.0, d)
