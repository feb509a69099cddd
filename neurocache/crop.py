"""Skull box, crop and letterbox: pure functions on HU images (pixels in, pixels out)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight box of the True pixels of a 2-D mask.

    Returns:
        ``(r0, r1, c0, c1)`` with inclusive-exclusive bounds (``image[r0:r1, c0:c1]``), pixels;
        None when the mask is empty.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def threshold_box(image: np.ndarray, threshold: float) -> tuple[int, int, int, int] | None:
    """``bounding_box(image >= threshold)`` without the mask: row maxima, then column maxima of the
    rows in the box (a pixel >= threshold lies in a row whose maximum is)."""
    rows = np.flatnonzero(image.max(axis=1) >= threshold)
    if rows.size == 0:
        return None
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    cols = np.flatnonzero(image[r0:r1].max(axis=0) >= threshold)
    return r0, r1, int(cols[0]), int(cols[-1]) + 1


def crop(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """``image[r0:r1, c0:c1]`` for a box from :func:`bounding_box` (a view, not a copy)."""
    r0, r1, c0, c1 = box
    return image[r0:r1, c0:c1]


def _fit(image: np.ndarray, size: int) -> tuple[np.ndarray, float, int, int]:
    """The resize of :func:`letterbox`: ``(resized float32 (nh, nw), scale, r0, c0)``, the image's
    place in the ``size x size`` canvas being ``[r0 : r0 + nh, c0 : c0 + nw]``."""
    h, w = image.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    src = np.ascontiguousarray(image, dtype=np.float32)
    if (nh, nw) == (h, w):
        resized = src
    else:
        resized = np.asarray(Image.fromarray(src).resize((nw, nh), Image.Resampling.BILINEAR))
    return resized, float(scale), (size - nh) // 2, (size - nw) // 2


def letterbox(image: np.ndarray, size: int, pad: float) -> tuple[np.ndarray, float]:
    """Aspect-preserving resize of a 2-D image into a ``size x size`` canvas, centred, padded with ``pad``.

    The longer side becomes ``size`` pixels; the shorter side ``round(side * scale)`` (at least 1).
    Resampling is Pillow's bilinear filter on float32, which widens its support when shrinking
    (antialiasing), so a downscaled skull keeps its mean HU.

    Args:
        image: float array (h, w), HU.
        size: canvas side S, pixels.
        pad: fill value for the canvas, HU.

    Returns:
        ``(canvas, scale)``: float32 (S, S) HU and the resize factor (output pixels per input pixel).
    """
    resized, scale, r0, c0 = _fit(image, size)
    canvas = np.full((size, size), pad, dtype=np.float32)
    canvas[r0 : r0 + resized.shape[0], c0 : c0 + resized.shape[1]] = resized
    return canvas, scale


def letterbox_int16(image: np.ndarray, size: int, pad: float) -> tuple[np.ndarray, float]:
    """``to_int16`` of :func:`letterbox`'s canvas, value for value, without the float32 canvas: the
    resized image is rounded on its own and the border is the rounded ``pad`` (the store's image).

    Returns:
        ``(canvas, scale)``: int16 (S, S) HU and the resize factor (output pixels per input pixel).
    """
    resized, scale, r0, c0 = _fit(image, size)
    canvas = np.full((size, size), to_int16(np.full(1, pad, dtype=np.float32))[0], dtype=np.int16)
    canvas[r0 : r0 + resized.shape[0], c0 : c0 + resized.shape[1]] = to_int16(resized)
    return canvas, scale


def to_int16(hu: np.ndarray) -> np.ndarray:
    """Round HU to the nearest integer and clip to the int16 range."""
    return np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
