"""Tests for trainer.split."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from _fakes import fake_data as _fake_data

import trainer.folds as folds_mod
from trainer.config import load_config
from trainer.split import check_no_group_crosses, holdout_split, make_split


def _grouped(n_patients: int = 30, n_slices: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Patients x slices; ~half the patients have some positive slices (mixed labels)."""
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"P{i:03d}" for i in range(n_patients)], n_slices)
    labels = np.zeros(n_patients * n_slices, dtype=np.int64)
    for i in range(n_patients):
        if i % 2 == 0:  # "lesion" patient: a contiguous run of positive slices
            start = rng.integers(0, n_slices - 3)
            labels[i * n_slices + start : i * n_slices + start + 3] = 1
    return labels, groups


@pytest.mark.parametrize("k", [3, 5])
def test_grouped_split_no_leak_and_valid_folds(k: int) -> None:
    labels, groups = _grouped()
    is_test, fold = make_split(labels, groups, test_size=0.2, k_folds=k, seed=42)

    assert is_test.dtype == bool and fold.dtype == np.int64
    assert is_test.shape == fold.shape == labels.shape
    check_no_group_crosses(groups, is_test, fold)

    # explicit set-intersection checks
    test_groups = set(groups[is_test])
    fold_groups = [set(groups[fold == i]) for i in range(k)]
    assert test_groups and all(fold_groups)
    for i in range(k):
        assert not (test_groups & fold_groups[i])
        for j in range(i + 1, k):
            assert not (fold_groups[i] & fold_groups[j])
    assert set().union(test_groups, *fold_groups) == set(groups)

    # test rows have fold -1; every other row a fold in 0..k-1
    assert (fold[is_test] == -1).all()
    assert set(fold[~is_test].tolist()) == set(range(k))
    # each fold (and the test set) has both classes
    for i in range(k):
        assert set(labels[fold == i].tolist()) == {0, 1}
    assert set(labels[is_test].tolist()) == {0, 1}
    assert abs(is_test.mean() - 0.2) <= 0.1


def test_grouped_split_deterministic_and_seed_dependent() -> None:
    labels, groups = _grouped()
    a = make_split(labels, groups, test_size=0.2, k_folds=5, seed=1)
    b = make_split(labels, groups, test_size=0.2, k_folds=5, seed=1)
    c = make_split(labels, groups, test_size=0.2, k_folds=5, seed=2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not (np.array_equal(a[0], c[0]) and np.array_equal(a[1], c[1]))


def test_ungrouped_split_stratified() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.uniform(size=1000) < 0.3).astype(int)
    is_test, fold = make_split(labels, None, test_size=0.25, k_folds=5, seed=0)
    overall = labels.mean()
    assert is_test.mean() == pytest.approx(0.25, abs=0.01)
    assert labels[is_test].mean() == pytest.approx(overall, abs=0.01)
    assert (fold[is_test] == -1).all()
    for i in range(5):
        m = fold == i
        assert m.sum() == pytest.approx(750 / 5, abs=2)
        assert labels[m].mean() == pytest.approx(overall, abs=0.02)
    # deterministic
    again = make_split(labels, None, test_size=0.25, k_folds=5, seed=0)
    np.testing.assert_array_equal(fold, again[1])


def test_check_no_group_crosses_raises_on_violation() -> None:
    groups = np.array(["a", "a", "b", "b", "c", "c"])
    is_test = np.array([True, False, False, False, False, False])
    fold = np.array([-1, 0, 0, 0, 1, 2])
    with pytest.raises(ValueError) as ei:
        check_no_group_crosses(groups, is_test, fold)
    msg = str(ei.value)
    assert "2 group(s)" in msg
    assert "'a'" in msg and "test" in msg and "fold 0" in msg
    assert "'c'" in msg and "fold 1" in msg and "fold 2" in msg
    assert "'b'" not in msg
    # a clean assignment passes
    check_no_group_crosses(groups, np.array([True, True, False, False, False, False]),
                           np.array([-1, -1, 0, 0, 1, 1]))


def test_too_few_groups_raises() -> None:
    labels, groups = _grouped(n_patients=8)  # 4 patients with positives
    with pytest.raises(ValueError, match=r"k_folds=5 plus a test set needs at least 6 groups with label 1"):
        make_split(labels, groups, test_size=0.2, k_folds=5, seed=0)
    # 6 positive patients; test_size=0.34 -> 3 grouped splits, 2 of them go to test
    labels, groups = _grouped(n_patients=12)
    with pytest.raises(ValueError) as ei:
        make_split(labels, groups, test_size=0.34, k_folds=5, seed=0)
    assert str(ei.value) == (
        "k_folds=5 needs at least 5 groups with label 1 in the training pool; found 4. "
        "Lower k_folds or add data."
    )
    with pytest.raises(ValueError, match=r"samples with label 1"):
        make_split(np.array([0] * 20 + [1] * 3), None, test_size=0.2, k_folds=5, seed=0)


