"""Per-slice HU statistics and tissue fractions, from the stored-value histogram (pure functions)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from neurocache.hu import histogram_percentiles

# Tissue bands, HU (inclusive bounds): what a reader of the table expects "air", "brain", "bone" to mean.
AIR_MAX_HU = -500.0
BRAIN_BAND_HU = (0.0, 80.0)
BONE_MIN_HU = 300.0


def _count_le(offset: int, cumulative: np.ndarray, stored_value: float) -> int:
    """Number of stored values <= ``stored_value``."""
    i = int(np.floor(stored_value)) - offset
    if i < 0:
        return 0
    return int(cumulative[min(i, len(cumulative) - 1)])


def histogram_moments(offset: int, cumulative: np.ndarray) -> tuple[float, float]:
    """Mean and (population) standard deviation of the stored values, from their histogram.

    Exact: the sums are integers (``sum(v)`` and ``sum((v - offset)**2)`` over the pixels), so the
    mean is the correctly rounded ``sum / n`` (what ``stored.mean(dtype=float64)`` returns while the
    sum is below 2**53) and the variance the correctly rounded ``(n*S2 - S1**2) / n**2`` (numpy's
    two-pass float sum may differ from it in the last bits). A few thousand bins instead of a pass
    over every pixel.
    """
    n = int(cumulative[-1])
    counts = np.diff(cumulative, prepend=0)
    k = len(counts)
    if n * (k - 1) ** 2 < 2**62:  # int64 sums cannot overflow
        v = np.arange(k, dtype=np.int64)
        cv = counts * v
        s1, s2 = int(cv.sum()), int(cv @ v)
    else:  # a huge value range: exact Python integers over the occupied bins
        nz = np.flatnonzero(counts)
        s1 = sum(int(counts[i]) * int(i) for i in nz)
        s2 = sum(int(counts[i]) * int(i) * int(i) for i in nz)
    mean = (offset * n + s1) / n
    var = (n * s2 - s1 * s1) / (n * n)
    return float(mean), math.sqrt(var)


def hu_features(
    stored: np.ndarray, offset: int, cumulative: np.ndarray, slope: float, intercept: float
) -> dict[str, float]:
    """Statistics of the decoded slice (before the floor), HU.

    Args:
        stored: integer array (rows, columns).
        offset, cumulative: its histogram (:func:`neurocache.hu.stored_histogram`).
        slope, intercept: modality LUT (slope > 0).

    Returns:
        hu_min, hu_max, hu_mean, hu_std, hu_p1, hu_p50, hu_p99 (HU) and frac_air, frac_brain,
        frac_bone (fractions of pixels in [0, 1]).
    """
    n = int(cumulative[-1])
    p1, p50, p99 = histogram_percentiles(offset, cumulative, (1.0, 50.0, 99.0))
    mean, std = histogram_moments(offset, cumulative)
    to_stored = lambda hu: (hu - intercept) / slope
    air = _count_le(offset, cumulative, np.nextafter(to_stored(AIR_MAX_HU), -np.inf))
    brain = _count_le(offset, cumulative, to_stored(BRAIN_BAND_HU[1])) - _count_le(
        offset, cumulative, np.nextafter(to_stored(BRAIN_BAND_HU[0]), -np.inf)
    )
    bone = n - _count_le(offset, cumulative, to_stored(BONE_MIN_HU))
    return {
        "hu_min": float(offset) * slope + intercept,
        "hu_max": float(offset + len(cumulative) - 1) * slope + intercept,
        "hu_mean": mean * slope + intercept,
        "hu_std": std * slope,
        "hu_p1": float(p1) * slope + intercept,
        "hu_p50": float(p50) * slope + intercept,
        "hu_p99": float(p99) * slope + intercept,
        "frac_air": air / n,
        "frac_brain": brain / n,
        "frac_bone": bone / n,
    }


def feature_columns() -> dict[str, Any]:
    """Empty values of the computed columns, for quarantined rows."""
    nan = float("nan")
    return {
        "hu_min": nan, "hu_max": nan, "hu_mean": nan, "hu_std": nan, "hu_p1": nan, "hu_p50": nan,
        "hu_p99": nan, "frac_air": nan, "frac_brain": nan, "frac_bone": nan,
        "box_r0": -1, "box_r1": -1, "box_c0": -1, "box_c1": -1, "scale": nan,
    }
