"""Saliency overlays: a map brought to the decoded slice's pixel grid, blended over the slice in a
display window, its peak marked, written as PNG (Pillow, low compression: fast to write)."""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np

from trainer.saliency.geometry import Placement, dicom_to_model

__all__ = ["map_to_dicom", "overlay_png", "render_overlay"]

#: Overlay opacity where the map is 1 (it falls linearly to 0 where the map is 0).
ALPHA: float = 0.5
#: The peak marker's colour (RGB).
MARK: tuple[int, int, int] = (0, 255, 0)


def _interp_matrix(coords: np.ndarray, n: int) -> np.ndarray:
    """float32 (len(coords), n): linear-interpolation weights of sample positions on a 0..n-1 grid (edge-clamped)."""
    x = np.clip(coords, 0.0, n - 1.0)
    i0 = np.minimum(np.floor(x).astype(np.int64), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    f = (x - i0).astype(np.float32)
    w = np.zeros((len(x), n), dtype=np.float32)
    idx = np.arange(len(x))
    np.add.at(w, (idx, i0), 1.0 - f)
    np.add.at(w, (idx, i1), f)
    return w


def map_to_dicom(sal: np.ndarray, p: Placement, shape: tuple[int, int]) -> np.ndarray:
    """A model-input map (O, O) resampled (bilinear) onto the decoded slice's grid ``shape`` (rows, cols);
    0 outside the skull box (the model saw none of it).

    Returns:
        float32 (rows, cols), the map's values (unitless, [0, 1] for a :class:`~trainer.saliency.cam.SaliencyModel` map).
    """
    rows, cols = np.arange(shape[0]), np.arange(shape[1])
    u, v = dicom_to_model(p, rows, cols)
    out = _interp_matrix(u, sal.shape[0]) @ sal.astype(np.float32) @ _interp_matrix(v, sal.shape[1]).T
    r0, r1, c0, c1 = p.box
    keep_r = (rows >= r0) & (rows < r1)
    keep_c = (cols >= c0) & (cols < c1)
    out *= keep_r[:, None] & keep_c[None, :]
    return out


@functools.lru_cache(maxsize=4)
def _lut(name: str) -> np.ndarray:
    """uint8 (256, 3): matplotlib's colormap ``name`` as a lookup table (no pyplot)."""
    import matplotlib

    return (matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)


def render_overlay(hu: np.ndarray, sal: np.ndarray, peak: tuple[int, int] | None, center: float, width: float,
                   cmap: str = "turbo") -> np.ndarray:
    """The slice in a display window with the map blended over it and the peak ringed.

    Args:
        hu: (rows, cols) HU.
        sal: (rows, cols) map in [0, 1] on the same grid (:func:`map_to_dicom`).
        peak: (row, col) pixel to mark, or None.
        center, width: the display window, HU.
        cmap: a matplotlib colormap name.

    Returns:
        uint8 (rows, cols, 3) RGB.
    """
    grey = np.clip((hu.astype(np.float32) - (center - width / 2.0)) / width, 0.0, 1.0) * 255.0
    s = np.clip(sal, 0.0, 1.0)
    heat = _lut(cmap)[(s * 255.0).astype(np.uint8)].astype(np.float32)
    a = (ALPHA * s)[..., None]
    rgb = (grey[..., None] * (1.0 - a) + heat * a + 0.5).astype(np.uint8)
    if peak is not None:
        _ring(rgb, peak, radius=max(4, round(max(hu.shape) / 64)), thick=max(1, round(max(hu.shape) / 256)))
    return rgb


def _ring(rgb: np.ndarray, peak: tuple[int, int], radius: int, thick: int) -> None:
    """Draw a ring of ``radius`` pixels and a centre dot at ``peak`` into ``rgb`` (in place)."""
    r, c = peak
    h, w = rgb.shape[:2]
    r0, r1, c0, c1 = max(0, r - radius - thick), min(h, r + radius + thick + 1), max(0, c - radius - thick), min(w, c + radius + thick + 1)
    yy, xx = np.ogrid[r0:r1, c0:c1]
    d = np.hypot(yy - r, xx - c)
    mask = (np.abs(d - radius) <= thick / 2.0 + 0.5) | (d <= thick)
    rgb[r0:r1, c0:c1][mask] = MARK


def overlay_png(rgb: np.ndarray, path: str | Path | None = None, compress_level: int = 1) -> bytes:
    """PNG bytes of an RGB image (written to ``path`` too when given); ``compress_level`` 1: fast, larger files."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG", compress_level=compress_level)
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data