def test_parameter_validation() -> None:
    labels, groups = _grouped()
    with pytest.raises(ValueError, match="'test_size'.*range"):
        make_split(labels, groups, test_size=1.2, k_folds=5, seed=0)
    with pytest.raises(ValueError, match="'test_size'.*range"):
        make_split(labels, groups, test_size=0.0, k_folds=5, seed=0)
    with pytest.raises(ValueError, match="'k_folds'.*>= 2.*got 1"):
        make_split(labels, groups, test_size=0.2, k_folds=1, seed=0)
    with pytest.raises(ValueError, match="'test_size'.*too large"):
        make_split(labels, groups, test_size=0.8, k_folds=2, seed=0)
    with pytest.raises(ValueError, match="same length"):
        make_split(labels, groups[:-1], test_size=0.2, k_folds=5, seed=0)
    with pytest.raises(ValueError, match="two classes"):
        make_split(np.zeros(50, int), None, test_size=0.2, k_folds=5, seed=0)


def test_holdout_split_grouped_and_stratified() -> None:
    labels, groups = _grouped(n_patients=40)
    mask = holdout_split(labels, groups, frac=0.2, seed=3)
    assert mask.dtype == bool and mask.shape == labels.shape
    assert not (set(groups[mask]) & set(groups[~mask]))
    assert set(labels[mask].tolist()) == {0, 1}
    assert abs(mask.mean() - 0.2) <= 0.1
    pos_groups = {g for g in np.unique(groups) if labels[groups == g].any()}
    held_groups = set(groups[mask])
    frac_pos_held = len(held_groups & pos_groups) / len(held_groups)
    assert frac_pos_held == pytest.approx(len(pos_groups) / 40, abs=0.2)
    np.testing.assert_array_equal(mask, holdout_split(labels, groups, frac=0.2, seed=3))

    rng = np.random.default_rng(1)
    y = (rng.uniform(size=500) < 0.2).astype(int)
    m2 = holdout_split(y, None, frac=0.1, seed=0)
    assert m2.sum() == 50
    assert y[m2].mean() == pytest.approx(y.mean(), abs=0.01)
    with pytest.raises(ValueError, match="'frac'"):
        holdout_split(y, None, frac=1.0, seed=0)


@pytest.mark.parametrize("seed", range(6))
def test_stratified_group_folds_equal_sklearn(seed):
    """The vectorised splitter gives sklearn's StratifiedGroupKFold(shuffle=True) folds, row for row."""
    from sklearn.model_selection import StratifiedGroupKFold

    from trainer.split import stratified_group_folds

    rng = np.random.default_rng(seed)
    n = int(rng.integers(60, 3000))
    n_groups = int(rng.integers(10, max(11, n // 3)))
    k = int(rng.integers(2, 7))
    g_int = rng.integers(0, n_groups, n)
    groups = np.array([f"{v:064x}" for v in g_int]) if seed % 2 else g_int
    y = (rng.random(n) < rng.uniform(0.1, 0.6)).astype(int)
    if seed == 5:
        y = rng.integers(0, 3, n)  # multiclass too
    want = np.full(n, -1)
    for i, (_, te) in enumerate(StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(np.zeros(n), y, groups)):
        want[te] = i
    got = stratified_group_folds(y, groups, k, seed)
    assert np.array_equal(got, want)


def test_stratified_group_folds_errors():
    from trainer.split import stratified_group_folds

    with pytest.raises(ValueError, match="number of groups"):
        stratified_group_folds(np.array([0, 1] * 6), np.array([1] * 6 + [2] * 6), 3, 0)
    with pytest.raises(ValueError, match="members in each class"):
        stratified_group_folds(np.array([0, 1, 0, 1]), np.array([1, 2, 3, 4]), 3, 0)


def test_split_and_holdouts_do_not_depend_on_the_stores_hash_key():
    """Two builds of the same folder hash patients with different random keys: same split, same holdouts."""
    a = _fake_data()
    rng = np.random.default_rng(5)
    relabel = {g: f"{rng.integers(1 << 60):016x}" for g in np.unique(a.groups)}  # another key's hashes
    b = SimpleNamespace(**{**vars(a), "groups": np.array([relabel[g] for g in a.groups])})
    cfg = load_config(sets=["k_folds=3", "holdout_frac=0.25"])
    sa, sb = folds_mod.split_table(a, cfg), folds_mod.split_table(b, cfg)
    pd.testing.assert_frame_equal(sa[["ID", "label", "test", "fold"]], sb[["ID", "label", "test", "fold"]])
    for k in range(3):
        tr, _ = folds_mod.fold_rows(sa, k)
        ha, hb = folds_mod.inner_holdout(a, tr, cfg, 7)[1], folds_mod.inner_holdout(b, tr, cfg, 7)[1]
        np.testing.assert_array_equal(ha, hb)
