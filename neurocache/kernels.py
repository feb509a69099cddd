"""Compiled per-slice kernels (numba): the store's two passes over a decoded slice.

:func:`scan_slice` reads the stored values once for everything the preprocessing needs from the
whole slice (value range, exact histogram, row and column maxima); :func:`floor_crop_hu` makes the
floored float32 HU crop in one pass. They replace, value for value, the numpy sequence
:func:`neurocache.hu.stored_histogram` + :func:`neurocache.crop.threshold_box` +
:func:`neurocache.hu.stored_to_hu` + :func:`neurocache.hu.floor_low_values`, which stays the
reference (``tests/test_kernels.py`` compares them on random and edge-valued arrays).

Each kernel is compiled on its first call for the array type it is given (C-contiguous int16,
uint16, int32 or int64, read-only or not: :func:`kernel_input` widens any other integer dtype, with
the same values), and kept in numba's on-disk cache (``cache=True``): the first build on a machine
compiles (about a second per array type), later processes load the machine code (tens of ms). A
process only pays for the types it meets: a build's workers each load the one or two their slices
have.
"""

from __future__ import annotations

import math

import numba
import numpy as np

#: dtypes the kernels take (C-contiguous).
KERNEL_DTYPES = (np.dtype(np.int16), np.dtype(np.uint16), np.dtype(np.int32), np.dtype(np.int64))


@numba.njit(cache=True, nogil=True)
def _extent(a: np.ndarray, row_max: np.ndarray, col_max: np.ndarray) -> tuple[int, int]:  # pragma: no cover - compiled
    """(min, max) of a non-empty 2-D array; fills row_max[r] / col_max[c] with each row's / column's maximum."""
    rows, cols = a.shape
    col_max[:] = a[0]
    lo = a[0, 0]
    hi = a[0, 0]
    for r in range(rows):
        row = a[r]  # a row view: no negative-index wrap-around checks in the inner loop, so it vectorises
        m = row[0]
        mn = row[0]
        for c in range(cols):
            v = row[c]
            m = max(m, v)
            mn = min(mn, v)
            col_max[c] = max(col_max[c], v)
        row_max[r] = m
        hi = max(hi, m)
        lo = min(lo, mn)
    return int(lo), int(hi)


@numba.njit(cache=True, nogil=True)
def _count(a: np.ndarray, lo: int, counts: np.ndarray) -> None:  # pragma: no cover - compiled
    """counts[v - lo] += 1 for every value v of ``a`` (lo = its minimum, so every index is >= 0)."""
    rows, cols = a.shape
    for r in range(rows):
        row = a[r]
        for c in range(cols):
            counts[np.uint64(np.intp(row[c]) - lo)] += 1


def kernel_input(stored: np.ndarray) -> np.ndarray:
    """``stored`` as an array the kernels are compiled for: itself when it is a C-contiguous 2-D
    array of :data:`KERNEL_DTYPES`, else a C-contiguous int32 (or int64) copy with the same values.

    Raises:
        TypeError: not a 2-D integer array, or 64-bit values beyond 2**53 (not exact in float64).
    """
    if not np.issubdtype(stored.dtype, np.integer) or stored.ndim != 2:
        raise TypeError(f"the slice kernels need a 2-D integer array, got {stored.ndim}-D dtype {stored.dtype}")
    if stored.dtype.itemsize == 8 and stored.size and max(abs(int(stored.min())), abs(int(stored.max()))) > 2**53:
        raise TypeError("64-bit stored values beyond 2**53 are not supported (DICOM pixels have at most 32 bits)")
    if stored.dtype in KERNEL_DTYPES and stored.flags.c_contiguous:  # a big-endian dtype is not among them
        return stored
    info = np.iinfo(stored.dtype)
    wide = np.int32 if np.iinfo(np.int32).min <= info.min and info.max <= np.iinfo(np.int32).max else np.int64
    return np.ascontiguousarray(stored, dtype=wide)


