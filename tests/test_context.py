"""Neighbour context rows (trainer.context): stacks of 2k+1 slices, missing neighbours replaced inward."""

from __future__ import annotations

import numpy as np
import pytest
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


def test_pair_aggregation_needs_a_finding_on_two_consecutive_slices():
    import numpy as np
    import pandas as pd

    from trainer.evaluation.patient import aggregate_patients, patient_frame

    # patient a: one hot slice alone (0.9) between cold ones; patient b: two consecutive warm slices;
    # patient c: a lone slice (no link) -> falls back to its max.
    ids = ["a1", "a2", "a3", "b1", "b2", "b3", "c1"]
    prob = [0.1, 0.9, 0.2, 0.1, 0.6, 0.7, 0.4]
    nxt = {"a1": "a2", "a2": "a3", "b1": "b2", "b2": "b3"}
    f = patient_frame(ids, [0, 1, 0, 0, 1, 1, 0], prob, ["a", "a", "a", "b", "b", "b", "c"], nxt)
    np.testing.assert_array_equal(f["prob_next"].to_numpy(), [0.9, 0.2, np.nan, 0.6, 0.7, np.nan, np.nan])
    pair = aggregate_patients(f, how="pair").set_index("patient")["prob"]
    assert pair.to_dict() == {"a": 0.2, "b": 0.6, "c": 0.4}  # a: max(min(.1,.9), min(.9,.2)); b: max(.1, .6)
    assert aggregate_patients(f, how="max").set_index("patient")["prob"].to_dict() == {"a": 0.9, "b": 0.7, "c": 0.4}
    with pytest.raises(ValueError, match="prob_next"):
        aggregate_patients(pd.DataFrame({"patient": ["a"], "label": [0], "prob": [0.5]}), how="pair")


def test_next_slice_ids_follow_the_store_links():
    import pandas as pd

    from trainer.data import next_slice_ids

    t = pd.DataFrame({"ID": ["x", "y", "z"], "next_row": [2, -1, 1]})
    assert next_slice_ids(t) == {"x": "z", "z": "y"}
    assert next_slice_ids(t.drop(columns="next_row")) == {}
