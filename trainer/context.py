"""Neighbour context (2.5D): the ``images`` rows of the 2k+1 slices centred on each labelled slice.

The store links every ok slice to its previous and next slice in its series (``prev_row`` /
``next_row``, -1 where there is none: a series end, a gap, a duplicate position or a quarantined
neighbour; see :mod:`neurocache.geometry`). The trainer stacks those slices as input channels. A
missing neighbour is replaced by the nearest slice that exists on that side towards the centre (so
at a series end the stack repeats the end slice, and a lone slice is its own context): the model
then sees "no change" rather than an air image, which it would read as anatomy.
"""

from __future__ import annotations

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


def replaced_neighbours(stack: torch.Tensor) -> torch.Tensor:
    """Per stack of :func:`context_rows`: how many of its 2k context slices were replaced (0 = full context).

    A replaced slice repeats its inner neighbour's row; real neighbours never repeat a row (a link
    never points to its own slice), so the count is the number of equal adjacent columns.

    Args:
        stack: (B, 2k + 1) int64 rows from :func:`context_rows`.

    Returns:
        (B,) int64.
    """
    return (stack[:, 1:] == stack[:, :-1]).sum(dim=1)