def scan_slice(stored: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """Histogram and row / column maxima of a decoded slice, in two compiled passes.

    Args:
        stored: integer array (rows, columns), stored values, at least one pixel.

    Returns:
        ``(offset, cumulative, row_max, col_max)``: ``offset`` and ``cumulative`` exactly as
        :func:`neurocache.hu.stored_histogram` returns them (``cumulative[i]`` = number of values
        <= ``offset + i``, int64), ``row_max`` (rows,) and ``col_max`` (columns,) the maxima of each
        row and column, stored units, in the kernel input's dtype (:func:`kernel_input`).
    """
    a = kernel_input(stored)
    if a.size == 0:
        raise ValueError("scan_slice needs at least one pixel")
    row_max = np.empty(a.shape[0], dtype=a.dtype)
    col_max = np.empty(a.shape[1], dtype=a.dtype)
    lo, hi = _extent(a, row_max, col_max)
    # Allocated here, as stored_histogram does: a corrupt header's huge value range fails the same way.
    counts = np.zeros(hi - lo + 1, dtype=np.intp)
    _count(a, lo, counts)
    return lo, np.cumsum(counts, out=counts), row_max, col_max


def box_from_maxima(row_max: np.ndarray, col_max: np.ndarray, threshold: float) -> tuple[int, int, int, int] | None:
    """``bounding_box(image >= threshold)`` from the image's row and column maxima (:func:`scan_slice`).

    The same box as :func:`neurocache.crop.threshold_box`: a column holds a pixel >= ``threshold``
    exactly when its maximum does, and that pixel lies in a row whose maximum does, so within the
    row bounds.

    Returns:
        ``(r0, r1, c0, c1)``, inclusive-exclusive, pixels; None when no pixel reaches ``threshold``.
    """
    rows = np.flatnonzero(row_max >= threshold)
    if rows.size == 0:
        return None
    cols = np.flatnonzero(col_max >= threshold)
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


@numba.njit(cache=True, nogil=True)
def _floor_crop_hu(a: np.ndarray, r0: int, c0: int, slope: np.float32, intercept: np.float32, use_slope: bool,
                   use_intercept: bool, threshold: int, pad: np.float32, out: np.ndarray) -> None:  # pragma: no cover
    """out[i, j] = pad where a[r0 + i, c0 + j] <= threshold, else float32(a) (* slope) (+ intercept)."""
    h, w = out.shape
    for i in range(h):
        src = a[r0 + i, c0 : c0 + w]
        dst = out[i]
        for j in range(w):
            v = src[j]
            x = np.float32(v)
            if use_slope:  # loop-invariant: hoisted by the compiler
                x = x * slope
            if use_intercept:
                x = x + intercept
            dst[j] = pad if v <= threshold else x


def floor_crop_hu(stored: np.ndarray, box: tuple[int, int, int, int], slope: float, intercept: float,
                  stored_threshold: float, pad_hu: float) -> np.ndarray:
    """The floored HU crop, in one pass: ``floor_low_values(stored_to_hu(crop), crop, threshold, pad_hu)``
    for ``crop = stored[r0:r1, c0:c1]``, value for value (float32 arithmetic in the same order).

    Args:
        stored: integer array (rows, columns), stored values.
        box: ``(r0, r1, c0, c1)`` inside ``stored``, pixels.
        slope, intercept: the modality LUT (HU = stored x slope + intercept).
        stored_threshold: stored values <= this become ``pad_hu``.
        pad_hu: the floor value, HU.

    Returns:
        float32 (r1 - r0, c1 - c0) C-contiguous array, HU.
    """
    r0, r1, c0, c1 = box
    if not (0 <= r0 <= r1 <= stored.shape[0] and 0 <= c0 <= c1 <= stored.shape[1]):
        raise ValueError(f"box {box} is not inside an image of shape {stored.shape}")
    a = kernel_input(stored)
    out = np.empty((r1 - r0, c1 - c0), dtype=np.float32)
    # For an integer v, v <= t exactly when v <= floor(t); the kernel's values (at most 32-bit DICOM
    # pixels) are exact in float64, so this is numpy's float64 comparison too. Clamped to int64.
    if math.isfinite(stored_threshold):
        t = min(max(math.floor(stored_threshold), -(2**63)), 2**63 - 1)
    else:  # nothing is <= NaN or -inf; everything is <= inf
        t = 2**63 - 1 if stored_threshold == math.inf else -(2**63)
    _floor_crop_hu(a, r0, c0, np.float32(slope), np.float32(intercept), slope != 1.0, intercept != 0.0,
                   t, np.float32(pad_hu), out)
    return out
