"""The truth the phantom generator drew: each positive slice's lesion extent (``lesions.csv``), and the
distance from a point to it.

``lesions.csv`` (beside ``labels1.csv``, one row per label-1 slice, sorted by ID) has the columns of
:data:`LESION_COLUMNS`, all in pixels of the written slice (row, column indices; pixel centres at
integers):

- ``kind``: ``blob`` (parenchymal) or ``subdural`` (a crescent under the skull);
- ``center_row``, ``center_col``: the blob's drawn centre; for a crescent, the centroid of its pixels;
- ``radius_px``: the blob's nominal radius on this slice (its parts are ellipses of 0.4-1x it, off
  centre by up to 0.6x); for a crescent, its greatest thickness;
- ``rows``, ``cols``: the slice's shape; ``bbox_r0``, ``bbox_r1``, ``bbox_c0``, ``bbox_c1``: the tight box
  of the lesion's pixels (inclusive-exclusive); ``n_pixels``: how many there are;
- ``mask_rle``: the lesion's pixels exactly, as runs ``start:length`` (start = row x cols + col,
  row-major) separated by spaces; empty when the lesion fell off the image (``n_pixels`` 0).

A lesion pixel is one where the lesion's blend weight divided by the slice's contrast scale
(:func:`neurocache.synth.lesion.lesion_scale`) is >= 1/2: its drawn edge, at any contrast.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["LESION_COLUMNS", "LesionTruth", "decode_rle", "distance_to_lesion", "encode_rle", "lesion_frame"]

LESION_COLUMNS: tuple[str, ...] = (
    "ID", "kind", "center_row", "center_col", "radius_px", "rows", "cols",
    "bbox_r0", "bbox_r1", "bbox_c0", "bbox_c1", "n_pixels", "mask_rle",
)


def encode_rle(mask: np.ndarray) -> str:
    """Runs of True in a 2-D bool mask, row-major: ``"start:length start:length ..."`` ('' when empty)."""
    flat = np.concatenate([[False], np.asarray(mask, dtype=bool).ravel(), [False]])
    edges = np.flatnonzero(flat[1:] != flat[:-1])
    starts, ends = edges[0::2], edges[1::2]
    return " ".join(f"{a}:{b - a}" for a, b in zip(starts.tolist(), ends.tolist()))


def decode_rle(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """The bool (rows, cols) mask of :func:`encode_rle`'s string."""
    flat = np.zeros(shape[0] * shape[1], dtype=bool)
    for run in str(rle or "").split():
        a, n = (int(v) for v in run.split(":"))
        flat[a : a + n] = True
    return flat.reshape(shape)


def distance_to_lesion(row: float, col: float, mask: np.ndarray) -> float:
    """Euclidean distance (pixels) from (row, col) to the nearest True pixel centre of ``mask``; 0 inside it,
    ``inf`` for an empty mask."""
    rr, cc = np.nonzero(mask)
    if rr.size == 0:
        return float("inf")
    return float(np.sqrt(np.min((rr - row) ** 2 + (cc - col) ** 2)))


@dataclass(frozen=True)
class LesionTruth:
    """One slice's lesion: kind, centre and radius (pixels), and its pixels (a bool mask of the slice)."""

    kind: str
    center: tuple[float, float]
    radius_px: float
    mask: np.ndarray

    @classmethod
    def of(cls, kind: str, box: tuple[slice, slice], mask_in_box: np.ndarray, center: tuple[float, float] | None,
           radius_px: float, shape: tuple[int, int]) -> LesionTruth:
        """From the renderer's box and the mask inside it; ``center`` None: the centroid of the mask."""
        mask = np.zeros(shape, dtype=bool)
        mask[box] = mask_in_box
        if center is None:
            rr, cc = np.nonzero(mask)
            center = (float(rr.mean()), float(cc.mean())) if rr.size else (float("nan"), float("nan"))
        return cls(kind=kind, center=center, radius_px=float(radius_px), mask=mask)

    def row(self, slice_id: str) -> dict[str, object]:
        """The ``lesions.csv`` row (:data:`LESION_COLUMNS`) of this slice."""
        rr, cc = np.nonzero(self.mask)
        box = (int(rr.min()), int(rr.max()) + 1, int(cc.min()), int(cc.max()) + 1) if rr.size else (0, 0, 0, 0)
        return {"ID": slice_id, "kind": self.kind, "center_row": round(self.center[0], 2),
                "center_col": round(self.center[1], 2), "radius_px": round(self.radius_px, 2),
                "rows": self.mask.shape[0], "cols": self.mask.shape[1], "bbox_r0": box[0], "bbox_r1": box[1],
                "bbox_c0": box[2], "bbox_c1": box[3], "n_pixels": int(rr.size), "mask_rle": encode_rle(self.mask)}


def lesion_frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    """``lesions.csv``'s table: the rows in :data:`LESION_COLUMNS` order, sorted by ID."""
    df = pd.DataFrame(rows, columns=list(LESION_COLUMNS))
    return df.sort_values("ID", kind="stable").reset_index(drop=True)
