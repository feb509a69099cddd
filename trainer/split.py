"""Stratified (optionally grouped) test / cross-validation / holdout splits.

With ``groups`` (e.g. patient IDs, one per slice) every group lands entirely in
one partition, so slices of one patient never leak between the test set and
the training folds, or between folds. Without groups the split is done at the
row (slice) level.

All functions are deterministic for a given ``seed``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import (
    StratifiedKFold,
    train_test_split,
)

from neurocache.errors import UserError

__all__ = ["SplitError", "check_no_group_crosses", "crossing_groups", "holdout_split", "make_split"]


class SplitError(UserError, ValueError):
    """The data cannot be split as asked: too few samples or groups per class for ``test_size``,
    ``k_folds`` or ``holdout_frac``, or one class only. The message names the setting and the fix.
    (Bad arguments, e.g. ``k_folds=1`` from code, stay plain ``ValueError``: the config checks them.)"""


# --------------------------------------------------------------------------
# grouped stratified folds (sklearn's StratifiedGroupKFold, vectorised)
# --------------------------------------------------------------------------
def group_codes(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(groups, return_inverse=True)`` by hashing (``pd.factorize(sort=True)``: O(n) plus a
    sort of the distinct values, not of every row): (sorted distinct groups, int64 code per row)."""
    codes, uniques = pd.factorize(np.asarray(groups), sort=True)
    return np.asarray(uniques), codes.astype(np.int64, copy=False)


def stratified_group_folds(y: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    """Fold (``0..n_splits-1``) per row: exactly the test folds of
    ``StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)`` (scikit-learn 1.3+).

    The same greedy algorithm (groups shuffled, then visited by decreasing spread of their class
    counts, each joining the fold whose class proportions it unbalances least, ties to the smaller
    fold), with the same arithmetic, so the same folds (``tests/test_split.py`` compares them); but
    the class counts per group come from one ``bincount`` instead of a Python loop over rows, the
    candidate folds of a group are scored in one array operation, and the rows get their fold by
    one lookup instead of one pass over every row per fold. At the RSNA size (750k rows, 25k
    patients) this takes about a second where sklearn's takes tens (docs/benchmarks.md).

    Raises:
        SplitError: as sklearn does (fewer groups than splits; every class smaller than n_splits).
    """
    _, y_inv, y_cnt = np.unique(np.asarray(y), return_inverse=True, return_counts=True)
    if np.all(n_splits > y_cnt):
        raise SplitError(f"n_splits={n_splits} cannot be greater than the number of members in each class.")
    n_classes = len(y_cnt)
    _, g_inv = group_codes(groups)
    n_groups = int(g_inv.max()) + 1 if len(g_inv) else 0
    if n_splits > n_groups:
        raise SplitError(f"Cannot have number of splits n_splits={n_splits} greater than the number of groups: {n_groups}.")
    counts = np.bincount(g_inv * n_classes + y_inv.ravel(), minlength=n_groups * n_classes)
    counts = counts.reshape(n_groups, n_classes).astype(np.float64)
    perm = np.arange(n_groups)
    np.random.RandomState(seed).shuffle(perm)
    counts = counts[perm]
    inv_perm = np.empty_like(perm)
    inv_perm[perm] = np.arange(n_groups)
    order = np.argsort(-np.std(counts, axis=1), kind="stable")

    per_fold = np.zeros((n_splits, n_classes))
    eye = np.eye(n_splits)[:, :, None]  # candidate i adds the group to fold i
    y_cnt_f = y_cnt.reshape(1, 1, -1).astype(np.float64)
    fold_of = np.empty(n_groups, dtype=np.int64)
    for gi in order.tolist():
        g = counts[gi]
        evals = np.std((per_fold[None] + eye * g) / y_cnt_f, axis=1).mean(axis=1).tolist()
        sizes = per_fold.sum(axis=1).tolist()
        best, best_eval, best_size = 0, evals[0], sizes[0]
        for i in range(1, n_splits):  # sklearn's rule: lower eval, or np.isclose eval and a smaller fold
            e = evals[i]
            if e < best_eval or (abs(e - best_eval) <= 1e-8 + 1e-5 * abs(best_eval) and sizes[i] < best_size):
                best, best_eval, best_size = i, e, sizes[i]
        per_fold[best] += g
        fold_of[gi] = best
    return fold_of[inv_perm[g_inv]]


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------
def _check_labels(labels: Any) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"The 'labels' parameter must be a 1-D array; got shape {y.shape}.")
    if y.size == 0:
        raise ValueError("The 'labels' parameter must not be empty.")
    if y.dtype.kind == "f" and np.isnan(y).any():
        raise ValueError("The 'labels' parameter must not contain NaN.")
    classes = np.unique(y)
    if classes.size < 2:
        raise SplitError(
            "The 'labels' parameter must contain at least two classes to stratify; "
            f"got only {classes.tolist()}."
        )
    return y


