"""Neighbour context (2.5D): the ``images`` rows of the 2k+1 slices centred on each labelled slice.

The store links every ok slice to its previous and next slice in its series (``prev_row`` /
``next_row``, -1 where there is none: a series end, a gap, a duplicate position or a quarantined
neighbour; see :mod:`neurocache.geometry`). The trainer stacks those slices as input channels. A
missing neighbour is replaced by the nearest slice that exists on that side towards the centre (so
at a series end the stack repeats the end slice, and a lone slice is its own context): the model
then sees "no change" rather than an air image, which it would read as anatomy.
"""

from __future__ import annotations

import numpy as np
import torch


def context_rows(rows: torch.Tensor, prev_row: torch.Tensor, next_row: torch.Tensor, k: int) -> torch.Tensor:
    """Rows of the context stack of each slice in ``rows``.

    Args:
        rows: (B,) int64 ``images`` rows of the centre slices.
        prev_row, next_row: (N,) int64 links for every ``images`` row (-1: none), on ``rows``' device.
        k: neighbours on each side (0: the centre alone).

    Returns:
        (B, 2k + 1) int64: column ``k`` is ``rows``; column ``k - j`` is the j-th previous slice and
        ``k + j`` the j-th next, each replaced by its inner neighbour (ultimately the centre) when missing.
    """
    cols = [rows]
    for links, side in ((prev_row, -1), (next_row, 1)):
        cur, out = rows, []
        for _ in range(k):
            step = links[cur]
            cur = torch.where(step >= 0, step, cur)  # missing: stay on the last slice that exists
            out.append(cur)
        cols = out[::-1] + cols if side < 0 else cols + out
    return torch.stack(cols, dim=1)


def context_fallback(rows: np.ndarray, prev_row: np.ndarray, next_row: np.ndarray, k: int) -> np.ndarray:
    """Per slice in ``rows``: how many of its 2k context slices were replaced (0 = full context).

    Args:
        rows: (B,) int64 centre rows; prev_row, next_row: (N,) int64 links (numpy).
    """
    missing = np.zeros(len(rows), dtype=np.int64)
    for links in (prev_row, next_row):
        cur, alive = np.asarray(rows, dtype=np.int64), np.ones(len(rows), dtype=bool)
        for _ in range(k):
            step = links[cur]
            alive &= step >= 0
            missing += ~alive
            cur = np.where(alive, step, cur)
    return missing
