"""Neighbour context rows (trainer.context): stacks of 2k+1 slices, missing neighbours replaced inward."""

from __future__ import annotations

import numpy as np
import torch

from trainer.context import context_rows, replaced_neighbours

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


def test_replaced_neighbours_counts_the_stand_ins():
    rows = torch.tensor([1, 2, 0, 4, 5])
    stack = lambda k: context_rows(rows, torch.tensor(PREV), torch.tensor(NEXT), k)  # noqa: E731
    assert replaced_neighbours(stack(1)).tolist() == [0, 0, 1, 2, 1]
    assert replaced_neighbours(stack(2)).tolist() == [1, 1, 2, 4, 3]
    assert replaced_neighbours(stack(0)).tolist() == [0, 0, 0, 0, 0]