def _check_groups(groups: Any, n: int) -> np.ndarray | None:
    if groups is None:
        return None
    g = np.asarray(groups)
    if g.ndim != 1 or g.shape[0] != n:
        raise ValueError(
            f"The 'groups' parameter must be a 1-D array with the same length as 'labels' ({n}); "
            f"got shape {g.shape}."
        )
    if g.dtype.kind == "f" and np.isnan(g).any():
        raise ValueError("The 'groups' parameter must not contain NaN.")
    if g.dtype == object and any(v is None for v in g):
        raise ValueError("The 'groups' parameter must not contain None.")
    return g


def _check_fraction(value: Any, name: str, func: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"The '{name}' parameter of {func} must be a float in the range (0.0, 1.0); "
            f"got {value!r}."
        ) from exc
    if not (math.isfinite(v) and 0.0 < v < 1.0):
        raise ValueError(
            f"The '{name}' parameter of {func} must be a float in the range (0.0, 1.0); "
            f"got {value!r}."
        )
    return v


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"The 'seed' parameter must be an int; got {seed!r}.")
    return int(seed)


def _n_splits_for(frac: float, name: str, func: str) -> int:
    n = round(1.0 / frac)
    if n < 2:
        raise SplitError(
            f"The '{name}' parameter of {func} is too large for a grouped split: "
            f"{name}={frac:g} gives round(1/{name})={n} splits, need at least 2 "
            f"(use {name} <= 0.66)."
        )
    return n


def _per_class_units(
    y: np.ndarray, groups: np.ndarray | None
) -> dict[Any, int]:
    """Number of rows (groups=None) or distinct groups containing each class."""
    out: dict[Any, int] = {}
    codes = None if groups is None else group_codes(groups)[1]
    for c in np.unique(y):
        m = y == c
        out[c.item() if hasattr(c, "item") else c] = (
            int(m.sum()) if codes is None else int(np.unique(codes[m]).size)
        )
    return out


def _require_units(
    y: np.ndarray,
    groups: np.ndarray | None,
    needed: int,
    what: str,
    where: str,
    fix: str,
) -> None:
    unit = "samples" if groups is None else "groups"
    for c, n in _per_class_units(y, groups).items():
        if n < needed:
            raise SplitError(
                f"{what} needs at least {needed} {unit} with label {c} in {where}; "
                f"found {n}. {fix}"
            )


def _first_split_mask(
    y: np.ndarray, groups: np.ndarray | None, frac: float, seed: int, name: str, func: str
) -> np.ndarray:
    """Bool mask of the held-out part (approx ``frac``) of a stratified split."""
    n = y.shape[0]
    mask = np.zeros(n, dtype=bool)
    if groups is None:
        idx = np.arange(n)
        _, held = train_test_split(idx, test_size=frac, stratify=y, random_state=seed)
        mask[held] = True
    else:
        n_splits = _n_splits_for(frac, name, func)
        n_groups = int(group_codes(groups)[0].size)
        if n_groups < n_splits:
            raise SplitError(
                f"{name}={frac:g} (round(1/{name})={n_splits} grouped splits) needs at least "
                f"{n_splits} groups; found {n_groups}. Increase {name} or add data."
            )
        mask[:] = stratified_group_folds(y, groups, n_splits, seed) == 0
    return mask


