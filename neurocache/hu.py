"""Hounsfield-unit math on stored pixel arrays: pure functions, no I/O.

The percentiles are exact order statistics taken from an integer histogram of the stored values
(``np.bincount``), with the same linear interpolation as ``np.percentile(method="linear")``; on a
512 x 512 slice this costs a fraction of two ``np.percentile`` calls, which sort the array.
"""

from __future__ import annotations

import numpy as np


def stored_histogram(stored: np.ndarray) -> tuple[int, np.ndarray]:
    """Histogram of an integer image.

    Args:
        stored: integer array of any shape (DICOM stored values).

    Returns:
        ``(offset, cumulative)`` where ``cumulative[i]`` is the number of values <= ``offset + i``.
    """
    if not np.issubdtype(stored.dtype, np.integer):
        raise TypeError(f"stored_histogram needs an integer array, got dtype {stored.dtype}")
    flat = stored.ravel()
    lo, hi = int(flat.min()), int(flat.max())
    n_bins = hi - lo + 1
    # Counted a block at a time through one small index buffer: no image-sized int64 temporaries.
    counts = np.zeros(n_bins, dtype=np.intp)
    buf = np.empty(min(flat.size, _BLOCK), dtype=np.intp)
    off = np.intp(lo)
    for i in range(0, flat.size, _BLOCK):
        part = flat[i : i + _BLOCK]
        b = buf[: part.size]
        np.subtract(part, off, out=b, dtype=np.intp)
        counts += np.bincount(b, minlength=n_bins)
    return lo, np.cumsum(counts)


_BLOCK = 1 << 16  # values per bincount in stored_histogram


def histogram_percentiles(offset: int, cumulative: np.ndarray, qs: list[float] | tuple[float, ...]) -> np.ndarray:
    """Percentiles (linear interpolation, as ``np.percentile``) from :func:`stored_histogram`'s output.

    Args:
        offset, cumulative: as returned by :func:`stored_histogram`.
        qs: percentiles in [0, 100].

    Returns:
        float64 array of the percentiles, in stored units.
    """
    n = int(cumulative[-1])
    idx = np.asarray(qs, dtype=np.float64) / 100.0 * (n - 1)
    k_lo = np.floor(idx).astype(np.int64)
    k_hi = np.minimum(k_lo + 1, n - 1)
    # The k-th smallest value (0-based) is the first bin whose cumulative count exceeds k.
    v_lo = np.searchsorted(cumulative, k_lo, side="right") + offset
    v_hi = np.searchsorted(cumulative, k_hi, side="right") + offset
    t = idx - k_lo
    return v_lo + (v_hi - v_lo) * t


def stored_to_hu(stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """HU = stored x RescaleSlope + RescaleIntercept (the CT modality LUT).

    Args:
        stored: integer array (rows, columns) of stored values.
        slope, intercept: (0028,1053) RescaleSlope and (0028,1052) RescaleIntercept.

    Returns:
        float32 array (rows, columns), HU.
    """
    hu = stored.astype(np.float32)
    if slope != 1.0:
        hu *= np.float32(slope)
    if intercept != 0.0:
        hu += np.float32(intercept)
    return hu


def floor_low_values(hu: np.ndarray, stored: np.ndarray, stored_threshold: float, pad_hu: float) -> np.ndarray:
    """Set pixels whose stored value is <= ``stored_threshold`` to ``pad_hu`` (in place; returns ``hu``).

    Comparing stored values (not HU) keeps the decision exact: for a positive slope
    ``stored <= p`` is the same as ``HU <= slope * p + intercept``.
    """
    hu[stored <= stored_threshold] = pad_hu
    return hu


def wrap_12bit(stored: np.ndarray) -> np.ndarray:
    """Undo the RSNA 12-bit wrap-around: ``((stored + 1000) mod 4096) - 1000`` as int32."""
    return (stored.astype(np.int32) + 1000) % 4096 - 1000


#: RescaleIntercept that goes with :func:`fix_12bit_wrap`'s output.
WRAP_INTERCEPT = -1000.0


def fix_12bit_wrap(stored: np.ndarray) -> tuple[np.ndarray, float]:
    """Undo the RSNA 12-bit wrap-around on stored values, for use before the rescale.

    Some scanners in the RSNA intracranial-haemorrhage data wrote signed HU into 12-bit unsigned
    pixels (``BitsStored == 12``, ``PixelRepresentation == 0``, ``RescaleIntercept > -100``), so air
    and fat (-1000..-1 HU) wrapped to 3096..4095. The fix (the community's standard one) is
    ``stored' = (stored + 1000) mod 4096`` with ``RescaleIntercept' = -1000``; with slope 1 this is
    HU = ((stored + 1000) mod 4096) - 1000 = :func:`wrap_12bit`.

    Returns:
        ``(stored', intercept')``: int32 array in [0, 4095] and the intercept to use with it.
    """
    return (stored.astype(np.int32) + 1000) % 4096, WRAP_INTERCEPT
