"""Noise fields and small array helpers of the phantom renderer (float32, pixels)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from neurocache.synth.seeds import _F32


def _smooth_fields(
    rng: np.random.Generator, shape: tuple[int, int], bands: Sequence[tuple[float, float]]
) -> np.ndarray:
    """Gaussian / band-pass filtered white-noise fields via FFT.

    Args:
        shape: (rows, cols) in pixels.
        bands: one ``(sigma_lo, sigma_hi)`` pair per field, in pixels: the field is white
            noise filtered by ``G(sigma_lo) - G(sigma_hi)`` (``sigma_hi <= 0`` means a
            plain Gaussian low-pass with ``sigma_lo``).

    Returns:
        float32 array (len(bands), rows, cols), each field zero-mean with unit std.
    """
    rows, cols = shape
    white = rng.standard_normal((len(bands), rows, cols), dtype=_F32)
    spec = np.fft.rfft2(white, axes=(-2, -1))
    fy = np.fft.fftfreq(rows).astype(_F32)[:, None]
    fx = np.fft.rfftfreq(cols).astype(_F32)[None, :]
    f2 = fy * fy + fx * fx
    for i, (s_lo, s_hi) in enumerate(bands):
        h = np.exp(-2.0 * np.pi**2 * s_lo**2 * f2)
        if s_hi > 0:
            h = h - np.exp(-2.0 * np.pi**2 * s_hi**2 * f2)
        spec[i] *= h
    out = np.fft.irfft2(spec, s=(rows, cols), axes=(-2, -1)).astype(_F32, copy=False)
    out -= out.mean(axis=(-2, -1), keepdims=True)
    out /= out.std(axis=(-2, -1), keepdims=True) + _F32(1e-12)
    return out


def _soft(x: np.ndarray | float) -> np.ndarray:
    """Anti-aliased step: ``clip(x + 0.5, 0, 1)`` where ``x`` is a signed distance in px."""
    return np.clip(np.asarray(x, dtype=_F32) + _F32(0.5), _F32(0.0), _F32(1.0))


def _lerp_(dst: np.ndarray, value: np.ndarray | float, weight: np.ndarray) -> None:
    """In place ``dst = dst + weight * (value - dst)``."""
    dst += weight * (value - dst)


def _bbox(
    cy: float, cx: float, half: float, shape: tuple[int, int]
) -> tuple[slice, slice] | None:
    """Image-space box (rows, cols slices) of half-size ``half`` px around (cy, cx) px."""
    r0, r1 = max(0, int(cy - half)), min(shape[0], int(np.ceil(cy + half)) + 1)
    c0, c1 = max(0, int(cx - half)), min(shape[1], int(np.ceil(cx + half)) + 1)
    if r1 <= r0 or c1 <= c0:
        return None
    return slice(r0, r1), slice(c0, c1)