def _check_both_parts_have_all_classes(
    y: np.ndarray, mask: np.ndarray, part: str, rest: str, name: str
) -> None:
    classes = np.unique(y)
    for label, m in ((part, mask), (rest, ~mask)):
        present = np.unique(y[m])
        missing = [c.item() for c in classes if c not in present]
        if missing:
            raise SplitError(
                f"The {label} has no sample with label {missing} "
                f"(too few groups/samples per class for {name}). "
                f"Change {name} or the seed, or add data."
            )


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------
def make_split(
    labels: np.ndarray,
    groups: np.ndarray | None,
    *,
    test_size: float,
    k_folds: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified test split followed by stratified k-fold CV on the rest.

    Args:
        labels: (n,) class label per row (used for stratification).
        groups: (n,) group ID per row (e.g. patient), or None to split at row level.
        test_size: target fraction of rows in the test set, in (0, 1).
        k_folds: number of cross-validation folds on the non-test rows, >= 2.
        seed: ``random_state`` for every sklearn splitter used.

    Returns:
        ``is_test``: bool (n,); ``fold``: int64 (n,), fold index in ``0..k_folds-1`` for non-test
        rows, ``-1`` for test rows.

    Notes:
        With ``groups`` the test set is the test part of the first split of
        ``StratifiedGroupKFold(n_splits=round(1/test_size), shuffle=True, random_state=seed)``,
        so its size only *approximates* ``test_size`` (``1/round(1/test_size)`` of the groups,
        and group sizes vary); the folds come from ``StratifiedGroupKFold(k_folds, shuffle=True,
        random_state=seed)`` on the remaining rows. A group counts "with label c" when at least
        one of its rows has label c. Without groups: ``train_test_split(stratify=labels,
        test_size=test_size, random_state=seed)`` then ``StratifiedKFold(k_folds, shuffle=True,
        random_state=seed)``.

    Raises:
        ValueError: invalid parameters. SplitError (a ValueError): too few samples/groups per class,
            or a resulting test set / fold that lacks a class.
    """
    y = _check_labels(labels)
    g = _check_groups(groups, y.shape[0])
    if g is not None:
        g = group_codes(g)[1]  # int codes in the groups' sorted order: the same splits, no string work after
    ts = _check_fraction(test_size, "test_size", "make_split")
    if isinstance(k_folds, bool) or not isinstance(k_folds, (int, np.integer)) or k_folds < 2:
        raise ValueError(
            f"The 'k_folds' parameter of make_split must be an int >= 2; got {k_folds!r}."
        )
    k = int(k_folds)
    rs = _check_seed(seed)
    fix = "Lower k_folds or add data."

    # Up-front: each class needs >= k units for the folds plus >= 1 for the test set.
    _require_units(y, g, k + 1, f"k_folds={k} plus a test set", "the data", fix)

    is_test = _first_split_mask(y, g, ts, rs, "test_size", "make_split")
    _check_both_parts_have_all_classes(y, is_test, "test set", "training pool", "test_size")

    return is_test, _assign_folds(y, g, is_test, k, rs, fix)


def _assign_folds(y: np.ndarray, g: np.ndarray | None, is_test: np.ndarray, k: int, rs: int, fix: str) -> np.ndarray:
    """int64 (n,): the fold (0..k-1) of every non-test row, -1 for test rows; every fold holds every class."""
    pool = np.flatnonzero(~is_test)
    y_pool = y[pool]
    g_pool = None if g is None else g[pool]
    _require_units(y_pool, g_pool, k, f"k_folds={k}", "the training pool", fix)
    fold = np.full(y.shape[0], -1, dtype=np.int64)
    if g_pool is None:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=rs)
        for i, (_, val) in enumerate(splitter.split(np.zeros(pool.size), y_pool)):
            fold[pool[val]] = i
    else:
        fold[pool] = stratified_group_folds(y_pool, g_pool, k, rs)
    classes = np.unique(y)
    for i in range(k):
        present = np.unique(y[fold == i])
        missing = [c.item() for c in classes if c not in present]
        if missing:
            raise SplitError(
                f"k_folds={k}: fold {i} has no sample with label {missing} "
                f"(too few groups per class). {fix}"
            )
    return fold


def holdout_split(
    labels: np.ndarray,
    groups: np.ndarray | None,
    *,
    frac: float,
    seed: int,
) -> np.ndarray:
    """Stratified (and grouped, when ``groups`` is given) holdout mask: bool (n,), True for holdout rows.

    Carves the early-stopping/calibration holdout out of a model's training rows. With ``groups``
    the holdout is the test part of the first split of ``StratifiedGroupKFold(n_splits=round(1/frac),
    shuffle=True, random_state=seed)``, so its size approximates ``frac``; without groups it is
    ``train_test_split(stratify=labels, test_size=frac, random_state=seed)``.

    Raises:
        ValueError: invalid parameters. SplitError (a ValueError): too few samples/groups per
            class, or a holdout / remainder lacking a class.
    """
    y = _check_labels(labels)
    g = _check_groups(groups, y.shape[0])
    if g is not None:
        g = group_codes(g)[1]
    f = _check_fraction(frac, "frac", "holdout_split")
    rs = _check_seed(seed)
    _require_units(y, g, 2, "holdout_split", "the data", "Add data.")
    mask = _first_split_mask(y, g, f, rs, "frac", "holdout_split")
    _check_both_parts_have_all_classes(y, mask, "holdout", "remaining training set", "frac")
    return mask


_TEST = -(10**9)  # partition code of the test rows


def crossing_groups(groups: Any, is_test: Any, fold: Any) -> list[tuple[Any, list[str]]]:
    """The groups found in more than one partition, each with those partitions (``test``, ``fold k``).

    The partitions are ``test`` (``is_test`` True) and ``fold k`` for every value ``k`` of
    ``fold`` among the non-test rows; groups in sorted order.
    """
    g = np.asarray(groups)
    t = np.asarray(is_test).astype(bool)
    f = np.asarray(fold)
    if not (g.ndim == t.ndim == f.ndim == 1 and g.shape == t.shape == f.shape):
        raise ValueError(
            "The 'groups', 'is_test' and 'fold' parameters must be 1-D arrays of equal "
            f"length; got shapes {g.shape}, {t.shape}, {f.shape}."
        )
    part = np.where(t, _TEST, f.astype(np.int64))
    codes_g, inv = group_codes(g)
    # Distinct (group, partition) pairs as one int64 key each (a sort of integers, not of rows of strings).
    p_codes, p_inv = np.unique(part, return_inverse=True)
    keys = np.unique(inv * len(p_codes) + p_inv.ravel())
    pairs = np.stack([keys // len(p_codes), p_codes[keys % len(p_codes)]], axis=1)
    counts = np.bincount(pairs[:, 0], minlength=codes_g.size)
    name = lambda p: "test" if p == _TEST else f"fold {p}"
    return [(codes_g[b], [name(int(p)) for p in pairs[pairs[:, 0] == b, 1]]) for b in np.flatnonzero(counts > 1)]


def check_no_group_crosses(groups: Any, is_test: Any, fold: Any) -> None:
    """Raise ``ValueError`` if a group appears in more than one partition (:func:`crossing_groups`).

    Raises
    ------
    ValueError
        Listing (up to 20 of) the offending groups and the partitions each one
        appears in.
    """
    bad = crossing_groups(groups, is_test, fold)
    if not bad:
        return
    details = [f"{g!r} in {parts}" for g, parts in bad[:20]]
    more = f" (and {len(bad) - 20} more)" if len(bad) > 20 else ""
    raise ValueError(f"{len(bad)} group(s) appear in more than one partition: " + "; ".join(details) + more)
