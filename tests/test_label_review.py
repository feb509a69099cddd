"""trainer.evaluation.label_review: cleanlab's ranking finds flipped labels in simulated OOF scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from cleanlab.rank import get_label_quality_scores

from trainer.evaluation.label_review import QUALITY_METHOD, REVIEW_COLUMNS, label_review, summary_line


def _simulated(seed: int = 0, n: int = 600, patients: int = 100, flip: float = 0.025):
    """600 slices of 100 patients, well-separated Beta OOF scores, 2.5% of labels flipped."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"ID_{i:04d}" for i in range(n)])
    groups = np.array([f"P{i % patients:03d}" for i in range(n)])
    y = (rng.random(n) < 0.35).astype(int)
    p = np.where(y == 1, rng.beta(6, 2, n), rng.beta(2, 6, n))
    flipped = rng.choice(n, int(round(flip * n)), replace=False)
    given = y.copy()
    given[flipped] = 1 - given[flipped]
    return ids, groups, given, p, flipped


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flipped_labels_rank_in_the_top_5_percent(seed):
    ids, groups, given, p, flipped = _simulated(seed)
    df = label_review(ids, groups, given, p)
    top = set(df.loc[df["rank"] <= 0.05 * len(df), "ID"])
    found = np.mean([ids[i] in top for i in flipped])
    assert found >= 2 / 3, f"only {found:.2f} of the flipped labels in the top 5%"
    # a flagged row suggests the other class; an unflagged one keeps its label
    flagged = df[df["suggested_label"] != df["label"]]
    assert len(flagged) > 0
    assert (flagged["suggested_label"] == (flagged["prob"] >= 0.5).astype(int)).all()


def test_columns_ranks_and_quality_equal_cleanlab():
    ids, groups, given, p, _ = _simulated(3)
    df = label_review(ids, groups, given, p)
    assert tuple(df.columns) == REVIEW_COLUMNS
    assert sorted(df["rank"]) == list(range(1, len(df) + 1))
    assert df["rank"].tolist() == list(range(1, len(df) + 1))  # sorted by rank
    assert df["quality"].is_monotonic_increasing
    direct = get_label_quality_scores(given, np.column_stack([1 - p, p]), method=QUALITY_METHOD)
    by_id = pd.Series(direct, index=ids)
    np.testing.assert_array_equal(df["quality"].to_numpy(), by_id.loc[df["ID"]].to_numpy())
    # the group, label and prob travel with their ID
    back = df.set_index("ID").loc[ids]
    assert back["group"].tolist() == groups.tolist()
    assert back["label"].tolist() == given.tolist()
    np.testing.assert_array_equal(back["prob"].to_numpy(), p)


def test_normalized_margin_ranks_as_self_confidence_for_two_classes():
    _, _, given, p, _ = _simulated(4)
    pp = np.column_stack([1 - p, p])
    sc = get_label_quality_scores(given, pp, method="self_confidence")
    nm = get_label_quality_scores(given, pp, method="normalized_margin")
    np.testing.assert_allclose(sc, nm, atol=1e-12)


def test_ties_are_broken_by_id():
    ids = ["c", "a", "d", "b"]
    df = label_review(ids, ["p1", "p1", "p2", "p2"], [0, 0, 1, 1], [0.3, 0.3, 0.7, 0.7])
    assert df["ID"].tolist() == ["a", "b", "c", "d"]  # equal quality 0.7 for all four
    assert df["rank"].tolist() == [1, 2, 3, 4]


def test_summary_line():
    ids, groups, given, p, _ = _simulated(0, n=480, patients=80)
    df = label_review(ids, groups, given, p)
    line = summary_line(df)
    n_suspect = int((df["suggested_label"] != df["label"]).sum())
    first = df.iloc[0]
    assert line.startswith(f"label review: {n_suspect} of 480 labels look suspect (cleanlab); the 24 most suspect are in label_review.csv, top: ")
    assert f"{first['ID']} (label {first['label']}, prob {first['prob']:.2f})" in line
    assert line.count("(label ") == 3


def test_one_class_only_is_refused():
    with pytest.raises(ValueError, match="needs both classes 0 and 1.*all 4 labels are 0"):
        label_review(["a", "b", "c", "d"], ["p", "p", "q", "q"], [0, 0, 0, 0], [0.1, 0.2, 0.8, 0.4])


def test_nan_prob_is_refused_naming_the_id():
    with pytest.raises(ValueError, match=r"no finite out-of-fold probability.*\['b'\]"):
        label_review(["a", "b", "c", "d"], ["p", "p", "q", "q"], [0, 1, 0, 1], [0.1, np.nan, 0.8, 0.4])


def test_other_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="unique"):
        label_review(["a", "a", "c", "d"], ["p", "p", "q", "q"], [0, 1, 0, 1], [0.1, 0.9, 0.8, 0.4])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        label_review(["a", "b", "c", "d"], ["p", "p", "q", "q"], [0, 1, 0, 1], [0.1, 1.5, 0.8, 0.4])
    with pytest.raises(ValueError, match="one ID, group, label and prob per slice"):
        label_review(["a", "b", "c"], ["p", "p", "q", "q"], [0, 1, 0, 1], [0.1, 0.5, 0.8, 0.4])
