"""Where a model-input pixel lies in the input DICOM: the store's crop and letterbox and the model's
resize, undone. Pure functions on pixel coordinates (row, column; pixel centres at integers).

The forward chain (:mod:`neurocache.preprocess`, :mod:`neurocache.crop`, :func:`trainer.transforms.resize`):

1. crop the decoded slice (rows, cols) to the skull box ``[r0:r1, c0:c1]`` (h = r1 - r0, w = c1 - c0 pixels);
2. letterbox: Pillow bilinear resize of the crop to (nh, nw) = (round(h s), round(w s)), s = S / max(h, w),
   placed at offsets ((S - nh) // 2, (S - nw) // 2) of the S x S store image;
3. model resize S -> O (bilinear, ``align_corners=False``).

Both resizes map pixel centres linearly: output pixel ``y`` samples input ``(y + 1/2) n_in / n_out - 1/2``,
so each axis is an affine map and the inverse is exact up to the final rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Placement", "dicom_to_model", "model_to_dicom", "placement_of"]


@dataclass(frozen=True)
class Placement:
    """How a decoded slice became a model input.

    Attributes:
        box: skull box (r0, r1, c0, c1) in the decoded slice, pixels (inclusive-exclusive).
        store_size: the store's side S, pixels.
        out_size: the model input's side O, pixels.
    """

    box: tuple[int, int, int, int]
    store_size: int
    out_size: int

    def axes(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """Per axis (rows, cols): (a, b) with ``dicom = a * model + b``."""
        r0, r1, c0, c1 = self.box
        h, w = r1 - r0, c1 - c0
        s = self.store_size / max(h, w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        out: list[tuple[float, float]] = []
        for start, n_crop, n_fit in ((r0, h, nh), (c0, w, nw)):
            off = (self.store_size - n_fit) // 2
            k_store = self.store_size / self.out_size  # store pixels per model pixel
            k_crop = n_crop / n_fit                    # crop pixels per store pixel
            # store y = (u + 1/2) k_store - 1/2; crop x = (y - off + 1/2) k_crop - 1/2; dicom = start + x
            a = k_store * k_crop
            b = start + (0.5 * k_store - off) * k_crop - 0.5
            out.append((a, b))
        return out[0], out[1]


def placement_of(meta: dict[str, Any], store_size: int, out_size: int) -> Placement:
    """The :class:`Placement` of a slice from its feature-table row (``box_r0``, ``box_r1``, ``box_c0``, ``box_c1``)."""
    box = tuple(int(meta[k]) for k in ("box_r0", "box_r1", "box_c0", "box_c1"))
    return Placement(box=box, store_size=int(store_size), out_size=int(out_size))  # type: ignore[arg-type]


def model_to_dicom(p: Placement, row: float, col: float) -> tuple[int, int]:
    """A model-input pixel (row, col) -> the nearest decoded-slice pixel inside the skull box (row, col)."""
    (ar, br), (ac, bc) = p.axes()
    r0, r1, c0, c1 = p.box
    r = int(np.clip(np.rint(ar * row + br), r0, r1 - 1))
    c = int(np.clip(np.rint(ac * col + bc), c0, c1 - 1))
    return r, c


def dicom_to_model(p: Placement, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decoded-slice pixel coordinates -> model-input coordinates (float64, same shapes; outside the box
    they extrapolate the same affine map)."""
    (ar, br), (ac, bc) = p.axes()
    return (np.asarray(rows, dtype=np.float64) - br) / ar, (np.asarray(cols, dtype=np.float64) - bc) / ac
