"""Where a saliency map peaks: the pixel region it is looked for in (``saliency_peak``) and how its
position is read off the map (``saliency_locate``). Pure functions on model-input grids (pixels of
the ``out_size`` x ``out_size`` model input; row, column; pixel centres at integers).

A class activation map is computed on a stage's coarse grid (``layer2``: 1/8 of the input side, a cell
of 8 px at 128 px input, about 25 px of a 512 px slice) and upsampled bilinearly, so its maximum always
sits on a cell centre: the maximum alone cannot place a lesion finer than a cell. ``centroid`` reads
the position the way the map spreads over the cells around it: the map-weighted centre of the region
above half of the peak value that holds the peak (a half-maximum blob), to a fraction of a pixel.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

__all__ = ["LOCATES", "PEAKS", "PEAK_HU", "peak_masks", "peak_of"]

#: ``saliency_peak``: where the map's peak is looked for, as an HU range [low, high) of the input pixels:
#: ``tissue``: not air (above -500 HU, halfway between air and fat; bone included); ``brain``: soft tissue
#: of the brain and blood, 0 to 120 HU (no air, fat or bone); ``anywhere``: the whole model input.
PEAK_HU: dict[str, tuple[float, float]] = {"tissue": (-500.0, float("inf")), "brain": (0.0, 120.0)}
PEAKS: tuple[str, ...] = ("tissue", "brain", "anywhere")
#: ``saliency_locate``: ``centroid``: the map-weighted centre of the half-maximum region around the maximum;
#: ``max``: the maximum pixel itself.
LOCATES: tuple[str, ...] = ("centroid", "max")


def peak_of(sal: np.ndarray, where: np.ndarray | None = None, locate: str = "centroid") -> tuple[float, float]:
    """(row, col) of a map's peak, pixels of the map (float; whole pixels for ``max``).

    Args:
        sal: float (H, W), the map scaled to [0, 1] (:func:`~trainer.saliency.cam.unit_range`: 0 = its minimum).
        where: bool (H, W) or None: look only at its True pixels (at all of them when it has none).
        locate: ``max``: the maximum pixel (the first in row-major order on ties); ``centroid``: the pixels
            that reach half of that maximum and are 4-connected to it, weighted by how far they rise above
            that half (``sal - max / 2``), averaged (the maximum itself when the map is flat there).

    Raises:
        ValueError: another ``locate``.
    """
    if locate not in LOCATES:
        raise ValueError(f"locate={locate!r}; allowed values: {', '.join(LOCATES)}")
    s = np.asarray(sal, dtype=np.float64)
    if where is not None and where.any():
        s = np.where(where, s, -np.inf)
    r, c = np.unravel_index(int(np.argmax(s)), s.shape)
    if locate == "max":
        return float(r), float(c)
    half = 0.5 * s[r, c]
    labels, _ = ndimage.label(s >= half)
    weight = np.where(labels == labels[r, c], s - half, 0.0)
    if not weight.sum() > 0:
        return float(r), float(c)
    cr, cc = ndimage.center_of_mass(weight)
    return float(cr), float(cc)


def peak_masks(hu: torch.Tensor, out_size: int, peak: str) -> np.ndarray | list[None]:
    """Where each map's peak is looked for under ``saliency_peak`` = ``peak`` (:data:`PEAK_HU`): bool (B, out, out),
    the model-input pixels that are mostly (> 1/2) in the peak's HU range [low, high), from int16 HU images
    (B, S, S) or context stacks (B, K, S, S) (their centre slice), resized as the model's input is; for
    ``anywhere``, ``[None] * B`` (:func:`peak_of` then takes the whole map).

    Grad-CAM maps of a convolutional network can peak at the input's border (zero padding), which
    here is the air in the corners of the skull box, or on the skull that touches it; no lesion is there.
    """
    from trainer.transforms import resize

    hu_range = PEAK_HU.get(peak)
    if hu_range is None:
        return [None] * len(hu)
    if hu.ndim == 4:
        hu = hu[:, hu.shape[1] // 2]
    inside = ((hu >= hu_range[0]) & (hu < hu_range[1])).to(torch.float32).unsqueeze(1)
    return (resize(inside, out_size)[:, 0] > 0.5).numpy()
