"""Neighbour context rows (trainer.context): stacks of 2k+1 slices, missing neighbours replaced inward."""

from __future__ import annotations

import numpy as np
import torch

from trainer.context import context_fallback, context_rows

# rows 0-1-2-3 one series (3 and 4 split by a gap), 4 alone, 5-6 a pair
PREV = np.array([-1, 0, 1, 2, -1, -1, 5])
NEXT = np.array([1, 2, 3, -1, -1, 6, -1])


def _rows(rows, k):
    return context_rows(torch.tensor(rows), torch.tensor(PREV), torch.tensor(NEXT), k).tolist()


def test_k0_is_the_centre_alone():
    assert _rows([2, 4], 0) == [[2], [4]]


def test_k1_and_k2_stacks():
    assert _rows([1, 2, 0, 3, 4, 6], 1) == [[0, 1, 2], [1, 2, 3], [0, 0, 1], [2, 3, 3], [4, 4, 4], [5, 6, 6]]
    assert _rows([1, 2, 5], 2) == [[0, 0, 1, 2, 3], [0, 1, 2, 3, 3], [5, 5, 5, 6, 6]]


def test_fallback_counts_replaced_slices():
    rows = np.array([1, 2, 0, 4, 5])
    assert context_fallback(rows, PREV, NEXT, 1).tolist() == [0, 0, 1, 2, 1]
    assert context_fallback(rows, PREV, NEXT, 2).tolist() == [1, 1, 2, 4, 3]
    assert context_fallback(rows, PREV, NEXT, 0).tolist() == [0, 0, 0, 0, 0]
