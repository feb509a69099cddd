"""Saliency overlays: a map brought to the decoded slice's pixel grid, blended over the slice in a
display window, its peak marked, written as PNG (Pillow, low compression: fast to write)."""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np

from trainer.saliency.geometry import Placement, dicom_to_model

__all__ = ["map_to_dicom", "overlay_indices", "overlay_png", "palette", "render_overlay"]

#: Overlay opacity where the map is 1 (it falls linearly to 0 where the map is 0).
ALPHA: float = 0.5
#: The peak marker's colour (RGB).
MARK: tuple[int, int, int] = (0, 255, 0)


def _taps(coords: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear-interpolation taps of sample positions on a 0..n-1 grid (edge-clamped): (i0, i1, float32 weight of i1)."""
    x = np.clip(coords, 0.0, n - 1.0)
    i0 = np.minimum(np.floor(x).astype(np.int64), n - 1)
    return i0, np.minimum(i0 + 1, n - 1), (x - i0).astype(np.float32)


def map_to_dicom(sal: np.ndarray, p: Placement, shape: tuple[int, int]) -> np.ndarray:
    """A model-input map (O, O) resampled (bilinear, separable) onto the decoded slice's grid ``shape`` (rows,
    cols), only inside the skull box; 0 outside it (the model saw none of it).

    Returns:
        float32 (rows, cols), the map's values (unitless, [0, 1] for a :class:`~trainer.saliency.cam.SaliencyModel` map).
    """
    out = np.zeros(shape, dtype=np.float32)
    r0, r1, c0, c1 = p.box
    r0, r1, c0, c1 = max(r0, 0), min(r1, shape[0]), max(c0, 0), min(c1, shape[1])
    if r1 <= r0 or c1 <= c0:
        return out
    u, v = dicom_to_model(p, np.arange(r0, r1), np.arange(c0, c1))
    a0, a1, fa = _taps(u, sal.shape[0])
    b0, b1, fb = _taps(v, sal.shape[1])
    m = sal.astype(np.float32, copy=False)
    rows = m[a0] * (1.0 - fa)[:, None] + m[a1] * fa[:, None]  # (box rows, O)
    out[r0:r1, c0:c1] = rows[:, b0] * (1.0 - fb)[None, :] + rows[:, b1] * fb[None, :]
    return out


#: Grey levels and map levels of the overlay's palette (31 x 8 = 248 colours, index 255 the peak marker).
GREY_LEVELS, MAP_LEVELS, MARK_INDEX = 31, 8, 255


@functools.lru_cache(maxsize=4)
def palette(cmap: str = "turbo") -> np.ndarray:
    """uint8 (256, 3) RGB: entry ``g * MAP_LEVELS + s`` is grey level g blended with matplotlib's colormap ``cmap``
    (its lookup table, no pyplot) at map level s, opacity ``ALPHA * s / (MAP_LEVELS - 1)``; entry 255 is :data:`MARK`."""
    import matplotlib

    s = np.arange(MAP_LEVELS) / (MAP_LEVELS - 1.0)
    heat = matplotlib.colormaps[cmap](s)[:, :3] * 255.0  # (s, 3)
    grey = np.linspace(0.0, 255.0, GREY_LEVELS)[:, None, None]  # (g, 1, 1)
    a = (ALPHA * s)[None, :, None]
    out = np.zeros((256, 3), dtype=np.uint8)
    out[: GREY_LEVELS * MAP_LEVELS] = (grey * (1.0 - a) + heat[None] * a + 0.5).astype(np.uint8).reshape(-1, 3)
    out[MARK_INDEX] = MARK
    return out


def overlay_indices(hu: np.ndarray, sal: np.ndarray, peak: tuple[int, int] | None, center: float, width: float) -> np.ndarray:
    """The slice in a display window with the map over it and the peak ringed, as :func:`palette` indices.

    Args:
        hu: (rows, cols) HU.
        sal: (rows, cols) map in [0, 1] on the same grid (:func:`map_to_dicom`).
        peak: (row, col) pixel to mark, or None.
        center, width: the display window, HU.

    Returns:
        uint8 (rows, cols): ``grey level * MAP_LEVELS + map level`` (31 grey levels over the window, 8 map levels),
        :data:`MARK_INDEX` on the ring. One byte per pixel: a palette PNG encodes about 3x faster than RGB.
    """
    low = np.float32(center - width / 2.0)
    g = np.clip((hu.astype(np.float32) - low) * np.float32((GREY_LEVELS - 1) / width) + np.float32(0.5), 0, GREY_LEVELS - 1)
    s = np.clip(sal * np.float32(MAP_LEVELS - 1) + np.float32(0.5), 0, MAP_LEVELS - 1)
    idx = (g.astype(np.uint8) * np.uint8(MAP_LEVELS) + s.astype(np.uint8)).astype(np.uint8)
    if peak is not None:
        _ring(idx, peak, radius=max(4, round(max(hu.shape) / 64)), thick=max(1, round(max(hu.shape) / 256)))
    return idx


def render_overlay(hu: np.ndarray, sal: np.ndarray, peak: tuple[int, int] | None, center: float, width: float,
                   cmap: str = "turbo") -> np.ndarray:
    """:func:`overlay_indices` as uint8 (rows, cols, 3) RGB through :func:`palette`."""
    return palette(cmap)[overlay_indices(hu, sal, peak, center, width)]


def _ring(idx: np.ndarray, peak: tuple[int, int], radius: int, thick: int) -> None:
    """Draw a ring of ``radius`` pixels and a centre dot at ``peak`` into the index image ``idx`` (in place)."""
    r, c = peak
    h, w = idx.shape[:2]
    r0, r1, c0, c1 = max(0, r - radius - thick), min(h, r + radius + thick + 1), max(0, c - radius - thick), min(w, c + radius + thick + 1)
    yy, xx = np.ogrid[r0:r1, c0:c1]
    d = np.hypot(yy - r, xx - c)
    mask = (np.abs(d - radius) <= thick / 2.0 + 0.5) | (d <= thick)
    idx[r0:r1, c0:c1][mask] = MARK_INDEX


def overlay_png(idx: np.ndarray, path: str | Path | None = None, cmap: str = "turbo", compress_level: int = 1) -> bytes:
    """PNG bytes of an :func:`overlay_indices` image with :func:`palette` (written to ``path`` too when given);
    ``compress_level`` 1 with zlib's run-length strategy: about 2.6 ms for 512 x 512 here, 10 % larger than the
    default strategy's 3.7 ms."""
    import zlib

    from PIL import Image

    im = Image.fromarray(idx, mode="P")
    im.putpalette(palette(cmap).ravel().tolist())
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=compress_level, compress_type=zlib.Z_RLE)
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data
